//! The live rules: one [`RuleSnapshot`] behind an `ArcSwap`, replaced whole by a reload.
//!
//! Reloads come from a file watcher, SIGHUP and `POST /reload`. They are serialised, built
//! off the request path, and a rules directory that fails to load changes nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};

use crate::config::ConfigError;
use crate::metrics::Metrics;
use crate::redis_windows::StoreMetrics;
use crate::snapshot::{Carried, Removed, RuleSnapshot, Running};

/// Editors write a file in several steps; changes closer together than this are one reload.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(50);

pub struct Gateway {
    rules_dir: PathBuf,
    current: ArcSwap<RuleSnapshot>,
    generation: AtomicU64,
    reload_lock: Mutex<()>,
    carried: Carried,
    /// Set when a shutdown began: `/ready` then answers 503.
    draining: AtomicBool,
    /// Set when the listeners were handed to a new process: the admin listener closes.
    handover: tokio::sync::watch::Sender<bool>,
    pub metrics: Metrics,
}

/// For unit tests: one listener, `web`, whose one route goes to an upstream that refuses
/// connections.
#[cfg(test)]
pub(crate) const ONE_ROUTE: &str = "[upstreams.app]\naddrs = [\"127.0.0.1:1\"]\n\
    [[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\
    [[listeners.routes]]\nprefix = \"/\"\nupstream = \"app\"\n";

impl Gateway {
    /// Loads the rules for the first time; an error here stops the start-up.
    pub fn start(rules_dir: &Path, metrics: Metrics) -> Result<Self, ConfigError> {
        let carried = Carried::connected(Running {
            store: StoreMetrics {
                errors: metrics.store_errors.clone(),
                up: metrics.store_up.clone(),
            },
            jwks_fetches: metrics.jwks_fetches.clone(),
            secret_refreshes: metrics.secret_refreshes.clone(),
        });
        let snapshot = RuleSnapshot::load(rules_dir, 1, None, &carried)?;
        let gateway = Gateway {
            rules_dir: rules_dir.to_path_buf(),
            current: ArcSwap::from_pointee(snapshot),
            generation: AtomicU64::new(1),
            reload_lock: Mutex::new(()),
            carried,
            draining: AtomicBool::new(false),
            handover: tokio::sync::watch::Sender::new(false),
            metrics,
        };
        // The first load is not a reload: the generation and time are set, no reload counted.
        gateway.record_generation(1);
        Ok(gateway)
    }

    /// A gateway on a rules directory holding `gateway_toml` alone (such as [`ONE_ROUTE`]),
    /// for unit tests. The
    /// directory must outlive the gateway.
    #[cfg(test)]
    pub(crate) fn for_test(gateway_toml: &str) -> (tempfile::TempDir, Arc<Self>) {
        let rules = tempfile::tempdir().expect("tmp");
        std::fs::write(rules.path().join("gateway.toml"), gateway_toml).expect("write rules");
        let metrics = crate::metrics::Metrics::new().expect("metrics");
        let gateway = Gateway::start(rules.path(), metrics).expect("gateway");
        (rules, Arc::new(gateway))
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The listeners went to a new process (SIGQUIT); this one only finishes its work.
    pub fn hand_over(&self) {
        self.handover.send_replace(true);
    }

    pub fn handover_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.handover.subscribe()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn rules_dir(&self) -> &Path {
        &self.rules_dir
    }

    /// The snapshot in force. A request holds it for its whole life, so it sees one
    /// consistent set of rules even if a reload lands meanwhile.
    pub fn snapshot(&self) -> Arc<RuleSnapshot> {
        self.current.load_full()
    }

    /// Builds a new snapshot from the rules directory and swaps it in; on error the old
    /// one keeps serving. Blocking (file reads, name resolution): call off the async runtime.
    pub fn reload(&self) -> Result<u64, ConfigError> {
        self.reload_with(false)
    }

    /// A reload; with `allow_removals`, one that removes routes in service is taken too.
    /// One that removes a listener never is: the listener keeps its socket until a
    /// restart, and without rules it would answer every request with 503.
    pub fn reload_with(&self, allow_removals: bool) -> Result<u64, ConfigError> {
        let _serialised = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        let next_generation = self.generation.load(Ordering::Relaxed) + 1;
        match self.prepare(&old, next_generation, allow_removals) {
            Ok(snapshot) => {
                if snapshot.listener_layout() != old.listener_layout() {
                    log::warn!(
                        "listener names, addresses or TLS changed in {}: they take effect on restart",
                        self.rules_dir.display()
                    );
                }
                let changes = crate::config_view::changes(&old, &snapshot);
                self.current.store(Arc::new(snapshot));
                self.generation.store(next_generation, Ordering::Relaxed);
                self.record_success(next_generation);
                let what = if changes.is_empty() {
                    "nothing changed".to_string()
                } else {
                    changes.join("; ")
                };
                log::info!("rules reloaded: generation {next_generation}: {what}");
                Ok(next_generation)
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                log::error!("rules reload failed, previous rules stay in force: {e}");
                Err(e)
            }
        }
    }

    /// Validates the rules directory against the running process as a reload would, and
    /// says what the reload would change, without applying anything.
    pub fn dry_run(&self, allow_removals: bool) -> Result<Vec<String>, ConfigError> {
        let _serialised = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.current.load_full();
        let next_generation = self.generation.load(Ordering::Relaxed) + 1;
        let snapshot = self.prepare(&old, next_generation, allow_removals)?;
        Ok(crate::config_view::changes(&old, &snapshot))
    }

    /// A snapshot of the rules directory, refused when it would remove what is serving.
    fn prepare(
        &self,
        old: &RuleSnapshot,
        generation: u64,
        allow_removals: bool,
    ) -> Result<RuleSnapshot, ConfigError> {
        let snapshot = RuleSnapshot::load(&self.rules_dir, generation, Some(old), &self.carried)?;
        let removed = snapshot.removed_since(old);
        let listener_removed = removed.iter().any(|r| matches!(r, Removed::Listener(_)));
        if removed.is_empty() || (allow_removals && !listener_removed) {
            return Ok(snapshot);
        }
        let how = if listener_removed {
            "a listener is removed by a restart"
        } else {
            "to remove routes, reload with POST /reload?allow_removals=true"
        };
        Err(ConfigError {
            file: self.rules_dir.join(crate::config::GATEWAY_FILE),
            line: None,
            message: format!(
                "refused: this reload would remove what is serving ({}); {how}",
                removed
                    .iter()
                    .map(Removed::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }

    fn record_success(&self, generation: u64) {
        self.metrics.reloads.with_label_values(&["success"]).inc();
        self.record_generation(generation);
    }

    fn record_generation(&self, generation: u64) {
        self.metrics.config_generation.set(generation as i64);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.metrics.config_last_reload_success.set(now);
    }
}

/// Reloads whenever something under the rules directory changes. Runs on its own thread
/// (notify's callback thread feeds it) so a slow load never blocks a request.
pub fn spawn_watcher(gateway: Arc<Gateway>) -> notify::Result<()> {
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            if !matches!(event.kind, EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(gateway.rules_dir(), RecursiveMode::Recursive)?;
    std::thread::Builder::new()
        .name("rules-watcher".into())
        .spawn(move || {
            let _watcher = watcher;
            while rx.recv().is_ok() {
                while rx.recv_timeout(WATCH_DEBOUNCE).is_ok() {}
                let _ = gateway.reload();
            }
        })
        .map_err(notify::Error::io)?;
    Ok(())
}

/// Reloads on SIGHUP.
pub fn spawn_sighup_handler(gateway: Arc<Gateway>) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                log::info!("SIGHUP: reloading rules");
                let _ = gateway.reload();
            }
        })?;
    Ok(())
}
