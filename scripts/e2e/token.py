"""Mints an HS256 JWT for the test key in tests/fixtures/mesh/jwks.json: token.py SUB AUD EXP_FROM_NOW."""
import base64
import hashlib
import hmac
import json
import sys
import time

SECRET = b"cedar-pdp-test-secret-0123456789abcdef"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


sub, aud, ttl = sys.argv[1], sys.argv[2], int(sys.argv[3])
now = int(time.time())
header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "test-hs256"}).encode())
claims = b64(json.dumps({"sub": sub, "aud": aud, "iss": "https://issuer.test", "exp": now + ttl, "nbf": now - 5}).encode())
signature = b64(hmac.new(SECRET, f"{header}.{claims}".encode(), hashlib.sha256).digest())
print(f"{header}.{claims}.{signature}")
