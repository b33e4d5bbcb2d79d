//! Upstream pools: several replicas, round-robin over the healthy ones, health-checked in
//! the background, with connect and read timeouts.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::LoadBalancer;

use crate::config::UpstreamConfig;

/// A replica's peer, with the pool's TLS and timeouts.
fn peer(
    addr: pingora_core::protocols::l4::socket::SocketAddr,
    config: &UpstreamConfig,
    sni: &str,
) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, config.tls, sni.to_string());
    let o = &mut peer.options;
    o.connection_timeout = Some(Duration::from_millis(config.connect_timeout_ms));
    o.read_timeout = Some(Duration::from_millis(config.read_timeout_ms));
    o.write_timeout = Some(Duration::from_millis(config.read_timeout_ms));
    o.idle_timeout = Some(Duration::from_millis(config.pool_idle_timeout_ms));
    peer
}

/// How many backends `select` may try before giving up on finding a healthy one.
const MAX_SELECT_ITERATIONS: usize = 256;

pub struct UpstreamPool {
    pub name: String,
    pub config: UpstreamConfig,
    lb: LoadBalancer<RoundRobin>,
    sni: String,
    /// The peer of a pool whose addresses resolved to one replica, built once: that replica
    /// is chosen healthy or not (see `select`), and the balancer's selection (a hash set of
    /// the replicas tried, a readiness lookup) cost more than the rest of routing.
    only: Option<HttpPeer>,
    next_check: Mutex<Instant>,
}

impl UpstreamPool {
    pub fn new(name: &str, config: &UpstreamConfig) -> Result<Self, String> {
        if config.addrs.is_empty() {
            return Err(format!("upstream {name:?} has no addrs"));
        }
        let mut lb =
            LoadBalancer::<RoundRobin>::try_from_iter(config.addrs.iter().map(String::as_str))
                .map_err(|e| format!("upstream {name:?}: cannot resolve addrs: {e}"))?;
        let sni = config.sni.clone().unwrap_or_else(|| {
            let first = &config.addrs[0];
            first
                .rsplit_once(':')
                .map_or(first.as_str(), |(h, _)| h)
                .to_string()
        });
        match &config.health_check.path {
            Some(path) => {
                let mut check = HttpHealthCheck::new(&sni, config.tls);
                let mut req = RequestHeader::build("GET", path.as_bytes(), None)
                    .map_err(|e| format!("upstream {name:?}: bad health_check.path: {e}"))?;
                req.insert_header("Host", &sni)
                    .map_err(|e| format!("upstream {name:?}: bad host for health check: {e}"))?;
                check.req = req;
                check.peer_template.options.connection_timeout =
                    Some(Duration::from_millis(config.connect_timeout_ms));
                check.peer_template.options.read_timeout =
                    Some(Duration::from_millis(config.connect_timeout_ms));
                lb.set_health_check(Box::new(check));
            }
            None => {
                let mut check = TcpHealthCheck::new();
                check.peer_template.options.connection_timeout =
                    Some(Duration::from_millis(config.connect_timeout_ms));
                lb.set_health_check(check);
            }
        }
        let replicas = lb.backends().get_backend();
        let only = match replicas.first() {
            Some(replica) if replicas.len() == 1 => Some(peer(replica.addr.clone(), config, &sni)),
            _ => None,
        };
        Ok(UpstreamPool {
            name: name.to_string(),
            config: config.clone(),
            lb,
            sni,
            only,
            next_check: Mutex::new(Instant::now()),
        })
    }

    /// The next healthy replica, round-robin. When health checks fail every replica, all of
    /// them are tried anyway ("panic mode"): a wrong health check must not turn into a
    /// certain outage. `None` only for a pool with no replica at all.
    pub fn select(&self) -> Option<HttpPeer> {
        if let Some(only) = &self.only {
            return Some(only.clone());
        }
        let backend = self
            .lb
            .select(b"", MAX_SELECT_ITERATIONS)
            .or_else(|| self.lb.select_with(b"", MAX_SELECT_ITERATIONS, |_, _| true))?;
        Some(peer(backend.addr, &self.config, &self.sni))
    }

    /// Runs the health check when its interval has passed since the last run.
    pub async fn health_check_if_due(&self) {
        let due = {
            let Ok(mut next) = self.next_check.lock() else {
                return;
            };
            let now = Instant::now();
            if now < *next {
                false
            } else {
                *next = now + Duration::from_millis(self.config.health_check.interval_ms);
                true
            }
        };
        if due {
            let before = self.replica_health();
            self.lb.backends().run_health_check(true).await;
            // One short line per change; Pingora's own (its module's warnings are filtered
            // out in main) prints the whole error context, some 1,500 characters a line.
            let after = self.replica_health();
            let healthy = after.iter().filter(|(_, up)| *up).count();
            for (addr, up) in &after {
                let was = before.iter().find(|(a, _)| a == addr).map(|(_, u)| *u);
                if was.is_some_and(|was| was != *up) {
                    let state = if *up { "healthy again" } else { "unhealthy" };
                    log::warn!(
                        "upstream {}: replica {addr} is {state} ({healthy} of {} healthy)",
                        self.name,
                        after.len()
                    );
                }
            }
        }
    }

    /// Each replica's address and whether its health check passes.
    fn replica_health(&self) -> Vec<(String, bool)> {
        let backends = self.lb.backends();
        backends
            .get_backend()
            .iter()
            .map(|b| (b.addr.to_string(), backends.ready(b)))
            .collect()
    }

    /// (healthy, total) replicas.
    pub fn health(&self) -> (usize, usize) {
        let backends = self.lb.backends().get_backend();
        let healthy = backends
            .iter()
            .filter(|b| self.lb.backends().ready(b))
            .count();
        (healthy, backends.len())
    }
}
