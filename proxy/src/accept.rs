//! Drops connections from peers that a listener's blocking IP lists hold, at accept, before
//! any TLS or HTTP work is spent on them.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::listeners::ConnectionFilter;

use crate::reload::Gateway;

pub struct PeerFilter {
    listener: String,
    gateway: Arc<Gateway>,
}

impl PeerFilter {
    pub fn new(listener: &str, gateway: Arc<Gateway>) -> Self {
        PeerFilter {
            listener: listener.to_string(),
            gateway,
        }
    }
}

impl std::fmt::Debug for PeerFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerFilter({})", self.listener)
    }
}

#[async_trait]
impl ConnectionFilter for PeerFilter {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        let Some(addr) = addr else {
            return true;
        };
        let snapshot = self.gateway.snapshot();
        let refused = snapshot
            .listeners
            .get(&self.listener)
            .is_some_and(|l| l.chain.refuses_connection(addr.ip()));
        if refused {
            self.gateway
                .metrics
                .connections_refused
                .with_label_values(&[&self.listener])
                .inc();
        }
        !refused
    }
}
