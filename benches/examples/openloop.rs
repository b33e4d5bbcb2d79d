//! Open-loop load at a fixed rate, for latency below saturation: requests are scheduled at
//! fixed times over keep-alive connections. A request that a slow answer held back is
//! measured from when it was due, so a stall counts against every request it delayed (no
//! coordinated omission); any other from when it was sent.
//!
//! `openloop ADDR REQUEST_FILE RATE SECONDS CONNECTIONS` prints one JSON line:
//! `{"sent":..,"ok":..,"errors":..,"p50_us":..,"p90_us":..,"p99_us":..,"max_us":..}`.
//! REQUEST_FILE holds one whole HTTP/1.1 request (keep-alive); answers must carry
//! Content-Length.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Failure = Box<dyn std::error::Error + Send + Sync>;

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

/// One connection's share: every `interval`, from `start + offset`, until `end`.
async fn drive(
    addr: String,
    request: Vec<u8>,
    start: Instant,
    offset: Duration,
    interval: Duration,
    end: Instant,
) -> Result<(Vec<u64>, u64), Failure> {
    let mut conn = TcpStream::connect(&addr).await?;
    conn.set_nodelay(true)?;
    let (mut latencies, mut errors) = (Vec::new(), 0);
    let mut buf = Vec::new();
    let mut due = start + offset;
    let mut last_done = start;
    // A server slower than the rate leaves requests due when the time is up: they are not sent.
    while due < end && Instant::now() < end {
        tokio::time::sleep_until(due.into()).await;
        // A request held back by a slow answer before it counts from when it was due: that
        // delay is the server's. Otherwise it counts from when it went, since the timer's own
        // lateness (it ticks in milliseconds) is the client's.
        let sent = Instant::now();
        let began = if last_done > due { due } else { sent };
        conn.write_all(&request).await?;
        let status = read_response(&mut conn, &mut buf).await?;
        last_done = Instant::now();
        match status {
            200..=299 => latencies.push(last_done.duration_since(began).as_micros() as u64),
            _ => errors += 1,
        }
        due += interval;
    }
    Ok((latencies, errors))
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
    let interval = Duration::from_secs_f64(f64::from(connections) / rate);
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs_f64(seconds.parse()?);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let offset = interval.mul_f64(f64::from(c) / f64::from(connections));
        tasks.push(tokio::spawn(drive(
            addr.clone(),
            request.clone(),
            start,
            offset,
            interval,
            end,
        )));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (latencies, e) = t.await??;
        all.extend(latencies);
        errors += e;
    }
    all.sort_unstable();
    let pct = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"sent\":{},\"ok\":{},\"errors\":{errors},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"max_us\":{}}}",
        all.len() as u64 + errors,
        all.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        all.last().copied().unwrap_or(0)
    );
    Ok(())
}
