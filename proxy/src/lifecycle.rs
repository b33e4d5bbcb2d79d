//! Stopping without cutting anyone off, and handing the listeners to a new binary.
//!
//! - `SIGTERM` drains: `/ready` answers 503 at once (load balancers stop sending), the
//!   listeners stop accepting, idle keep-alive connections are closed, and requests and
//!   streams in flight run to their end, for up to `[server] drain_seconds`. The process
//!   exits as soon as the last client connection is gone.
//! - `SIGQUIT` hands the listening sockets to a process started with `--upgrade` (Pingora's
//!   graceful upgrade), through a Unix socket in a directory only rampart's user can enter,
//!   closes its admin listener (the new process answers there), then drains like `SIGTERM`.
//! - `SIGINT` stops at once.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::connection::open_client_connections;
use crate::reload::Gateway;

/// After `SIGQUIT`, Pingora keeps accepting for 5 s (`CLOSE_TIMEOUT`) while the new process
/// takes over; the drain is watched only after that, so that no accepted connection is lost.
const HANDOVER: Duration = Duration::from_secs(6);
/// How often a draining process looks for its last connection.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Pingora's signal watch, with the drain around it.
pub struct DrainingSignals {
    gateway: Arc<Gateway>,
}

impl DrainingSignals {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        DrainingSignals { gateway }
    }

    /// Marks the gateway draining and exits once no client connection is left (Pingora
    /// itself waits out the whole drain period otherwise, even with nothing in flight).
    fn drain(&self, signal: &'static str, watch_after: Duration) {
        log::info!("{signal}: draining; connections in flight may finish within the drain period");
        std::thread::spawn(move || {
            std::thread::sleep(watch_after.max(DRAIN_POLL));
            loop {
                if open_client_connections() == 0 {
                    log::info!("drained: no client connection left, exiting");
                    crate::access_log::flush();
                    std::process::exit(0);
                }
                std::thread::sleep(DRAIN_POLL);
            }
        });
    }
}

async fn next(signal: &mut Option<Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

fn install(kind: SignalKind, name: &str) -> Option<Signal> {
    signal(kind)
        .map_err(|e| log::error!("cannot handle {name}: {e}"))
        .ok()
}

#[async_trait]
impl ShutdownSignalWatch for DrainingSignals {
    async fn recv(&self) -> ShutdownSignal {
        let mut quit = install(SignalKind::quit(), "SIGQUIT");
        let mut term = install(SignalKind::terminate(), "SIGTERM");
        let mut int = install(SignalKind::interrupt(), "SIGINT");
        // Until here a SIGQUIT would kill the process: a successor is ready to be upgraded
        // in turn only once this is logged.
        log::info!("serving: SIGTERM drains, SIGQUIT hands the listeners over, SIGINT stops");
        tokio::select! {
            _ = next(&mut quit) => {
                // The new process answers /ready (and the admin API) from now on.
                self.gateway.hand_over();
                self.drain("SIGQUIT", HANDOVER);
                ShutdownSignal::GracefulUpgrade
            }
            _ = next(&mut term) => {
                self.gateway.start_draining();
                self.drain("SIGTERM", Duration::ZERO);
                ShutdownSignal::GracefulTerminate
            }
            _ = next(&mut int) => ShutdownSignal::FastShutdown,
        }
    }
}

/// Where the listening sockets are handed over when `[server] upgrade_socket` is not set:
/// under `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`), else `/run/rampart` for
/// root, else a directory of the user's own under the temporary directory.
pub fn default_upgrade_socket() -> PathBuf {
    let dir = match std::env::var_os("RUNTIME_DIRECTORY") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ if effective_uid() == 0 => PathBuf::from("/run/rampart"),
        _ => std::env::temp_dir().join(format!("rampart-{}", effective_uid())),
    };
    dir.join("upgrade.sock")
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Makes sure the upgrade socket's directory exists and that no one but this user can
/// reach into it: whoever can connect to the socket path receives the listening sockets.
pub fn secure_upgrade_dir(socket: &Path) -> io::Result<()> {
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| io::Error::other("the upgrade socket needs a directory of its own"))?;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if meta.uid() != effective_uid() {
        return Err(io::Error::other(format!(
            "{} belongs to uid {}, not to rampart's user ({})",
            dir.display(),
            meta.uid(),
            effective_uid()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "{} is open to other users (mode {:o}); it must be 0700",
            dir.display(),
            meta.permissions().mode() & 0o777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upgrade_directory_is_made_private_and_checked() {
        let tmp = tempfile::tempdir().expect("tmp");
        let socket = tmp.path().join("run").join("upgrade.sock");
        secure_upgrade_dir(&socket).expect("created");
        let mode = std::fs::metadata(tmp.path().join("run"))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        // A directory others can enter is refused, not used.
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).expect("dir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = secure_upgrade_dir(&open.join("upgrade.sock")).expect_err("refused");
        assert!(err.to_string().contains("0700"), "{err}");
        // So is a symlink to somewhere else.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path().join("run"), &link).expect("symlink");
        assert!(secure_upgrade_dir(&link.join("upgrade.sock")).is_err());
    }
}
