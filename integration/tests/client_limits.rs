//! Deadlines and caps on client connections: slow heads, slow bodies, idle keep-alive,
//! oversized heads, too many connections, and heads Pingora refuses itself. Each is closed
//! on time and counted, while an ordinary client keeps being served in the same test.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rampart_integration::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const LIMITS: &str = "client_limits = { header_timeout_ms = 1500, idle_timeout_ms = 1000, body_timeout_ms = 1000, min_body_rate = 100, max_connections_per_address = 3, max_header_bytes = 8192, max_header_line_bytes = 2048 }";

async fn start() -> (RecordingUpstream, Rampart) {
    let up = RecordingUpstream::start("app").await;
    let rampart = Rampart::start(&one_listener(up.addr, "", LIMITS), &["web"]).await;
    (up, rampart)
}

async fn connect_from(to: SocketAddr, source: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source.parse().expect("ip"), 0))
        .expect("bind");
    socket.connect(to).await.expect("connect")
}

/// Reads until the server closes, or `within` passes; returns what was read and whether
/// the server closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (buf, closed)
}

fn status_of(answer: &[u8]) -> Option<u16> {
    std::str::from_utf8(answer)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

fn assert_answer(answer: &[u8], status: u16) {
    assert_eq!(
        status_of(answer),
        Some(status),
        "{:?}",
        String::from_utf8_lossy(answer)
    );
}

async fn closes(rampart: &Rampart, reason: &str) -> f64 {
    metric_value(
        &rampart.metrics().await,
        &format!("rampart_client_closes_total{{listener=\"web\",reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

async fn served(rampart: &Rampart) -> bool {
    request(rampart.addr("web"), "127.0.0.9", "GET", "/ok", &[])
        .await
        .status
        == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_is_cut_at_its_deadline_while_others_are_served() {
    let (up, rampart) = start().await;
    let mut slow = connect_from(rampart.addr("web"), "127.0.0.1").await;
    let started = Instant::now();
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n")
        .await
        .expect("write");
    // A header line every 200 ms: each read resets a per-read timer, never the deadline.
    let trickle = async {
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let ((), ok) = tokio::join!(trickle, served(&rampart));
    assert!(ok, "an ordinary client is served meanwhile");
    let (answer, closed) = read_until_closed(&mut slow, Duration::from_secs(3)).await;
    let elapsed = started.elapsed();
    assert!(closed, "the slow connection was closed");
    assert_answer(&answer, 408);
    assert!(
        elapsed < Duration::from_millis(4000),
        "closed after {elapsed:?}, header_timeout is 1.5 s"
    );
    assert_eq!(closes(&rampart, "header_timeout").await, 1.0);
    assert!(up.requests().iter().all(|r| r.uri != "/slow"));
    let log = rampart.stdout_text();
    assert!(
        log.lines().any(|l| l.contains("\"status\":408")
            && l.contains("client.header_timeout")
            && l.contains("/slow")),
        "an access-log line for the refused head: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_is_closed_at_the_head_deadline() {
    let (_up, rampart) = start().await;
    let mut silent = connect_from(rampart.addr("web"), "127.0.0.1").await;
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut silent, Duration::from_secs(4)).await;
    assert!(closed, "closed");
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert_answer(&answer, 408);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_cut_and_never_reaches_the_upstream_whole() {
    let (up, rampart) = start().await;
    let mut slow = connect_from(rampart.addr("web"), "127.0.0.1").await;
    slow.write_all(
        b"POST /upload HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n",
    )
    .await
    .expect("write");
    let started = Instant::now();
    // 5 bytes a second against a minimum of 100: the deadline barely moves past 1 s.
    let trickle = async {
        for _ in 0..50 {
            if slow.write_all(b"a").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let ((), ok) = tokio::join!(
        async {
            tokio::time::timeout(Duration::from_secs(4), trickle)
                .await
                .unwrap_or(())
        },
        served(&rampart)
    );
    assert!(ok, "an ordinary client is served meanwhile");
    let (answer, closed) = read_until_closed(&mut slow, Duration::from_secs(3)).await;
    assert!(closed, "the slow body's connection was closed");
    assert!(started.elapsed() < Duration::from_secs(6));
    if !answer.is_empty() {
        assert_answer(&answer, 408);
    }
    assert!(
        eventually(Duration::from_secs(2), || async {
            closes(&rampart, "body_timeout").await == 1.0
        })
        .await
    );
    assert!(
        up.requests()
            .iter()
            .all(|r| r.uri != "/upload" || !r.complete),
        "the upstream never saw a complete request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let (_up, rampart) = start().await;
    let mut conn = connect_from(rampart.addr("web"), "127.0.0.1").await;
    conn.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 4096];
    let n = conn.read(&mut buf).await.expect("answer");
    assert_eq!(status_of(&buf[..n]), Some(200));
    let idle_from = Instant::now();
    let (_, closed) = read_until_closed(&mut conn, Duration::from_secs(3)).await;
    assert!(closed, "the idle connection was closed");
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_millis(2500),
        "closed after {idle:?} idle, idle_timeout is 1 s"
    );
    assert_eq!(closes(&rampart, "idle_timeout").await, 1.0);
}

/// A keep-alive connection waits for its next request without a buffer, and is given one
/// with the first bytes that arrive: however the next head comes (larger than that first
/// read, or a byte at a time), it reaches the upstream whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_reads_its_next_head_whole_however_it_arrives() {
    let (up, rampart) = start().await;
    let mut conn = connect_from(rampart.addr("web"), "127.0.0.1").await;
    conn.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\n\r\n")
        .await
        .expect("write");
    assert_answer(read_answer(&mut conn).await.0.as_bytes(), 200);

    // Larger than the first read (4 KiB), within the caps (lines of 2 KiB, 8 KiB in all).
    let values: Vec<String> = (0..3)
        .map(|i| format!("{i}{}", "v".repeat(1_900)))
        .collect();
    let mut large = String::from("GET /large HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\n");
    for (i, value) in values.iter().enumerate() {
        large.push_str(&format!("X-Long-{i}: {value}\r\n"));
    }
    large.push_str("\r\n");
    assert!(large.len() > 4096 && large.len() < 8192);
    tokio::time::sleep(Duration::from_millis(50)).await;
    conn.write_all(large.as_bytes()).await.expect("write");
    assert_answer(read_answer(&mut conn).await.0.as_bytes(), 200);

    // A byte at a time, well within the head's deadline.
    let trickled = b"GET /trickled HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\n\r\n";
    for byte in trickled {
        conn.write_all(std::slice::from_ref(byte))
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_answer(read_answer(&mut conn).await.0.as_bytes(), 200);

    let seen = up.requests();
    let uris: Vec<&str> = seen.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(uris, ["/first", "/large", "/trickled"]);
    for (i, value) in values.iter().enumerate() {
        let name = format!("x-long-{i}");
        let got = seen[1].headers.iter().find(|(k, _)| *k == name);
        assert_eq!(got.map(|(_, v)| v), Some(value), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let (_up, rampart) = start().await;
    let to = rampart.addr("web");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(to, "127.0.0.1").await);
    }
    // Let the three be admitted before the fourth (on a busy machine, this can take a
    // while: the test waits for it, not for a time).
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric_value(
                &rampart.metrics().await,
                "rampart_client_connections{listener=\"web\"}",
            ) == Some(3.0)
        })
        .await
    );
    let mut fourth = connect_from(to, "127.0.0.1").await;
    let (answer, closed) = read_until_closed(&mut fourth, Duration::from_secs(2)).await;
    assert!(closed);
    assert_answer(&answer, 503);
    assert!(String::from_utf8_lossy(&answer).contains("client.too_many_from_address"));
    assert_eq!(closes(&rampart, "too_many_from_address").await, 1.0);
    // Another address is served meanwhile, and a freed place is taken again.
    assert!(served(&rampart).await);
    held.pop();
    assert!(
        eventually(Duration::from_secs(2), || async {
            let mut conn = connect_from(to, "127.0.0.1").await;
            conn.write_all(
                b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\nConnection: close\r\n\r\n",
            )
            .await
            .is_ok()
                && status_of(&read_until_closed(&mut conn, Duration::from_secs(2)).await.0)
                    == Some(200)
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_past_their_caps_are_refused_with_431_and_reach_no_one() {
    let (up, rampart) = start().await;
    let to = rampart.addr("web");
    let long_line = format!(
        "GET /long HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2100)
    );
    let many_lines = format!(
        "GET /many HTTP/1.1\r\nHost: a\r\n{}\r\n",
        "X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(200)
    );
    // Just under both caps: served.
    let fits = format!(
        "GET /fits HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    for (raw, expected) in [(&long_line, 431), (&many_lines, 431), (&fits, 200)] {
        let answer = send_raw(to, "127.0.0.1", raw.as_bytes())
            .await
            .expect("answer");
        assert_eq!(answer.status, expected, "{}", &raw[..20]);
    }
    assert_eq!(closes(&rampart, "header_too_large").await, 2.0);
    let paths: Vec<String> = up.requests().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(paths, vec!["/fits".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_pingora_refuses_leaves_a_log_line_and_a_count() {
    let (up, rampart) = start().await;
    let answer = send_raw(
        rampart.addr("web"),
        "127.0.0.1",
        b"GET /bad HTTP/1.1\r\nHost: a\r\nBad Header Line\r\n\r\n",
    )
    .await
    .expect("answer");
    assert_eq!(answer.status, 400);
    assert_eq!(closes(&rampart, "malformed_request").await, 1.0);
    assert_eq!(up.count(), 0);
    let log = rampart.stdout_text();
    assert!(
        log.lines().any(|l| l.contains("\"status\":400")
            && l.contains("client.malformed_request")
            && l.contains("\"path\":\"/bad\"")),
        "{log}"
    );
    assert!(
        !rampart.stderr_text().contains(" ERROR "),
        "an expected refusal is not an ERROR line: {}",
        rampart.stderr_text()
    );
}

/// An upstream on loopback that hands each connection it accepts to `serve`, in a task of
/// its own.
async fn start_raw_upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// An upstream that answers every request with an endless chunked body, as fast as it can.
async fn start_firehose_upstream() -> SocketAddr {
    start_raw_upstream(|mut stream| async move {
        let mut head = [0u8; 4096];
        if stream.read(&mut head).await.unwrap_or(0) == 0 {
            return;
        }
        let start = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        if stream.write_all(start).await.is_err() {
            return;
        }
        let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
        while stream.write_all(chunk.as_bytes()).await.is_ok() {}
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_at_the_write_timeout() {
    let upstream = start_firehose_upstream().await;
    let rampart = Rampart::start(
        &one_listener(upstream, "", "client_limits = { write_timeout_ms = 1000 }"),
        &["web"],
    )
    .await;
    let mut reader = connect_from(rampart.addr("web"), "127.0.0.1").await;
    reader
        .write_all(b"GET /stream HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\n\r\n")
        .await
        .expect("write");
    // The client reads nothing: once the socket buffers are full, rampart's writes stall.
    assert!(
        eventually(Duration::from_secs(20), || async {
            closes(&rampart, "write_timeout").await == 1.0
        })
        .await,
        "a stalled reader was not cut"
    );
    drop(reader);
}

/// How an [`start_early_answer_upstream`] treats the body it did not wait for.
#[derive(Clone, Copy)]
enum AfterAnswer {
    /// Reads and drops the rest of the request, as most servers that refuse early do.
    Discards,
    /// Closes its connection at once.
    Closes,
}

/// An upstream that answers each request as soon as its head is in, before reading any
/// body: a server refusing an upload early, or one that does not care for the body.
async fn start_early_answer_upstream(after: AfterAnswer) -> SocketAddr {
    start_raw_upstream(move |mut stream| async move {
        let mut head = Vec::new();
        let mut chunk = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nearly";
        if stream.write_all(answer).await.is_err() {
            return;
        }
        if let AfterAnswer::Discards = after {
            while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
        }
    })
    .await
}

/// Reads one answer with a `content-length` body; returns its head (lower-cased) and body.
async fn read_answer(conn: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut chunk))
            .await
            .expect("an answer within 5 s")
            .expect("read");
        assert!(
            n > 0,
            "closed before an answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content-length");
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "closed inside the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    (head, buf[head_end..head_end + length].to_vec())
}

/// Sends a POST head declaring `declared` body bytes, then `sent` of them in a task of its
/// own (the answer may come first), on the connection's write half.
async fn post_with_body(
    conn: TcpStream,
    declared: usize,
    sent: usize,
) -> (
    tokio::net::tcp::OwnedReadHalf,
    tokio::task::JoinHandle<tokio::net::tcp::OwnedWriteHalf>,
) {
    let (reader, mut writer) = conn.into_split();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\ncontent-length: {declared}\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await.expect("head");
    let sending = tokio::spawn(async move {
        let block = vec![b'a'; 64 * 1024];
        let mut left = sent;
        while left > 0 {
            let n = left.min(block.len());
            if writer.write_all(&block[..n]).await.is_err() {
                break;
            }
            left -= n;
        }
        writer
    });
    (reader, sending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_body_keeps_the_connection_when_the_rest_can_be_drained() {
    for after in [AfterAnswer::Discards, AfterAnswer::Closes] {
        let upstream = start_early_answer_upstream(after).await;
        let rampart = Rampart::start(&one_listener(upstream, "", ""), &["web"]).await;
        let conn = connect_from(rampart.addr("web"), "127.0.0.1").await;
        let body = 2 << 20;
        let (reader, sending) = post_with_body(conn, body, body).await;
        let writer = sending.await.expect("sender");
        let mut conn = reader.reunite(writer).expect("one connection");
        let (head, answer) = read_answer(&mut conn).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(answer, b"early");
        assert!(head.contains("connection: keep-alive"), "{head}");
        // The same connection carries the next request: the 2 MiB left were drained,
        // not read as the next request's head.
        conn.write_all(b"GET /next HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\n\r\n")
            .await
            .expect("second request");
        let (head, answer) = read_answer(&mut conn).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(answer, b"early");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_a_body_too_large_to_drain_closes_the_connection() {
    let upstream = start_early_answer_upstream(AfterAnswer::Discards).await;
    let limits = "client_limits = { body_timeout_ms = 1500, min_body_rate = 0 }";
    let rampart = Rampart::start(&one_listener(upstream, "", limits), &["web"]).await;
    let conn = connect_from(rampart.addr("web"), "127.0.0.1").await;
    // 1 GiB declared, 1 MiB sent: draining the rest would take the client's whole upload.
    let (reader, sending) = post_with_body(conn, 1 << 30, 1 << 20).await;
    let writer = sending.await.expect("sender");
    let mut conn = reader.reunite(writer).expect("one connection");
    let (head, answer) = read_answer(&mut conn).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(answer, b"early");
    assert!(head.contains("connection: close"), "{head}");
    // The rest still goes to the upstream, under the body deadline like any upload: a
    // client that stops sending is cut there, not held open.
    let (_, closed) = read_until_closed(&mut conn, Duration::from_secs(5)).await;
    assert!(closed, "the connection was closed at the body deadline");
    assert_eq!(closes(&rampart, "body_timeout").await, 1.0);
}
