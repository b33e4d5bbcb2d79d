//! TLS termination, the `check` subcommand, start-up refusals, and secrets kept out of
//! every log.

use std::process::Command;

use rampart_integration::*;

fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-s", "-S"])
        .args(args)
        .output()
        .expect("curl must be installed");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_terminates_tls_1_2_and_up() {
    let certs = tempfile::tempdir().expect("tmp");
    let (cert, key) = dev_cert(certs.path());
    let up = SeedUpstreams::start(1).await;
    let config = seed_config(&up, "").replace(
        "name = \"web\"\nlisten = \"0.0.0.0:80\"",
        &format!("name = \"web\"\nlisten = \"0.0.0.0:443\"\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}"),
    );
    let rampart = Rampart::start(&config, SEED_LISTENERS).await;
    let port = rampart.ports["web"];
    // Not `localhost`: a Host naming localhost is refused (Host_localhost_HEADER).
    let url = format!("https://rampart.test:{port}/v1/models");
    let resolve = format!("rampart.test:{port}:127.0.0.1");
    let origin = format!("X-Origin-Verify: {ORIGIN_SECRET}");

    let (ok, out) = curl(&[
        "--cacert",
        &cert,
        "--resolve",
        &resolve,
        "-H",
        &origin,
        &url,
    ]);
    assert!(ok && out.contains("litellm"), "TLS request failed: {out}");
    let got = up.litellm[0].requests().pop().expect("recorded");
    assert_eq!(got.header("x-forwarded-proto"), Some("https"));

    let (ok, out) = curl(&[
        "--cacert",
        &cert,
        "--resolve",
        &resolve,
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "-H",
        &origin,
        &url,
    ]);
    assert!(ok && out.contains("litellm"), "TLS 1.2 must work: {out}");
    let (ok, _) = curl(&[
        "--cacert",
        &cert,
        "--resolve",
        &resolve,
        "--tlsv1.0",
        "--tls-max",
        "1.1",
        "-H",
        &origin,
        &url,
    ]);
    assert!(!ok, "TLS 1.1 must be refused");
    let (ok, _) = curl(&["--resolve", &resolve, "-H", &origin, &url]);
    assert!(
        !ok,
        "an untrusted certificate must fail verification (sanity check of the client)"
    );
    let (ok, out) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://127.0.0.1:{port}/v1/models"),
    ]);
    assert!(
        !ok || out != "200",
        "plain HTTP on the TLS port must not be served: {out}"
    );
}

fn rampart_cmd() -> Command {
    let mut cmd = Command::new(rampart_binary());
    cmd.env("RAMPART_ORIGIN_VERIFY_SECRET", ORIGIN_SECRET)
        .env("RAMPART_ADMIN_HEADER_SECRET", ADMIN_SECRET);
    cmd
}

#[tokio::test]
async fn check_validates_the_shipped_rules_and_names_file_and_line() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../rules");
    let out = rampart_cmd()
        .args(["check", shipped])
        .output()
        .expect("run check");
    assert!(
        out.status.success(),
        "shipped rules must validate: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let up = SeedUpstreams::start(1).await;
    let dir = tempfile::tempdir().expect("tmp");
    let good = seed_config(&up, "");
    std::fs::write(dir.path().join("gateway.toml"), &good).expect("write");
    let out = rampart_cmd()
        .arg("check")
        .arg(dir.path())
        .output()
        .expect("run check");
    assert!(out.status.success());

    // Break line N and expect "gateway.toml:N:".
    let bad = good.replace(
        "accept = [\"internal\"]",
        "accept = [\"internal\"]\nacept = true",
    );
    let line = bad
        .lines()
        .position(|l| l.starts_with("acept"))
        .expect("line")
        + 1;
    std::fs::write(dir.path().join("gateway.toml"), &bad).expect("write");
    let out = rampart_cmd()
        .arg("check")
        .arg(dir.path())
        .output()
        .expect("run check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains(&format!("gateway.toml:{line}:")) || err.contains("acept"),
        "{err}"
    );
    assert!(err.contains("gateway.toml:"), "{err}");

    // An empty file is not a valid gateway: it would serve nothing.
    std::fs::write(dir.path().join("gateway.toml"), "").expect("write");
    let out = rampart_cmd()
        .arg("check")
        .arg(dir.path())
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gateway.toml") && err.contains("no [[listeners]]"),
        "{err}"
    );

    let out = rampart_cmd()
        .arg("check")
        .arg("/nonexistent-rules-dir")
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent-rules-dir/gateway.toml"));
}

#[tokio::test]
async fn a_placeholder_secret_stops_the_start_and_is_named_not_printed() {
    let up = SeedUpstreams::start(1).await;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("gateway.toml"), seed_config(&up, "")).expect("write");
    for value in ["REPLACE_ME", ""] {
        let out = rampart_cmd()
            .env("RAMPART_ADMIN_HEADER_SECRET", value)
            .arg("--rules")
            .arg(dir.path())
            .args(["--admin", &format!("127.0.0.1:{}", free_port())])
            .output()
            .expect("run rampart");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("admin-header") && err.contains("no usable value"),
            "{err}"
        );
        assert!(
            !err.contains(ORIGIN_SECRET),
            "a secret value was printed: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_or_metrics() {
    let up = SeedUpstreams::start(1).await;
    let rampart = Rampart::start_with_env(
        &seed_config(&up, ""),
        SEED_LISTENERS,
        &[("RUST_LOG", "debug")],
    )
    .await;
    let web = rampart.addr("web");
    for (path, headers) in [
        ("/v1/models", vec![("X-Origin-Verify", ORIGIN_SECRET)]),
        (
            "/key/x?token=abc",
            vec![
                ("X-Origin-Verify", ORIGIN_SECRET),
                ("X-Admin-Secret", ADMIN_SECRET),
            ],
        ),
        (
            "/key/x",
            vec![
                ("X-Origin-Verify", ORIGIN_SECRET),
                ("X-Admin-Secret", "wrong-admin-guess"),
            ],
        ),
        (
            "/v1/models",
            vec![("X-Origin-Verify", "wrong-origin-guess")],
        ),
    ] {
        request(web, EXTERNAL_PEER, "GET", path, &headers).await;
    }
    let _ = rampart.metrics().await;
    let logs = format!(
        "{}{}{}",
        rampart.stdout_text(),
        rampart.stderr_text(),
        rampart.metrics().await
    );
    for secret in [
        ORIGIN_SECRET,
        ADMIN_SECRET,
        "wrong-admin-guess",
        "wrong-origin-guess",
        "token=abc",
    ] {
        assert!(
            !logs.contains(secret),
            "{secret:?} appears in logs or metrics"
        );
    }
    // The access log has one JSON line per request, with the refusals named.
    let lines: Vec<serde_json::Value> = rampart
        .stdout_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[2]["refused_by"][1], "admin_secret.invalid");
    assert_eq!(lines[3]["refused_by"][1], "origin_verify.invalid");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["client"], EXTERNAL_PEER);
}

#[tokio::test]
async fn rules_test_explains_which_rules_match_and_why() {
    let dir = tempfile::tempdir().expect("tmp");
    let attack = dir.path().join("attack.http");
    std::fs::write(
        &attack,
        format!("GET /v1/models?id=1%27%20UNION%20SELECT%20api_key%20FROM%20keys-- HTTP/1.1\r\nHost: gateway.example.com\r\nUser-Agent: curl/8\r\nX-Origin-Verify: {ORIGIN_SECRET}\r\n\r\n"),
    )
    .expect("write");
    let benign = dir.path().join("benign.http");
    std::fs::write(
        &benign,
        format!("GET /v1/models HTTP/1.1\r\nHost: gateway.example.com\r\nUser-Agent: curl/8\r\nX-Origin-Verify: {ORIGIN_SECRET}\r\n\r\n"),
    )
    .expect("write");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../rules");
    let out = rampart_cmd()
        .args(["rules", "test", "--rules", shipped])
        .arg(&attack)
        .arg(&benign)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a refused request makes rules test fail: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("SQLi_QUERYARGUMENTS") && text.contains("REFUSED"),
        "{text}"
    );
    let attack_part = text
        .split("GET /v1/models on listener")
        .next()
        .unwrap_or_default();
    assert!(
        attack_part
            .trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("answer: 403 from owasp")),
        "the answer is the last line: {text}"
    );
    let benign_part = text
        .split("GET /v1/models on listener")
        .nth(1)
        .unwrap_or_default();
    assert!(
        benign_part.contains("owasp: anomaly score 0") && !benign_part.contains("REFUSED"),
        "{text}"
    );
    let out = rampart_cmd()
        .args(["rules", "test", "--rules", shipped])
        .arg(&benign)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.trim_end().lines().last(),
        Some("answer: passed on to route litellm"),
        "{text}"
    );

    let out = rampart_cmd()
        .args(["rules", "test", "--rules", shipped, "/nonexistent.http"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
}

/// `[server] threads` sets each listener's worker threads (Pingora names them after the
/// listener's service), with work stealing off (the default) or on.
#[tokio::test]
async fn worker_threads_come_from_the_config() {
    let up = RecordingUpstream::start("app").await;
    for stealing in [false, true] {
        let toml = format!(
            "[server]\nthreads = 3\nwork_stealing = {stealing}\n{}",
            one_listener(up.addr, "", "")
        );
        let rampart = Rampart::start(&toml, &["web"]).await;
        let workers = std::fs::read_dir(format!("/proc/{}/task", rampart.pid()))
            .expect("the process's threads")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "listener web")
            .count();
        assert_eq!(workers, 3, "work_stealing = {stealing}");
        for _ in 0..6 {
            let r = request(rampart.addr("web"), INTERNAL_PEER, "GET", "/x", &[]).await;
            assert_eq!(r.status, 200, "work_stealing = {stealing}");
        }
    }
}

/// Commented examples in a rule file: runs of comment lines that are TOML (a `[table]` header
/// or a `key = value`), as `# [[listeners.plugins]]`. Prose and indented illustrations
/// (`#   aws = ...`) are not examples. Each example: (first line, last line), 0-based.
fn commented_examples(text: &str) -> Vec<(usize, usize)> {
    let toml_line = |l: &str| {
        l.strip_prefix("# ").is_some_and(|rest| {
            if rest.starts_with(char::is_whitespace) {
                return false;
            }
            let key = rest.split('=').next().unwrap_or("").trim();
            rest.starts_with('[')
                || (rest.contains(" = ")
                    && !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)))
        })
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if toml_line(lines[i]) {
            let start = i;
            while i + 1 < lines.len() && toml_line(lines[i + 1]) {
                i += 1;
            }
            blocks.push((start, i));
        }
        i += 1;
    }
    blocks
}

fn uncomment(text: &str, (first, last): (usize, usize)) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            if (first..=last).contains(&i) {
                l.strip_prefix("# ").unwrap_or(l)
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every commented example in the shipped rules passes `rampart check` once uncommented as it
/// stands, with placeholder secrets (as a CI pipeline without the secrets would run it). The
/// provider routes are uncommented with the providers' keys, as their comment says; an example
/// in models.toml is checked with both, which make the model table read.
#[tokio::test]
async fn every_shipped_example_works_when_uncommented() {
    let shipped = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules"));
    let gateway = std::fs::read_to_string(shipped.join("gateway.toml")).expect("gateway.toml");
    let models = std::fs::read_to_string(shipped.join("models.toml")).expect("models.toml");
    let gateway_examples = commented_examples(&gateway);
    let example_holding = |needle: &str| {
        gateway_examples
            .iter()
            .copied()
            .find(|&(a, b)| {
                gateway
                    .lines()
                    .skip(a)
                    .take(b - a + 1)
                    .any(|l| l.contains(needle))
            })
            .unwrap_or_else(|| panic!("no shipped example holds {needle:?}"))
    };
    let provider_routes = example_holding("models = true");
    let provider_keys = example_holding("[secrets.openai-api-key]");
    // As the routes' comment says: the keys are uncommented with them.
    let with_providers = uncomment(&uncomment(&gateway, provider_keys), provider_routes);
    let mut cases: Vec<(String, String, String)> = Vec::new();
    for &block in &gateway_examples {
        let text = if block == provider_routes {
            with_providers.clone()
        } else {
            uncomment(&gateway, block)
        };
        cases.push((
            format!("gateway.toml:{}", block.0 + 1),
            text,
            models.clone(),
        ));
    }
    for block in commented_examples(&models) {
        cases.push((
            format!("models.toml:{}", block.0 + 1),
            with_providers.clone(),
            uncomment(&models, block),
        ));
    }
    assert!(
        cases.len() >= 5,
        "the examples were found: {:?}",
        cases.iter().map(|c| &c.0).collect::<Vec<_>>()
    );
    for (example, gateway_text, models_text) in &cases {
        let dir = tempfile::tempdir().expect("tmp");
        let copied = std::process::Command::new("cp")
            .arg("-r")
            .arg(format!("{}/.", shipped.display()))
            .arg(dir.path())
            .status()
            .expect("cp");
        assert!(copied.success());
        std::fs::write(dir.path().join("gateway.toml"), gateway_text).expect("write");
        std::fs::write(dir.path().join("models.toml"), models_text).expect("write");
        // No secret in the environment: the placeholders stand in.
        let out = Command::new(rampart_binary())
            .args(["check", "--placeholder-secrets"])
            .arg(dir.path())
            .env_remove("RAMPART_ORIGIN_VERIFY_SECRET")
            .env_remove("RAMPART_ADMIN_HEADER_SECRET")
            .output()
            .expect("run check");
        assert!(
            out.status.success(),
            "the example at {example}, uncommented: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Without the flag and without the secrets, check says which secret is missing.
    let out = Command::new(rampart_binary())
        .arg("check")
        .arg(shipped)
        .env_remove("RAMPART_ORIGIN_VERIFY_SECRET")
        .env_remove("RAMPART_ADMIN_HEADER_SECRET")
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("origin-verify"));
}
