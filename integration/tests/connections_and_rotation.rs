//! Connection reuse after refusals, and rotating a shared secret without locking anyone out.

use std::time::Duration;

use rampart_integration::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads from `stream` until `n` complete responses (headers + Content-Length body) arrived,
/// or the server closed the connection.
async fn read_responses(stream: &mut tokio::net::TcpStream, n: usize) -> Vec<u16> {
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // Parse whatever complete responses are buffered.
        while let Some(len) = whole_message_len(&buf) {
            let status = String::from_utf8_lossy(&buf[..len])
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            statuses.push(status);
            buf.drain(..len);
        }
        if statuses.len() >= n {
            return statuses;
        }
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return statuses,
            Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_body_is_never_read_as_a_second_request() {
    let up = SeedUpstreams::start(1).await;
    let rampart = Rampart::start(&seed_config(&up, ""), SEED_LISTENERS).await;
    // The body of the refused POST is itself a complete, authorised request: if the proxy
    // parsed it as the next request on the connection, it would reach the admin API.
    let smuggled = format!(
        "POST /key/delete HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\nX-Origin-Verify: {ORIGIN_SECRET}\r\nX-Admin-Secret: {ADMIN_SECRET}\r\nContent-Length: 0\r\n\r\n"
    );
    let first = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let mut stream = tokio::net::TcpStream::connect(rampart.addr("web"))
        .await
        .expect("connect");
    stream.write_all(first.as_bytes()).await.expect("write");
    let statuses = read_responses(&mut stream, 2).await;
    assert_eq!(
        statuses.first(),
        Some(&403),
        "the unauthenticated POST is refused"
    );
    assert!(
        statuses.len() == 1,
        "the body was answered as a request: {statuses:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        up.total_requests(),
        0,
        "the smuggled request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_serve_many_requests() {
    let up = SeedUpstreams::start(1).await;
    let rampart = Rampart::start(&seed_config(&up, ""), SEED_LISTENERS).await;
    let mut stream = tokio::net::TcpStream::connect(rampart.addr("web"))
        .await
        .expect("connect");
    let one =
        format!("GET /v1/models HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\nX-Origin-Verify: {ORIGIN_SECRET}\r\n\r\n");
    for _ in 0..5 {
        stream.write_all(one.as_bytes()).await.expect("write");
        assert_eq!(read_responses(&mut stream, 1).await, vec![200]);
    }
    assert_eq!(up.litellm[0].count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_file_secret_keeps_old_and_new_valid_until_the_old_is_removed() {
    let up = SeedUpstreams::start(1).await;
    let secret_dir = tempfile::tempdir().expect("tmp");
    let secret_file = secret_dir.path().join("origin-verify");
    std::fs::write(&secret_file, "old-origin-value-0123456789abcdef\n").expect("write secret");
    let config = seed_config(&up, "").replace(
        "[secrets.origin-verify]\nenv = [\"RAMPART_ORIGIN_VERIFY_SECRET\", \"RAMPART_ORIGIN_VERIFY_SECRET_PREVIOUS\"]",
        &format!("[secrets.origin-verify]\nfile = \"{}\"", secret_file.display()),
    );
    let rampart = Rampart::start_opts(&config, SEED_LISTENERS, &[], &["--no-watch"]).await;
    let web = rampart.addr("web");
    let status = |value: &'static str| async move {
        request(
            web,
            EXTERNAL_PEER,
            "GET",
            "/v1/models",
            &[("X-Origin-Verify", value)],
        )
        .await
        .status
    };
    const OLD: &str = "old-origin-value-0123456789abcdef";
    const NEW: &str = "new-origin-value-fedcba9876543210";
    assert_eq!((status(OLD).await, status(NEW).await), (200, 403));

    std::fs::write(&secret_file, format!("{OLD}\n{NEW}\n")).expect("add new value");
    assert_eq!(rampart.admin_post("/reload").await.status, 200);
    assert_eq!(
        (status(OLD).await, status(NEW).await),
        (200, 200),
        "both valid mid-rotation"
    );

    std::fs::write(&secret_file, format!("{NEW}\n")).expect("drop old value");
    assert_eq!(rampart.admin_post("/reload").await.status, 200);
    assert_eq!(
        (status(OLD).await, status(NEW).await),
        (403, 200),
        "old value retired"
    );

    // Emptying the file is refused: the listener would be locked, so the old rules stay.
    std::fs::write(&secret_file, "REPLACE_ME\n").expect("placeholder");
    let r = rampart.admin_post("/reload").await;
    assert_eq!(r.status, 422);
    let err = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("origin-verify") && !err.contains(NEW), "{err}");
    assert_eq!(status(NEW).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_value_from_the_environment_is_accepted_too() {
    let up = SeedUpstreams::start(1).await;
    let rampart = Rampart::start_with_env(
        &seed_config(&up, ""),
        SEED_LISTENERS,
        &[(
            "RAMPART_ORIGIN_VERIFY_SECRET_PREVIOUS",
            "previous-origin-value-0123456789",
        )],
    )
    .await;
    let web = rampart.addr("web");
    for value in [ORIGIN_SECRET, "previous-origin-value-0123456789"] {
        let r = request(
            web,
            EXTERNAL_PEER,
            "GET",
            "/v1/models",
            &[("X-Origin-Verify", value)],
        )
        .await;
        assert_eq!(r.status, 200);
    }
}
