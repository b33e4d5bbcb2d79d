//! Test harness: the real `rampart` binary, recording upstreams and a raw HTTP client, all
//! on loopback. Different 127.0.0.0/8 source addresses stand for internal and external peers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

pub mod identity;
pub mod providers;
pub mod redis;

/// A peer inside the test's "internal" network (the test config's `internal_cidrs`).
pub const INTERNAL_PEER: &str = "127.0.0.2";
/// A peer outside it: the public internet, as far as rampart can tell.
pub const EXTERNAL_PEER: &str = "127.0.0.3";
/// A peer configured as a trusted proxy (its X-Forwarded-For is believed).
pub const TRUSTED_PROXY_PEER: &str = "127.0.0.5";

pub const ORIGIN_SECRET: &str = "origin-3f9a1c7e5b2d4a6f8e0c1b3d5f7a9c2e";
pub const ADMIN_SECRET: &str = "admin-8b6d4f2a0c9e7b5d3f1a8c6e4b2d0f9a";

/// A request as an upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Whether the body arrived whole, as its framing promised; a request cut off midway
    /// is recorded with what arrived and `false`.
    pub complete: bool,
}

impl Recorded {
    pub fn new(parts: &http::request::Parts, body: Bytes) -> Self {
        Recorded {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
            complete: true,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP upstream on loopback that records every request and answers with its name.
/// `/slow/...` waits 3 s before answering.
#[derive(Clone)]
pub struct RecordingUpstream {
    pub name: String,
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl RecordingUpstream {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let (name_c, seen_c) = (name.to_string(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (name, seen) = (name_c.clone(), seen_c.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (name, seen) = (name.clone(), seen.clone());
                        async move { Ok::<_, Infallible>(answer(&name, &seen, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        RecordingUpstream {
            name: name.to_string(),
            addr,
            seen,
            task: Arc::new(task),
        }
    }

    /// Requests proxied by rampart (which always adds `X-Forwarded-For`; its own health
    /// checks carry none), in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.seen
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|r| r.header("x-forwarded-for").is_some())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Health checks received (requests not proxied by rampart).
    pub fn health_checks(&self) -> usize {
        self.seen
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|r| r.header("x-forwarded-for").is_none())
                    .count()
            })
            .unwrap_or_default()
    }

    pub fn count(&self) -> usize {
        self.requests().len()
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn answer(
    name: &str,
    seen: &Mutex<Vec<Recorded>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes());
    let uri = parts.uri.to_string();
    if let Ok(mut v) = seen.lock() {
        let mut recorded = Recorded::new(&parts, body.as_ref().cloned().unwrap_or_default());
        recorded.complete = body.is_ok();
        v.push(recorded);
    }
    if uri.starts_with("/slow/") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let json = serde_json::json!({ "upstream": name, "uri": uri }).to_string();
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json)))
        .unwrap_or_default()
}

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `upstream` field of a recording upstream's answer.
    pub fn upstream(&self) -> Option<String> {
        self.json()["upstream"].as_str().map(str::to_string)
    }
}

/// Sends `raw` (a whole HTTP/1.1 request, sent as is) from `source`, and reads the answer
/// until the server closes the connection.
pub async fn send_raw(to: SocketAddr, source: &str, raw: &[u8]) -> std::io::Result<RawResponse> {
    let socket = TcpSocket::new_v4()?;
    let src: IpAddr = source.parse().map_err(std::io::Error::other)?;
    socket.bind(SocketAddr::new(src, 0))?;
    let mut stream = socket.connect(to).await?;
    stream.write_all(raw).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("response timed out"))??;
    parse_response(&buf)
}

/// Like [`send_raw`], for a request the server may answer before reading all of it (a body
/// refused midway): a failed write is not an error, and the answer is read regardless.
pub async fn send_raw_refusable(
    to: SocketAddr,
    source: &str,
    raw: &[u8],
) -> std::io::Result<RawResponse> {
    let socket = TcpSocket::new_v4()?;
    let src: IpAddr = source.parse().map_err(std::io::Error::other)?;
    socket.bind(SocketAddr::new(src, 0))?;
    let stream = socket.connect(to).await?;
    let (mut read, mut write) = stream.into_split();
    let raw = raw.to_vec();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&raw).await;
        write
    });
    let mut buf = Vec::new();
    let read_all = async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read_all)
        .await
        .map_err(|_| std::io::Error::other("response timed out"))?;
    writer.abort();
    parse_response(&buf)
}

/// The length of the first HTTP/1.1 message in `buf` (its head and a Content-Length body; no
/// body without one), once all of it has arrived: for test servers and clients that read
/// message after message from one connection.
pub fn whole_message_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let total = end + 4 + length;
    (buf.len() >= total).then_some(total)
}

fn parse_response(buf: &[u8]) -> std::io::Result<RawResponse> {
    let bad = |m: &str| std::io::Error::other(format!("{m}: {:?}", String::from_utf8_lossy(buf)));
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("head not utf-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || data.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[(eol + 4 + size).min(data.len())..];
    }
    out
}

/// A simple request: `headers` are added after Host; the connection closes after it.
pub async fn request(
    to: SocketAddr,
    source: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let mut raw =
        format!("{method} {path} HTTP/1.1\r\nHost: gateway.test\r\nUser-Agent: rampart-tests/1.0\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        raw.push_str("Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    } else {
        raw.push_str("\r\n");
    }
    send_raw(to, source, raw.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{method} {path} from {source}: {e}"))
}

/// A POST of `body` with `headers` (after Host, a langfuse SDK's User-Agent, Connection:
/// close and Content-Length), as raw bytes for [`send_raw`].
pub fn raw_post(path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nUser-Agent: langfuse-python/2.60\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in headers {
        raw.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body);
    raw
}

/// Polls `check` until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A free TCP port on loopback (bound and released), never the same one twice in a test
/// process: the kernel may hand a released port out again, and two tests running side by side
/// would then start servers on one port and talk to each other's.
///
/// Ports come from below the kernel's ephemeral range (32768 and up on Linux), which outgoing
/// connections take their source ports from: a port picked there could be taken by any
/// client's connection before the server that was meant to have it binds it.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Test processes run one after another, but leftovers of one (a slow child) may still
    // hold ports: each process starts at its own place in the range.
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for i in 0..SPAN {
        let port = (FIRST + (start + i) % SPAN) as u16;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port between {FIRST} and {}", FIRST + SPAN);
}

static BUILD: Once = Once::new();

/// Path of the `rampart` binary, built first (once per test process) so tests never run a
/// stale one.
pub fn rampart_binary() -> PathBuf {
    BUILD.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "rampart", "--bin", "rampart"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building rampart failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug").join("rampart")
}

/// A running rampart, killed on drop. Its stdout (access log) and stderr go to files.
pub struct Rampart {
    child: Child,
    pub rules_dir: tempfile::TempDir,
    pub ports: HashMap<String, u16>,
    pub admin: SocketAddr,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// The arguments and environment it was started with, to start its successor.
    command: (
        Vec<std::ffi::OsString>,
        Vec<(std::ffi::OsString, std::ffi::OsString)>,
    ),
}

impl Rampart {
    /// Starts rampart on `gateway_toml` (written into a fresh rules directory), with every
    /// listener in `listeners` moved to a free loopback port.
    pub async fn start(gateway_toml: &str, listeners: &[&str]) -> Rampart {
        Self::start_with_env(gateway_toml, listeners, &[]).await
    }

    pub async fn start_with_env(
        gateway_toml: &str,
        listeners: &[&str],
        env: &[(&str, &str)],
    ) -> Rampart {
        Self::start_opts(gateway_toml, listeners, env, &[]).await
    }

    /// Like [`Rampart::start`], with extra environment and command-line arguments.
    pub async fn start_opts(
        gateway_toml: &str,
        listeners: &[&str],
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Rampart {
        Self::start_full(&[("gateway.toml", gateway_toml)], listeners, env, args).await
    }

    /// Starts rampart on a rules directory holding `files` (`gateway.toml` and, say, the IP
    /// lists it names), with extra environment and command-line arguments.
    pub async fn start_full(
        files: &[(&str, &str)],
        listeners: &[&str],
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Rampart {
        let rules_dir = tempfile::tempdir().expect("rules dir");
        for (name, text) in files {
            let path = rules_dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("rules subdirectory");
            }
            std::fs::write(path, text).expect("write rules");
        }
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = Command::new(rampart_binary());
        cmd.arg("--rules")
            .arg(rules_dir.path())
            .arg("--admin")
            .arg(admin.to_string());
        // Two worker threads per listener, unless the rules set their own (`[server]`).
        if !files.iter().any(|(_, text)| text.contains("[server]")) {
            cmd.args(["--threads", "2"]);
        }
        let mut ports = HashMap::new();
        for name in listeners {
            let port = free_port();
            cmd.arg("--listen").arg(format!("{name}=127.0.0.1:{port}"));
            ports.insert(name.to_string(), port);
        }
        cmd.env("RAMPART_ORIGIN_VERIFY_SECRET", ORIGIN_SECRET)
            .env("RAMPART_ADMIN_HEADER_SECRET", ADMIN_SECRET)
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(args);
        let command = (
            cmd.get_args().map(|a| a.to_os_string()).collect(),
            cmd.get_envs()
                .filter_map(|(k, v)| Some((k.to_os_string(), v?.to_os_string())))
                .collect(),
        );
        let stdout = rules_dir.path().with_extension("stdout");
        let stderr = rules_dir.path().with_extension("stderr");
        cmd.stdout(Stdio::from(
            std::fs::File::create(&stdout).expect("stdout file"),
        ));
        cmd.stderr(Stdio::from(
            std::fs::File::create(&stderr).expect("stderr file"),
        ));
        let child = cmd.spawn().expect("spawn rampart");
        let r = Rampart {
            child,
            rules_dir,
            ports,
            admin,
            stdout,
            stderr,
            command,
        };
        r.wait_live().await;
        r
    }

    async fn wait_live(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = send_raw(
                self.admin,
                "127.0.0.1",
                b"GET /live HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .await
            {
                // `/live` answers from the admin service, which can be up before a
                // listener's service has bound its port: wait for those too.
                if r.status == 200 && self.listeners_accept().await {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("rampart did not come up; stderr:\n{}", self.stderr_text());
    }

    async fn listeners_accept(&self) -> bool {
        for port in self.ports.values() {
            let addr = SocketAddr::from(([127, 0, 0, 1], *port));
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                return false;
            }
        }
        true
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[listener]))
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The access log (stdout). rampart's writer thread empties its buffer every 20 ms, so
    /// this first waits out a few of its rounds: every line of an answered request is there.
    pub fn stdout_text(&self) -> String {
        std::thread::sleep(std::time::Duration::from_millis(80));
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Writes a file of the rules directory (atomically, through a temporary file), text or
    /// bytes (a geolocation database).
    pub fn write_rule_file(&self, name: &str, contents: impl AsRef<[u8]>) {
        let path = self.rules_dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("rules subdirectory");
        }
        let tmp = path.with_extension("tmp~");
        std::fs::write(&tmp, contents).expect("write rule file");
        std::fs::rename(&tmp, &path).expect("rename rule file");
    }

    /// Replaces gateway.toml the way an editor that writes in place does.
    pub fn write_rules(&self, gateway_toml: &str) {
        let mut f =
            std::fs::File::create(self.rules_dir.path().join("gateway.toml")).expect("open rules");
        f.write_all(gateway_toml.as_bytes()).expect("write rules");
    }

    /// Replaces gateway.toml atomically, as editors that save through a temporary file and
    /// configuration tools do.
    pub fn write_rules_atomically(&self, gateway_toml: &str) {
        self.write_rule_file("gateway.toml", gateway_toml);
    }

    pub async fn admin_post(&self, path: &str) -> RawResponse {
        request(self.admin, "127.0.0.1", "POST", path, &[]).await
    }

    pub async fn admin_get(&self, path: &str) -> RawResponse {
        request(self.admin, "127.0.0.1", "GET", path, &[]).await
    }

    pub async fn metrics(&self) -> String {
        String::from_utf8_lossy(&self.admin_get("/metrics").await.body).into_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts a successor with the same arguments and `--upgrade`: it waits for the
    /// listening sockets on the upgrade socket. Its stderr goes to `stderr`.
    pub fn spawn_successor(&self, stderr: &Path) -> Child {
        let (args, envs) = &self.command;
        Command::new(rampart_binary())
            .args(args)
            .arg("--upgrade")
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(
                std::fs::File::create(stderr.with_extension("stdout")).expect("stdout file"),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(stderr).expect("stderr file"),
            ))
            .spawn()
            .expect("spawn successor")
    }

    /// Makes `child` (a successor that took the listeners over) the process this handle
    /// stands for; the one before is returned, to wait for its drain.
    pub fn replace_child(&mut self, child: Child) -> Child {
        std::mem::replace(&mut self.child, child)
    }

    /// Sends a signal (`TERM`, `QUIT`, `HUP`...) to the process.
    pub fn signal(&self, name: &str) {
        signal_pid(self.child.id(), name);
    }

    /// Waits up to `within` for the process to exit; its exit status, if it did.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

/// Sends signal `name` (`TERM`, `QUIT`...) to process `pid`.
pub fn signal_pid(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// An upstream that answers a request for a path holding `/stream` with a chunked stream
/// of `events` server-sent events, one every `every`, then ends it; any other at once. Written by hand on a socket, so that each
/// event leaves when it is due.
pub async fn start_event_stream_upstream(events: usize, every: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    if !text.contains("x-forwarded-for") || !text.contains("/stream") {
                        // rampart's health check, or a plain request: a short answer.
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        continue;
                    }
                    let start = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                    if stream.write_all(start).await.is_err() {
                        return;
                    }
                    for i in 0..events {
                        let event = format!("data: {i}\n\n");
                        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                        if stream.write_all(chunk.as_bytes()).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(every).await;
                    }
                    if stream.write_all(b"0\r\n\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

impl Drop for Rampart {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stdout);
        if std::env::var_os("RAMPART_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_file(&self.stderr);
        }
    }
}

/// The value of a metric sample (exact label set as printed), if present.
pub fn metric_value(metrics: &str, sample: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// One listener, `web`, in front of one upstream at `upstream` (route `/` to `app`), on the
/// test network (internal peer 127.0.0.2, trusted proxy 127.0.0.5). `head` is more top-level
/// TOML (secrets, stores); `plugins` are the listener's `[[listeners.plugins]]`.
pub fn one_listener(upstream: SocketAddr, head: &str, plugins: &str) -> String {
    format!(
        r#"
[network]
internal_cidrs = ["{INTERNAL_PEER}/32"]
trusted_proxies = ["{TRUSTED_PROXY_PEER}/32"]
{head}

[upstreams.app]
addrs = ["{upstream}"]

[[listeners]]
name = "web"
listen = "0.0.0.0:80"
{plugins}

[[listeners.routes]]
prefix = "/"
upstream = "app"
"#
    )
}

/// The four upstreams of the seed's layout.
pub struct SeedUpstreams {
    pub litellm: Vec<RecordingUpstream>,
    pub grafana: RecordingUpstream,
    pub langfuse: RecordingUpstream,
    pub victoriametrics: RecordingUpstream,
}

impl SeedUpstreams {
    pub async fn start(litellm_replicas: usize) -> Self {
        let mut litellm = Vec::new();
        for i in 0..litellm_replicas {
            litellm.push(RecordingUpstream::start(&format!("litellm-{i}")).await);
        }
        SeedUpstreams {
            litellm,
            grafana: RecordingUpstream::start("grafana").await,
            langfuse: RecordingUpstream::start("langfuse").await,
            victoriametrics: RecordingUpstream::start("victoriametrics").await,
        }
    }

    pub fn all(&self) -> Vec<&RecordingUpstream> {
        let mut v: Vec<&RecordingUpstream> = self.litellm.iter().collect();
        v.extend([&self.grafana, &self.langfuse, &self.victoriametrics]);
        v
    }

    pub fn total_requests(&self) -> usize {
        self.all().iter().map(|u| u.count()).sum()
    }
}

pub const SEED_LISTENERS: &[&str] = &["web", "langfuse", "victoriametrics"];

/// The shipped rules' layout (`rules/gateway.toml`), pointed at the test's upstreams, with
/// 127.0.0.2 as the internal network and 127.0.0.5 as a trusted proxy.
pub fn seed_config(up: &SeedUpstreams, extra_upstream_settings: &str) -> String {
    let addrs = |us: &[&RecordingUpstream]| {
        us.iter()
            .map(|u| format!("\"{}\"", u.addr))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let litellm: Vec<&RecordingUpstream> = up.litellm.iter().collect();
    format!(
        r#"
[network]
internal_cidrs = ["{INTERNAL_PEER}/32"]
trusted_proxies = ["{TRUSTED_PROXY_PEER}/32"]

[secrets.origin-verify]
env = ["RAMPART_ORIGIN_VERIFY_SECRET", "RAMPART_ORIGIN_VERIFY_SECRET_PREVIOUS"]

[secrets.admin-header]
env = ["RAMPART_ADMIN_HEADER_SECRET"]

[upstreams.litellm]
addrs = [{litellm}]
health_check = {{ path = "/health/liveliness", interval_ms = 200 }}
{extra_upstream_settings}

[upstreams.grafana]
addrs = [{grafana}]

[upstreams.langfuse]
addrs = [{langfuse}]

[upstreams.victoriametrics]
addrs = [{vm}]

[[listeners]]
name = "web"
listen = "0.0.0.0:80"

[[listeners.plugins]]
type = "origin_verify"
accept = ["header", "internal"]
secret = "origin-verify"

[[listeners.plugins]]
type = "bad_inputs"
rules = ["{rules}/waf/bad-inputs"]
routes = {{ litellm = "llm" }}

[[listeners.plugins]]
type = "owasp"
rules = ["{rules}/waf/owasp"]
routes = {{ litellm = "llm" }}

[[listeners.plugins]]
type = "admin_secret"
secret = "admin-header"

[[listeners.routes]]
prefix = "/grafana/"
upstream = "grafana"

[[listeners.routes]]
prefix = "/"
upstream = "litellm"

[[listeners]]
name = "langfuse"
listen = "0.0.0.0:8080"

[[listeners.plugins]]
type = "origin_verify"
accept = ["header", "internal"]
secret = "origin-verify"

[[listeners.routes]]
prefix = "/"
upstream = "langfuse"

[[listeners]]
name = "victoriametrics"
listen = "0.0.0.0:9090"

[[listeners.plugins]]
type = "origin_verify"
accept = ["internal"]

[[listeners.routes]]
prefix = "/"
upstream = "victoriametrics"
"#,
        rules = concat!(env!("CARGO_MANIFEST_DIR"), "/../rules"),
        grafana = addrs(&[&up.grafana]),
        langfuse = addrs(&[&up.langfuse]),
        vm = addrs(&[&up.victoriametrics]),
        litellm = addrs(&litellm),
    )
}

/// The shipped rules directory (`rules/`), every file, with `gateway.toml` pointed at the
/// test's network (internal peer 127.0.0.2 in place of the VPC) and at `upstreams` (name,
/// address). Panics if the shipped file no longer has what is rewritten, so that a change to
/// it cannot silently leave a test on other rules.
pub fn shipped_rules(upstreams: &[(&str, SocketAddr)]) -> Vec<(String, String)> {
    shipped_rules_in(&format!("{INTERNAL_PEER}/32"), upstreams)
}

/// [`shipped_rules`] with `vpc` (a network) in place of the shipped VPC.
pub fn shipped_rules_in(vpc: &str, upstreams: &[(&str, SocketAddr)]) -> Vec<(String, String)> {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules"));
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read rules dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = path
                .strip_prefix(&root)
                .expect("under rules")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path).expect("read rule file");
            files.push((name, text));
        }
    }
    let gateway = files
        .iter_mut()
        .find(|(name, _)| name == "gateway.toml")
        .expect("rules/gateway.toml");
    assert!(gateway.1.contains("10.20.0.0/16"), "the shipped VPC moved");
    let mut text = gateway.1.replace("10.20.0.0/16", vpc);
    for (name, addr) in upstreams {
        let header = format!("[upstreams.{name}]\n");
        let at = text
            .find(&header)
            .unwrap_or_else(|| panic!("no [upstreams.{name}] in the shipped rules"));
        let addrs_at = at
            + text[at..]
                .find("\naddrs = ")
                .unwrap_or_else(|| panic!("[upstreams.{name}] has no addrs"))
            + 1;
        let end = addrs_at + text[addrs_at..].find('\n').unwrap_or(text.len() - addrs_at);
        text.replace_range(addrs_at..end, &format!("addrs = [\"{addr}\"]"));
    }
    gateway.1 = text;
    files
}

/// A throwaway certificate and key for `rampart.test` (certs/make-dev-cert.sh) in `dir`: their
/// paths.
pub fn dev_cert(dir: &std::path::Path) -> (String, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../certs/make-dev-cert.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(dir)
        .status()
        .expect("run cert script");
    assert!(status.success(), "certs/make-dev-cert.sh failed");
    (
        dir.join("cert.pem").display().to_string(),
        dir.join("key.pem").display().to_string(),
    )
}
