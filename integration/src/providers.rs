//! A fake LLM provider on loopback (plain or TLS) that records what it receives: the
//! stand-in for Azure, and the witness of the headers and bodies rampart sends to every
//! kind of provider. llmock stands in for the real providers' behaviour elsewhere.
//!
//! Answers: a chat completion (JSON, or SSE when the body says `"stream": true`) with usage
//! 10 prompt + 15 completion tokens; the model `endless` streams a chunk every 100 ms for
//! 30 s and notes when the client hung up; a model `count-N` streams N one-token chunks,
//! one every 3 ms, and reports 10 prompt + N completion tokens.

use std::convert::Infallible;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::Recorded;

#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<Recorded>>>,
    hang_ups: Arc<Mutex<Vec<Instant>>>,
}

pub struct FakeProvider {
    pub addr: std::net::SocketAddr,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProvider {
    pub async fn start() -> FakeProvider {
        Self::serve(None).await
    }

    /// Over TLS with the certificate and key at these paths.
    pub async fn start_tls(cert: &Path, key: &Path) -> FakeProvider {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(cert)
            .expect("cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("certs");
        let key = PrivateKeyDer::from_pem_file(key).expect("a key");
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        Self::serve(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> FakeProvider {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Seen::default();
        let seen_c = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, tls) = (seen_c.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(answer(&seen, req).await) }
                    });
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        FakeProvider { addr, seen, task }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen
            .requests
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// When clients of `endless` streams hung up.
    pub fn hang_ups(&self) -> Vec<Instant> {
        self.seen
            .hang_ups
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// A body fed chunk by chunk from a channel.
struct Channel(mpsc::Receiver<Bytes>);

impl http_body::Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
    }
}

const USAGE: &str = r#"{"prompt_tokens":10,"completion_tokens":15,"total_tokens":25}"#;

fn event(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

fn delta(model: &str, content: &str) -> Value {
    json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
           "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
}

async fn answer(seen: &Seen, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if let Ok(mut v) = seen.requests.lock() {
        v.push(Recorded::new(&parts, body.clone()));
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = request["model"].as_str().unwrap_or("native").to_string();
    let stream = request["stream"] == json!(true) || parts.uri.path().contains("stream");
    let respond = |ctype: &str, body: Body| {
        Response::builder()
            .header("content-type", ctype)
            .header("x-fake-uri", parts.uri.to_string())
            .body(body)
            .unwrap_or_default()
    };
    if !stream {
        let answer = json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "finish_reason": "stop"}],
            "usage": serde_json::from_str::<Value>(USAGE).unwrap_or(Value::Null),
        });
        return respond(
            "application/json",
            Full::new(Bytes::from(answer.to_string())).boxed(),
        );
    }
    let (tx, rx) = mpsc::channel(1);
    let wants_usage = request["stream_options"]["include_usage"] == json!(true);
    let hang_ups = seen.hang_ups.clone();
    tokio::spawn(async move {
        if model == "endless" {
            let end = Instant::now() + Duration::from_secs(30);
            while Instant::now() < end {
                if tx.send(event(&delta(&model, "tick "))).await.is_err() {
                    if let Ok(mut h) = hang_ups.lock() {
                        h.push(Instant::now());
                    }
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return;
        }
        if let Some(n) = model
            .strip_prefix("count-")
            .and_then(|n| n.parse::<u64>().ok())
        {
            for _ in 0..n {
                if tx.send(event(&delta(&model, "tok "))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            if wants_usage {
                let usage =
                    json!({"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n});
                let last = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
                    "choices": [], "usage": usage});
                let _ = tx.send(event(&last)).await;
            }
            let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
            return;
        }
        for part in ["Hel", "lo", " there"] {
            if tx.send(event(&delta(&model, part))).await.is_err() {
                return;
            }
        }
        if wants_usage {
            let last = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
                "choices": [], "usage": serde_json::from_str::<Value>(USAGE).unwrap_or(Value::Null)});
            let _ = tx.send(event(&last)).await;
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    respond("text/event-stream", Channel(rx).boxed())
}

/// A CA and a `localhost` certificate it signed, made with openssl in `dir`:
/// (ca.pem, leaf cert, leaf key).
pub fn test_ca(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-days",
            "2",
            "-subj",
            "/CN=rampart test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-subj",
            "/CN=localhost",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext file");
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    )
}
