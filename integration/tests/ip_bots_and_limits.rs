//! IP reputation lists, bot control and rate limits on one instance, through the real binary.

use std::time::Duration;

use rampart_integration::*;

const LISTS: &str = r#"
[[listeners.plugins]]
type = "ip_reputation"
allow = ["127.0.0.2/32"]

[[listeners.plugins.lists]]
name = "AWSManagedIPReputationList"
files = ["ip/reputation.txt"]

[[listeners.plugins.lists]]
name = "AWSManagedReconnaissanceList"
files = ["ip/reconnaissance.txt"]
action = "count"

[[listeners.plugins.lists]]
name = "AWSManagedIPDDoSList"
files = ["ip/ddos.txt"]
match = "client"
"#;

async fn get(rampart: &Rampart, from: &str, headers: &[(&str, &str)]) -> Option<u16> {
    let mut raw = String::from("GET /v1/models HTTP/1.1\r\nHost: gateway.test\r\nUser-Agent: rampart-tests/1.0\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    send_raw(rampart.addr("web"), from, raw.as_bytes())
        .await
        .ok()
        .map(|r| r.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_lists_block_count_and_drop_at_accept_and_reload() {
    let up = RecordingUpstream::start("app").await;
    let rampart = Rampart::start_full(
        &[
            ("gateway.toml", &one_listener(up.addr, "", LISTS)),
            (
                "ip/reputation.txt",
                "; Spamhaus-style list\n127.0.0.3/32 ; SBL000\n127.0.0.2\n",
            ),
            ("ip/reconnaissance.txt", "# scanners\n127.0.0.4\n"),
            ("ip/ddos.txt", "203.0.113.0/24\n"),
        ],
        &["web"],
        &[],
        &[],
    )
    .await;

    // A blocked peer's connection is dropped at accept: no HTTP answer at all.
    assert_eq!(get(&rampart, EXTERNAL_PEER, &[]).await, None);
    // The allow list beats the reputation list that also names 127.0.0.2.
    assert_eq!(get(&rampart, INTERNAL_PEER, &[]).await, Some(200));
    // A count list lets the request through and records it.
    assert_eq!(get(&rampart, "127.0.0.4", &[]).await, Some(200));
    // The DDoS list matches the client that a trusted proxy names...
    let via_proxy = [("X-Forwarded-For", "203.0.113.50")];
    assert_eq!(
        get(&rampart, TRUSTED_PROXY_PEER, &via_proxy).await,
        Some(403)
    );
    // ...and a spoofed X-Forwarded-For from an untrusted peer changes nothing.
    assert_eq!(get(&rampart, "127.0.0.6", &via_proxy).await, Some(200));

    let metrics = rampart.metrics().await;
    assert!(
        metric_value(
            &metrics,
            r#"rampart_connections_refused_total{listener="web"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"rampart_rule_matches_total{action="count",listener="web",plugin="ip_reputation",rule="AWSManagedReconnaissanceList"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"rampart_plugin_verdicts_total{action="block",listener="web",plugin="ip_reputation",rule="AWSManagedIPDDoSList"}"#
        ),
        Some(1.0)
    );

    // Editing a list takes effect on the automatic reload: 127.0.0.3 is let in, .6 is out.
    rampart.write_rule_file("ip/reputation.txt", "127.0.0.6\n");
    let reloaded = eventually(Duration::from_secs(3), || async {
        get(&rampart, EXTERNAL_PEER, &[]).await == Some(200)
    })
    .await;
    assert!(reloaded, "the list edit did not take effect");
    assert_eq!(get(&rampart, "127.0.0.6", &[]).await, None);

    // A broken list keeps the old lists serving and names the file and line.
    rampart.write_rule_file("ip/reputation.txt", "127.0.0.6\n127.0.0.300\n");
    let reported = eventually(Duration::from_secs(3), || async {
        rampart.stderr_text().contains("reputation.txt:2")
    })
    .await;
    assert!(reported, "{}", rampart.stderr_text());
    assert_eq!(get(&rampart, "127.0.0.6", &[]).await, None);
    assert_eq!(get(&rampart, EXTERNAL_PEER, &[]).await, Some(200));
    // Only the five requests answered 200 reached the upstream.
    assert_eq!(up.count(), 5);
}

const LIMIT: &str = r#"
[[listeners.plugins]]
type = "rate_limit"

[[listeners.plugins.limits]]
name = "edge"
requests = 1000
window_seconds = 300
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_a_thousand_pass_then_429_and_counts_survive_a_reload() {
    let up = RecordingUpstream::start("app").await;
    let config = one_listener(up.addr, "", LIMIT);
    let rampart = Rampart::start(&config, &["web"]).await;

    // The seed checklist: "trigger 1000+ requests" from one address.
    let mut statuses = Vec::new();
    let spoof = [("X-Forwarded-For", "198.51.100.1")];
    for i in 0..1100 {
        // Every other request claims another client: an untrusted peer's XFF is ignored.
        let headers: &[(&str, &str)] = if i % 2 == 0 { &[] } else { &spoof };
        statuses.push(get(&rampart, EXTERNAL_PEER, headers).await.unwrap_or(0));
    }
    let passed = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((passed, limited), (1000, 100));
    assert!(statuses[..1000].iter().all(|&s| s == 200));
    assert_eq!(
        up.count(),
        1000,
        "refused requests never reached the upstream"
    );

    let r = request(rampart.addr("web"), EXTERNAL_PEER, "GET", "/v1/models", &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["rule"], "edge");
    assert_eq!(r.header("ratelimit-limit"), Some("1000"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((280..=321).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.header("ratelimit-reset"), r.header("retry-after"));
    // Another client has its own count.
    assert_eq!(get(&rampart, "127.0.0.7", &[]).await, Some(200));

    let metrics = rampart.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"rampart_plugin_verdicts_total{action="block",listener="web",plugin="rate_limit",rule="edge"}"#
        ),
        Some(101.0)
    );

    // A reload that leaves the limit alone keeps its counts...
    let generation = |m: &str| metric_value(m, "rampart_config_generation").unwrap_or(0.0);
    rampart.write_rules_atomically(&config.replace(
        "listen = \"0.0.0.0:80\"",
        "listen = \"0.0.0.0:80\"\nblock_log_sample = 0.5",
    ));
    let reloaded = eventually(Duration::from_secs(3), || async {
        generation(&rampart.metrics().await) == 2.0
    })
    .await;
    assert!(reloaded);
    assert_eq!(get(&rampart, EXTERNAL_PEER, &[]).await, Some(429));
    // ...and a changed limit starts afresh.
    rampart.write_rules_atomically(&config.replace("requests = 1000", "requests = 1200"));
    let reloaded = eventually(Duration::from_secs(3), || async {
        generation(&rampart.metrics().await) == 3.0
    })
    .await;
    assert!(reloaded);
    assert_eq!(get(&rampart, EXTERNAL_PEER, &[]).await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_bot_catalogue_refuses_scanners_but_not_the_platforms_clients() {
    let up = RecordingUpstream::start("app").await;
    // The shipped catalogue and lists, as they sit in rules/bots.
    let shipped = |f: &str| {
        std::fs::read_to_string(format!("{}/../rules/bots/{f}", env!("CARGO_MANIFEST_DIR")))
            .expect("shipped bot file")
    };
    let plugins = r#"
[[listeners.plugins]]
type = "bot_control"
datacenter_networks = ["bots/datacenters.txt"]
"#;
    let rampart = Rampart::start_full(
        &[
            ("gateway.toml", &one_listener(up.addr, "", plugins)),
            ("bots/catalogue.toml", &shipped("catalogue.toml")),
            ("bots/search-engines.txt", &shipped("search-engines.txt")),
            ("bots/datacenters.txt", &shipped("datacenters.txt")),
        ],
        &["web"],
        &[],
        &[],
    )
    .await;
    let web = rampart.addr("web");
    let ua = |ua: &'static str| async move {
        let raw = format!(
            "GET /v1/models HTTP/1.1\r\nHost: gateway.test\r\nUser-Agent: {ua}\r\nAuthorization: Bearer sk-test\r\nConnection: close\r\n\r\n"
        );
        send_raw(web, EXTERNAL_PEER, raw.as_bytes())
            .await
            .map(|r| {
                (
                    r.status,
                    r.json()["rule"].as_str().unwrap_or("").to_string(),
                )
            })
            .ok()
    };
    for client in [
        "OpenAI/Python 1.54.0",
        "curl/8.5.0",
        "Prometheus/2.42.0",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    ] {
        assert_eq!(ua(client).await.map(|r| r.0), Some(200), "{client}");
    }
    for (bot, rule) in [
        (
            "sqlmap/1.7.2#stable (https://sqlmap.org)",
            "CategorySecurityScanner",
        ),
        (
            "Scrapy/2.11 (+https://scrapy.org)",
            "CategoryScrapingFramework",
        ),
        (
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "CategorySearchEngine_Unverified",
        ),
    ] {
        assert_eq!(ua(bot).await, Some((403, rule.to_string())), "{bot}");
    }
    let metrics = rampart.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"rampart_rule_matches_total{action="count",listener="web",plugin="bot_control",rule="CategoryHttpLibrary"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(up.count(), 4);
}
