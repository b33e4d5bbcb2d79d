//! The platform's real clients through the shipped rules: the official `openai` client
//! through rampart :80 to a real LiteLLM proxy (llmock as its provider), LiteLLM's own
//! `langfuse` callback exporting traces through rampart :8080, and the `langfuse` SDKs (5.x,
//! OTLP protobuf gzip-compressed; 2.x, the JSON ingestion API) sending traces whose inputs
//! and outputs hold code, from the VPC and from outside with X-Origin-Verify. A recording
//! server stands in for the Langfuse server, which cannot run here.
//!
//! Every request must pass (0 refused) and arrive byte-identical: what each client wrote on
//! its sockets (recorded by `scripts/sitecustomize`) is compared with what the upstream got.
//! Attacks in the structure, query and headers of the same listener are still refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rampart_integration::identity::{venv_bin, Litellm, Llmock};
use rampart_integration::*;
use serde_json::Value;

/// The VPC in this test: clients that connect from 127.0.0.1 (LiteLLM, and an SDK run
/// "inside") are internal peers; a client bound to 127.0.0.3 is outside.
const VPC: &str = "127.0.0.1/32";
const OUTSIDE: &str = EXTERNAL_PEER;
const MASTER_KEY: &str = "sk-master-test-0123456789";

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// The Python of a sibling virtualenv (`.venv-langfuse5`), made by scripts/venv.sh.
fn sibling_python(suffix: &str) -> PathBuf {
    let main = venv_bin("python");
    let venv = main.parent().and_then(Path::parent).expect("venv dir");
    let bin = PathBuf::from(format!("{}-{suffix}", venv.display())).join("bin/python");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/venv.sh",
        bin.display()
    );
    bin
}

/// Runs a test script with `python`; `source` binds its connections, `sent_log` records
/// what it sends. Returns the JSON line it prints last.
fn run_script(
    python: &Path,
    script: &str,
    args: &[&str],
    source: Option<&str>,
    sent_log: &Path,
) -> Value {
    let mut cmd = Command::new(python);
    cmd.arg(scripts().join(script))
        .args(args)
        .env("PYTHONPATH", scripts().join("sitecustomize"))
        .env("RAMPART_TEST_SENT_LOG", sent_log);
    if let Some(source) = source {
        cmd.env("RAMPART_TEST_SOURCE", source);
    }
    let out = cmd.output().expect("run script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|_| {
        panic!(
            "{script}: no result\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The HTTP/1.1 requests in the byte logs `prefix.*`: (head, body).
fn sent_requests(prefix: &Path) -> Vec<(String, Vec<u8>)> {
    let dir = prefix.parent().expect("log dir");
    let stem = prefix
        .file_name()
        .expect("log name")
        .to_string_lossy()
        .into_owned();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read logs").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{stem}.")) {
            continue;
        }
        let data = std::fs::read(entry.path()).expect("read log");
        let mut rest = &data[..];
        while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&rest[..end]).into_owned();
            let target = head.to_string();
            let length: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            let body_end = (end + 4 + length).min(rest.len());
            out.push((target, rest[end + 4..body_end].to_vec()));
            rest = &rest[body_end..];
        }
    }
    out
}

/// Every request the clients sent to `path_prefix` arrived at the upstream as it was sent:
/// the same bodies, as many times each. Returns how many there were.
fn arrived_byte_identical(
    sent: &[(String, Vec<u8>)],
    upstream: &RecordingUpstream,
    path_prefix: &str,
) -> usize {
    let mut expected: HashMap<&[u8], usize> = HashMap::new();
    let to_path = |head: &str| {
        head.split(' ')
            .nth(1)
            .is_some_and(|t| t.starts_with(path_prefix))
    };
    for (_, body) in sent.iter().filter(|(head, _)| to_path(head)) {
        *expected.entry(body).or_default() += 1;
    }
    let received = upstream.requests();
    let mut got: HashMap<&[u8], usize> = HashMap::new();
    for r in received.iter().filter(|r| r.uri.starts_with(path_prefix)) {
        assert!(r.complete, "{} arrived incomplete", r.uri);
        *got.entry(&r.body).or_default() += 1;
    }
    for (body, n) in &expected {
        assert_eq!(
            got.get(body).copied().unwrap_or(0),
            *n,
            "a body sent to {path_prefix} ({} bytes) did not arrive as sent",
            body.len()
        );
    }
    expected.values().sum()
}

/// Access-log lines of `listener` whose status is not a success.
fn refusals(rampart: &Rampart, listener: &str) -> Vec<String> {
    rampart
        .stdout_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["listener"] == listener && v["status"].as_u64().is_some_and(|s| s >= 400))
        .map(|v| v.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_pass_untouched_and_attacks_do_not() {
    let logs = tempfile::tempdir().expect("log dir");
    let llmock = Llmock::start().await;
    let langfuse = RecordingUpstream::start("langfuse").await;
    let grafana = RecordingUpstream::start("grafana").await;
    let vm = RecordingUpstream::start("victoriametrics").await;
    let litellm_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let files = shipped_rules_in(
        VPC,
        &[
            ("litellm", litellm_addr),
            ("grafana", grafana.addr),
            ("langfuse", langfuse.addr),
            ("victoriametrics", vm.addr),
        ],
    );
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let rampart = Rampart::start_full(&files, SEED_LISTENERS, &[], &[]).await;
    let langfuse_url = format!("http://{}", rampart.addr("langfuse"));

    // LiteLLM, its provider llmock, its traces through rampart :8080 from the VPC.
    let config = format!(
        "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: http://{}/v1\n      api_key: sk-llmock\nlitellm_settings:\n  success_callback: [\"langfuse\"]\ngeneral_settings:\n  master_key: {MASTER_KEY}\n",
        llmock.addr
    );
    let litellm_log = logs.path().join("litellm");
    let pythonpath = scripts().join("sitecustomize");
    let litellm = Litellm::start(
        litellm_addr.port(),
        &config,
        &[
            ("LANGFUSE_PUBLIC_KEY", "pk-lf-test"),
            ("LANGFUSE_SECRET_KEY", "sk-lf-test"),
            ("LANGFUSE_HOST", &langfuse_url),
            ("LANGFUSE_FLUSH_INTERVAL", "1"),
            ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
            ("PYTHONPATH", &pythonpath.to_string_lossy()),
            ("RAMPART_TEST_SENT_LOG", &litellm_log.to_string_lossy()),
        ],
    )
    .await;
    let _ = &litellm;

    // 1. The openai client from outside, through rampart :80 and LiteLLM: code in prompts.
    let web = format!("http://{}/v1", rampart.addr("web"));
    let openai_log = logs.path().join("openai");
    let asked = run_script(
        &venv_bin("python"),
        "openai_prompts.py",
        &[&web, MASTER_KEY, ORIGIN_SECRET],
        Some(OUTSIDE),
        &openai_log,
    );
    assert_eq!(
        asked["failed"],
        serde_json::json!([]),
        "openai client: {asked}"
    );
    assert_eq!(asked["ok"], 20, "{asked}");
    assert_eq!(refusals(&rampart, "web"), Vec::<String>::new());

    // 2. LiteLLM's langfuse callback exports those calls' traces (OTLP) from the VPC.
    let exported = eventually(Duration::from_secs(60), || async {
        langfuse
            .requests()
            .iter()
            .any(|r| r.uri.starts_with("/api/public/otel"))
    })
    .await;
    assert!(
        exported,
        "LiteLLM exported no traces; rampart: {}",
        rampart.stdout_text()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let from_litellm =
        arrived_byte_identical(&sent_requests(&litellm_log), &langfuse, "/api/public/otel");
    assert!(from_litellm > 0);

    // 3. The langfuse SDKs, inside and outside, with code in inputs and outputs.
    let mut sdk_exports = Vec::new();
    for (venv, path) in [
        ("langfuse5", "/api/public/otel"),
        ("langfuse2", "/api/public/ingestion"),
    ] {
        let python = sibling_python(venv);
        for (place, source, origin) in [
            ("inside", None, ""),
            ("outside", Some(OUTSIDE), ORIGIN_SECRET),
        ] {
            let log = logs.path().join(format!("{venv}-{place}"));
            let ran = run_script(
                &python,
                "langfuse_traces.py",
                &[&langfuse_url, origin, "12"],
                source,
                &log,
            );
            assert_eq!(ran["traces"], 12, "{venv} {place}: {ran}");
            let sent = sent_requests(&log);
            let n = arrived_byte_identical(&sent, &langfuse, path);
            assert!(n > 0, "{venv} {place}: nothing sent to {path}");
            if venv == "langfuse5" {
                // The current SDK compresses its exports.
                let gz = sent
                    .iter()
                    .filter(|(head, _)| head.contains(path))
                    .all(|(head, _)| {
                        head.to_ascii_lowercase()
                            .contains("\r\ncontent-encoding: gzip")
                    });
                assert!(gz, "5.x exports are gzip-compressed");
            }
            sdk_exports.push(format!("{venv} {place}: {n} requests"));
        }
    }
    assert_eq!(
        refusals(&rampart, "langfuse"),
        Vec::<String>::new(),
        "{sdk_exports:?}"
    );

    // 4. LiteLLM's admin API wants X-Admin-Secret, from outside as from the VPC.
    let admin = |with_secret: bool| {
        let mut headers = vec![
            ("X-Origin-Verify", ORIGIN_SECRET),
            ("Authorization", "Bearer sk-master-test-0123456789"),
        ];
        if with_secret {
            headers.push(("X-Admin-Secret", ADMIN_SECRET));
        }
        let web = rampart.addr("web");
        async move { request(web, OUTSIDE, "POST", "/key/generate", &headers).await }
    };
    let refused = admin(false).await;
    assert_eq!(
        (refused.status, refused.json()["rule"].as_str()),
        (403, Some("admin_secret.missing"))
    );
    let passed = admin(true).await;
    assert!(
        passed.json()["rule"].is_null(),
        "LiteLLM answered: {:?}",
        passed.json()
    );
    assert_ne!(passed.status, 403);

    // 5. Attacks in the structure, query and headers of :8080 are still refused outside.
    let before = langfuse.count();
    let attacks: Vec<Vec<u8>> = vec![
        post_ingestion("/api/public/ingestion", &[], br#"{"batch":[{"id":"1","type":"trace-create","body":{"id":"t","userId":"x' UNION SELECT password FROM users --"}}]}"#),
        post_ingestion("/api/public/ingestion?q=%3Cscript%3Ealert(1)%3C/script%3E", &[], b"{\"batch\":[]}"),
        post_ingestion("/api/public/ingestion", &[("X-Debug", "() { :; }; /bin/bash -c 'id'")], b"{\"batch\":[]}"),
        post_ingestion("/api/public/otel/v1/traces", &[("Content-Type", "application/x-protobuf")], b"\x0a\x05\x0a\x03\xff\xfe\xfd"),
    ];
    for raw in attacks {
        let r = send_raw(rampart.addr("langfuse"), OUTSIDE, &raw)
            .await
            .expect("answer");
        assert!(
            matches!(r.status, 400 | 403),
            "{:?}: {}",
            String::from_utf8_lossy(&raw[..60]),
            r.status
        );
    }
    assert_eq!(langfuse.count(), before, "no attack reached Langfuse");
    eprintln!("exports: litellm {from_litellm}; {sdk_exports:?}");
}

/// A POST to :8080 from outside, as a client with the CDN's header would send it.
fn post_ingestion(path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut all = vec![("X-Origin-Verify", ORIGIN_SECRET)];
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        all.push(("Content-Type", "application/json"));
    }
    all.extend_from_slice(headers);
    raw_post(path, &all, body)
}
