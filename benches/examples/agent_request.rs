//! Writes a coding-agent request body to stdout, for the load run:
//! `agent_request openai|anthropic BYTES`.

use std::io::Write;

use rampart_benches::agent::{request, Shape};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shape = match args.first().map(String::as_str) {
        Some("openai") => Shape::OpenAi,
        Some("anthropic") => Shape::Anthropic,
        _ => usage(),
    };
    let Some(size) = args.get(1).and_then(|s| s.parse().ok()) else {
        usage()
    };
    let body = request(shape, size);
    if let Err(e) = std::io::stdout().write_all(&body) {
        eprintln!("agent_request: {e}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!("usage: agent_request openai|anthropic BYTES");
    std::process::exit(2);
}
