//! The admin listener: `/metrics`, `/live`, `/ready`, `GET /config`, `POST /reload`
//! (`?dry_run=1`: validate and say what would change, apply nothing).
//! It binds to loopback by default; it has no authentication of its own.
//!
//! It is not one of Pingora's listening services: those stop accepting the moment a drain
//! begins, and `/ready` must go on answering 503 while the proxy listeners drain, so that
//! load balancers see it. It binds with `SO_REUSEPORT`, so that a process started with
//! `--upgrade` binds the same address while the old one still serves; the old one stops
//! accepting when it hands its listeners over (SIGQUIT).

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::reload::Gateway;

pub struct AdminApp {
    gateway: Arc<Gateway>,
}

impl AdminApp {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        AdminApp { gateway }
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        let snapshot = self.gateway.snapshot();
        for (name, pool) in &snapshot.upstreams {
            let (healthy, _) = pool.health();
            self.gateway
                .metrics
                .upstream_healthy
                .with_label_values(&[name])
                .set(healthy as i64);
        }
        respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            self.gateway.metrics.render(),
        )
    }

    fn ready(&self) -> Response<Vec<u8>> {
        if self.gateway.is_draining() {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "ready": false, "draining": true }),
            );
        }
        let snapshot = self.gateway.snapshot();
        let upstreams: serde_json::Map<String, serde_json::Value> = snapshot
            .upstreams
            .iter()
            .map(|(name, pool)| {
                let (healthy, total) = pool.health();
                (
                    name.clone(),
                    serde_json::json!({ "healthy": healthy, "total": total }),
                )
            })
            .collect();
        json(
            StatusCode::OK,
            serde_json::json!({ "ready": true, "generation": snapshot.generation, "upstreams": upstreams }),
        )
    }

    /// The configuration in force, secrets redacted (see [`crate::config_view`]).
    fn config(&self) -> Response<Vec<u8>> {
        json(
            StatusCode::OK,
            crate::config_view::view(&self.gateway.snapshot()),
        )
    }

    async fn dry_run(&self, allow_removals: bool) -> Response<Vec<u8>> {
        let gateway = self.gateway.clone();
        let generation = self.gateway.snapshot().generation;
        match tokio::task::spawn_blocking(move || gateway.dry_run(allow_removals)).await {
            Ok(Ok(changes)) => json(
                StatusCode::OK,
                serde_json::json!({ "dry_run": true, "valid": true, "generation": generation, "changes": changes }),
            ),
            Ok(Err(e)) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({ "dry_run": true, "valid": false, "error": e.to_string(), "generation": generation }),
            ),
            Err(e) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "error": e.to_string() }),
            ),
        }
    }

    async fn reload(&self, allow_removals: bool) -> Response<Vec<u8>> {
        let gateway = self.gateway.clone();
        match tokio::task::spawn_blocking(move || gateway.reload_with(allow_removals)).await {
            Ok(Ok(generation)) => json(
                StatusCode::OK,
                serde_json::json!({ "generation": generation }),
            ),
            Ok(Err(e)) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({ "error": e.to_string(), "generation": self.gateway.snapshot().generation }),
            ),
            Err(e) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "error": e.to_string() }),
            ),
        }
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = resp.body().len();
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, len.into());
    resp
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Vec<u8>> {
    respond(status, "application/json", value.to_string().into_bytes())
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        let flag = |name: &str| {
            req.uri.query().is_some_and(|q| {
                q.split('&')
                    .any(|p| p == format!("{name}=true") || p == format!("{name}=1"))
            })
        };
        let (allow_removals, dry_run) = (flag("allow_removals"), flag("dry_run"));
        match (method, path.as_str()) {
            (Method::GET, "/metrics") => self.metrics(),
            (Method::GET, "/live") => respond(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            (Method::GET, "/ready") => self.ready(),
            (Method::GET, "/config") => self.config(),
            (Method::POST, "/reload") if dry_run => self.dry_run(allow_removals).await,
            (Method::POST, "/reload") => self.reload(allow_removals).await,
            (_, "/metrics" | "/live" | "/ready" | "/reload" | "/config") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({ "error": "method not allowed" }),
            ),
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({ "error": "not found" }),
            ),
        }
    }
}

/// The admin listener, bound when the server is built (so that a taken port stops the
/// start-up) and served from a background task until the process exits.
pub struct AdminService {
    listener: std::net::TcpListener,
    app: Arc<AdminApp>,
    gateway: Arc<Gateway>,
}

impl AdminService {
    pub fn bind(addr: &str, gateway: Arc<Gateway>) -> std::io::Result<Self> {
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| std::io::Error::other(format!("{addr:?}: {e}")))?;
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(128)?;
        Ok(AdminService {
            listener: socket.into(),
            app: Arc::new(AdminApp::new(gateway.clone())),
            gateway,
        })
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let listener = match self
            .listener
            .try_clone()
            .and_then(tokio::net::TcpListener::from_std)
        {
            Ok(l) => l,
            Err(e) => {
                log::error!("admin listener: {e}");
                return;
            }
        };
        // Admin connections are served through a drain: they never see a shutdown.
        let (_keep, never) = tokio::sync::watch::channel(false);
        let mut handover = self.gateway.handover_watch();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = handover.wait_for(|h| *h) => {
                    log::info!("admin listener closed: the new process serves it");
                    return;
                }
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    log::warn!("admin accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (app, never) = (self.app.clone(), never.clone());
            tokio::spawn(async move {
                let stream: pingora_core::protocols::Stream =
                    Box::new(pingora_core::protocols::l4::stream::Stream::from(stream));
                app.process_new(stream, &never).await;
            });
        }
    }
}
