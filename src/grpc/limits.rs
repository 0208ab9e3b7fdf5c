//! Refusals that tonic makes before a handler runs, in gRPC's convention and naming what was wrong.
//!
//! - A request larger than `max_decoding_message_size`: tonic says OUT_OF_RANGE; gRPC's own
//!   implementations answer RESOURCE_EXHAUSTED, which clients and proxies treat as "do not retry".
//! - A body that is not a protobuf message of the method's type: tonic says INTERNAL, as if the
//!   server were at fault; it is the caller's, so INVALID_ARGUMENT naming the method's request.
//!
//! Both come back trailers-only, so the status sits in the response headers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http::{HeaderValue, Request, Response};

const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";
const INTERNAL: &str = "13";
const INVALID_ARGUMENT: &str = "3";

/// Wraps every service of a server with [`Refusals`].
#[derive(Clone)]
pub struct RefusalsLayer {
    limit: usize,
}

impl RefusalsLayer {
    pub fn new(max_message_bytes: usize) -> Self {
        RefusalsLayer { limit: max_message_bytes }
    }
}

impl<S> tower::Layer<S> for RefusalsLayer {
    type Service = Refusals<S>;

    fn layer(&self, inner: S) -> Refusals<S> {
        Refusals { inner, limit: self.limit }
    }
}

#[derive(Clone)]
pub struct Refusals<S> {
    inner: S,
    limit: usize,
}

impl<S, B, R> tower::Service<Request<B>> for Refusals<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // `/cedar_pdp.v1.AuthorizationService/Check` → `Check`.
        // A reference-counted copy, no allocation: only a refusal needs the method's name.
        let path = request.uri().path_and_query().cloned();
        let limit = self.limit;
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let method = path.as_ref().and_then(|p| p.path().rsplit('/').next()).unwrap_or_default();
            rewrite(response.headers_mut(), method, limit);
            Ok(response)
        })
    }
}

fn rewrite(headers: &mut tonic::codegen::http::HeaderMap, method: &str, limit: usize) {
    // tonic percent-encodes the message's spaces.
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or_default();
    let status = headers.get("grpc-status").and_then(|s| s.to_str().ok()).unwrap_or_default();
    let replacement = if status == OUT_OF_RANGE && message.contains("decoded%20message%20length%20too%20large") {
        Some((
            RESOURCE_EXHAUSTED,
            format!("request message is larger than the limit of {limit} bytes (`--max-message-bytes`)"),
        ))
    } else if status == INTERNAL && message.contains("failed%20to%20decode%20Protobuf%20message") {
        let detail = percent_decode(message.split_once("message:%20").map_or("", |(_, d)| d));
        Some((INVALID_ARGUMENT, format!("the `{method}` request is not a valid protobuf message: {detail}")))
    } else {
        None
    };
    if let Some((code, text)) = replacement {
        headers.insert("grpc-status", HeaderValue::from_static(code));
        // Header values must be visible ASCII; gRPC percent-encodes the rest.
        let encoded: String = crate::error::bounded(text)
            .bytes()
            .map(|b| if (0x20..0x7f).contains(&b) && b != b'%' { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        if let Ok(value) = HeaderValue::from_str(&encoded) {
            headers.insert("grpc-message", value);
        }
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
