//! The seed's "Endpoint Access Matrix", every cell, allowed and refused side, against the
//! real binary. A refused request must never reach an upstream.

use rampart_integration::*;

/// One row of the matrix: where the endpoint lives and what it needs.
struct Row {
    listener: &'static str,
    method: &'static str,
    path: &'static str,
    upstream: &'static str,
    /// Reachable from outside the VPC at all (with the CDN's header).
    public: bool,
    admin_secret: bool,
    /// The application's own credential, which rampart must pass through untouched.
    app_auth: Option<(&'static str, &'static str)>,
}

const MATRIX: &[Row] = &[
    Row {
        listener: "web",
        method: "POST",
        path: "/v1/chat/completions",
        upstream: "litellm",
        public: true,
        admin_secret: false,
        app_auth: Some(("Authorization", "Bearer sk-user-key")),
    },
    Row {
        listener: "web",
        method: "GET",
        path: "/v1/models",
        upstream: "litellm",
        public: true,
        admin_secret: false,
        app_auth: Some(("Authorization", "Bearer sk-user-key")),
    },
    Row {
        listener: "web",
        method: "GET",
        path: "/health/readiness",
        upstream: "litellm",
        public: true,
        admin_secret: false,
        app_auth: None,
    },
    Row {
        listener: "web",
        method: "GET",
        path: "/grafana/d/overview",
        upstream: "grafana",
        public: true,
        admin_secret: false,
        app_auth: Some(("Cookie", "grafana_session=abc")),
    },
    Row {
        listener: "langfuse",
        method: "GET",
        path: "/langfuse/api/public/traces",
        upstream: "langfuse",
        public: true,
        admin_secret: false,
        app_auth: Some(("Cookie", "next-auth.session-token=xyz")),
    },
    Row {
        listener: "web",
        method: "POST",
        path: "/key/generate",
        upstream: "litellm",
        public: true,
        admin_secret: true,
        app_auth: Some(("Authorization", "Bearer sk-master-key")),
    },
    Row {
        listener: "web",
        method: "POST",
        path: "/user/new",
        upstream: "litellm",
        public: true,
        admin_secret: true,
        app_auth: Some(("Authorization", "Bearer sk-master-key")),
    },
    Row {
        listener: "web",
        method: "GET",
        path: "/model/info",
        upstream: "litellm",
        public: true,
        admin_secret: true,
        app_auth: Some(("Authorization", "Bearer sk-master-key")),
    },
    Row {
        listener: "web",
        method: "GET",
        path: "/spend/logs",
        upstream: "litellm",
        public: true,
        admin_secret: true,
        app_auth: Some(("Authorization", "Bearer sk-master-key")),
    },
    Row {
        listener: "victoriametrics",
        method: "GET",
        path: "/api/v1/query?query=up",
        upstream: "victoriametrics",
        public: false,
        admin_secret: false,
        app_auth: None,
    },
];

struct Case<'a> {
    peer: &'a str,
    origin: bool,
    admin: Option<&'a str>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cell_of_the_endpoint_access_matrix() {
    let up = SeedUpstreams::start(1).await;
    let rampart = Rampart::start(&seed_config(&up, ""), SEED_LISTENERS).await;
    let mut checked = 0;

    for row in MATRIX {
        let addr = rampart.addr(row.listener);
        let send = |case: Case<'static>| {
            let mut headers: Vec<(&str, &str)> = Vec::new();
            if case.origin {
                headers.push(("X-Origin-Verify", ORIGIN_SECRET));
            }
            if let Some(a) = case.admin {
                headers.push(("X-Admin-Secret", a));
            }
            if let Some(auth) = row.app_auth {
                headers.push(auth);
            }
            let peer = case.peer.to_string();
            async move { request(addr, &peer, row.method, row.path, &headers).await }
        };
        let admin_ok = row.admin_secret.then_some(ADMIN_SECRET);
        let what = format!("{} {} on {}", row.method, row.path, row.listener);

        // Refused side: every way in that the matrix closes.
        let mut refusals = vec![(
            "external peer without X-Origin-Verify",
            Case {
                peer: EXTERNAL_PEER,
                origin: false,
                admin: admin_ok,
            },
        )];
        refusals.push((
            "external peer with a wrong X-Origin-Verify",
            Case {
                peer: EXTERNAL_PEER,
                origin: false,
                admin: admin_ok,
            },
        ));
        if !row.public {
            refusals.push((
                "external peer even with X-Origin-Verify",
                Case {
                    peer: EXTERNAL_PEER,
                    origin: true,
                    admin: admin_ok,
                },
            ));
        }
        if row.admin_secret {
            refusals.push((
                "without X-Admin-Secret",
                Case {
                    peer: EXTERNAL_PEER,
                    origin: true,
                    admin: None,
                },
            ));
            refusals.push((
                "with a wrong X-Admin-Secret",
                Case {
                    peer: EXTERNAL_PEER,
                    origin: true,
                    admin: Some("admin-guess"),
                },
            ));
            refusals.push((
                "internal peer without X-Admin-Secret",
                Case {
                    peer: INTERNAL_PEER,
                    origin: false,
                    admin: None,
                },
            ));
        }
        for (why, case) in refusals {
            let before = up.total_requests();
            let r = send(case).await;
            assert_eq!(
                r.status,
                403,
                "{what}: {why} must be refused, got {} {:?}",
                r.status,
                r.json()
            );
            assert!(
                r.json()["rule"].is_string(),
                "{what}: refusal names its rule"
            );
            assert_eq!(
                up.total_requests(),
                before,
                "{what}: {why} reached an upstream"
            );
            checked += 1;
        }

        // Allowed side.
        let mut allowed = vec![(
            "internal peer, no X-Origin-Verify",
            Case {
                peer: INTERNAL_PEER,
                origin: false,
                admin: admin_ok,
            },
        )];
        if row.public {
            allowed.push((
                "external peer with X-Origin-Verify",
                Case {
                    peer: EXTERNAL_PEER,
                    origin: true,
                    admin: admin_ok,
                },
            ));
        }
        for (why, case) in allowed {
            let target = up
                .all()
                .into_iter()
                .find(|u| u.name.starts_with(row.upstream))
                .cloned();
            let target = target.unwrap_or_else(|| panic!("no upstream {}", row.upstream));
            let before = target.count();
            let r = send(case).await;
            assert_eq!(
                r.status,
                200,
                "{what}: {why} must pass, got {} {:?}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
            assert!(
                r.upstream().is_some_and(|u| u.starts_with(row.upstream)),
                "{what}: routed to {:?}",
                r.upstream()
            );
            assert_eq!(
                target.count(),
                before + 1,
                "{what}: exactly one request upstream"
            );
            let got = target.requests().pop().expect("recorded");
            assert_eq!(got.uri, row.path, "{what}: path forwarded unchanged");
            assert_eq!(
                got.header("x-origin-verify"),
                None,
                "{what}: origin secret stripped"
            );
            assert_eq!(
                got.header("x-admin-secret"),
                None,
                "{what}: admin secret stripped"
            );
            if let Some((name, value)) = row.app_auth {
                assert_eq!(
                    got.header(name),
                    Some(value),
                    "{what}: app credential passed through"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} cells checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_origin_value_and_repeated_header_are_refused() {
    let up = SeedUpstreams::start(1).await;
    let rampart = Rampart::start(&seed_config(&up, ""), SEED_LISTENERS).await;
    let web = rampart.addr("web");
    let r = request(
        web,
        EXTERNAL_PEER,
        "GET",
        "/v1/models",
        &[("X-Origin-Verify", "not-the-secret")],
    )
    .await;
    assert_eq!(
        (r.status, r.json()["rule"].as_str()),
        (403, Some("origin_verify.invalid"))
    );
    let prefix = &ORIGIN_SECRET[..ORIGIN_SECRET.len() - 1];
    let r = request(
        web,
        EXTERNAL_PEER,
        "GET",
        "/v1/models",
        &[("X-Origin-Verify", prefix)],
    )
    .await;
    assert_eq!(r.status, 403, "a prefix of the secret is not the secret");
    let r = request(
        web,
        EXTERNAL_PEER,
        "GET",
        "/v1/models",
        &[
            ("X-Origin-Verify", "junk"),
            ("X-Origin-Verify", ORIGIN_SECRET),
        ],
    )
    .await;
    assert_eq!(r.status, 403, "a repeated header is ambiguous");
    assert_eq!(up.total_requests(), 0);
}
