//! TLS for every listener: the certificate, key and client CA from files, reloaded when they
//! change, connections accepted with their handshakes off the accept loop, and the caller's
//! certificate identity read once per connection.
//!
//! Architecture invariants: a reload that fails keeps the last good configuration (new connections
//! never get a half-written pair); with a client CA and `required`, a connection without a
//! certificate chaining to it never reaches a service; an identity is only ever taken from a
//! certificate the handshake verified.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// How often the files are read for changes: a rotated pair is served within this (and under 2 s).
const POLL: Duration = Duration::from_millis(500);
/// A handshake slower than this is dropped: a stalled client must not hold a slot forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most TLS handshakes in progress at once, per listener; a connection beyond it is closed.
const MAX_HANDSHAKES: usize = 512;
/// A certificate expiring sooner than this is a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// Whether a client certificate is required once a client CA is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuth {
    Required,
    Optional,
}

/// Where the server's TLS material lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

/// What a listener speaks over TLS, offered by ALPN.
#[derive(Debug, Clone, Copy)]
pub enum Alpn {
    /// gRPC: HTTP/2 only.
    Grpc,
    /// Plain HTTP endpoints (metrics): HTTP/2 and HTTP/1.1.
    Http,
}

/// One loaded configuration and what `status` says of it.
struct Loaded {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    summary: CertSummary,
}

/// The served certificate as `status` reports it.
#[derive(Debug, Clone, Default)]
pub struct CertSummary {
    pub subject: String,
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

/// The state of the TLS files, for `status`.
#[derive(Debug, Clone, Default)]
pub struct TlsStatus {
    pub certificate: CertSummary,
    /// The last reload's error, if the last attempt failed (the previous pair is still served).
    pub last_error: Option<String>,
    /// Reloads refused since start.
    pub failures: u64,
    pub warnings: Vec<String>,
}

/// The server's TLS configuration, swapped whole when the files change.
pub struct Tls {
    files: TlsFiles,
    current: ArcSwap<Loaded>,
    attempts: Mutex<Attempts>,
}

/// What the reloader has tried.
struct Attempts {
    /// Digest of the files' bytes at the last attempt, good or bad: the same bytes are tried once.
    digest: [u8; 32],
    /// Digest of the files being served.
    served: [u8; 32],
    /// The last attempt's error, while it stands.
    error: Option<String>,
    failures: u64,
}

impl Tls {
    /// Loads the files; any problem is an error naming the file.
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, String> {
        let (bytes, digest) = read_all(&files)?;
        let loaded = build(&files, &bytes)?;
        warn_if_expiring(&loaded.summary);
        let attempts = Mutex::new(Attempts { digest, served: digest, error: None, failures: 0 });
        let tls = Tls { files, current: ArcSwap::from_pointee(loaded), attempts };
        Ok(Arc::new(tls))
    }

    /// Reads the files again every `POLL` until `stop`: a changed, valid set is served to new
    /// connections; an invalid one is logged, counted and skipped.
    pub fn spawn_reloader(self: &Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let this = tls.clone();
                let _ = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
            }
        })
    }

    /// One reload attempt, if the files' bytes changed since the last one.
    pub fn reload_if_changed(&self) {
        let read = read_all(&self.files);
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        let result = match read {
            // The same bytes as the last attempt: nothing to do, but a read error since then is
            // over if those bytes are the ones served.
            Ok((_, digest)) if digest == attempts.digest => {
                if digest == attempts.served {
                    attempts.error = None;
                }
                return;
            }
            Ok((bytes, digest)) => {
                attempts.digest = digest;
                build(&self.files, &bytes)
            }
            // Unreadable files (mid-swap, removed) are retried at every poll, but reported once.
            Err(e) if attempts.error.as_deref() == Some(e.as_str()) => return,
            Err(e) => Err(e),
        };
        match result {
            Ok(loaded) => {
                let cert = &loaded.summary;
                tracing::info!(subject = %cert.subject, serial = %cert.serial, "TLS certificate reloaded");
                warn_if_expiring(cert);
                metrics::counter!("cedar_pdp_tls_reloads_total", "result" => "ok").increment(1);
                self.current.store(Arc::new(loaded));
                attempts.served = attempts.digest;
                attempts.error = None;
            }
            Err(e) => {
                tracing::error!("TLS files not reloaded, the previous certificate is still served: {e}");
                metrics::counter!("cedar_pdp_tls_reloads_total", "result" => "error").increment(1);
                attempts.error = Some(e);
                attempts.failures += 1;
            }
        }
    }

    pub fn status(&self) -> TlsStatus {
        let certificate = self.current.load().summary.clone();
        let attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        let warnings = expiry_warning(&certificate).into_iter().collect();
        TlsStatus { certificate, last_error: attempts.error.clone(), failures: attempts.failures, warnings }
    }

    fn acceptor(&self, alpn: Alpn) -> TlsAcceptor {
        let loaded = self.current.load();
        TlsAcceptor::from(match alpn {
            Alpn::Grpc => loaded.grpc.clone(),
            Alpn::Http => loaded.http.clone(),
        })
    }
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

/// The files' bytes (cert, key, client CA) and their digest.
fn read_all(files: &TlsFiles) -> Result<([Vec<u8>; 3], [u8; 32]), String> {
    let cert = read_file(&files.cert, "TLS certificate")?;
    let key = read_file(&files.key, "TLS key")?;
    let ca = files.client_ca.as_deref().map(|p| read_file(p, "client CA")).transpose()?.unwrap_or_default();
    let mut digest = Sha256::new();
    for part in [&cert, &key, &ca] {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    Ok(([cert, key, ca], digest.finalize().into()))
}

/// Both listener configurations from the files' bytes; checks that the key belongs to the
/// certificate.
fn build(files: &TlsFiles, [cert, key, ca]: &[Vec<u8>; 3]) -> Result<Loaded, String> {
    let cert_path = files.cert.display();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{cert_path}: not a PEM certificate chain: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{cert_path}: holds no certificate"));
    };
    let summary = summarize(leaf).map_err(|e| format!("{cert_path}: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("{}: not a PEM private key: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Fails when the key is not the certificate's: a half-rotated pair is never served.
    let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| format!("{} does not match {cert_path}: {e}", files.key.display()))?;
    let verifier = match &files.client_ca {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for der in CertificateDer::pem_slice_iter(ca) {
                let der = der.map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
                roots.add(der).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let builder = match files.client_auth {
                ClientAuth::Required => builder,
                ClientAuth::Optional => builder.allow_unauthenticated(),
            };
            builder.build().map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    let resolver = Arc::new(OneCert(Arc::new(certified)));
    let config = |alpn: &[&[u8]]| -> Result<Arc<ServerConfig>, String> {
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    };
    Ok(Loaded { grpc: config(&[b"h2"])?, http: config(&[b"h2", b"http/1.1"])?, summary })
}

/// Serves the one certificate whatever the client asks for.
#[derive(Debug)]
struct OneCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for OneCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn summarize(der: &CertificateDer<'_>) -> Result<CertSummary, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        serial: cert.raw_serial_as_string(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

fn expiry_warning(cert: &CertSummary) -> Option<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let left = cert.not_after - now;
    (left < EXPIRY_WARNING.as_secs() as i64).then(|| {
        if left <= 0 {
            format!("the TLS certificate `{}` has expired", cert.subject)
        } else {
            format!("the TLS certificate `{}` expires in {} hours", cert.subject, left / 3600)
        }
    })
}

fn warn_if_expiring(cert: &CertSummary) {
    if let Some(warning) = expiry_warning(cert) {
        tracing::warn!("{warning}");
    }
}

/// A client certificate's identity: its first URI SAN (a SPIFFE id), else its first DNS SAN, else
/// its subject CN. None when the SAN extension does not parse, or when the identity would come from
/// a CN that looks like a URI: a CA name-constrained to its own URIs does not constrain CNs, so a CN
/// must never pass for a SPIFFE id.
pub fn identity(der: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let names: Vec<GeneralName<'_>> = match cert.subject_alternative_name() {
        Ok(san) => san.map(|san| san.value.general_names.clone()).unwrap_or_default(),
        Err(_) => return None,
    };
    let uri = names.iter().find_map(|n| if let GeneralName::URI(u) = n { Some(*u) } else { None });
    let dns = names.iter().find_map(|n| if let GeneralName::DNSName(d) = n { Some(*d) } else { None });
    let cn = || {
        let cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok())?;
        (!cn.contains("://")).then_some(cn)
    };
    uri.or(dns).or_else(cn).map(str::to_string)
}

/// What every request on a connection carries: the peer's address and verified identity.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    /// The client certificate's identity, when the handshake verified one.
    pub identity: Option<Arc<str>>,
}

/// One accepted connection, plaintext or TLS.
pub enum Conn {
    Plain(TcpStream, Peer),
    Tls(Box<TlsStream<TcpStream>>, Peer),
}

impl Conn {
    pub fn peer(&self) -> &Peer {
        match self {
            Conn::Plain(_, peer) | Conn::Tls(_, peer) => peer,
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer().clone()
    }
}

macro_rules! delegate {
    ($self:ident, $inner:ident => $call:expr) => {
        match $self.get_mut() {
            Conn::Plain($inner, _) => {
                let $inner = Pin::new($inner);
                $call
            }
            Conn::Tls($inner, _) => {
                let $inner = Pin::new($inner.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s, _) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// Connections accepted on `listener`, with TLS when `tls` is set. Handshakes run on their own
/// tasks, so a slow or hostile client never holds up the next accept; failed ones are counted.
pub struct Incoming {
    connections: mpsc::Receiver<Conn>,
    local: SocketAddr,
}

impl Incoming {
    pub fn new(listener: TcpListener, tls: Option<(Arc<Tls>, Alpn)>) -> io::Result<Incoming> {
        let local = listener.local_addr()?;
        let (tx, connections) = mpsc::channel(64);
        tokio::spawn(accept_loop(listener, tls, tx));
        Ok(Incoming { connections, local })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The stream tonic serves from; it ends when the accept loop does.
    pub fn into_stream(self) -> impl tokio_stream::Stream<Item = Result<Conn, io::Error>> {
        tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(self.connections), Ok)
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.connections.recv().await {
            Some(conn) => {
                let addr = conn.peer().addr.unwrap_or(self.local);
                (conn, addr)
            }
            // The accept loop ended (the runtime is shutting down): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<(Arc<Tls>, Alpn)>, tx: mpsc::Sender<Conn>) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: pause rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Without TCP_NODELAY a multi-segment request waits out the peer's delayed ACK (~40 ms).
        let _ = tcp.set_nodelay(true);
        let Some((tls, alpn)) = &tls else {
            if tx.send(Conn::Plain(tcp, Peer { addr: Some(addr), identity: None })).await.is_err() {
                return;
            }
            continue;
        };
        // A bounded number of handshakes at once: a flood of stalled clients cannot hold every
        // descriptor for the handshake timeout.
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            handshake_failed(addr, "too many handshakes in progress");
            continue;
        };
        let acceptor = tls.acceptor(*alpn);
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let identity = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(identity);
                    let peer = Peer { addr: Some(addr), identity: identity.map(Arc::from) };
                    let _ = tx.send(Conn::Tls(Box::new(stream), peer)).await;
                }
                Ok(Err(e)) => handshake_failed(addr, &e.to_string()),
                Err(_) => handshake_failed(addr, "timed out"),
            }
        });
    }
}

fn handshake_failed(addr: SocketAddr, why: &str) {
    tracing::debug!(%addr, "TLS handshake failed: {why}");
    metrics::counter!("cedar_pdp_tls_handshake_failures_total").increment(1);
}

/// The verified peer of a gRPC request.
pub fn peer_of<T>(request: &tonic::Request<T>) -> Option<&Peer> {
    request.extensions().get::<Peer>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, sans: Vec<rcgen::SanType>) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn identities_come_from_uri_then_dns_then_a_cn_that_is_not_a_uri() {
        let uri = rcgen::SanType::URI("spiffe://example.org/a".try_into().unwrap());
        let dns = rcgen::SanType::DnsName("svc.example.org".try_into().unwrap());
        assert_eq!(identity(&cert("x", vec![dns.clone(), uri])).as_deref(), Some("spiffe://example.org/a"));
        assert_eq!(identity(&cert("x", vec![dns])).as_deref(), Some("svc.example.org"));
        assert_eq!(identity(&cert("billing", vec![])).as_deref(), Some("billing"));
        // A CN never passes for a SPIFFE id: name constraints on URIs do not constrain CNs.
        assert_eq!(identity(&cert("spiffe://example.org/admin", vec![])), None);
    }
}
