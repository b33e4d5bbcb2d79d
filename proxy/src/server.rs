//! Assembles the Pingora server: one proxy service per listener, the admin service, the
//! health checker, the rules watcher and the SIGHUP handler.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use thiserror::Error;

use crate::accept::PeerFilter;
use crate::access_log;
use crate::admin::AdminService;
use crate::config::{ClientLimits, ConfigError};
use crate::connection::GuardedHttp;
use crate::health::HealthChecker;
use crate::lifecycle;
use crate::metrics::Metrics;
use crate::proxy::RampartProxy;
use crate::reload::{self, Gateway};

#[derive(Debug, Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("starting the access log's writer thread: {0}")]
    AccessLog(std::io::Error),
    #[error("--listen names listener {0:?}, which the rules do not define")]
    UnknownListener(String),
    #[error("listener {listener:?}: TLS: {reason}")]
    Tls { listener: String, reason: String },
    #[error("watching the rules directory: {0}")]
    Watch(#[from] notify::Error),
    #[error("installing the SIGHUP handler: {0}")]
    Signal(#[from] std::io::Error),
    #[error("admin listener {addr}: {reason}")]
    Admin {
        addr: String,
        reason: std::io::Error,
    },
    #[error("upgrade socket {path}: {reason}")]
    UpgradeSocket {
        path: PathBuf,
        reason: std::io::Error,
    },
}

/// A client-facing endpoint. Pingora puts a 64 KiB read buffer in front of every accepted
/// socket by default; rampart reads request heads into a buffer of its own and Pingora reads
/// bodies into theirs, so that buffer only copied bytes once more, and it stayed with the
/// connection while it idled between requests. Reads go to the socket itself; writes keep
/// Pingora's small buffer, which joins a head and a short body into one send.
fn client_endpoint(addr: &str) -> ListenerConfig {
    ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::default().read(0))
}

pub struct RunOptions {
    pub rules_dir: PathBuf,
    /// Listener name to address, overriding the rules (for unprivileged runs).
    pub listen_overrides: HashMap<String, String>,
    pub admin_override: Option<String>,
    pub threads: Option<usize>,
    pub watch: bool,
    /// Take the listening sockets over from a running rampart (which then gets SIGQUIT).
    pub upgrade: bool,
}

/// The server, and the signal watch to run it with ([`lifecycle::DrainingSignals`]).
pub fn build(opts: RunOptions) -> Result<(Server, RunArgs), StartError> {
    let metrics = Metrics::new()?;
    access_log::start(metrics.access_log_dropped.clone()).map_err(StartError::AccessLog)?;
    let gateway = Arc::new(Gateway::start(&opts.rules_dir, metrics)?);
    let snapshot = gateway.snapshot();
    let upgrade_socket = snapshot
        .config
        .server
        .upgrade_socket
        .clone()
        .unwrap_or_else(lifecycle::default_upgrade_socket);
    lifecycle::secure_upgrade_dir(&upgrade_socket).map_err(|reason| StartError::UpgradeSocket {
        path: upgrade_socket.clone(),
        reason,
    })?;

    let conf = ServerConf {
        threads: opts
            .threads
            .or(snapshot.config.server.threads)
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        work_stealing: snapshot.config.server.work_stealing,
        // Pingora waits this long after SIGTERM whatever is in flight; the drain in
        // crate::lifecycle exits as soon as the last connection is done.
        grace_period_seconds: Some(snapshot.config.server.drain_seconds),
        graceful_shutdown_timeout_seconds: Some(5),
        upgrade_sock: upgrade_socket
            .to_str()
            .ok_or_else(|| StartError::UpgradeSocket {
                path: upgrade_socket.clone(),
                reason: std::io::Error::other("not UTF-8"),
            })?
            .to_string(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    for name in opts.listen_overrides.keys() {
        if !snapshot.listeners.contains_key(name) {
            return Err(StartError::UnknownListener(name.clone()));
        }
    }
    for listener in &snapshot.config.listeners {
        let listener = listener.get_ref();
        let addr = opts
            .listen_overrides
            .get(&listener.name)
            .unwrap_or(&listener.listen);
        let mut proxy = pingora_proxy::http_proxy(
            &server.configuration,
            RampartProxy::new(&listener.name, gateway.clone()),
        );
        proxy.h2_options = Some(h2_options(&listener.client_limits));
        let mut service = Service::new(
            format!("listener {}", listener.name),
            GuardedHttp::new(&listener.name, gateway.clone(), proxy),
        );
        service.set_connection_filter(Arc::new(PeerFilter::new(&listener.name, gateway.clone())));
        match &listener.tls {
            Some(tls) => {
                let tls_error = |reason: String| StartError::Tls {
                    listener: listener.name.clone(),
                    reason,
                };
                let path = |p: &PathBuf| {
                    p.to_str()
                        .map(str::to_string)
                        .ok_or_else(|| tls_error(format!("{} is not UTF-8", p.display())))
                };
                let (cert, key) = (path(&tls.cert)?, path(&tls.key)?);
                for file in [&cert, &key] {
                    std::fs::metadata(file).map_err(|e| tls_error(format!("{file}: {e}")))?;
                }
                let mut settings =
                    TlsSettings::intermediate(&cert, &key).map_err(|e| tls_error(e.to_string()))?;
                if tls.http2 {
                    settings.enable_h2();
                }
                service.add_listener(client_endpoint(addr).tls(settings));
            }
            None => service.add_listener(client_endpoint(addr)),
        }
        log::info!("listener {} on {addr}", listener.name);
        server.add_service(service);
    }

    let admin_addr = opts
        .admin_override
        .clone()
        .unwrap_or_else(|| snapshot.config.admin.listen.clone());
    let admin =
        AdminService::bind(&admin_addr, gateway.clone()).map_err(|reason| StartError::Admin {
            addr: admin_addr.clone(),
            reason,
        })?;
    log::info!("admin on {admin_addr}");
    server.add_service(background_service("admin", admin));
    server.add_service(background_service(
        "health checks",
        HealthChecker(gateway.clone()),
    ));

    if opts.watch {
        reload::spawn_watcher(gateway.clone())?;
    }
    reload::spawn_sighup_handler(gateway.clone())?;
    let run = RunArgs {
        shutdown_signal: Box::new(lifecycle::DrainingSignals::new(gateway)),
    };
    Ok((server, run))
}

/// HTTP/2's limits for a listener's connections, from its client limits. Fixed when the
/// listener starts; a reload does not change them.
fn h2_options(limits: &ClientLimits) -> pingora_core::protocols::http::v2::server::H2Options {
    let mut options = pingora_core::protocols::http::v2::server::default_h2_options();
    options
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(limits.h2_max_pending_resets);
    options
}
