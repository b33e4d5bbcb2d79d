//! Three rampart instances share rate-limit counters through a real Redis; when Redis dies
//! or stalls each falls back to its own counters, and recovers by itself when Redis returns.

use std::process::Command;
use std::time::{Duration, Instant};

use rampart_integration::redis::RedisServer;
use rampart_integration::*;

/// One listener whose rate limit counts in the Redis on `redis_port`.
fn gateway(up: &RecordingUpstream, redis_port: u16, limit: u32) -> String {
    let store = format!(
        "[rate_limit_store]\nredis = \"redis://127.0.0.1:{redis_port}\"\ntimeout_ms = 100\nretry_ms = 300"
    );
    let plugins = format!(
        r#"
[[listeners.plugins]]
type = "rate_limit"
shared = true

[[listeners.plugins.limits]]
name = "gateway"
requests = {limit}
window_seconds = 300
"#
    );
    one_listener(up.addr, &store, &plugins)
}

async fn get(rampart: &Rampart, from: &str) -> u16 {
    request(rampart.addr("web"), from, "GET", "/v1/models", &[])
        .await
        .status
}

/// Sends `n` requests from `from`, round robin over the instances; counts those let through.
async fn round_robin(instances: &[Rampart], from: &str, n: usize) -> usize {
    let mut passed = 0;
    for i in 0..n {
        if get(&instances[i % instances.len()], from).await == 200 {
            passed += 1;
        }
    }
    passed
}

async fn store_up(instance: &Rampart) -> Option<f64> {
    metric_value(&instance.metrics().await, "rampart_rate_limit_store_up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_limit_and_survive_redis_going_away() {
    const LIMIT: u32 = 300;
    let port = free_port();
    let redis = RedisServer::start(port).await;
    let up = RecordingUpstream::start("app").await;
    let config = gateway(&up, port, LIMIT);
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(Rampart::start(&config, &["web"]).await);
    }
    // Give each instance's background connection a moment.
    for instance in &instances {
        let connected = eventually(Duration::from_secs(10), || async {
            get(instance, "127.0.0.9").await == 200 && store_up(instance).await == Some(1.0)
        })
        .await;
        assert!(connected, "instance never used Redis");
    }

    // Twice the limit, round robin: the three together let exactly the limit through.
    let passed = round_robin(&instances, EXTERNAL_PEER, 2 * LIMIT as usize).await;
    let bound = LIMIT as usize / 100;
    assert!(
        passed.abs_diff(LIMIT as usize) <= bound,
        "{passed} passed across 3 instances, limit {LIMIT}"
    );
    assert_eq!(
        passed, LIMIT as usize,
        "Redis counts atomically: exactly the limit"
    );
    let keys = redis
        .cli(&["--scan", "--pattern", "rampart:rl:gateway:*"])
        .unwrap_or_default();
    assert!(keys.lines().count() >= 2, "one key per client: {keys}");
    let ttl: i64 = redis
        .cli(&["PTTL", keys.lines().next().unwrap_or("")])
        .and_then(|t| t.parse().ok())
        .unwrap_or(-1);
    assert!(ttl > 0 && ttl <= 320_000, "keys expire: PTTL {ttl}");

    // Redis stalls (DEBUG SLEEP): calls time out, requests are answered from local counts
    // without waiting for Redis.
    let stall = {
        let port = port.to_string();
        std::thread::spawn(move || {
            Command::new("redis-cli")
                .args(["-p", &port, "DEBUG", "SLEEP", "2"])
                .output()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    for instance in &instances {
        assert_eq!(get(instance, "127.0.0.10").await, 200);
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "requests waited on a stalled Redis: {:?}",
        started.elapsed()
    );
    let _ = stall.join();

    // Redis dies: each instance falls back to its own counters, which still hold what it
    // let through while Redis counted (about a third of the limit each).
    drop(redis);
    let started = Instant::now();
    let fallback = round_robin(&instances, EXTERNAL_PEER, 3 * LIMIT as usize).await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?} for {} requests",
        started.elapsed(),
        3 * LIMIT
    );
    // Each instance has counted about LIMIT / 3 and now allows up to LIMIT on its own.
    let expected = 3 * LIMIT as usize - LIMIT as usize;
    assert!(
        fallback.abs_diff(expected) <= 6,
        "{fallback} passed on local counters, expected about {expected}"
    );
    for instance in &instances {
        assert_eq!(store_up(instance).await, Some(0.0));
        let errors = metric_value(
            &instance.metrics().await,
            r#"rampart_rate_limit_store_errors_total{kind="error"}"#,
        )
        .unwrap_or(0.0)
            + metric_value(
                &instance.metrics().await,
                r#"rampart_rate_limit_store_errors_total{kind="timeout"}"#,
            )
            .unwrap_or(0.0);
        assert!(errors >= 1.0, "failures are counted");
    }

    // Redis returns (empty, on the same port): every instance finds it again by itself and
    // the three share one count again.
    let redis = RedisServer::start(port).await;
    for instance in &instances {
        let back = eventually(Duration::from_secs(15), || async {
            get(instance, "127.0.0.11").await;
            store_up(instance).await == Some(1.0)
        })
        .await;
        assert!(back, "an instance did not go back to Redis");
    }
    let passed = round_robin(&instances, "127.0.0.12", LIMIT as usize + 30).await;
    assert_eq!(passed, LIMIT as usize, "shared again after recovery");
    assert!(redis.cli(&["DBSIZE"]).is_some_and(|n| n != "0"));
}
