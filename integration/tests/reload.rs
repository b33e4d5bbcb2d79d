//! Hot reload: rule changes under steady load, invalid files, SIGHUP and POST /reload.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_integration::*;

/// The seed config plus a `/probe/` route whose upstream tells which rules are in force.
fn config_with_probe(up: &SeedUpstreams, probe_upstream: &str) -> String {
    seed_config(up, "").replace(
        "[[listeners.routes]]\nprefix = \"/grafana/\"",
        &format!("[[listeners.routes]]\nprefix = \"/probe/\"\nupstream = \"{probe_upstream}\"\n\n[[listeners.routes]]\nprefix = \"/grafana/\""),
    )
}

/// Ways to break the rules, each with a fragment the error message must contain.
fn broken(up: &SeedUpstreams, i: usize) -> (String, &'static str) {
    let good = config_with_probe(up, "grafana");
    match i % 5 {
        0 => (
            good.replace(
                "[[listeners]]\nname = \"langfuse\"",
                "[[listeners]]\nname = ",
            ),
            "gateway.toml:",
        ),
        1 => (
            good.replace(
                "upstream = \"grafana\"\n\n[[listeners.routes]]\nprefix = \"/grafana/\"",
                "upstream = \"nowhere\"\n\n[[listeners.routes]]\nprefix = \"/grafana/\"",
            ),
            "nowhere",
        ),
        2 => (
            good.replace(
                "accept = [\"internal\"]",
                "accept = [\"internal\"]\nacept = 1",
            ),
            "acept",
        ),
        3 => (
            good.replace("secret = \"admin-header\"", "secret = \"no-such-secret\""),
            "no-such-secret",
        ),
        _ => (
            good.replace(
                "internal_cidrs = [\"127.0.0.2/32\"]",
                "internal_cidrs = [\"127.0.0.300/32\"]",
            ),
            "gateway.toml:",
        ),
    }
}

async fn probe(rampart: &Rampart) -> Option<String> {
    let r = request(rampart.addr("web"), INTERNAL_PEER, "GET", "/probe/x", &[]).await;
    r.upstream()
}

async fn failures(rampart: &Rampart) -> f64 {
    metric_value(
        &rampart.metrics().await,
        "rampart_config_reloads_total{result=\"failure\"}",
    )
    .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_changes_under_load_lose_no_request_and_apply_within_a_second() {
    let up = SeedUpstreams::start(2).await;
    let rampart = Rampart::start(&config_with_probe(&up, "grafana"), SEED_LISTENERS).await;
    let web = rampart.addr("web");

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for peer in [INTERNAL_PEER, EXTERNAL_PEER] {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = request(
                    web,
                    peer,
                    "POST",
                    "/v1/chat/completions",
                    &[("X-Origin-Verify", ORIGIN_SECRET)],
                )
                .await;
                sent.fetch_add(1, Ordering::Relaxed);
                if r.status != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "legitimate request failed during reloads: {} {:?}",
                        r.status,
                        r.json()
                    );
                }
            }
        }));
    }

    let mut current = "grafana";
    let mut slowest = Duration::ZERO;
    let (mut valid, mut invalid) = (0, 0);
    for i in 0..50 {
        if i % 4 == 3 {
            let before = failures(&rampart).await;
            let (text, must_mention) = broken(&up, i);
            rampart.write_rules(&text);
            let deadline = Instant::now() + Duration::from_secs(2);
            while failures(&rampart).await <= before {
                assert!(
                    Instant::now() < deadline,
                    "change {i}: the invalid file was not reported"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(
                probe(&rampart).await.as_deref(),
                Some(current),
                "change {i}: old rules must keep serving"
            );
            let log = rampart.stderr_text();
            assert!(
                log.contains(must_mention),
                "change {i}: error should mention {must_mention:?}"
            );
            invalid += 1;
        } else {
            let next = if current == "grafana" {
                "langfuse"
            } else {
                "grafana"
            };
            let started = Instant::now();
            if i % 2 == 0 {
                rampart.write_rules(&config_with_probe(&up, next));
            } else {
                rampart.write_rules_atomically(&config_with_probe(&up, next));
            }
            loop {
                if probe(&rampart).await.as_deref() == Some(next) {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "change {i}: new rules not in force after 1 s"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            slowest = slowest.max(started.elapsed());
            current = next;
            valid += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task");
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("reloads: {valid} valid, {invalid} invalid; slowest took {slowest:?}; load: {sent} requests, {failed} failed");
    assert_eq!(failed, 0, "legitimate requests failed during reloads");
    assert!(sent > 100, "the load generator hardly ran: {sent}");
    assert_eq!((valid, invalid), (38, 12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_post_reload_without_the_watcher() {
    let up = SeedUpstreams::start(1).await;
    let rampart = Rampart::start_opts(
        &config_with_probe(&up, "grafana"),
        SEED_LISTENERS,
        &[],
        &["--no-watch"],
    )
    .await;
    let gen = |m: &str| metric_value(m, "rampart_config_generation");
    assert_eq!(gen(&rampart.metrics().await), Some(1.0));

    rampart.write_rules(&config_with_probe(&up, "langfuse"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        probe(&rampart).await.as_deref(),
        Some("grafana"),
        "no watcher: nothing changes by itself"
    );

    let r = rampart.admin_post("/reload").await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["generation"], 2);
    assert_eq!(probe(&rampart).await.as_deref(), Some("langfuse"));

    rampart.write_rules(&config_with_probe(&up, "grafana"));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &rampart.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(2);
    while probe(&rampart).await.as_deref() != Some("grafana") {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gen(&rampart.metrics().await), Some(3.0));

    // An invalid file: POST /reload reports file and line, and the old rules stay.
    rampart.write_rules(&broken(&up, 0).0);
    let r = rampart.admin_post("/reload").await;
    assert_eq!(r.status, 422);
    let err = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.contains("gateway.toml:") && err.chars().filter(|c| *c == ':').count() >= 2,
        "{err}"
    );
    assert_eq!(r.json()["generation"], 3);
    assert_eq!(probe(&rampart).await.as_deref(), Some("grafana"));
    let m = rampart.metrics().await;
    assert_eq!(
        metric_value(&m, "rampart_config_reloads_total{result=\"failure\"}"),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_that_would_take_the_gateway_down_are_refused() {
    let up = SeedUpstreams::start(1).await;
    let good = config_with_probe(&up, "grafana");
    let rampart = Rampart::start_opts(&good, SEED_LISTENERS, &[], &["--no-watch"]).await;
    assert_eq!(probe(&rampart).await.as_deref(), Some("grafana"));

    // An empty file, a file cut short before the listeners, and one without a listener
    // that is serving: each is refused, naming the file, and the old rules keep serving.
    let cut = &good[..good.find("[[listeners]]").expect("listeners")];
    let no_langfuse = good.replace(
        &good[good
            .find("[[listeners]]\nname = \"langfuse\"")
            .expect("langfuse")
            ..good
                .find("[[listeners]]\nname = \"victoriametrics\"")
                .expect("vm")],
        "",
    );
    for (text, expected) in [
        ("", "no [[listeners]]"),
        (cut, "no [[listeners]]"),
        (no_langfuse.as_str(), "listener \"langfuse\""),
    ] {
        rampart.write_rules(text);
        let r = rampart.admin_post("/reload?allow_removals=true").await;
        assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
        let error = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains("gateway.toml"), "{error}");
        assert!(error.contains(expected), "{error}");
        assert_eq!(probe(&rampart).await.as_deref(), Some("grafana"));
    }

    // Removing a route in service needs to be asked for explicitly.
    let no_probe = good.replace(
        "[[listeners.routes]]\nprefix = \"/probe/\"\nupstream = \"grafana\"\n\n",
        "",
    );
    assert_ne!(no_probe, good);
    rampart.write_rules(&no_probe);
    let r = rampart.admin_post("/reload").await;
    assert_eq!(r.status, 422);
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("route \"/probe/\" on listener \"web\"")
                && e.contains("allow_removals")),
        "{:?}",
        r.json()
    );
    assert_eq!(probe(&rampart).await.as_deref(), Some("grafana"));
    let r = rampart.admin_post("/reload?allow_removals=true").await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_ne!(probe(&rampart).await.as_deref(), Some("grafana"));
}
