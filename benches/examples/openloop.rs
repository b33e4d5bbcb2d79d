//! Open-loop load at a fixed rate, for latency below saturation: requests are due at evenly
//! spaced times, dealt round-robin to keep-alive connections. A request that a slow answer
//! held back is measured from when it was due, so a stall counts against every request it
//! delayed (no coordinated omission); any other from when it was sent.
//!
//! The times are kept by a thread of its own that sleeps with microsecond slack. Tokio's
//! timer ticks in milliseconds: paced by it, every request due within one millisecond went
//! out at once, and at 15,000 a second each millisecond began with a burst of 15, which
//! queued in the proxy and put the queueing on every contender's latency.
//!
//! `openloop ADDR REQUEST_FILE RATE SECONDS CONNECTIONS` prints one JSON line:
//! `{"sent":..,"ok":..,"errors":..,"p50_us":..,"p90_us":..,"p99_us":..,"max_us":..,
//! "pacer_late_max_us":..,"pacer_late_over_1ms":..}`: the last two say how far the pacer
//! itself fell behind (a late pacer sends what it owes in a burst).
//! REQUEST_FILE holds one whole HTTP/1.1 request (keep-alive); answers must carry
//! Content-Length. A connection that breaks counts one error and is opened again.
//!
//! With `OPENLOOP_SLOW_US=N` set, each request slower than N µs is also written to stderr as
//! `slow MONOTONIC_SECONDS LATENCY_US`, its start on the clock `perf record -k CLOCK_MONOTONIC`
//! stamps samples with: a stall can then be found in a profile taken beside the run.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Requests slower than this are written out with their start (`OPENLOOP_SLOW_US`).
#[derive(Clone, Copy)]
struct SlowLog {
    threshold_us: u64,
    /// An instant and CLOCK_MONOTONIC's reading at it, to put an `Instant` on that clock.
    origin: (Instant, Duration),
}

impl SlowLog {
    fn from_env() -> Option<Self> {
        let threshold_us = std::env::var("OPENLOOP_SLOW_US").ok()?.parse().ok()?;
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let monotonic = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        Some(SlowLog {
            threshold_us,
            origin: (Instant::now(), monotonic),
        })
    }

    fn note(&self, began: Instant, latency_us: u64) {
        if latency_us > self.threshold_us {
            let at = self.origin.1 + began.saturating_duration_since(self.origin.0);
            eprintln!("slow {:.6} {latency_us}", at.as_secs_f64());
        }
    }
}

/// Reads one response with a Content-Length body from `conn`; `buf` keeps what follows.
async fn read_response(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16, Failure> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])?;
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or("no status")?;
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .ok_or("no content-length")?;
            let total = end + 4 + length;
            while buf.len() < total {
                read_more(conn, buf).await?;
            }
            buf.drain(..total);
            return Ok(status);
        }
        read_more(conn, buf).await?;
    }
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), Failure> {
    let mut chunk = [0u8; 16 * 1024];
    let n = conn.read(&mut chunk).await?;
    if n == 0 {
        return Err("connection closed".into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

async fn connect(addr: &str) -> Result<TcpStream, Failure> {
    let conn = TcpStream::connect(addr).await?;
    conn.set_nodelay(true)?;
    Ok(conn)
}

/// One connection: each due time it is dealt, one request, until `end`.
async fn drive(
    addr: String,
    request: Vec<u8>,
    mut dealt: mpsc::UnboundedReceiver<Instant>,
    start: Instant,
    end: Instant,
    slow: Option<SlowLog>,
) -> Result<(Vec<u64>, u64), Failure> {
    let mut conn = connect(&addr).await?;
    let (mut latencies, mut errors) = (Vec::new(), 0);
    let mut buf = Vec::new();
    let mut last_done = start;
    // A server slower than the rate leaves requests due when the time is up: they are not sent.
    while let Some(due) = dealt.recv().await {
        if Instant::now() >= end {
            break;
        }
        // A request held back by a slow answer before it counts from when it was due: that
        // delay is the server's. Otherwise it counts from when it went, since the pacer's
        // own lateness is the client's.
        let sent = Instant::now();
        let began = if last_done > due { due } else { sent };
        let answer = match conn.write_all(&request).await {
            Ok(()) => read_response(&mut conn, &mut buf).await,
            Err(e) => Err(e.into()),
        };
        last_done = Instant::now();
        match answer {
            Ok(200..=299) => {
                let latency = last_done.duration_since(began).as_micros() as u64;
                if let Some(slow) = &slow {
                    slow.note(began, latency);
                }
                latencies.push(latency);
            }
            Ok(_) => errors += 1,
            // A server may close a connection after an error answer; that request counts as
            // an error and the connection is opened again, as a client's pool would.
            Err(_) => {
                errors += 1;
                conn = connect(&addr).await?;
                buf.clear();
            }
        }
    }
    Ok((latencies, errors))
}

/// Deals the due times, `interval` apart from `start` to `end`, to the connections in turn.
fn pace(
    connections: Vec<mpsc::UnboundedSender<Instant>>,
    start: Instant,
    interval: Duration,
    end: Instant,
) -> PacerLateness {
    // The default slack lets a sleep end up to 50 µs late; at 15,000 a second requests
    // are 67 µs apart.
    // SAFETY: prctl with PR_SET_TIMERSLACK only sets this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000);
    }
    let mut due = start;
    let mut lateness = PacerLateness::default();
    for tx in connections.iter().cycle() {
        if due >= end {
            break;
        }
        match due.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            None => lateness.note(due.elapsed()),
        }
        // A connection that failed has hung up; the others go on.
        let _ = tx.send(due);
        due += interval;
    }
    lateness
}

/// How late the pacer dealt requests: a late pacer deals those it owes at once, a burst the
/// server queues, so a run whose pacer fell far behind measured the client as well.
#[derive(Default)]
struct PacerLateness {
    max: Duration,
    /// Requests dealt more than a millisecond late.
    over_1ms: u64,
}

impl PacerLateness {
    fn note(&mut self, late: Duration) {
        self.max = self.max.max(late);
        if late > Duration::from_millis(1) {
            self.over_1ms += 1;
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, file, rate, seconds, connections] = args.as_slice() else {
        return Err("usage: openloop ADDR REQUEST_FILE RATE SECONDS CONNECTIONS".into());
    };
    let request = std::fs::read(file)?;
    let rate: f64 = rate.parse()?;
    let connections: u32 = connections.parse()?;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs_f64(seconds.parse()?);
    let slow = SlowLog::from_env();
    let (mut tasks, mut senders) = (Vec::new(), Vec::new());
    for _ in 0..connections {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        tasks.push(tokio::spawn(drive(
            addr.clone(),
            request.clone(),
            rx,
            start,
            end,
            slow,
        )));
    }
    let pacer = std::thread::spawn(move || pace(senders, start, interval, end));
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (latencies, e) = t.await??;
        all.extend(latencies);
        errors += e;
    }
    let late = pacer.join().map_err(|_| "the pacer panicked")?;
    all.sort_unstable();
    let pct = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"sent\":{},\"ok\":{},\"errors\":{errors},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"max_us\":{},\"pacer_late_max_us\":{},\"pacer_late_over_1ms\":{}}}",
        all.len() as u64 + errors,
        all.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        all.last().copied().unwrap_or(0),
        late.max.as_micros(),
        late.over_1ms,
    );
    Ok(())
}
