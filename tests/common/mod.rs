//! Integration harness: the real server on `127.0.0.1:0`, a real client, fixtures, polling.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use cedar_pdp::config::ServeConfig;
use cedar_pdp::error::ServeError;
use cedar_pdp::grpc::{AdminServiceClient, AuthorizationServiceClient, EntityServiceClient, pb};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig};

pub mod pki;
pub mod process;
pub mod proxy;
pub mod redis;

pub struct TestServer {
    pub addr: SocketAddr,
    pub client: AuthorizationServiceClient<Channel>,
    /// Holds the embedded entity store's data directory.
    pub scratch: tempfile::TempDir,
    /// How the harness's own clients reach the server, when it serves TLS.
    pub tls: Option<ClientTlsConfig>,
    data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    pub async fn start(policies: &Path) -> Self {
        Self::start_with(policies, |_| {}).await
    }

    /// Starts with a configuration adjusted by `adjust`; panics if the server fails to start.
    pub async fn start_with(policies: &Path, adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::try_start_with(policies, adjust).await.unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    pub async fn try_start_with(policies: &Path, adjust: impl FnOnce(&mut ServeConfig)) -> Result<Self, ServeError> {
        Self::try_start_as(policies, None, adjust).await
    }

    /// Starts a TLS server; the harness's clients use `tls`.
    pub async fn start_tls(policies: &Path, tls: ClientTlsConfig, adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::try_start_as(policies, Some(tls), adjust).await.unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    async fn try_start_as(
        policies: &Path,
        tls: Option<ClientTlsConfig>,
        adjust: impl FnOnce(&mut ServeConfig),
    ) -> Result<Self, ServeError> {
        // Bound before the server starts: the address is known and connectable at once.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = ServeConfig::new(addr, policies.to_path_buf()).expect("default configuration");
        config.decision_log = false;
        config.reload_debounce = Duration::from_millis(50);
        config.shutdown_grace = Duration::from_secs(5);
        let scratch = tempfile::tempdir().unwrap();
        config.entities.audit_file = scratch.path().join("audit.jsonl");
        config.entities.data_dir = scratch.path().join("data");
        // Tests run many servers at once: no HTTP listener on the default port unless a test asks.
        config.http_listen = cedar_pdp::config::Listen(None);
        adjust(&mut config);
        let data_dir = config.entities.data_dir.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(cedar_pdp::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        match connect_client(addr, tls.clone(), &task).await {
            Some(client) => Ok(TestServer { addr, client, scratch, tls, data_dir, stop: Some(stop), task: Some(task) }),
            None => Err(task.await.unwrap().expect_err("server ended without error before serving")),
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        let endpoint = Channel::from_shared(self.url()).unwrap();
        let endpoint = match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone()).unwrap(),
            None => endpoint,
        };
        endpoint.connect().await.unwrap()
    }

    /// The token the server generated for local use when no credential is configured, if it did.
    pub fn local_token(&self) -> Option<String> {
        let path = self.data_dir.join(cedar_pdp::grpc::LocalToken::FILE);
        std::fs::read_to_string(path).ok().map(|t| t.trim().to_string())
    }

    /// An AdminService client presenting the generated local token, if there is one.
    pub async fn admin(&self) -> AdminServiceClient<InterceptedService<Channel, Bearer>> {
        AdminServiceClient::with_interceptor(self.channel().await, Bearer(self.local_token()))
    }

    /// An EntityService client presenting `token`, else the generated local token if there is one.
    pub async fn entities(&self, token: Option<&str>) -> EntityServiceClient<InterceptedService<Channel, Bearer>> {
        let token = token.map(str::to_string).or_else(|| self.local_token());
        EntityServiceClient::with_interceptor(self.channel().await, Bearer(token))
    }

    /// An EntityService client presenting nothing at all.
    pub async fn entities_anonymous(&self) -> EntityServiceClient<Channel> {
        EntityServiceClient::new(self.channel().await)
    }

    pub async fn status(&self) -> pb::GetStatusResponse {
        self.admin().await.get_status(pb::GetStatusRequest {}).await.unwrap().into_inner()
    }

    /// Signals shutdown and waits for the server to end.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        self.begin_stop();
        self.wait().await
    }

    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub async fn wait(&mut self) -> Result<(), ServeError> {
        match self.task.take() {
            Some(task) => task.await.unwrap(),
            None => Ok(()),
        }
    }

    pub async fn check(&self, req: pb::CheckRequest) -> Result<pb::CheckResponse, tonic::Status> {
        self.client.clone().check(req).await.map(tonic::Response::into_inner)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.begin_stop();
    }
}

async fn connect_client(
    addr: SocketAddr,
    tls: Option<ClientTlsConfig>,
    task: &JoinHandle<Result<(), ServeError>>,
) -> Option<AuthorizationServiceClient<Channel>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if task.is_finished() {
            return None;
        }
        // Health answers SERVING only after the policy set loaded.
        let endpoint = match &tls {
            Some(tls) => Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls.clone()).unwrap(),
            None => Channel::from_shared(format!("http://{addr}")).unwrap(),
        };
        if let Ok(channel) = endpoint.connect().await {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            let req = tonic_health::pb::HealthCheckRequest { service: String::new() };
            if let Ok(resp) = health.check(req).await
                && resp.into_inner().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                return Some(AuthorizationServiceClient::new(channel));
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("server at {addr} did not become SERVING within the deadline")
}

/// Polls `probe` until it returns true, failing the test after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if probe().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The example application in `policies/`.
pub fn example_policies() -> PathBuf {
    repo_path("policies")
}

pub fn fixture(name: &str) -> PathBuf {
    repo_path(&format!("tests/fixtures/{name}"))
}

/// A private copy of a directory, for tests that edit policies.
pub fn copy_dir(from: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_into(from, dir.path());
    dir
}

fn copy_into(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir(&target).unwrap();
            copy_into(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Writes a file the way editors and deploy tools do: a temporary file renamed over the target.
pub fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `User::"alice"` → proto uid.
pub fn uid(text: &str) -> pb::EntityUid {
    let uid = cedar_policy::EntityUid::from_str(text).unwrap();
    pb::EntityUid { r#type: uid.type_name().to_string(), id: uid.id().unescaped().to_string() }
}

pub fn req(principal: &str, action: &str, resource: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        principal: Some(uid(principal)),
        action: Some(uid(action)),
        resource: Some(uid(resource)),
        ..Default::default()
    }
}

pub fn req_ctx(principal: &str, action: &str, resource: &str, context: &str) -> pb::CheckRequest {
    pb::CheckRequest { context_json: context.into(), ..req(principal, action, resource) }
}

pub fn is_allow(resp: &pb::CheckResponse) -> bool {
    resp.decision() == pb::Decision::Allow
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        // A token set on the request itself wins: tests present wrong ones on purpose.
        if let Some(token) = &self.0
            && !request.metadata().contains_key("authorization")
        {
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        Ok(request)
    }
}

/// A provisioned entity: uid and parents in Cedar syntax (`User::"alice"`), attributes as Cedar JSON.
pub fn entity(text: &str, attrs: serde_json::Value, parents: &[&str]) -> pb::Entity {
    pb::Entity {
        uid: Some(uid(text)),
        attrs_json: attrs.to_string(),
        parents: parents.iter().map(|p| uid(p)).collect(),
        tags_json: String::new(),
    }
}
