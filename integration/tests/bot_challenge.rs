//! Bot control's challenge: a real headless browser (Debian's chromium) solves it and gets
//! through; curl, forged, expired and borrowed passes do not.

use std::process::Command;
use std::time::{Duration, Instant};

use rampart_integration::*;
use rampart_plugins::challenge::leading_zero_bits;

const KEY: &str = "challenge-key-5d1e9a7c3b8f2e6a4c0d9b7f";

fn rules(upstream: std::net::SocketAddr, pass_ttl_s: u64) -> String {
    let head = r#"
[secrets.challenge-key]
env = ["RAMPART_CHALLENGE_KEY"]
"#;
    let plugins = format!(
        r#"
[[listeners.plugins]]
type = "bot_control"
catalogue = []
overrides = {{ SignalAutomatedBrowser = "challenge", SignalNonBrowserUserAgent = "challenge" }}

[listeners.plugins.challenge]
secret = "challenge-key"
difficulty_bits = 12
pass_ttl_s = {pass_ttl_s}
"#
    );
    one_listener(upstream, head, &plugins)
}

async fn start(up: &RecordingUpstream, pass_ttl_s: u64) -> Rampart {
    Rampart::start_full(
        &[("gateway.toml", &rules(up.addr, pass_ttl_s))],
        &["web"],
        &[("RAMPART_CHALLENGE_KEY", KEY)],
        &[],
    )
    .await
}

fn get(path: &str, ua: &str, accept: &str, cookie: Option<&str>) -> Vec<u8> {
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    format!(
        "GET {path} HTTP/1.1\r\nHost: gateway.test\r\nUser-Agent: {ua}\r\nAccept: {accept}\r\n{cookie}Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// The challenge a page carries, and a counter that solves it (what the page's script does).
fn solve(page: &[u8]) -> (String, String) {
    let page = String::from_utf8_lossy(page);
    let challenge = page
        .split("var challenge = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a challenge in the page")
        .to_string();
    let difficulty: u32 = page
        .split("difficulty = ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|d| d.trim().parse().ok())
        .expect("a difficulty in the page");
    let n = (0u64..)
        .map(|n| n.to_string())
        .find(|n| leading_zero_bits(&challenge, n) >= difficulty)
        .expect("a solution");
    (challenge, n)
}

fn set_cookies(r: &RawResponse) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn verdicts(metrics: &str, rule: &str) -> f64 {
    metric_value(
        metrics,
        &format!(
            r#"rampart_plugin_verdicts_total{{action="block",listener="web",plugin="bot_control",rule="{rule}"}}"#
        ),
    )
    .unwrap_or(0.0)
}

/// One headless chromium visit (a fresh profile): its output (the final page's DOM) and how
/// long it took from start to exit.
fn chromium(url: &str) -> (std::process::Output, Duration) {
    let profile = tempfile::tempdir().expect("profile dir");
    let started = Instant::now();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--virtual-time-budget=30000",
            "--timeout=60000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("chromium runs (Debian package chromium)");
    (out, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_browser_solves_the_challenge_and_its_next_request_passes() {
    let up = RecordingUpstream::start("app").await;
    let rampart = start(&up, 300).await;
    let url = format!("http://{}/dashboards/home?orgId=1", rampart.addr("web"));
    // chromium's own user agent says HeadlessChrome: SignalAutomatedBrowser, challenged.
    let (out, took) = chromium(&url);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains(r#""upstream":"app""#),
        "the browser did not reach the upstream:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The upstream saw the page once: after the challenge, with the pass, at the address
    // first asked for; then the browser's own next request (its favicon), which passed on
    // the same pass. The challenge page and the answer never reached it.
    let seen = up.requests();
    let pages: Vec<_> = seen.iter().filter(|r| r.uri != "/favicon.ico").collect();
    assert_eq!(pages.len(), 1, "{seen:?}");
    assert_eq!(pages[0].uri, "/dashboards/home?orgId=1");
    assert!(
        seen.iter().all(|r| r
            .header("cookie")
            .is_some_and(|c| c.contains("rampart_pass="))),
        "{seen:?}"
    );
    let metrics = rampart.metrics().await;
    assert_eq!(verdicts(&metrics, "challenge.issued"), 1.0, "{metrics}");
    assert_eq!(verdicts(&metrics, "challenge.solved"), 1.0, "{metrics}");

    // The page's size and what the challenge added to the browser's visit, for the record:
    // the same visit straight to the upstream is the baseline.
    let (_, direct) = chromium(&format!("http://{}/dashboards/home?orgId=1", up.addr));
    let page = send_raw(
        rampart.addr("web"),
        EXTERNAL_PEER,
        &get("/dashboards/home", "HeadlessChrome/156", "text/html", None),
    )
    .await
    .expect("page");
    eprintln!(
        "challenge page: {} bytes; chromium's visit through the challenge {} ms, straight to \
         the upstream {} ms",
        page.body.len(),
        took.as_millis(),
        direct.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_forged_borrowed_and_expired_passes_are_refused() {
    let up = RecordingUpstream::start("app").await;
    let rampart = start(&up, 3).await;
    let web = rampart.addr("web");
    let curl = "curl/8.5.0";
    let send = |raw: Vec<u8>, from: &'static str| async move {
        send_raw(web, from, &raw).await.expect("answer")
    };

    // An API client (no HTML in Accept) is told in JSON; nothing reaches the upstream.
    let r = send(get("/v1/models", curl, "*/*", None), EXTERNAL_PEER).await;
    assert_eq!(
        (r.status, r.json()["rule"].as_str()),
        (403, Some("challenge.required"))
    );

    // Asking for HTML gets the page: 202, not cached.
    let page = send(
        get("/docs?page=2", curl, "text/html,*/*", None),
        EXTERNAL_PEER,
    )
    .await;
    assert_eq!(page.status, 202);
    assert!(page
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let (challenge, n) = solve(&page.body);

    // A wrong answer earns another page, and counts as failed.
    let wrong = (0u64..)
        .map(|n| n.to_string())
        .find(|n| leading_zero_bits(&challenge, n) < 12)
        .expect("a wrong counter");
    let answer = |n: &str| format!("rampart_answer={challenge}~{n}");
    let r = send(
        get("/docs?page=2", curl, "text/html", Some(&answer(&wrong))),
        EXTERNAL_PEER,
    )
    .await;
    assert_eq!(r.status, 202);
    // The right answer from another address is someone else's challenge.
    let r = send(
        get("/docs?page=2", curl, "text/html", Some(&answer(&n))),
        "127.0.0.6",
    )
    .await;
    assert_eq!(r.status, 202);

    // The right answer: sent back to the same address with a pass, the answer cleared.
    let solved = send(
        get("/docs?page=2", curl, "text/html", Some(&answer(&n))),
        EXTERNAL_PEER,
    )
    .await;
    assert_eq!(solved.status, 303);
    assert_eq!(solved.header("location"), Some("/docs?page=2"));
    let cookies = set_cookies(&solved);
    let pass = cookies
        .iter()
        .find_map(|c| c.strip_prefix("rampart_pass="))
        .and_then(|c| c.split(';').next())
        .map(|v| format!("rampart_pass={v}"))
        .expect("a pass");
    assert!(cookies
        .iter()
        .any(|c| c.starts_with("rampart_answer=;") && c.contains("Max-Age=0")));
    assert_eq!(
        up.count(),
        0,
        "nothing reached the upstream before the pass"
    );

    // With the pass, the same client gets through, API request or page alike.
    let r = send(get("/v1/models", curl, "*/*", Some(&pass)), EXTERNAL_PEER).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 1);
    // The pass is bound to its client: another address or another user agent is challenged.
    let r = send(get("/v1/models", curl, "*/*", Some(&pass)), "127.0.0.6").await;
    assert_eq!(r.status, 403);
    let r = send(
        get("/v1/models", "python-requests/2.32", "*/*", Some(&pass)),
        EXTERNAL_PEER,
    )
    .await;
    assert_eq!(r.status, 403);
    // A forged pass, and one whose MAC was kept while its time was moved on.
    let (claim, mac) = pass
        .trim_start_matches("rampart_pass=")
        .split_once('.')
        .expect("claim.mac");
    let moved = format!(
        "rampart_pass={}.{mac}",
        claim.parse::<u64>().expect("time") + 1
    );
    for forged in [
        "rampart_pass=9999999999.AAAA",
        "rampart_pass=",
        moved.as_str(),
    ] {
        let r = send(get("/v1/models", curl, "*/*", Some(forged)), EXTERNAL_PEER).await;
        assert_eq!(r.status, 403, "{forged}");
    }
    assert_eq!(up.count(), 1);

    // After its time to live (3 s here), the pass is refused.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let r = send(get("/v1/models", curl, "*/*", Some(&pass)), EXTERNAL_PEER).await;
    assert_eq!(r.status, 403);
    assert_eq!(up.count(), 1);

    let metrics = rampart.metrics().await;
    assert_eq!(verdicts(&metrics, "challenge.issued"), 3.0, "{metrics}");
    assert_eq!(verdicts(&metrics, "challenge.solved"), 1.0, "{metrics}");
    assert!(
        metric_value(
            &metrics,
            r#"rampart_rule_matches_total{action="count",listener="web",plugin="bot_control",rule="challenge.failed"}"#
        ) == Some(2.0),
        "{metrics}"
    );
}
