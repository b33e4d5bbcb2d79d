//! Runs the health checks of whatever upstream pools the current snapshot holds.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::reload::Gateway;

/// Each pool has its own interval; this is how often the due ones are looked for.
const TICK: Duration = Duration::from_millis(250);

pub struct HealthChecker(pub Arc<Gateway>);

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snapshot = self.0.snapshot();
            // Concurrently, so that one pool timing out does not delay the others.
            for pool in snapshot.upstreams.values() {
                let pool = pool.clone();
                tokio::spawn(async move { pool.health_check_if_due().await });
            }
        }
    }
}
