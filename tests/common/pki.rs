//! Certificates made for one test: a CA, a server certificate for 127.0.0.1/localhost, client
//! certificates with SPIFFE ids, and a second CA nobody trusts. Written as PEM files in a temporary
//! directory, the way cert-manager or a SPIFFE helper leaves them for the server.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { issuer: Issuer::new(params, key), pem: cert.pem() }
    }

    /// A server certificate for 127.0.0.1 and localhost: (cert PEM, key PEM).
    pub fn server(&self, cn: &str) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(DnType::CommonName, cn);
        self.sign(params)
    }

    /// A server certificate for 127.0.0.1 and localhost that expires in `days` days.
    pub fn server_expiring(&self, cn: &str, days: i64) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(DnType::CommonName, cn);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        self.sign(params)
    }

    /// A server certificate for the DNS name `dns` only.
    pub fn server_named(&self, dns: &str) -> (String, String) {
        let mut params = CertificateParams::new(vec![dns.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, dns);
        self.sign(params)
    }

    /// A client certificate whose identity is `uri` (a SPIFFE id): (cert PEM, key PEM).
    pub fn client(&self, uri: &str) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names.push(SanType::URI(uri.try_into().unwrap()));
        params.distinguished_name.push(DnType::CommonName, "client");
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A CA, the server's files and a trusted client in a temporary directory.
pub struct Pki {
    pub ca: Ca,
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let pki = Pki { ca: Ca::new("cedar-pdp test CA"), dir: tempfile::tempdir().unwrap() };
        let (cert, key) = pki.ca.server("pdp-1");
        std::fs::write(pki.cert(), cert).unwrap();
        std::fs::write(pki.key(), key).unwrap();
        std::fs::write(pki.ca_file(), &pki.ca.pem).unwrap();
        pki
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Writes a client certificate for `uri` and returns (cert file, key file).
    pub fn client_files(&self, name: &str, uri: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.ca.client(uri);
        let (cert_path, key_path) =
            (self.dir.path().join(format!("{name}.crt")), self.dir.path().join(format!("{name}.key")));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        (cert_path, key_path)
    }

    /// A client that trusts this CA, presenting no certificate.
    pub fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca.pem)).domain_name("localhost")
    }

    /// A client that trusts this CA and presents a certificate for `uri` signed by `by`.
    pub fn client_tls_as(&self, by: &Ca, uri: &str) -> ClientTlsConfig {
        let (cert, key) = by.client(uri);
        self.client_tls().identity(Identity::from_pem(cert, key))
    }
}

/// Replaces `path` as Kubernetes and cert-manager do: a new file renamed over the old one.
pub fn replace(path: &Path, contents: &str) {
    super::write_atomic(path, contents);
}
