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
    let mut all = vec![("Content-Type", content_type)];
    all.extend_from_slice(headers);
    let raw = raw_post(path, &all, body);
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

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// A Langfuse ingestion batch of `events` generations whose inputs and outputs hold code,
/// with `user_id` as the trace's user.
fn ingestion_batch(events: usize, user_id: &str) -> Vec<u8> {
    let code = "import os\nos.system('rm -rf /tmp/x; cat /etc/passwd')\nq = \"SELECT * FROM t WHERE a='1' OR '1'='1'\"";
    let mut batch = Vec::new();
    for i in 0..events {
        batch.push(serde_json::json!({
            "id": format!("e{i}"), "type": "generation-create", "timestamp": "2026-11-27T10:00:00Z",
            "body": {"id": format!("g{i}"), "traceId": "t1", "name": "chat", "userId": user_id,
                     "input": {"args": [code], "kwargs": {"n": i}},
                     "output": [{"role": "assistant", "content": code}],
                     "metadata": {"source": code}}
        }));
    }
    serde_json::to_vec(&serde_json::json!({ "batch": batch })).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_are_judged_decoded_and_delivered_as_sent() {
    let Seed { up, rampart } = shipped().await;
    let to = rampart.addr("langfuse");
    let ingest = "/api/public/ingestion";
    let json = [
        ("Content-Type", "application/json"),
        ("X-Origin-Verify", ORIGIN_SECRET),
    ];
    let gz = [
        ("Content-Type", "application/json"),
        ("Content-Encoding", "gzip"),
        ("X-Origin-Verify", ORIGIN_SECRET),
    ];
    // Small (read at once) and large (held and judged a window at a time, 3 MiB decoded).
    for events in [3, 2_000] {
        let sent = gzip(&ingestion_batch(events, "user-42"));
        let raw = raw_post(ingest, &gz, &sent);
        let r = send_raw(to, EXTERNAL_PEER, &raw).await.expect("answer");
        assert_eq!(r.status, 200, "{events} events: {:?}", r.json());
        let seen = up.langfuse.requests().pop().expect("recorded");
        assert_eq!(seen.header("content-encoding"), Some("gzip"));
        assert!(seen.complete && seen.body[..] == sent[..], "byte-identical");

        // The same batch with an attack in a structural field, compressed: refused, and the
        // upstream never saw it whole.
        let attacked = gzip(&ingestion_batch(
            events,
            "x' UNION SELECT password FROM users --",
        ));
        let path = format!("{ingest}?attacked={events}");
        let r = send_raw_refusable(to, EXTERNAL_PEER, &raw_post(&path, &gz, &attacked))
            .await
            .expect("answer");
        assert_eq!(r.status, 403, "{events} events: {:?}", r.json());
        let seen = up.langfuse.requests();
        assert!(seen
            .iter()
            .all(|r| !r.uri.ends_with(&path[ingest.len()..]) || !r.complete));
    }

    // A decompression bomb: 512 MiB of zeros in about 500 KiB.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![b' '; 1 << 20];
    for _ in 0..512 {
        std::io::Write::write_all(&mut bomb, &zeros).expect("gzip");
    }
    let bomb = bomb.finish().expect("gzip");
    let r = send_raw_refusable(to, EXTERNAL_PEER, &raw_post("/bomb", &gz, &bomb))
        .await
        .expect("answer");
    assert_eq!(r.status, 413, "{:?}", r.json());
    assert_eq!(r.json()["rule"], "body.decompression_limit");
    assert!(up
        .langfuse
        .requests()
        .iter()
        .all(|r| r.uri != "/bomb" || !r.complete));

    // Encodings rampart does not decode, and streams that are not what they say.
    let before = up.langfuse.count();
    for (encoding, body, status, rule) in [
        ("br", &b"\x1b\x03\x00"[..], 415, "body.unsupported_encoding"),
        (
            "gzip, gzip",
            &gzip(&gzip(b"{}"))[..],
            415,
            "body.unsupported_encoding",
        ),
        ("gzip", b"{\"batch\":[]}", 400, "body.corrupt_encoding"),
        ("deflate", b"\xff\xff\xff", 400, "body.corrupt_encoding"),
    ] {
        let headers = [
            ("Content-Type", "application/json"),
            ("Content-Encoding", encoding),
            ("X-Origin-Verify", ORIGIN_SECRET),
        ];
        let r = send_raw_refusable(to, EXTERNAL_PEER, &raw_post("/odd", &headers, body))
            .await
            .expect("answer");
        assert_eq!(
            (r.status, r.json()["rule"].as_str()),
            (status, Some(rule)),
            "{encoding}"
        );
    }
    assert_eq!(
        up.langfuse.count(),
        before,
        "nothing refused reached Langfuse"
    );

    // Uncompressed, the same rules hold; from the VPC, the body is not judged at all.
    let r = send_raw(
        to,
        EXTERNAL_PEER,
        &raw_post(ingest, &json, &ingestion_batch(3, "u")),
    )
    .await
    .expect("answer");
    assert_eq!(r.status, 200);
    let raw = raw_post(ingest, &gz[..2], &gzip(&ingestion_batch(3, "x' OR 1=1 --")));
    let r = send_raw(to, INTERNAL_PEER, &raw).await.expect("answer");
    assert_eq!(r.status, 200, "internal exports are not judged");
}

/// A small compressed body (read at once, under 64 KiB) that decodes past the inspection
/// window meets the route's policy on its decoded size, as a held one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_compressed_body_meets_the_policy_on_its_decoded_size() {
    let up = RecordingUpstream::start("app").await;
    let plugins = |oversize: &str| {
        let owasp = concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/waf/owasp");
        format!("body_inspection = {{ limit_bytes = 10000, oversize = \"{oversize}\" }}\n\n[[listeners.plugins]]\ntype = \"owasp\"\nrules = [\"{owasp}\"]\noverrides = {{ SizeRestrictions_BODY = \"off\" }}\n")
    };
    // 20 KB of form text, then an attack past the first window.
    let mut text: Vec<u8> = (0..2000u32)
        .flat_map(|i| format!("f{i}=v{}&", i * 7 % 97).into_bytes())
        .collect();
    text.truncate(20_000);
    let attacked = [&text[..], b"&q=1' UNION SELECT password FROM users--"].concat();
    let headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Content-Encoding", "gzip"),
    ];
    for (oversize, body, status) in [
        ("refuse", &text, 413),
        ("inspect_all", &text, 200),
        ("inspect_all", &attacked, 403),
    ] {
        let rampart =
            Rampart::start(&one_listener(up.addr, "", &plugins(oversize)), &["web"]).await;
        let sent = gzip(body);
        assert!(sent.len() < 10_000, "read at once: {} bytes", sent.len());
        let before = up.count();
        let r = send_raw(
            rampart.addr("web"),
            EXTERNAL_PEER,
            &raw_post("/form", &headers, &sent),
        )
        .await
        .expect("answer");
        assert_eq!(r.status, status, "{oversize}: {:?}", r.json());
        let reached = up.count() - before;
        assert_eq!(
            reached,
            usize::from(status == 200),
            "{oversize}: upstream saw {reached}"
        );
    }
}
