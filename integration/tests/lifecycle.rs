//! Stopping and upgrading without cutting anyone off: SIGTERM drains streams in flight,
//! and SIGQUIT hands the listeners to a new process started with `--upgrade`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rampart_integration::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One listener to an event-stream upstream, with its upgrade socket in `dir`.
fn config(upstream: SocketAddr, dir: &std::path::Path) -> String {
    let server = format!(
        "[server]\nthreads = 2\ndrain_seconds = 60\nupgrade_socket = \"{}\"\n",
        dir.join("private").join("upgrade.sock").display()
    );
    one_listener(upstream, &server, "")
}

/// Opens a stream through rampart and reads until its first event arrived.
async fn open_stream(to: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(to).await.expect("connect");
    stream
        .write_all(b"GET /v1/stream HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("data: 0") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("first event in time")
            .expect("read");
        assert!(n > 0, "closed before the first event");
        got.extend_from_slice(&chunk[..n]);
    }
    (stream, got)
}

/// Reads the rest of a chunked stream, up to its last chunk; the events it held.
async fn finish_stream(stream: &mut TcpStream, mut got: Vec<u8>, within: Duration) -> usize {
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(within, async {
        while !got.ends_with(b"0\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got).to_string();
    if !got.ends_with(b"0\r\n\r\n") {
        return usize::MAX - text.matches("data: ").count();
    }
    text.matches("data: ").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_20_second_stream_finish_and_turns_ready_off() {
    let upstream = start_event_stream_upstream(20, Duration::from_secs(1)).await;
    let dir = tempfile::tempdir().expect("dir");
    let mut rampart = Rampart::start(&config(upstream, dir.path()), &["web"]).await;
    let to = rampart.addr("web");
    let (mut stream, got) = open_stream(to).await;

    rampart.signal("TERM");
    assert!(
        eventually(Duration::from_secs(2), || async {
            rampart.admin_get("/ready").await.status == 503
        })
        .await,
        "/ready answers 503 once draining"
    );
    // New requests are not served by the draining process.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = tokio::time::timeout(
        Duration::from_secs(2),
        send_raw(
            to,
            "127.0.0.1",
            b"GET /late HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert!(
        !matches!(late, Ok(Ok(ref r)) if r.status == 200),
        "a request after SIGTERM was served: {late:?}"
    );

    let events = finish_stream(&mut stream, got, Duration::from_secs(30)).await;
    assert_eq!(events, 20, "the stream in flight ran to its end");
    let ended = Instant::now();
    let status = rampart
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("rampart exits once the stream is done, not after the whole drain period");
    assert!(status.success(), "{status:?}");
    assert!(ended.elapsed() < Duration::from_secs(5));
    assert!(rampart.stderr_text().contains("drained"));
}

/// Opens a stream and reads it to its end in the background; the number of events it held
/// (`usize::MAX - n` if it was cut after `n`).
fn stream_in_background(to: SocketAddr) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let (mut stream, got) = open_stream(to).await;
        finish_stream(&mut stream, got, Duration::from_secs(60)).await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_graceful_upgrades_under_load_lose_nothing() {
    let upstream = start_event_stream_upstream(10, Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().expect("dir");
    let socket = dir.path().join("private").join("upgrade.sock");
    let mut rampart = Rampart::start(&config(upstream, dir.path()), &["web"]).await;
    let to = rampart.addr("web");

    // Steady load: a new connection per request, each must get its answer.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let raw = b"GET /v1/models HTTP/1.1\r\nHost: a\r\nUser-Agent: t/1\r\nConnection: close\r\n\r\n";
                match send_raw(to, "127.0.0.1", raw).await {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("status {}", r.status)),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };

    let mut streams = Vec::new();
    let mut old_processes = Vec::new();
    for round in 0..10 {
        // Streams open on the process about to hand over.
        streams.push(stream_in_background(to));
        streams.push(stream_in_background(to));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = std::fs::remove_file(&socket);
        let successor =
            rampart.spawn_successor(&dir.path().join(format!("successor-{round}.stderr")));
        assert!(
            eventually(Duration::from_secs(20), || async { socket.exists() }).await,
            "round {round}: the successor does not wait on the upgrade socket"
        );
        rampart.signal("QUIT");
        let old = rampart.replace_child(successor);
        old_processes.push(old);
        // The successor is upgraded in turn only once it handles signals.
        let log = dir.path().join(format!("successor-{round}.stderr"));
        assert!(
            eventually(Duration::from_secs(20), || async {
                std::fs::read_to_string(&log).is_ok_and(|t| t.contains("serving: SIGTERM drains"))
            })
            .await,
            "round {round}: the successor did not start serving"
        );
    }
    // Let the last handover settle, then stop the load.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.expect("load task");
    assert!(ok > 50, "only {ok} requests were sent");
    eprintln!(
        "10 upgrades: {ok} requests answered, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed
    );
    for (i, s) in streams.into_iter().enumerate() {
        assert_eq!(s.await.expect("stream task"), 10, "stream {i} was cut");
    }
    // Every old process drained and exited by itself.
    for (i, mut old) in old_processes.into_iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Ok(Some(status)) = old.try_wait() {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let status = status.unwrap_or_else(|| panic!("process {i} did not exit after its drain"));
        assert!(status.success(), "process {i}: {status:?}");
    }
    assert_eq!(rampart.admin_get("/ready").await.status, 200);
}
