//! The `geo` plugin against a MaxMind-format database built here, at test time, by a Python
//! MMDB writer from PyPI (`mmdb-writer`, in the test virtualenv): block and allow lists,
//! the client behind a trusted proxy, a route of its own, reloads, and a broken file.

use std::path::Path;
use std::process::Command;

use rampart_integration::identity::venv_bin;
use rampart_integration::*;

/// Writes a GeoLite2-Country-shaped database at `path`: each `(network, country,
/// registered country)`.
fn write_database(path: &Path, networks: &[(&str, Option<&str>, Option<&str>)]) {
    let mut script = String::from(
        "import sys\nfrom mmdb_writer import MMDBWriter\nfrom netaddr import IPSet\n\
         w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type='GeoLite2-Country')\n",
    );
    for (net, country, registered) in networks {
        let mut record = Vec::new();
        if let Some(c) = country {
            record.push(format!(
                "'country': {{'iso_code': '{c}', 'names': {{'en': '{c}'}}}}"
            ));
        }
        if let Some(r) = registered {
            record.push(format!("'registered_country': {{'iso_code': '{r}'}}"));
        }
        script.push_str(&format!(
            "w.insert_network(IPSet(['{net}']), {{{}}})\n",
            record.join(", ")
        ));
    }
    script.push_str("w.to_db_file(sys.argv[1])\n");
    let out = Command::new(venv_bin("python"))
        .arg("-c")
        .arg(&script)
        .arg(path)
        .output()
        .expect("the test virtualenv's python (scripts/venv.sh)");
    assert!(
        out.status.success(),
        "mmdb writer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const NETWORKS: &[(&str, Option<&str>, Option<&str>)] = &[
    ("127.0.0.3/32", Some("KP"), Some("KP")),
    ("127.0.0.6/32", Some("DE"), Some("DE")),
    // An anycast range placed only by who registered it.
    ("127.0.0.7/32", None, Some("FR")),
    ("203.0.113.0/24", Some("KP"), None),
    ("2001:db8::/32", Some("DE"), None),
];

fn rules(upstream: std::net::SocketAddr, geo: &str) -> String {
    let mut text = one_listener(
        upstream,
        "",
        &format!("[[listeners.plugins]]\ntype = \"geo\"\ndatabase = \"geo/countries.mmdb\"\n{geo}"),
    );
    // A second route, `/status`, of its own name: the per-route restriction's other side.
    text.push_str(
        "\n[[listeners.routes]]\nprefix = \"/status\"\nname = \"status\"\nupstream = \"app\"\n",
    );
    text
}

async fn status(rampart: &Rampart, path: &str, from: &str, xff: Option<&str>) -> (u16, String) {
    let xff = xff.map_or(String::new(), |a| format!("X-Forwarded-For: {a}\r\n"));
    let raw = format!(
        "GET {path} HTTP/1.1\r\nHost: gateway.test\r\nUser-Agent: rampart-tests/1.0\r\n{xff}Connection: close\r\n\r\n"
    );
    let r = send_raw(rampart.addr("web"), from, raw.as_bytes())
        .await
        .expect("answer");
    (
        r.status,
        r.json()["rule"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn countries_are_blocked_or_allowed_from_a_real_database_and_reload_with_the_rules() {
    let up = RecordingUpstream::start("app").await;
    // Started without geo; the database (bytes) goes into the rules directory, then the
    // rules that use it.
    let rampart = Rampart::start_full(
        &[("gateway.toml", &one_listener(up.addr, "", ""))],
        &["web"],
        &[],
        &["--no-watch"],
    )
    .await;
    let db = rampart.rules_dir.path().join("geo/countries.mmdb");
    std::fs::create_dir_all(db.parent().expect("parent")).expect("geo dir");
    write_database(&db, NETWORKS);
    let reload = || async { rampart.admin_post("/reload").await };

    // A block list, on the `app` route only.
    rampart.write_rules(&rules(up.addr, "block = [\"KP\"]\nroutes = [\"app\"]"));
    let r = reload().await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(
        status(&rampart, "/", EXTERNAL_PEER, None).await,
        (403, "geo.blocked".into())
    );
    assert_eq!(status(&rampart, "/", "127.0.0.6", None).await.0, 200);
    // Not in the database: let through (`unplaced` defaults to allow).
    assert_eq!(status(&rampart, "/", "127.0.0.9", None).await.0, 200);
    // The client a trusted proxy names is placed, not the proxy...
    assert_eq!(
        status(&rampart, "/", TRUSTED_PROXY_PEER, Some("203.0.113.9")).await,
        (403, "geo.blocked".into())
    );
    // ...and what an untrusted peer claims is not believed.
    assert_eq!(
        status(&rampart, "/", "127.0.0.6", Some("203.0.113.9"))
            .await
            .0,
        200
    );
    // Another route is not restricted.
    assert_eq!(
        status(&rampart, "/status", EXTERNAL_PEER, None).await.0,
        200
    );
    let seen = up.requests().len();
    assert_eq!(seen, 4, "refused requests never reach the upstream");

    // An allow list, unplaced addresses refused, matched on the socket peer.
    rampart.write_rules(&rules(
        up.addr,
        "allow = [\"DE\", \"FR\"]\nunplaced = \"block\"\nmatch = \"peer\"",
    ));
    assert_eq!(reload().await.status, 200);
    assert_eq!(status(&rampart, "/", "127.0.0.6", None).await.0, 200);
    // Placed by its registered country only.
    assert_eq!(status(&rampart, "/", "127.0.0.7", None).await.0, 200);
    assert_eq!(
        status(&rampart, "/status", EXTERNAL_PEER, None).await,
        (403, "geo.not_allowed".into())
    );
    assert_eq!(
        status(&rampart, "/", "127.0.0.9", None).await,
        (403, "geo.not_allowed".into())
    );
    // `match = "peer"`: a trusted proxy's peer address is what counts (not in the database).
    assert_eq!(
        status(&rampart, "/", TRUSTED_PROXY_PEER, Some("127.0.0.6")).await,
        (403, "geo.not_allowed".into())
    );

    // A new database file takes effect on reload: 127.0.0.9 is now German.
    let mut more = NETWORKS.to_vec();
    more.push(("127.0.0.9/32", Some("DE"), None));
    let fresh = rampart.rules_dir.path().join("fresh.mmdb");
    write_database(&fresh, &more);
    rampart.write_rule_file(
        "geo/countries.mmdb",
        std::fs::read(&fresh).expect("fresh database"),
    );
    assert_eq!(reload().await.status, 200);
    assert_eq!(status(&rampart, "/", "127.0.0.9", None).await.0, 200);

    // A corrupt database: the reload fails naming the file, and the rules in force stay.
    rampart.write_rule_file(
        "geo/countries.mmdb",
        b"\xab\xcd\xefMaxMind.com truncated".as_slice(),
    );
    let r = reload().await;
    assert_eq!(r.status, 422);
    let error = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("geo/countries.mmdb"), "{error}");
    assert_eq!(status(&rampart, "/", "127.0.0.9", None).await.0, 200);
    assert_eq!(
        status(&rampart, "/status", EXTERNAL_PEER, None).await.0,
        403
    );
    // A missing one, the same.
    std::fs::remove_file(&db).expect("remove");
    let r = reload().await;
    assert_eq!(r.status, 422);
    assert!(r.json()["error"]
        .as_str()
        .unwrap_or_default()
        .contains("geo/countries.mmdb"));
    // A database of something other than countries is refused at load, not read as "no
    // country" for everyone.
    let asn = rampart.rules_dir.path().join("asn.mmdb");
    let out = Command::new(venv_bin("python"))
        .arg("-c")
        .arg(
            "import sys\nfrom mmdb_writer import MMDBWriter\nfrom netaddr import IPSet\n\
             w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type='GeoLite2-ASN')\n\
             w.insert_network(IPSet(['127.0.0.0/8']), {'autonomous_system_number': 64512})\n\
             w.to_db_file(sys.argv[1])\n",
        )
        .arg(&asn)
        .output()
        .expect("python");
    assert!(out.status.success());
    rampart.write_rule_file(
        "geo/countries.mmdb",
        std::fs::read(&asn).expect("asn database"),
    );
    let r = reload().await;
    assert_eq!(r.status, 422);
    assert!(r.json()["error"]
        .as_str()
        .unwrap_or_default()
        .contains("no countries"));

    let metrics = rampart.metrics().await;
    assert!(
        metric_value(
            &metrics,
            r#"rampart_plugin_verdicts_total{action="block",listener="web",plugin="geo",rule="geo.not_allowed"}"#
        )
        .is_some_and(|n| n >= 4.0),
        "{metrics}"
    );
}
