//! JWT validation and AWS secrets through the real binary: keys served by a loopback JWKS
//! endpoint and by moto's Cognito, secrets in moto's Secrets Manager, rotated while
//! rampart runs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rampart_integration::identity::{
    openai_client, JwksServer, Llmock, Moto, AWS_TEST_ENV, MOTO_REGION,
};
use rampart_integration::*;
use rampart_plugins::testing::TestIssuer;
use serde_json::json;

const ISS: &str = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Gateway";
const INVOKE: &str = "https://gateway.internal/invoke";
const ADMIN: &str = "https://gateway.internal/admin";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn jwt_plugin(issuer: &str, jwks_url: &str) -> String {
    format!(
        r#"
[[listeners.plugins]]
type = "jwt"
clients = "clients.toml"
scopes = [{{ paths = ["/key/"], scope = "{ADMIN}" }}]
issuers = [{{ issuer = "{issuer}", jwks_url = "{jwks_url}", min_refetch_seconds = 2 }}]
"#
    )
}

const CLIENTS: &str = r#"
[clients.search-bot]
team = "search"

[clients.search-bot-2]
team = "search"

[clients.ads-bot]
team = "ads"
scopes = ["https://gateway.internal/invoke"]
"#;

async fn call(
    rampart: &Rampart,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> RawResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    request(rampart.addr("web"), EXTERNAL_PEER, "GET", path, &headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_and_the_caller_reaches_the_upstream() {
    let issuer = TestIssuer::new(ISS, "gw1");
    let jwks = JwksServer::start(&issuer.jwks_rsa_only()).await;
    let up = RecordingUpstream::start("app").await;
    let rampart = Rampart::start_full(
        &[
            (
                "gateway.toml",
                &one_listener(up.addr, "", &jwt_plugin(ISS, &jwks.url())),
            ),
            ("clients.toml", CLIENTS),
        ],
        &["web"],
        &[],
        &[],
    )
    .await;
    assert_eq!(jwks.fetches(), 1, "keys are fetched once at start");

    // A valid token passes; the upstream learns the client and team from rampart alone.
    let token = issuer.sign("RS256", &issuer.access_claims("search-bot", INVOKE, now()));
    let r = call(
        &rampart,
        "/v1/models",
        Some(&token),
        &[("X-Rampart-Team", "admins")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = up.requests().pop().expect("forwarded");
    assert_eq!(seen.header("x-rampart-client-id"), Some("search-bot"));
    assert_eq!(
        seen.header("x-rampart-team"),
        Some("search"),
        "the client's copy is replaced"
    );

    // No token, a broken one, an expired one: 401 and nothing more for the client.
    let r = call(&rampart, "/v1/models", None, &[]).await;
    assert_eq!(
        (r.status, r.header("www-authenticate")),
        (401, Some("Bearer"))
    );
    let expired = issuer.sign(
        "RS256",
        &json!({ "iss": ISS, "client_id": "search-bot", "token_use": "access", "scope": INVOKE,
                 "iat": now() - 7200, "exp": now() - 3600 }),
    );
    for bad in [expired.as_str(), "not.a.token", &token[..token.len() - 4]] {
        let r = call(&rampart, "/v1/models", Some(bad), &[]).await;
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\"")
        );
        assert_eq!(r.json()["rule"], "jwt.invalid_token");
        assert!(!String::from_utf8_lossy(&r.body).contains("expired"));
    }
    // The reason is in the metrics and the access log, next to who called.
    let log = rampart.stdout_text();
    assert!(
        log.contains(r#""client_id":"search-bot","team":"search""#),
        "{log}"
    );
    assert!(
        log.contains(r#""refused_by":["jwt","jwt.expired"]"#),
        "{log}"
    );
    let m = rampart.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"rampart_plugin_verdicts_total{action="block",listener="web",plugin="jwt",rule="jwt.expired"}"#
        ),
        Some(1.0),
        "{m}"
    );

    // An admin path needs the admin scope; a client onboarded without it cannot use it.
    let ads = issuer.sign(
        "RS256",
        &issuer.access_claims("ads-bot", &format!("{INVOKE} {ADMIN}"), now()),
    );
    let r = call(&rampart, "/key/generate", Some(&ads), &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"insufficient_scope\"")
    );
    let admin = issuer.sign(
        "RS256",
        &issuer.access_claims("search-bot", &format!("{INVOKE} {ADMIN}"), now()),
    );
    assert_eq!(
        call(&rampart, "/key/generate", Some(&admin), &[])
            .await
            .status,
        200
    );
    // A client that was never onboarded.
    let stranger = issuer.sign("RS256", &issuer.access_claims("stranger", INVOKE, now()));
    assert_eq!(
        call(&rampart, "/v1/models", Some(&stranger), &[])
            .await
            .status,
        401
    );
    let forwarded = up.count();

    // The issuer adds a key (rotation): the first token signed with it fetches the keys
    // again and passes, without waiting for the hourly refresh.
    jwks.serve(200, &issuer.jwks());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = jwks.fetches();
    let es = issuer.sign("ES256", &issuer.access_claims("search-bot", INVOKE, now()));
    assert_eq!(
        call(&rampart, "/v1/models", Some(&es), &[]).await.status,
        200
    );
    assert_eq!(jwks.fetches(), before + 1);

    // Forged kids: refused, and they cannot make rampart fetch again within the interval.
    for i in 0..40 {
        let forged = issuer.sign_with_header(
            &json!({ "alg": "RS256", "kid": format!("forged-{i}") }),
            &issuer.access_claims("search-bot", INVOKE, now()),
        );
        assert_eq!(
            call(&rampart, "/v1/models", Some(&forged), &[])
                .await
                .status,
            401
        );
    }
    assert!(
        jwks.fetches() <= before + 2,
        "{} fetches",
        jwks.fetches() - before
    );

    // The endpoint fails: the last good keys keep serving.
    jwks.serve(503, "down");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let forged = issuer.sign_with_header(
        &json!({ "alg": "RS256", "kid": "forged-again" }),
        &issuer.access_claims("search-bot", INVOKE, now()),
    );
    assert_eq!(
        call(&rampart, "/v1/models", Some(&forged), &[])
            .await
            .status,
        401
    );
    let fresh = issuer.sign(
        "PS256",
        &issuer.access_claims("search-bot", INVOKE, now() + 1),
    );
    assert_eq!(
        call(&rampart, "/v1/models", Some(&fresh), &[]).await.status,
        200
    );
    let m = rampart.metrics().await;
    assert!(
        metric_value(&m, r#"rampart_jwks_fetches_total{result="failure"}"#).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert_eq!(
        up.count(),
        forwarded + 2,
        "only the accepted requests reached the upstream"
    );
}

/// moto's Cognito: a user pool whose JWKS rampart fetches, and an access token moto signs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_cognito_pool_tokens_pass() {
    let moto = Moto::start().await;
    let pool = moto
        .cognito("CreateUserPool", json!({ "PoolName": "ai-gateway" }))
        .await["UserPool"]["Id"]
        .as_str()
        .expect("pool id")
        .to_string();
    let client = moto
        .cognito(
            "CreateUserPoolClient",
            json!({ "UserPoolId": pool, "ClientName": "search",
                    "ExplicitAuthFlows": ["ALLOW_ADMIN_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"] }),
        )
        .await["UserPoolClient"]["ClientId"]
        .as_str()
        .expect("client id")
        .to_string();
    moto.cognito(
        "AdminCreateUser",
        json!({ "UserPoolId": pool, "Username": "svc", "TemporaryPassword": "Tmp-passw0rd!" }),
    )
    .await;
    moto.cognito(
        "AdminSetUserPassword",
        json!({ "UserPoolId": pool, "Username": "svc", "Password": "Svc-passw0rd!", "Permanent": true }),
    )
    .await;
    let auth = moto
        .cognito(
            "AdminInitiateAuth",
            json!({ "UserPoolId": pool, "ClientId": client, "AuthFlow": "ADMIN_USER_PASSWORD_AUTH",
                    "AuthParameters": { "USERNAME": "svc", "PASSWORD": "Svc-passw0rd!" } }),
        )
        .await;
    let token = auth["AuthenticationResult"]["AccessToken"]
        .as_str()
        .expect("access token")
        .to_string();
    let issuer = format!("https://cognito-idp.{MOTO_REGION}.amazonaws.com/{pool}");
    let jwks_url = format!("{}/{pool}/.well-known/jwks.json", moto.url());
    let up = RecordingUpstream::start("app").await;
    // moto's user tokens carry Cognito's own scope, so the route asks for that one.
    let plugins = format!(
        r#"
[[listeners.plugins]]
type = "jwt"
required_scope = "aws.cognito.signin.user.admin"
issuers = [{{ issuer = "{issuer}", jwks_url = "{jwks_url}" }}]
"#
    );
    let rampart =
        Rampart::start_opts(&one_listener(up.addr, "", &plugins), &["web"], &[], &[]).await;
    let r = call(&rampart, "/v1/models", Some(&token), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        up.requests()
            .pop()
            .and_then(|s| s.header("x-rampart-client-id").map(str::to_string)),
        Some(client)
    );
    // The same pool's token, tampered, is refused.
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[2] = parts[2].chars().rev().collect();
    assert_eq!(
        call(&rampart, "/v1/models", Some(&parts.join(".")), &[])
            .await
            .status,
        401
    );
}

fn secrets_head(moto: &Moto) -> String {
    format!(
        r#"
[secrets_manager]
region = "{MOTO_REGION}"
endpoint_url = "{url}"
refresh_seconds = 1

[secrets.origin-verify]
aws = {{ secret_id = "stargate-sandbox/origin-verify-secret" }}
"#,
        url = moto.url()
    )
}

const ORIGIN: &str = r#"
[[listeners.plugins]]
type = "origin_verify"
accept = ["header"]
secret = "origin-verify"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_rotate_in_secrets_manager_without_locking_anyone_out() {
    let moto = Moto::start().await;
    let id = "stargate-sandbox/origin-verify-secret";
    moto.secrets(
        "CreateSecret",
        json!({ "Name": id, "SecretString": "origin-v1" }),
    )
    .await;
    let up = RecordingUpstream::start("app").await;
    let rampart = Rampart::start_opts(
        &one_listener(up.addr, &secrets_head(&moto), ORIGIN),
        &["web"],
        AWS_TEST_ENV,
        &[],
    )
    .await;
    let with = |value: &'static str| {
        let rampart = &rampart;
        async move {
            request(
                rampart.addr("web"),
                EXTERNAL_PEER,
                "GET",
                "/",
                &[("X-Origin-Verify", value)],
            )
            .await
            .status
        }
    };
    assert_eq!(with("origin-v1").await, 200);
    assert_eq!(with("origin-v2").await, 403);

    // Rotation: v2 becomes current, v1 previous. Both are accepted once rampart has read it.
    moto.secrets(
        "PutSecretValue",
        json!({ "SecretId": id, "SecretString": "origin-v2" }),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            with("origin-v2").await == 200
        })
        .await
    );
    assert_eq!(
        with("origin-v1").await,
        200,
        "the previous value still works mid-rotation"
    );

    // The next rotation moves v1 out of AWSPREVIOUS: it stops working, v2 and v3 work.
    moto.secrets(
        "PutSecretValue",
        json!({ "SecretId": id, "SecretString": "origin-v3" }),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            with("origin-v1").await == 403
        })
        .await
    );
    assert_eq!(
        (with("origin-v2").await, with("origin-v3").await),
        (200, 200)
    );

    // Secrets Manager goes away: the last values keep serving, failures are counted.
    drop(moto);
    assert!(
        eventually(Duration::from_secs(30), || async {
            metric_value(
                &rampart.metrics().await,
                r#"rampart_secret_refreshes_total{result="failure"}"#,
            )
            .is_some_and(|v| v >= 1.0)
        })
        .await,
        "{}",
        rampart.stderr_text()
    );
    assert_eq!(
        (with("origin-v3").await, with("origin-v1").await),
        (200, 403)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placeholder_or_unreachable_secrets_manager_stops_the_start() {
    let moto = Moto::start().await;
    moto.secrets(
        "CreateSecret",
        json!({ "Name": "stargate-sandbox/origin-verify-secret", "SecretString": "REPLACE_ME" }),
    )
    .await;
    let up = RecordingUpstream::start("app").await;
    let rules = tempfile::tempdir().expect("dir");
    std::fs::write(
        rules.path().join("gateway.toml"),
        one_listener(up.addr, &secrets_head(&moto), ORIGIN),
    )
    .expect("write");
    let run = || {
        let out = std::process::Command::new(rampart_binary())
            .arg("--rules")
            .arg(rules.path())
            .args(["--admin", &format!("127.0.0.1:{}", free_port())])
            .args(["--listen", &format!("web=127.0.0.1:{}", free_port())])
            .envs(AWS_TEST_ENV.iter().copied())
            .output()
            .expect("runs");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run();
    assert!(
        err.contains("origin-verify") && err.contains("REPLACE_ME"),
        "the error names the secret and why: {err}"
    );
    drop(moto);
    let err = run();
    assert!(
        err.contains("origin-verify") && err.contains("stargate-sandbox/origin-verify-secret"),
        "{err}"
    );
}

/// The official `openai` Python client sends its token as the API key, through the `:80`
/// policy (X-Origin-Verify from CloudFront, then the JWT), to an OpenAI-compatible server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_gets_through_with_a_token_and_401_without() {
    let issuer = TestIssuer::new(ISS, "sdk");
    let jwks = JwksServer::start(&issuer.jwks()).await;
    let llmock = Llmock::start().await;
    let plugins = format!(
        r#"
[[listeners.plugins]]
type = "origin_verify"
accept = ["header"]
secret = "origin-verify"

[[listeners.plugins]]
type = "jwt"
issuers = [{{ issuer = "{ISS}", jwks_url = "{url}" }}]
"#,
        url = jwks.url()
    );
    let head = "[secrets.origin-verify]\nenv = [\"RAMPART_ORIGIN_VERIFY_SECRET\"]";
    let toml = one_listener(llmock.addr, head, &plugins);
    let rampart = Rampart::start_opts(&toml, &["web"], &[], &[]).await;
    let via = format!("http://{}/v1", rampart.addr("web"));
    let direct = format!("http://{}/v1", llmock.addr);
    let token = issuer.sign("RS256", &issuer.access_claims("sdk-client", INVOKE, now()));
    for stream in [false, true] {
        let through = openai_client(&via, &token, ORIGIN_SECRET, stream);
        assert_eq!(through["ok"], true, "{through}");
        let reference = openai_client(&direct, "sk-anything", ORIGIN_SECRET, stream);
        assert_eq!(through["content"], reference["content"], "stream: {stream}");
    }
    let bad = openai_client(&via, &format!("{token}x"), ORIGIN_SECRET, false);
    assert_eq!(
        (bad["status"].as_u64(), bad["error"].as_str()),
        (Some(401), Some("AuthenticationError"))
    );
    // The client cannot send no key at all; an OpenAI key instead of a token is the case.
    let none = openai_client(&via, "sk-proj-not-a-token", ORIGIN_SECRET, false);
    assert_eq!(none["status"].as_u64(), Some(401), "{none}");
    let no_origin = openai_client(&via, &token, "wrong-origin", false);
    assert_eq!(no_origin["status"].as_u64(), Some(403), "{no_origin}");
}

/// Limits per client id and per team, counted on the identity the `jwt` plugin verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_count_per_client_and_per_team() {
    let issuer = TestIssuer::new(ISS, "rl");
    let jwks = JwksServer::start(&issuer.jwks()).await;
    let up = RecordingUpstream::start("app").await;
    let plugins = format!(
        r#"{jwt}
[[listeners.plugins]]
type = "rate_limit"
limits = [
  {{ name = "PerClient", requests = 2, window_seconds = 60, key = "jwt_client_id" }},
  {{ name = "PerTeam", requests = 3, window_seconds = 60, key = "team" }},
]
"#,
        jwt = jwt_plugin(ISS, &jwks.url())
    );
    let rampart = Rampart::start_full(
        &[
            ("gateway.toml", &one_listener(up.addr, "", &plugins)),
            ("clients.toml", CLIENTS),
        ],
        &["web"],
        &[],
        &[],
    )
    .await;
    let tokens: Vec<String> = ["search-bot", "search-bot-2", "ads-bot"]
        .iter()
        .map(|c| issuer.sign("RS256", &issuer.access_claims(c, INVOKE, now())))
        .collect();
    let mut got = Vec::new();
    for who in [0, 0, 0, 1, 1, 2] {
        let r = call(&rampart, "/v1/models", Some(&tokens[who]), &[]).await;
        got.push((
            r.status,
            r.json()["rule"].as_str().unwrap_or("").to_string(),
        ));
    }
    let statuses: Vec<u16> = got.iter().map(|g| g.0).collect();
    assert_eq!(statuses, [200, 200, 429, 200, 429, 200], "{got:?}");
    assert_eq!(got[2].1, "PerClient");
    assert_eq!(
        got[4].1, "PerTeam",
        "search-bot's refused request was not charged to the team"
    );
}
