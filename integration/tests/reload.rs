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

/// What an operator sees of the rules in force: `GET /config` (redacted), the build, a dry
/// run that applies nothing, a reload log that says what changed, typos refused with the
/// nearest names, and matches in count mode in the access and block logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_in_force_is_visible_redacted_and_a_dry_run_applies_nothing() {
    let up = SeedUpstreams::start(1).await;
    // A secret's value pasted where a name belongs, and a Redis URL with a password: neither
    // may be shown.
    let pasted = format!(
        "[[listeners.routes]]\nprefix = \"/pasted/\"\nname = \"{ORIGIN_SECRET}\"\nupstream = \"grafana\"\n\n[[listeners.routes]]\nprefix = \"/grafana/\""
    );
    let base = config_with_probe(&up, "grafana").replacen(
        "[[listeners.routes]]\nprefix = \"/grafana/\"",
        &pasted,
        1,
    )
        + "\n[rate_limit_store]\nredis = \"redis://rampart:hunter2-redis-pass@127.0.0.1:6399/0\"\n";
    let rampart = Rampart::start_opts(&base, SEED_LISTENERS, &[], &["--no-watch"]).await;

    let config = rampart.admin_get("/config").await;
    assert_eq!(config.status, 200);
    let text = String::from_utf8_lossy(&config.body).into_owned();
    for secret in [ORIGIN_SECRET, ADMIN_SECRET, "hunter2-redis-pass"] {
        assert!(!text.contains(secret), "/config shows a secret: {text}");
    }
    let v = config.json();
    assert_eq!(v["generation"], 1);
    assert_eq!(
        v["config"]["gateway.toml"]["rate_limit_store"]["redis"],
        "redis://rampart:<redacted>@127.0.0.1:6399/0"
    );
    assert_eq!(
        v["config"]["gateway.toml"]["secrets"]["origin-verify"]["env"][0],
        "RAMPART_ORIGIN_VERIFY_SECRET",
        "sources are shown"
    );
    let files = v["files"].as_array().cloned().unwrap_or_default();
    let hash_of = |path: &str| {
        files
            .iter()
            .find(|f| f["path"] == path)
            .and_then(|f| f["sha256"].as_str())
            .map(str::to_string)
    };
    let first_hash = hash_of("gateway.toml").expect("gateway.toml is listed");
    assert_eq!(first_hash.len(), 64);
    assert!(
        files
            .iter()
            .any(|f| f["path"].as_str().is_some_and(|p| p.contains("waf/owasp"))),
        "rule files are listed: {files:?}"
    );

    let m = rampart.metrics().await;
    assert!(
        m.lines().any(|l| l.starts_with("rampart_build_info{")
            && l.contains("version=\"")
            && l.ends_with(" 1")),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "rampart_config_reloads_total{result=\"success\"}").unwrap_or(0.0),
        0.0,
        "the first load is not a reload"
    );

    // A dry run validates and reports, and applies nothing.
    let next = base.replace(
        "upstream = \"grafana\"\n\n[[listeners.routes]]\nprefix = \"/pasted/\"",
        "upstream = \"langfuse\"\n\n[[listeners.routes]]\nprefix = \"/pasted/\"",
    );
    assert_ne!(next, base, "the probe route changed");
    rampart.write_rules(&next);
    let dry = rampart.admin_post("/reload?dry_run=1").await;
    assert_eq!(dry.status, 200, "{:?}", dry.json());
    assert_eq!(dry.json()["valid"], true);
    let changes = dry.json()["changes"].to_string();
    assert!(changes.contains("gateway.toml: changed"), "{changes}");
    assert_eq!(
        probe(&rampart).await.as_deref(),
        Some("grafana"),
        "nothing applied"
    );
    assert_eq!(rampart.admin_get("/ready").await.json()["generation"], 1);
    assert_eq!(rampart.admin_get("/config").await.json()["generation"], 1);

    // Typos: refused with the nearest names, by a dry run and by a reload alike.
    let typos = [
        (
            next.replacen(
                "routes = { litellm = \"llm\" }",
                "routes = { litelm = \"llm\" }",
                1,
            ),
            "did you mean litellm",
        ),
        (
            next.replacen(
                "type = \"owasp\"\n",
                "type = \"owasp\"\noverrides = { SQLi_QUERYARGS = \"count\" }\n",
                1,
            ),
            "did you mean SQLi_QUERYARGUMENTS",
        ),
    ];
    for (broken, hint) in &typos {
        rampart.write_rules(broken);
        let dry = rampart.admin_post("/reload?dry_run=1").await;
        assert_eq!(dry.status, 422);
        assert_eq!(dry.json()["valid"], false);
        let r = rampart.admin_post("/reload").await;
        assert_eq!(r.status, 422);
        let err = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(err.contains(hint) && err.contains("gateway.toml:"), "{err}");
    }

    // The real reload: applied, and logged with what changed.
    rampart.write_rules(&next);
    let r = rampart.admin_post("/reload").await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(probe(&rampart).await.as_deref(), Some("langfuse"));
    let logged = eventually(Duration::from_secs(2), || async {
        rampart
            .stderr_text()
            .contains("rules reloaded: generation 2: gateway.toml: changed")
    })
    .await;
    assert!(logged, "{}", rampart.stderr_text());
    let after = rampart.admin_get("/config").await.json();
    assert_eq!(after["generation"], 2);
    assert_ne!(
        after["files"][0]["sha256"].as_str(),
        Some(first_hash.as_str()),
        "the hash follows the file"
    );

    // Count mode: a counted match is in the access log and the block log, request by request.
    let counting = next.replacen(
        "type = \"owasp\"\n",
        "type = \"owasp\"\noverrides = { SQLi_QUERYARGUMENTS = \"count\", sqli = \"count\" }\n",
        1,
    );
    rampart.write_rules(&counting);
    assert_eq!(rampart.admin_post("/reload").await.status, 200);
    let attack = "/v1/models?id=1%27%20UNION%20SELECT%20password%20FROM%20users--";
    let r = request(
        rampart.addr("web"),
        EXTERNAL_PEER,
        "GET",
        attack,
        &[("X-Origin-Verify", ORIGIN_SECRET)],
    )
    .await;
    assert_eq!(r.status, 200, "counted, not refused");
    let counted = eventually(Duration::from_secs(2), || async {
        rampart.stdout_text().lines().any(|l| {
            l.contains("\"counted_by\":[[\"owasp\",\"SQLi_QUERYARGUMENTS\"]")
                && l.contains("\"refused_by\":null")
        })
    })
    .await;
    assert!(counted, "{}", rampart.stdout_text());
    let block_log = rampart.stderr_text();
    assert!(
        block_log.lines().any(|l| l.contains("\"action\":\"count\"")
            && l.contains("SQLi_QUERYARGUMENTS")
            && l.contains("\"location\":\"args:id\"")),
        "{block_log}"
    );
}
