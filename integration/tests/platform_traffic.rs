//! The platform's own traffic through the shipped rules (`rules/`): seed 003's internal
//! service-to-service flows skip the WAF, and what the access matrix closes stays closed.

use rampart_integration::*;

struct Seed {
    up: SeedUpstreams,
    rampart: Rampart,
}

async fn shipped() -> Seed {
    let up = SeedUpstreams::start(1).await;
    let files = shipped_rules(&[
        ("litellm", up.litellm[0].addr),
        ("grafana", up.grafana.addr),
        ("langfuse", up.langfuse.addr),
        ("victoriametrics", up.victoriametrics.addr),
    ]);
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let rampart = Rampart::start_full(&files, SEED_LISTENERS, &[], &[]).await;
    Seed { up, rampart }
}

/// A POST of `body` as `content_type`, with extra headers, from `source`.
async fn post(
    to: std::net::SocketAddr,
    source: &str,
    path: &str,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) -> RawResponse {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nUser-Agent: rampart-tests/1.0\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in headers {
        raw.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body);
    send_raw(to, source, &raw)
        .await
        .unwrap_or_else(|e| panic!("POST {path} from {source}: {e}"))
}

/// A trace whose structural field (the user id) holds SQL injection.
const ATTACK_IN_STRUCTURE: &[u8] =
    br#"{"batch":[{"id":"1","type":"trace-create","timestamp":"2026-11-27T00:00:00Z","body":{"id":"t1","name":"chat","userId":"x' UNION SELECT password FROM users --"}}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_flows_skip_the_waf_as_seed_003_draws_them() {
    let Seed { up, rampart } = shipped().await;
    let ingest = "/api/public/ingestion";

    // LiteLLM -> Langfuse on :8080 from the VPC: not judged by the WAF, delivered as sent.
    let before = up.langfuse.count();
    let r = post(
        rampart.addr("langfuse"),
        INTERNAL_PEER,
        ingest,
        &[],
        "application/json",
        ATTACK_IN_STRUCTURE,
    )
    .await;
    assert_eq!(r.status, 200, "internal trace export: {}", r.status);
    assert_eq!(up.langfuse.count(), before + 1);
    let seen = up.langfuse.requests().pop().expect("recorded");
    assert_eq!(&seen.body[..], ATTACK_IN_STRUCTURE, "byte-identical");

    // The same body from outside (through the CDN, with its header) meets the WAF.
    let before = up.langfuse.count();
    let r = post(
        rampart.addr("langfuse"),
        EXTERNAL_PEER,
        ingest,
        &[("X-Origin-Verify", ORIGIN_SECRET)],
        "application/json",
        ATTACK_IN_STRUCTURE,
    )
    .await;
    assert_eq!(r.status, 403, "external attack: {:?}", r.json());
    assert_eq!(up.langfuse.count(), before, "refused, unseen upstream");

    // A client header cannot make a request internal: X-Forwarded-For is not the peer.
    let r = post(
        rampart.addr("langfuse"),
        EXTERNAL_PEER,
        ingest,
        &[
            ("X-Origin-Verify", ORIGIN_SECRET),
            ("X-Forwarded-For", INTERNAL_PEER),
        ],
        "application/json",
        ATTACK_IN_STRUCTURE,
    )
    .await;
    assert_eq!(r.status, 403, "XFF claiming the VPC");

    // VictoriaMetrics -> LiteLLM /metrics/ on :80, and Grafana -> VictoriaMetrics on :9090:
    // a query that would read as an attack to the WAF passes from the VPC.
    let promql = "/api/v1/query?query=sum(rate(x%7Bjob%3D~%22.*%22%7D%5B5m%5D))%20or%20vector(1)";
    let r = request(
        rampart.addr("victoriametrics"),
        INTERNAL_PEER,
        "GET",
        promql,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "Grafana's query from the VPC");
    let r = request(
        rampart.addr("web"),
        INTERNAL_PEER,
        "GET",
        "/metrics/?a=1'%20or%201=1--",
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "the scrape from the VPC");
    let r = request(
        rampart.addr("web"),
        EXTERNAL_PEER,
        "GET",
        "/metrics/?a=1'%20or%201=1--",
        &[("X-Origin-Verify", ORIGIN_SECRET)],
    )
    .await;
    assert_eq!(r.status, 403, "the same from outside is judged");

    // What the access matrix closes stays closed to the VPC: the admin paths want the
    // admin secret from everyone, and :9090 is internal only.
    let before = up.total_requests();
    let r = request(
        rampart.addr("web"),
        INTERNAL_PEER,
        "POST",
        "/key/generate",
        &[],
    )
    .await;
    assert_eq!(
        r.status, 403,
        "admin path from the VPC without X-Admin-Secret"
    );
    let r = request(
        rampart.addr("victoriametrics"),
        EXTERNAL_PEER,
        "GET",
        "/api/v1/query?query=up",
        &[("X-Origin-Verify", ORIGIN_SECRET)],
    )
    .await;
    assert_eq!(r.status, 403, ":9090 from outside");
    assert_eq!(up.total_requests(), before, "refusals reached no upstream");
    let r = request(
        rampart.addr("web"),
        INTERNAL_PEER,
        "POST",
        "/key/generate",
        &[("X-Admin-Secret", ADMIN_SECRET)],
    )
    .await;
    assert_eq!(r.status, 200, "admin path from the VPC with the secret");
}
