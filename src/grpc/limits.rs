//! Message-size refusals in gRPC's convention.
//!
//! tonic refuses a request larger than `max_decoding_message_size` with OUT_OF_RANGE; gRPC's own
//! implementations answer RESOURCE_EXHAUSTED, which clients and proxies treat as "do not retry as is".
//! The refusal comes back trailers-only, so the status sits in the response headers.

use tonic::codegen::http::{HeaderValue, Response};

const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

/// Rewrites tonic's over-limit refusal; every other response passes untouched.
pub fn oversized_as_resource_exhausted<B>(limit: usize) -> impl Fn(Response<B>) -> Response<B> + Clone {
    let message = format!("request message is larger than the limit of {limit} bytes (`--max-message-bytes`)");
    move |mut response| {
        let headers = response.headers_mut();
        let oversized = headers.get("grpc-status").is_some_and(|s| s == OUT_OF_RANGE)
            // tonic percent-encodes the message's spaces.
            && headers
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                .is_some_and(|m| m.contains("decoded%20message%20length%20too%20large"));
        if oversized {
            headers.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
            if let Ok(value) = HeaderValue::from_str(&message) {
                headers.insert("grpc-message", value);
            }
        }
        response
    }
}
