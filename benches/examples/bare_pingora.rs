//! The least proxy Pingora makes: every request to one upstream, nothing else (no routing,
//! plugins, context, access log or deadlines), on the allocator rampart uses. The load run
//! measures it beside rampart so that what a connection or a stream costs can be split into
//! Pingora's share and rampart's.
//!
//! `bare_pingora LISTEN UPSTREAM [STREAMS]` (all `host:port`): paths under `/sse/` go to
//! STREAMS when given (the load run's event-stream upstream); one worker thread, like the
//! load run's other contenders.

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Upstreams {
    all: String,
    streams: Option<String>,
}

#[async_trait]
impl ProxyHttp for Upstreams {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_core::Result<Box<HttpPeer>> {
        let to = match &self.streams {
            Some(streams) if session.req_header().uri.path().starts_with("/sse/") => streams,
            _ => &self.all,
        };
        Ok(Box::new(HttpPeer::new(to.as_str(), false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, upstreams) = match args.as_slice() {
        [listen, all, rest @ ..] if rest.len() <= 1 => (
            listen,
            Upstreams {
                all: all.clone(),
                streams: rest.first().cloned(),
            },
        ),
        _ => {
            eprintln!("usage: bare_pingora LISTEN UPSTREAM [STREAMS]");
            std::process::exit(2);
        }
    };
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, upstreams);
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
