//! No bypass by size: an attack after 1, 8 or 64 MiB of padding is refused like one without,
//! the upstream never sees a complete request when a body is refused midway, and a large
//! benign body arrives whole and byte-identical.

use std::net::SocketAddr;
use std::time::Duration;

use rampart_integration::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1 << 20;
const SQLI: &str = "1' UNION SELECT password FROM users--";

/// The owasp plugin with the `llm` profile on the only route (prompts read as prose).
async fn start() -> (RecordingUpstream, Rampart) {
    let up = RecordingUpstream::start("app").await;
    let plugins = format!(
        r#"
[[listeners.plugins]]
type = "owasp"
rules = ["{}/../rules/waf/owasp"]
routes = {{ app = "llm" }}
"#,
        env!("CARGO_MANIFEST_DIR")
    );
    let rampart = Rampart::start(&one_listener(up.addr, "", &plugins), &["web"]).await;
    (up, rampart)
}

/// Sends a request whose body is written while the answer is read (a refused client may
/// stop being read midway); the answer's status, if one came.
async fn send(to: SocketAddr, head: String, body: Vec<u8>, chunked: bool) -> Option<u16> {
    let stream = TcpStream::connect(to).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        if chunked {
            for piece in body.chunks(256 * 1024) {
                wr.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                    .await?;
                wr.write_all(piece).await?;
                wr.write_all(b"\r\n").await?;
            }
            wr.write_all(b"0\r\n\r\n").await?;
        } else {
            wr.write_all(&body).await?;
        }
        // Kept open until the answer is read: a client that half-closes is taken for gone.
        std::future::pending::<()>().await;
        std::io::Result::Ok(())
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(120), async {
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    std::str::from_utf8(&answer)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

fn head(path: &str, content_type: &str, length: Option<usize>) -> String {
    let framing = match length {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".to_string(),
    };
    format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nUser-Agent: rampart-tests/1.0\r\nContent-Type: {content_type}\r\n{framing}\r\nConnection: close\r\n\r\n"
    )
}

/// Form padding as an attacker would send it: many ordinary fields (one huge field is
/// refused by the argument-length rule on its own), then the attack.
fn form_with_attack_after(padding: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(padding + 100);
    let value = "a".repeat(1000);
    let mut i = 0;
    while body.len() < padding {
        body.extend_from_slice(format!("p{i}={value}&").as_bytes());
        i += 1;
    }
    body.extend_from_slice(format!("q={}", SQLI.replace(' ', "+")).as_bytes());
    body
}

fn chat(prompt_len: usize, user: &str) -> Vec<u8> {
    let sentence = "Please review this function and explain what it does. ";
    let prompt = sentence.repeat(prompt_len / sentence.len() + 1);
    serde_json::json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": &prompt[..prompt_len]}],
        "user": user,
    })
    .to_string()
    .into_bytes()
}

/// No request to `path` reached the upstream whole.
fn nothing_complete(up: &RecordingUpstream, path: &str) -> bool {
    up.requests().iter().all(|r| r.uri != path || !r.complete)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attack_after_1_8_and_64_mib_of_form_padding_is_refused() {
    let (up, rampart) = start().await;
    let to = rampart.addr("web");
    // The same attack without padding: the baseline.
    let plain = form_with_attack_after(10);
    let status = send(
        to,
        head(
            "/form0",
            "application/x-www-form-urlencoded",
            Some(plain.len()),
        ),
        plain,
        false,
    )
    .await;
    assert_eq!(status, Some(403));
    for (i, padding) in [MIB, 8 * MIB, 64 * MIB].into_iter().enumerate() {
        let body = form_with_attack_after(padding);
        let path = format!("/form{}", i + 1);
        let status = send(
            to,
            head(&path, "application/x-www-form-urlencoded", Some(body.len())),
            body,
            false,
        )
        .await;
        assert_eq!(status, Some(403), "after {padding} bytes");
        assert!(
            nothing_complete(&up, &path),
            "{path} reached the upstream whole"
        );
    }
    // Chunked, small and large: the upstream never gets the last chunk.
    let small = form_with_attack_after(20_000);
    let status = send(
        to,
        head("/chunked-small", "application/x-www-form-urlencoded", None),
        small,
        true,
    )
    .await;
    assert_eq!(status, Some(403));
    assert!(nothing_complete(&up, "/chunked-small"));
    let body = form_with_attack_after(8 * MIB);
    let status = send(
        to,
        head("/chunked", "application/x-www-form-urlencoded", None),
        body,
        true,
    )
    .await;
    assert_eq!(status, Some(403));
    assert!(
        eventually(Duration::from_secs(5), || async {
            nothing_complete(&up, "/chunked")
        })
        .await
    );
    // Refusals are the WAF's ordinary work: logged as blocks, not as errors.
    let stderr = rampart.stderr_text();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "{:?}", &errors[..errors.len().min(3)]);
    assert!(stderr.contains("rampart::blocked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attack_in_a_chat_field_after_a_large_prompt_is_refused() {
    let (up, rampart) = start().await;
    let to = rampart.addr("web");
    for (i, prompt) in [100, MIB, 8 * MIB].into_iter().enumerate() {
        let body = chat(prompt, SQLI);
        let path = format!("/v1/chat/completions/{i}");
        let status = send(
            to,
            head(&path, "application/json", Some(body.len())),
            body,
            false,
        )
        .await;
        assert_eq!(status, Some(403), "after a {prompt}-byte prompt");
        assert!(nothing_complete(&up, &path));
    }
    // An attack in the middle of a long structural string (not a prompt) is found across
    // the window it straddles.
    let mut user = "u".repeat(3 * MIB);
    user.insert_str(MIB - 10, SQLI);
    let body = chat(100, &user);
    let status = send(
        to,
        head("/v1/long-user", "application/json", None),
        body,
        true,
    )
    .await;
    assert_eq!(status, Some(403));
    assert!(nothing_complete(&up, "/v1/long-user"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_benign_body_arrives_whole_and_byte_identical() {
    let (up, rampart) = start().await;
    let to = rampart.addr("web");
    let body = chat(8 * MIB, "user-1234");
    let status = send(
        to,
        head("/v1/big", "application/json", Some(body.len())),
        body.clone(),
        false,
    )
    .await;
    assert_eq!(status, Some(200));
    let chunked = chat(3 * MIB, "user-5678");
    let status = send(
        to,
        head("/v1/big-chunked", "application/json", None),
        chunked.clone(),
        true,
    )
    .await;
    assert_eq!(status, Some(200));
    let got = up.requests();
    let find = |path: &str| {
        got.iter()
            .find(|r| r.uri == path)
            .expect("recorded")
            .clone()
    };
    let big = find("/v1/big");
    assert!(big.complete);
    assert!(big.body == body, "the 8 MiB body arrived changed");
    let big_chunked = find("/v1/big-chunked");
    assert!(big_chunked.complete);
    assert!(big_chunked.body == chunked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_cannot_inspect_says_so_and_only_it_skips() {
    let up = RecordingUpstream::start("app").await;
    let config = format!(
        r#"
[upstreams.app]
addrs = ["{addr}"]

[[listeners]]
name = "web"
listen = "0.0.0.0:80"

# The `llm` profile switches the body size rule off, so that only the attack can refuse.
[[listeners.plugins]]
type = "owasp"
rules = ["{rules}/../rules/waf/owasp"]
routes = {{ app = "llm", uploads = "llm" }}

[[listeners.routes]]
prefix = "/uploads/"
name = "uploads"
upstream = "app"
body_inspection = {{ oversize = "inspect_prefix" }}

[[listeners.routes]]
prefix = "/"
upstream = "app"
"#,
        addr = up.addr,
        rules = env!("CARGO_MANIFEST_DIR"),
    );
    let rampart = Rampart::start(&config, &["web"]).await;
    let to = rampart.addr("web");
    let form = "application/x-www-form-urlencoded";
    let body = form_with_attack_after(2 * MIB);
    let status = send(
        to,
        head("/submit", form, Some(body.len())),
        body.clone(),
        false,
    )
    .await;
    assert_eq!(
        status,
        Some(403),
        "the listener's default judges every byte"
    );
    let status = send(to, head("/uploads/x", form, Some(body.len())), body, false).await;
    assert_eq!(
        status,
        Some(200),
        "the route that said inspect_prefix judges its first MiB only"
    );
}
