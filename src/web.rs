//! Serving HTTP (the AuthZEN API, the metrics endpoint) on a `tls::Incoming`, within bounds: a
//! header-read timeout, a connection cap, a first-byte and idle timeout (`Quiet`), HTTP/2 pings,
//! and graceful shutdown. Each request carries the connection's `Peer` as `ConnectInfo`.

use std::sync::Arc;

use crate::tls::Incoming;

/// What one HTTP connection may hold: a client trickling its headers, or opening connections
/// without end, cannot tie the listener up.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Which listener, for the refusal counter: `http` or `metrics`.
    pub name: &'static str,
    pub header_timeout: std::time::Duration,
    pub max_connections: usize,
}

/// How often an idle HTTP/2 connection is pinged, and how long an answer may take before it is closed.
const H2_PING: (std::time::Duration, std::time::Duration) =
    (std::time::Duration::from_secs(20), std::time::Duration::from_secs(10));

/// Serves `router` on `listener` until `stop`, each connection on its own task, within `limits`;
/// on `stop`, open connections finish their requests and close.
pub fn serve(listener: Incoming, app: axum::Router, limits: ConnLimits, stop: tokio_util::sync::CancellationToken) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(H2_PING.0)
        .keep_alive_timeout(H2_PING.1);
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut connections = listener.into_stream();
    tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let conn = tokio::select! {
                () = stop.cancelled() => break,
                conn = tokio_stream::StreamExt::next(&mut connections) => conn,
            };
            let Some(Ok(conn)) = conn else { break };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                metrics::counter!("cedar_pdp_http_connections_refused_total", "port" => limits.name).increment(1);
                continue;
            };
            let peer = conn.peer().clone();
            let service = tower::ServiceExt::map_request(app.clone(), move |request: axum::http::Request<_>| {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(axum::extract::ConnectInfo(peer.clone()));
                request
            });
            let service = hyper_util::service::TowerToHyperService::new(service);
            let io = hyper_util::rt::TokioIo::new(Quiet::new(conn, limits.header_timeout));
            let served = graceful.watch(builder.serve_connection_with_upgrades(io, service).into_owned());
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = served.await {
                    tracing::debug!("HTTP connection ended: {e}");
                }
            });
        }
        graceful.shutdown().await;
    });
}

/// A connection that is closed when its client goes quiet: no first byte within the header timeout
/// (hyper's own header timeout starts only once it knows the protocol), or no byte at all for
/// `IDLE` afterwards (a keep-alive connection left open to hold a slot).
mod quiet {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::time::{Instant, Sleep};

    /// How long an HTTP connection may send nothing once it has sent something. HTTP/2 connections are
    /// pinged more often than this, so a live idle one stays open.
    pub const IDLE: Duration = Duration::from_secs(75);

    pub struct Quiet<T> {
        io: T,
        deadline: Pin<Box<Sleep>>,
    }

    impl<T> Quiet<T> {
        /// `io`, closed unless its first byte arrives within `first`.
        pub fn new(io: T, first: Duration) -> Self {
            Quiet { io, deadline: Box::pin(tokio::time::sleep(first)) }
        }
    }

    impl<T: AsyncRead + Unpin> AsyncRead for Quiet<T> {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            match Pin::new(&mut self.io).poll_read(cx, buf) {
                Poll::Ready(result) => {
                    if buf.filled().len() > before {
                        self.deadline.as_mut().reset(Instant::now() + IDLE);
                    }
                    Poll::Ready(result)
                }
                Poll::Pending => match self.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client went quiet")))
                    }
                    Poll::Pending => Poll::Pending,
                },
            }
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for Quiet<T> {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.io.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }
}

use quiet::Quiet;
