//! Peers for identity tests: a JWKS endpoint the test controls, and moto standing in for
//! AWS Secrets Manager and Cognito.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::{free_port, send_raw, RawResponse};

/// A JWKS endpoint on loopback: serves what the test sets (status and body) and counts
/// the fetches.
#[derive(Clone)]
pub struct JwksServer {
    pub addr: SocketAddr,
    served: Arc<Mutex<(u16, String)>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    pub async fn start(body: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind JWKS");
        let addr = listener.local_addr().expect("addr");
        let served = Arc::new(Mutex::new((200, body.to_string())));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (s, f) = (served.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, f) = (s.clone(), f.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<Incoming>| {
                        f.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = s.lock().map(|g| g.clone()).unwrap_or_default();
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap_or_default(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JwksServer {
            addr,
            served,
            fetches,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    pub fn serve(&self, status: u16, body: &str) {
        if let Ok(mut g) = self.served.lock() {
            *g = (status, body.to_string());
        }
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A program of the test virtualenv (`.venv` at the workspace root, or `RAMPART_VENV`),
/// which `make test` fills from PyPI.
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("RAMPART_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(".venv")
        });
    let bin = venv.join("bin").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `make test` (scripts/deps.sh test fills the virtualenv)",
        bin.display()
    );
    bin
}

/// A server program of the test virtualenv on a free loopback port, stopped when dropped.
struct VenvServer {
    child: Child,
    addr: SocketAddr,
}

impl VenvServer {
    /// Starts `program` with the arguments `args` gives for the port, and waits until a GET
    /// of `probe` gets an answer that `ready` accepts.
    async fn start(
        program: &str,
        args: impl FnOnce(&str) -> Vec<String>,
        probe: &str,
        ready: fn(u16) -> bool,
    ) -> VenvServer {
        Self::start_env(program, args, &[], probe, ready, free_port()).await
    }

    /// Like [`VenvServer::start`], with extra environment, on `port`.
    async fn start_env(
        program: &str,
        args: impl FnOnce(&str) -> Vec<String>,
        env: &[(&str, &str)],
        probe: &str,
        ready: fn(u16) -> bool,
        port: u16,
    ) -> VenvServer {
        let log = std::env::temp_dir().join(format!("rampart-test-{program}-{port}.log"));
        let log = std::fs::File::create(&log).map_or_else(|_| Stdio::null(), Stdio::from);
        let child = Command::new(venv_bin(program))
            .args(args(&port.to_string()))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let mut server = VenvServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let raw = format!("GET {probe} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        // Python servers import a lot before they listen: on a busy machine that has taken
        // over 20 s. A server that exited is reported at once.
        for _ in 0..1200 {
            if let Ok(r) = send_raw(server.addr, "127.0.0.1", raw.as_bytes()).await {
                if ready(r.status) {
                    return server;
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("{program} exited before it came up on port {port}: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{program} did not come up on port {port} within 120 s");
    }
}

impl Drop for VenvServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `integration/scripts/bedrock_fake.py` on a free port: Bedrock's runtime, checking each
/// request's SigV4 signature with botocore, and the ECS credentials endpoint (`/creds`).
pub struct BedrockFake {
    _server: VenvServer,
    pub addr: SocketAddr,
}

impl BedrockFake {
    pub async fn start(region: &str) -> BedrockFake {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bedrock_fake.py");
        let script = script.to_string_lossy().into_owned();
        let region = region.to_string();
        let server = VenvServer::start(
            "python",
            move |port| vec![script, port.to_string(), region],
            "/_journal",
            |status| status == 200,
        )
        .await;
        BedrockFake {
            addr: server.addr,
            _server: server,
        }
    }

    /// What the fake received, oldest first.
    pub async fn journal(&self) -> Vec<Value> {
        let raw = "GET /_journal HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n";
        let r = send_raw(self.addr, "127.0.0.1", raw.as_bytes())
            .await
            .expect("journal");
        serde_json::from_slice(&r.body).unwrap_or_default()
    }
}

/// `moto_server` on a free port: AWS Secrets Manager and Cognito for the tests.
pub struct Moto {
    _server: VenvServer,
    pub addr: SocketAddr,
}

pub const MOTO_REGION: &str = "us-east-1";

/// Credentials for the AWS SDK inside rampart talking to moto (which checks none), and no
/// instance metadata lookups.
pub const AWS_TEST_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

impl Moto {
    pub async fn start() -> Moto {
        let server = VenvServer::start(
            "moto_server",
            |port| ["-H", "127.0.0.1", "-p", port].map(String::from).to_vec(),
            "/moto-api/",
            |_| true,
        )
        .await;
        Moto {
            addr: server.addr,
            _server: server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One AWS JSON-protocol call (`target` such as `secretsmanager.CreateSecret`), as an SDK
    /// would send it; moto does not check signatures.
    pub async fn call(&self, service: &str, target: &str, body: &Value) -> Value {
        let body = body.to_string();
        let raw = format!(
            "POST / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/x-amz-json-1.1\r\nX-Amz-Target: {target}\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/{MOTO_REGION}/{service}/aws4_request, SignedHeaders=host, Signature=0\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len(),
            addr = self.addr,
        );
        let resp: RawResponse = send_raw(self.addr, "127.0.0.1", raw.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        assert_eq!(
            resp.status,
            200,
            "{target}: {}",
            String::from_utf8_lossy(&resp.body)
        );
        resp.json()
    }

    pub async fn secrets(&self, op: &str, body: Value) -> Value {
        self.call("secretsmanager", &format!("secretsmanager.{op}"), &body)
            .await
    }

    pub async fn cognito(&self, op: &str, body: Value) -> Value {
        self.call(
            "cognito-idp",
            &format!("AWSCognitoIdentityProviderService.{op}"),
            &body,
        )
        .await
    }
}

/// `llmock serve` on a free port: an OpenAI-compatible server.
pub struct Llmock {
    _server: VenvServer,
    pub addr: SocketAddr,
}

impl Llmock {
    pub async fn start() -> Llmock {
        Self::start_with(&[]).await
    }

    /// With more `llmock serve` options (`--stream-chunk-delay-ms 10`).
    pub async fn start_with(options: &[&str]) -> Llmock {
        let server = VenvServer::start(
            "llmock",
            |port| {
                let mut args: Vec<String> = ["serve", "-h", "127.0.0.1", "-p", port]
                    .map(String::from)
                    .to_vec();
                args.extend(["--log-level", "warning"].map(String::from));
                args.extend(options.iter().map(|o| o.to_string()));
                args
            },
            "/v1/models",
            |status| status == 200,
        )
        .await;
        Llmock {
            addr: server.addr,
            _server: server,
        }
    }
}

/// LiteLLM's proxy (`litellm[proxy]` from PyPI, pinned in scripts/venv.sh) on loopback
/// `port`, with `config` (its YAML) and `env` (its Langfuse callback's settings, say).
pub struct Litellm {
    _server: VenvServer,
    pub addr: SocketAddr,
    _config: tempfile::NamedTempFile,
}

impl Litellm {
    pub async fn start(port: u16, config: &str, env: &[(&str, &str)]) -> Litellm {
        let file = tempfile::Builder::new()
            .suffix(".yaml")
            .tempfile()
            .expect("config file");
        std::fs::write(file.path(), config).expect("write config");
        let path = file.path().to_string_lossy().into_owned();
        let server = VenvServer::start_env(
            "litellm",
            |port| {
                [
                    "--config",
                    &path,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    port,
                    "--num_workers",
                    "1",
                ]
                .map(String::from)
                .to_vec()
            },
            env,
            "/health/liveliness",
            |status| status == 200,
            port,
        )
        .await;
        Litellm {
            addr: server.addr,
            _server: server,
            _config: file,
        }
    }
}

/// Runs `integration/scripts/openai_client.py` (the official `openai` client) against
/// `base_url`, and returns the JSON line it prints.
pub fn openai_client(base_url: &str, api_key: &str, origin: &str, stream: bool) -> Value {
    openai_client_for("gpt-4o-mini", base_url, api_key, origin, stream)
}

/// [`openai_client`] asking for `model`.
pub fn openai_client_for(
    model: &str,
    base_url: &str,
    api_key: &str,
    origin: &str,
    stream: bool,
) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/openai_client.py");
    let mut cmd = Command::new(venv_bin("python"));
    cmd.env("OPENAI_MODEL", model);
    cmd.arg(script).args([base_url, api_key, origin]);
    if stream {
        cmd.arg("stream");
    }
    let out = cmd.output().expect("run the openai client");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "openai client printed {text:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
