//! WebSocket through the web listener, as Grafana's live dashboards use it: a real upstream
//! and client (the Python `websockets` library), the plugin chain on the upgrade request,
//! frames both ways for a minute, an upstream that speaks first, and the client limits.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rampart_integration::identity::venv_bin;
use rampart_integration::*;

struct WsUpstream {
    child: Child,
    addr: std::net::SocketAddr,
    handshakes: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl WsUpstream {
    fn start() -> Self {
        let port = free_port();
        let mut child = Command::new(venv_bin("python"))
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/ws_upstream.py"
            ))
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("ws_upstream.py in the test virtualenv");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"));
        let handshakes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = handshakes.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let (Ok(v), Ok(mut seen)) = (serde_json::from_str(&line), seen.lock()) {
                    seen.push(v);
                }
            }
        });
        WsUpstream {
            child,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            handshakes,
        }
    }

    fn handshakes(&self) -> Vec<serde_json::Value> {
        self.handshakes
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the client for `seconds` through `url` and returns its report.
async fn client(url: String, seconds: u64, headers: &[&str]) -> serde_json::Value {
    let mut cmd = tokio::process::Command::new(venv_bin("python"));
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ws_client.py"))
        .arg(url)
        .arg(seconds.to_string())
        .args(headers);
    let out = tokio::time::timeout(Duration::from_secs(seconds + 60), cmd.output())
        .await
        .expect("client finished")
        .expect("ws_client.py runs");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "client said: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn rules(upstream: std::net::SocketAddr, limits: &str) -> String {
    let head = "[secrets.origin-verify]\nenv = [\"RAMPART_ORIGIN_VERIFY_SECRET\"]";
    let plugins = format!(
        "{limits}\n[[listeners.plugins]]\ntype = \"origin_verify\"\naccept = [\"header\"]\nsecret = \"origin-verify\"\n"
    );
    one_listener(upstream, head, &plugins)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_flow_both_ways_for_a_minute_after_a_judged_upgrade() {
    let up = WsUpstream::start();
    let rampart = Rampart::start_with_env(
        &rules(up.addr, ""),
        &["web"],
        &[("RAMPART_ORIGIN_VERIFY_SECRET", ORIGIN_SECRET)],
    )
    .await;
    let url = format!("ws://{}/api/live/ws", rampart.addr("web"));
    let secret = format!("X-Origin-Verify={ORIGIN_SECRET}");

    // The chain judges the upgrade request: without the shared secret it is refused, and the
    // upstream never sees a handshake.
    let refused = client(url.clone(), 1, &[]).await;
    assert_eq!(refused["outcome"], "refused 403", "{refused}");
    assert!(up.handshakes().is_empty());

    // With it: the upstream's greeting (sent before the client says anything) arrives, and a
    // minute of messages each way.
    let report = client(url, 60, &[&secret]).await;
    assert_eq!(report["outcome"], "ok", "{report}");
    assert_eq!(report["greeting"], "hello");
    assert_eq!(report["echoes"], 60);
    assert!(
        report["ticks"].as_u64().is_some_and(|t| t >= 55),
        "{report}"
    );
    let handshakes = up.handshakes();
    assert_eq!(handshakes.len(), 1, "{handshakes:?}");
    let headers = &handshakes[0]["headers"];
    assert_eq!(handshakes[0]["path"], "/api/live/ws");
    // The secret was consumed; the upstream learns who connected, as on any request.
    assert!(headers.get("x-origin-verify").is_none(), "{headers}");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["upgrade"], "websocket");
    // The access log has the upgrade as one request, answered 101.
    let log = rampart.stdout_text();
    assert!(
        log.lines()
            .any(|l| l.contains("\"path\":\"/api/live/ws\"") && l.contains("\"status\":101")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_outlives_the_body_deadline_and_closes_when_nothing_flows() {
    let up = WsUpstream::start();
    // A body deadline of 2 s (a request body must have arrived by then) and an idle timeout
    // of 3 s: a WebSocket is not a body, and it lives as long as frames flow.
    let limits =
        "client_limits = { body_timeout_ms = 2000, min_body_rate = 1000000, idle_timeout_ms = 3000 }";
    let rampart = Rampart::start_with_env(
        &rules(up.addr, limits),
        &["web"],
        &[("RAMPART_ORIGIN_VERIFY_SECRET", ORIGIN_SECRET)],
    )
    .await;
    let url = format!("ws://{}/api/live/ws", rampart.addr("web"));
    let secret = format!("X-Origin-Verify={ORIGIN_SECRET}");
    let report = client(url.clone(), 8, &[&secret]).await;
    assert_eq!(report["outcome"], "ok", "{report}");
    assert_eq!(report["echoes"], 8);
    // A tunnel where nothing flows either way for the idle timeout is closed...
    let quiet = client(format!("{url}/quiet"), 0, &[&secret]).await;
    assert_eq!(quiet["outcome"], "closed", "{quiet}");
    let after = quiet["closed_after_s"].as_f64().unwrap_or(0.0);
    assert!((2.5..=6.0).contains(&after), "{quiet}");
    // ...and one where the upstream keeps talking to a silent client is not (Grafana's live
    // updates, say): the client is still reading.
    let listening = client(url, 0, &[&secret]).await;
    assert_eq!(listening["outcome"], "ok", "{listening}");
    assert!(
        listening["ticks"].as_u64().is_some_and(|t| t >= 15),
        "{listening}"
    );
    let metrics = rampart.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"rampart_client_closes_total{listener="web",reason="idle_timeout"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
}
