//! Token issuers' keys (JWK sets), fetched over HTTPS and kept fresh in the background.
//!
//! Each issuer's fetcher has a thread and a small runtime of its own, like the rate-limit
//! store: fetching never runs on the request path. A fetch that fails keeps the last good
//! keys. A token naming an unknown `kid` may ask for a fetch now, but at most one per
//! `min_refetch_seconds`, so that forged kids cannot make rampart hammer the issuer.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus::IntCounterVec;
use rampart_plugins::jws::{JwkSet, KeySource, RefetchFuture};
use rampart_plugins::plugins::jwt::IssuerConfig;
use tokio::sync::{watch, Notify};

/// A JWK set larger than this is not read: Cognito's is about 1 KB.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long one fetch may take, and a request waiting for a refetch may wait.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed fetch, the next one comes this soon (not a whole refresh period later).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

pub struct JwksFetcher {
    pub issuer: IssuerConfig,
    keys: ArcSwap<JwkSet>,
    /// When a fetch was last asked for by a request.
    last_asked: Mutex<Option<Instant>>,
    wake: Notify,
    /// Bumped after every fetch, good or not, so that waiting requests go on.
    fetched: watch::Sender<u64>,
    fetches: Option<IntCounterVec>,
}

impl JwksFetcher {
    /// Starts fetching `issuer`'s keys, and waits for the first fetch to end (it takes at
    /// most [`FETCH_TIMEOUT`]) so that the first requests find keys. If it fails, rampart still starts: tokens
    /// are refused until a later fetch succeeds.
    pub fn start(
        issuer: IssuerConfig,
        fetches: Option<IntCounterVec>,
    ) -> Result<Arc<Self>, String> {
        let fetcher = Arc::new(JwksFetcher {
            issuer,
            keys: ArcSwap::from_pointee(JwkSet::default()),
            last_asked: Mutex::new(None),
            wake: Notify::new(),
            fetched: watch::channel(0).0,
            fetches,
        });
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("rampart/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("JWKS client: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("JWKS runtime: {e}"))?;
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let weak = Arc::downgrade(&fetcher);
        std::thread::Builder::new()
            .name("jwks".into())
            .spawn(move || runtime.block_on(run(weak, client, first_tx)))
            .map_err(|e| format!("JWKS thread: {e}"))?;
        // The first fetch ends (well or not) within FETCH_TIMEOUT; the margin is for the
        // thread's start.
        let _ = first_rx.recv_timeout(FETCH_TIMEOUT * 2);
        if fetcher.keys.load().is_empty() {
            log::warn!(
                "JWKS of {}: no keys yet; tokens are refused until a fetch succeeds",
                fetcher.issuer.issuer
            );
        }
        Ok(fetcher)
    }

    async fn fetch(&self, client: &reqwest::Client) -> Result<JwkSet, String> {
        let mut resp = client
            .get(&self.issuer.jwks_url)
            .send()
            .await
            .map_err(|e| format!("request: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("body: {e}"))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_JWKS_BYTES {
                return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
            }
        }
        JwkSet::parse(&body).map_err(|e| e.to_string())
    }

    fn count(&self, result: &str) {
        if let Some(c) = &self.fetches {
            c.with_label_values(&[result]).inc();
        }
    }
}

/// The fetch loop: now, then every `refresh_seconds` (sooner after a failure), and when a
/// request asks. Ends when the fetcher is dropped (its snapshot is gone).
async fn run(weak: Weak<JwksFetcher>, client: reqwest::Client, first: std::sync::mpsc::Sender<()>) {
    let mut first = Some(first);
    loop {
        let Some(fetcher) = weak.upgrade() else {
            return;
        };
        let url = &fetcher.issuer.jwks_url;
        let next = match fetcher.fetch(&client).await {
            Ok(keys) => {
                log::info!("JWKS {url}: {} keys", keys.len());
                fetcher.keys.store(Arc::new(keys));
                fetcher.count("success");
                Duration::from_secs(fetcher.issuer.refresh_seconds.max(1))
            }
            Err(e) => {
                log::warn!("JWKS {url}: fetch failed, keeping the last keys: {e}");
                fetcher.count("failure");
                RETRY_AFTER_FAILURE.min(Duration::from_secs(fetcher.issuer.refresh_seconds.max(1)))
            }
        };
        fetcher.fetched.send_modify(|n| *n += 1);
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        // Wait without holding the fetcher, so that dropping it ends this loop; check now
        // and then whether it is gone.
        let deadline = tokio::time::Instant::now() + next;
        drop(fetcher);
        loop {
            let Some(fetcher) = weak.upgrade() else {
                return;
            };
            let woken = tokio::select! {
                _ = fetcher.wake.notified() => true,
                _ = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_secs(1))) => false,
            };
            if woken || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
    }
}

impl KeySource for JwksFetcher {
    fn keys(&self) -> Arc<JwkSet> {
        self.keys.load_full()
    }

    fn refetch(&self) -> Option<RefetchFuture> {
        let min = Duration::from_secs(self.issuer.min_refetch_seconds);
        {
            let mut last = self.last_asked.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < min) {
                return None;
            }
            *last = Some(Instant::now());
        }
        let mut done = self.fetched.subscribe();
        done.mark_unchanged();
        self.wake.notify_one();
        Some(Box::pin(async move {
            let _ = tokio::time::timeout(FETCH_TIMEOUT, done.changed()).await;
        }))
    }
}
