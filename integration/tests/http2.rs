//! HTTP/2 downstream over TLS (ALPN): the same plugins, answers and access log as HTTP/1.1,
//! and the HTTP/2 attacks (rapid reset, a header flood) refused without reaching the
//! upstream. Clients: httpx for the well-behaved one, the `h2` library for the attackers.

use std::process::Command;

use rampart_integration::identity::venv_bin;
use rampart_integration::*;

async fn h2_client(args: &[String]) -> serde_json::Value {
    let out = tokio::process::Command::new(venv_bin("python"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/h2_client.py"))
        .args(args)
        .output()
        .await
        .expect("h2_client.py runs");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "h2 client said: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn curl_http1(url: &str, resolve: &str, headers: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-k",
        "--http1.1",
        "--resolve",
        resolve,
        "-w",
        "\n%{http_code}",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_judged_and_logged_like_http1_and_its_attacks_are_refused() {
    let certs = tempfile::tempdir().expect("tmp");
    let (cert, key) = dev_cert(certs.path());
    let up = RecordingUpstream::start("app").await;
    let head = "[secrets.origin-verify]\nenv = [\"RAMPART_ORIGIN_VERIFY_SECRET\"]";
    let plugins = "client_limits = { h2_max_pending_resets = 10, max_header_bytes = 16384 }\n\
                   [[listeners.plugins]]\ntype = \"origin_verify\"\naccept = [\"header\"]\nsecret = \"origin-verify\"\n";
    let config = one_listener(up.addr, head, plugins).replace(
        "listen = \"0.0.0.0:80\"",
        &format!("listen = \"0.0.0.0:443\"\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}"),
    );
    let rampart = Rampart::start_with_env(
        &config,
        &["web"],
        &[("RAMPART_ORIGIN_VERIFY_SECRET", ORIGIN_SECRET)],
    )
    .await;
    let port = rampart.ports["web"];
    let url = format!("https://rampart.test:{port}/v1/models");
    let resolve = format!("rampart.test:{port}:127.0.0.1");
    // httpx cannot be told where a name is: it asks for the address itself.
    let h2_url = format!("https://127.0.0.1:{port}/v1/models");
    let secret = format!("X-Origin-Verify={ORIGIN_SECRET}");

    // Served over HTTP/2, the upstream told the scheme and the client as over HTTP/1.1.
    let answers = h2_client(&["get".into(), h2_url.clone(), "3".into(), secret.clone()]).await;
    for a in answers.as_array().expect("a list") {
        assert_eq!(
            (a["status"].as_u64(), a["version"].as_str()),
            (Some(200), Some("HTTP/2")),
            "{a}"
        );
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
    // HTTP/2 has no Host, only `:authority`: the plugins and the HTTP/1.1 upstream get it
    // as Host (the WAF refuses a request without one).
    assert_eq!(
        seen[0].header("host"),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    assert_eq!(seen[0].header("x-forwarded-for"), Some("127.0.0.1"));
    assert!(
        seen[0].header("x-origin-verify").is_none(),
        "the secret is consumed"
    );

    // Refused the same way: the same status and JSON, whichever the version.
    let h2_refused = h2_client(&["get".into(), h2_url.clone(), "1".into()]).await;
    let (h1_status, h1_body) = curl_http1(&url, &resolve, &[]);
    assert_eq!(h2_refused[0]["status"].as_u64(), Some(u64::from(h1_status)));
    assert_eq!(h1_status, 403);
    let rule = |body: &str| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(body).unwrap_or_default()["rule"].clone()
    };
    assert_eq!(
        rule(h2_refused[0]["body"].as_str().unwrap_or("")),
        rule(&h1_body)
    );
    assert_eq!(rule(&h1_body), "origin_verify.missing");
    assert_eq!(up.requests().len(), 3);

    // The access log: an HTTP/2 line has the same fields as an HTTP/1.1 one.
    let (status, _) = curl_http1(
        &url,
        &resolve,
        &[&format!("X-Origin-Verify: {ORIGIN_SECRET}")],
    );
    assert_eq!(status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let lines: Vec<serde_json::Value> = rampart
        .stdout_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(lines.len() >= 6, "{lines:?}");
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        k.sort();
        k
    };
    assert_eq!(
        keys(&lines[0]),
        keys(lines.last().expect("the HTTP/1.1 line"))
    );
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[3]["refused_by"][1], "origin_verify.missing");

    // Rapid reset: streams opened and reset at once are not served; past the budget the
    // connection is told GOAWAY and closed. The upstream sees few of them, if any.
    let before = up.requests().len();
    let attack = h2_client(&[
        "rapid-reset".into(),
        "127.0.0.1".into(),
        port.to_string(),
        "/v1/models".into(),
        "1000".into(),
        secret.clone(),
    ])
    .await;
    assert!(
        attack["goaway"].is_u64() || attack["closed"] == true,
        "{attack}"
    );
    let served = up.requests().len() - before;
    assert!(
        served < 50,
        "{served} reset streams reached the upstream: {attack}"
    );

    // A header block past max_header_bytes (16 KiB here) is refused by the HTTP/2 layer.
    let flood = h2_client(&[
        "header-flood".into(),
        "127.0.0.1".into(),
        port.to_string(),
        "/v1/models".into(),
        "65536".into(),
        secret.clone(),
    ])
    .await;
    assert!(
        flood["status"] == 431 || flood["reset"].is_u64() || flood["closed"] == true,
        "{flood}"
    );
    assert_ne!(flood["status"], 200, "{flood}");
    let after_flood = up.requests().len();

    // The listener still serves.
    let again = h2_client(&["get".into(), h2_url, "1".into(), secret]).await;
    assert_eq!(again[0]["status"], 200);
    assert_eq!(up.requests().len(), after_flood + 1);
    eprintln!("rapid reset: {attack}; header flood: {flood}; reset streams served: {served}");
}
