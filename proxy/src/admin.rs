//! The admin listener: `/metrics`, `/live`, `/ready`, `POST /reload`.
//! It binds to loopback by default; it has no authentication of its own.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

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
        let allow_removals = req
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "allow_removals=true"));
        match (method, path.as_str()) {
            (Method::GET, "/metrics") => self.metrics(),
            (Method::GET, "/live") => respond(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            (Method::GET, "/ready") => self.ready(),
            (Method::POST, "/reload") => self.reload(allow_removals).await,
            (_, "/metrics" | "/live" | "/ready" | "/reload") => json(
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
