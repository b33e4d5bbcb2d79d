//! The edge plugins on their own: an IP lookup in a list of a million prefixes (and the time
//! to build it), a user-agent classification against the shipped bot catalogue, and one
//! rate-limit decision. `cargo bench -p rampart-benches --bench edge`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use rampart_plugins::plugins::bot_control::{BotControl, BotControlConfig};
use rampart_plugins::prefix_table::PrefixTable;
use rampart_plugins::rate_window::{RateWindow, WindowSpec};
use rampart_plugins::RequestView;
use rules_dir::RulesDir;

#[path = "../../plugins/tests/support/rules_dir.rs"]
mod rules_dir;

/// A deterministic xorshift stream, so that every run builds the same list.
fn stream(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// A million prefixes as a reputation feed would hold them: mostly single hosts and /24s,
/// some /28s, a tenth IPv6 /48s.
fn million_prefix_list() -> String {
    let mut next = stream(0x2545_f491_4f6c_dd1d);
    let mut text = String::with_capacity(20 << 20);
    for i in 0..1_000_000u32 {
        let r = next();
        if i % 10 == 0 {
            let addr = Ipv6Addr::from(((r as u128) << 64) | 0x2001 << 112);
            text.push_str(&format!("{addr}/48\n"));
        } else {
            let len = [32, 32, 32, 24, 24, 28][(r % 6) as usize];
            text.push_str(&format!("{}/{len}\n", Ipv4Addr::from((r >> 32) as u32)));
        }
    }
    text
}

fn bench(c: &mut Criterion) {
    let list = million_prefix_list();
    let started = Instant::now();
    let table = PrefixTable::parse([("million.txt", list.as_str())]).expect("list parses");
    eprintln!(
        "1,000,000 prefixes parsed and built in {:?}: {} disjoint, {} MiB of trie",
        started.elapsed(),
        table.len(),
        table.heap_bytes() >> 20
    );
    let mut next = stream(7);
    let probes: Vec<IpAddr> = (0..1024)
        .map(|_| IpAddr::V4(Ipv4Addr::from((next() >> 32) as u32)))
        .collect();
    let hits = probes.iter().filter(|ip| table.contains(**ip)).count();
    eprintln!("{hits} of {} random IPv4 probes are listed", probes.len());
    let mut i = 0;
    c.bench_function("ip_reputation/lookup_ipv4_in_1m_prefixes", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(table.contains(black_box(probes[i])))
        })
    });
    let v6: IpAddr = "2001:db8:1234::1".parse().expect("v6");
    c.bench_function("ip_reputation/lookup_ipv6_in_1m_prefixes", |b| {
        b.iter(|| black_box(table.contains(black_box(v6))))
    });
    c.bench_function("ip_reputation/build_100k_prefixes", |b| {
        let lines: String = list.lines().take(100_000).collect::<Vec<_>>().join("\n");
        b.iter(|| black_box(PrefixTable::parse([("list", lines.as_str())]).map(|t| t.len())))
    });

    let config: BotControlConfig =
        toml::from_str("datacenter_networks = [\"bots/datacenters.txt\"]").expect("config");
    let bots = BotControl::build(config, &RulesDir::shipped()).expect("shipped catalogue");
    let method = Method::POST;
    let peer: IpAddr = "198.51.100.7".parse().expect("peer");
    for (name, ua) in [
        ("openai_python", "OpenAI/Python 1.54.0"),
        (
            "chrome",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
        ),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", HeaderValue::from_static(ua));
        let view = RequestView {
            listener: "web",
            route: "litellm",
            peer,
            client: peer,
            method: &method,
            path: "/v1/chat/completions",
            query: None,
            headers: &headers,
            consumed: &[],
            body: None,
            body_items: &[],
            identity: None,
            inspections: None,
        };
        c.bench_function(&format!("bot_control/classify/{name}"), |b| {
            b.iter(|| black_box(bots.classify(black_box(&view)).signals.len()))
        });
    }

    let window = RateWindow::new(
        WindowSpec {
            limit: 2000,
            window_ms: 300_000,
        },
        1_000_000,
    );
    let mut now = 1_700_000_000_000u64;
    let mut key = 0u128;
    c.bench_function("rate_limit/decision_10k_clients", |b| {
        b.iter(|| {
            now += 1;
            key = (key + 7919) % 10_000;
            black_box(window.hit(black_box(key), now))
        })
    });
    let started = Instant::now();
    for k in 0..1_000_000u128 {
        window.hit(k << 16, now);
    }
    eprintln!(
        "1,000,000 distinct clients counted in {:?}; {} keys held",
        started.elapsed(),
        window.keys()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
