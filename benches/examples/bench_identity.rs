//! Writes a JWK set and a signed access token for the load benchmark's `jwt` plugin:
//! `bench_identity OUT_DIR ISSUER` → OUT_DIR/jwks.json, OUT_DIR/token.txt (valid a day).

use std::time::{SystemTime, UNIX_EPOCH};

use rampart_plugins::testing::TestIssuer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(issuer)) = (args.next(), args.next()) else {
        return Err("usage: bench_identity OUT_DIR ISSUER".into());
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let keys = TestIssuer::new(&issuer, "bench");
    let mut claims = keys.access_claims("bench-client", "https://gateway.internal/invoke", now);
    claims["exp"] = (now + 86_400).into();
    std::fs::write(format!("{dir}/jwks.json"), keys.jwks())?;
    std::fs::write(format!("{dir}/token.txt"), keys.sign("RS256", &claims))?;
    Ok(())
}
