//! A real Prometheus scrapes the admin `/metrics`, and `promtool check metrics` finds no
//! problem in what rampart exposes.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rampart_integration::*;

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn traffic(rampart: &Rampart) {
    let web = rampart.addr("web");
    for path in ["/v1/models", "/key/x", "/grafana/d"] {
        request(
            web,
            EXTERNAL_PEER,
            "GET",
            path,
            &[("X-Origin-Verify", ORIGIN_SECRET)],
        )
        .await;
        request(web, EXTERNAL_PEER, "GET", path, &[]).await;
    }
    request(
        rampart.addr("victoriametrics"),
        EXTERNAL_PEER,
        "GET",
        "/",
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_finds_no_problem() {
    let up = SeedUpstreams::start(1).await;
    let rampart = Rampart::start(&seed_config(&up, ""), SEED_LISTENERS).await;
    traffic(&rampart).await;
    let metrics = rampart.metrics().await;
    for family in [
        "rampart_requests_total",
        "rampart_request_duration_seconds_bucket",
        "rampart_plugin_verdicts_total",
        "rampart_config_reloads_total",
        "rampart_config_generation",
        "rampart_upstream_healthy_backends",
        "rampart_waf_judged_item_bytes",
        "rampart_waf_judged_item_stepped_over_bytes_total",
    ] {
        assert!(metrics.contains(family), "{family} missing");
    }
    for secret in [ORIGIN_SECRET, ADMIN_SECRET, EXTERNAL_PEER] {
        assert!(!metrics.contains(secret), "metrics expose {secret}");
    }

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool ran");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
}

/// A coding agent sends its conversation again at every turn: the WAFs judge it once and
/// step over it after, every request still reaches the upstream whole, and `/metrics` says
/// how much was not read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_sent_again_is_stepped_over_and_counted() {
    let up = SeedUpstreams::start(1).await;
    let rampart = Rampart::start(&seed_config(&up, ""), SEED_LISTENERS).await;
    let messages: Vec<String> = (0..20)
        .map(|i| {
            let file = format!("fn step_{i}(x: u64) -> u64 {{\n    x * {i} + 1\n}}\n").repeat(12);
            format!(r#"{{"role":"tool","tool_call_id":"call_{i}","content":"{file}"}}"#)
        })
        .collect();
    let body = format!(
        r#"{{"model":"gpt-4o","messages":[{}]}}"#,
        messages.join(",")
    );
    let headers = [
        ("X-Origin-Verify", ORIGIN_SECRET),
        ("Content-Type", "application/json"),
    ];
    let raw = raw_post("/v1/chat/completions", &headers, body.as_bytes());
    for turn in 0..4 {
        let answer = send_raw(rampart.addr("web"), EXTERNAL_PEER, &raw)
            .await
            .expect("answered");
        assert_eq!(answer.status, 200, "turn {turn}");
    }
    let seen: Vec<_> = up.litellm[0]
        .requests()
        .into_iter()
        .filter(|r| r.uri == "/v1/chat/completions")
        .collect();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|r| r.complete && r.body == body.as_bytes()));
    let metrics = rampart.metrics().await;
    let kept = metric_value(&metrics, "rampart_waf_judged_item_bytes").unwrap_or(0.0);
    let stepped =
        metric_value(&metrics, "rampart_waf_judged_item_stepped_over_bytes_total").unwrap_or(0.0);
    // Kept at the second clean sighting, stepped over at the third and fourth.
    assert!(kept as usize >= body.len() * 9 / 10, "kept {kept} bytes");
    assert!(
        stepped as usize >= body.len() * 18 / 10,
        "stepped over {stepped} bytes"
    );
    // An attack appended inside a kept message is read and refused, and never reaches it.
    let attacked = body.replacen(
        r#""call_3","content":""#,
        r#""call_3","name":"' UNION SELECT password FROM users--","content":""#,
        1,
    );
    let raw = raw_post("/v1/chat/completions", &headers, attacked.as_bytes());
    let answer = send_raw_refusable(rampart.addr("web"), EXTERNAL_PEER, &raw)
        .await
        .expect("answered");
    assert_eq!(answer.status, 403);
    let chats = up.litellm[0]
        .requests()
        .into_iter()
        .filter(|r| r.uri == "/v1/chat/completions")
        .count();
    assert_eq!(chats, 4, "the refused request never reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_admin_endpoint() {
    let up = SeedUpstreams::start(1).await;
    let rampart = Rampart::start(&seed_config(&up, ""), SEED_LISTENERS).await;
    traffic(&rampart).await;

    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: rampart\n    static_configs:\n      - targets: ['{}']\n",
            rampart.admin
        ),
    )
    .expect("write prometheus.yml");
    let port = free_port();
    let _prom = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package) must be installed"),
    );
    let prom = std::net::SocketAddr::from(([127, 0, 0, 1], port));

    let query = |q: &'static str| async move {
        let path = format!("/api/v1/query?query={q}");
        match send_raw(
            prom,
            "127.0.0.1",
            format!("GET {path} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        {
            Ok(r) if r.status == 200 => r.json()["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let blocked = loop {
        let up_result = query("up%7Bjob%3D%22rampart%22%7D").await;
        let blocked = query("sum(rampart_plugin_verdicts_total%7Baction%3D%22block%22%7D)").await;
        if up_result.first().and_then(|r| r["value"][1].as_str()) == Some("1")
            && !blocked.is_empty()
        {
            break blocked;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped rampart successfully"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let value: f64 = blocked[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0);
    // 3 without the origin header, /key/x without the admin secret, 1 external peer on :9090.
    assert_eq!(value, 5.0, "blocked requests as Prometheus sees them");
    let generation = query("rampart_config_generation").await;
    assert_eq!(
        generation.first().and_then(|r| r["value"][1].as_str()),
        Some("1")
    );
}
