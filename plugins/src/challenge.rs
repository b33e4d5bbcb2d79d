//! The browser challenge: how bot control tells a person's browser from a script without a
//! CAPTCHA, as AWS WAF's Challenge action does.
//!
//! A request judged "challenge" from a browser gets a small page whose script finds a
//! proof of work (a counter whose SHA-256 with the challenge starts with `difficulty` zero
//! bits), puts it in a cookie ([`ANSWER_COOKIE`]) and loads the page again. The same request
//! with a correct answer is sent back to itself (303) with a pass: a cookie signed with the
//! challenge secret, bound to the client's address and user agent, that lets its requests
//! past bot control's challenge verdicts until it expires. The answer travels with the very
//! request that was challenged, so there is no path of rampart's own to route or protect,
//! and the page goes back to where it was without a return address anyone could forge.
//!
//! Nothing is stored: the challenge and the pass carry their own time and an HMAC over
//! everything they claim, so any instance holding the secret checks what another issued, and
//! a secret rotated like the header secrets (the new value first, the old still listed)
//! keeps passes already given valid. A challenge is valid for [`CHALLENGE_VALID_S`]; within
//! that time the same client may redeem it again, which earns it nothing it did not already
//! pay for.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::{digest, hmac, rand::SecureRandom};
use serde::Deserialize;

use crate::SharedSecret;

/// The cookie in which a page's script sends its answer: `challenge~counter`.
pub const ANSWER_COOKIE: &str = "rampart_answer";
/// The cookie that carries a pass.
pub const PASS_COOKIE: &str = "rampart_pass";
/// A `Set-Cookie` value that removes a spent answer.
pub const CLEAR_ANSWER: &str = "rampart_answer=; Max-Age=0; Path=/; SameSite=Lax";
/// How long a page's challenge may be answered, in seconds.
pub const CHALLENGE_VALID_S: u64 = 300;
/// The hardest proof of work a configuration may ask: 2^24 hashes is seconds on a phone.
pub const MAX_DIFFICULTY: u8 = 24;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeConfig {
    /// A `[secrets]` entry: the key that signs challenges and passes.
    pub secret: String,
    /// Leading zero bits the proof of work needs: 2^bits hashes on average.
    #[serde(default = "default_difficulty")]
    pub difficulty_bits: u8,
    /// How long a pass lets its client through, in seconds (AWS's "immunity time").
    #[serde(default = "default_pass_ttl")]
    pub pass_ttl_s: u64,
}

fn default_difficulty() -> u8 {
    16
}

fn default_pass_ttl() -> u64 {
    300
}

/// Why an answer to a challenge earned no pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("the answer is missing a field or is not well formed")]
    Malformed,
    #[error("the challenge was not issued by this proxy, or to another client")]
    Forged,
    #[error("the challenge has expired")]
    Expired,
    #[error("the proof of work does not hold")]
    WrongProof,
}

/// Who a challenge or pass is for: a digest of the client's address and user agent.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Binding([u8; 32]);

impl Binding {
    pub fn new(client: IpAddr, user_agent: &[u8]) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut ip = Vec::with_capacity(40);
        crate::net::push_ip(&mut ip, client);
        ctx.update(&ip);
        ctx.update(b"\0");
        ctx.update(user_agent);
        let mut out = [0; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Binding(out)
    }
}

pub struct Challenger {
    key: SharedSecret,
    difficulty: u8,
    pass_ttl_s: u64,
}

impl Challenger {
    pub fn new(key: SharedSecret, config: &ChallengeConfig) -> Result<Self, String> {
        if !(1..=MAX_DIFFICULTY).contains(&config.difficulty_bits) {
            return Err(format!(
                "challenge.difficulty_bits must be 1 to {MAX_DIFFICULTY}, not {}",
                config.difficulty_bits
            ));
        }
        if config.pass_ttl_s == 0 {
            return Err("challenge.pass_ttl_s must be at least 1".into());
        }
        Ok(Challenger {
            key,
            difficulty: config.difficulty_bits,
            pass_ttl_s: config.pass_ttl_s,
        })
    }

    /// A new challenge for `who`: `issued.nonce.difficulty.mac`.
    pub fn issue(&self, who: &Binding, now: u64) -> Option<String> {
        let mut nonce = [0u8; 12];
        ring::rand::SystemRandom::new().fill(&mut nonce).ok()?;
        let claim = format!(
            "{now}.{}.{}",
            URL_SAFE_NO_PAD.encode(nonce),
            self.difficulty
        );
        let mac = self.sign(b"challenge", &claim, who)?;
        Some(format!("{claim}.{mac}"))
    }

    /// The interstitial page for `challenge`: its script solves it and comes back.
    pub fn page(&self, challenge: &str) -> String {
        // The challenge is the proxy's own text (digits, base64url and dots): nothing the
        // client sent is written into the page. The page returns to the address the browser
        // shows, which its script reads itself.
        PAGE.replace("{{challenge}}", challenge)
            .replace("{{difficulty}}", &self.difficulty.to_string())
    }

    /// Checks an answer (`challenge~counter`, from [`answer`]) and makes the `Set-Cookie`
    /// value of its pass.
    pub fn redeem(&self, who: &Binding, answer: &str, now: u64) -> Result<String, ChallengeError> {
        let (challenge, counter) = answer.split_once('~').ok_or(ChallengeError::Malformed)?;
        let (claim, mac) = challenge
            .rsplit_once('.')
            .ok_or(ChallengeError::Malformed)?;
        let mut parts = claim.split('.');
        let (Some(issued), Some(_nonce), Some(difficulty), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ChallengeError::Malformed);
        };
        let issued: u64 = issued.parse().map_err(|_| ChallengeError::Malformed)?;
        let difficulty: u8 = difficulty.parse().map_err(|_| ChallengeError::Malformed)?;
        if !self.verify(b"challenge", claim, who, mac) {
            return Err(ChallengeError::Forged);
        }
        // Issued in the future only by a clock step back; allowed a minute of it.
        if now > issued.saturating_add(CHALLENGE_VALID_S) || issued > now.saturating_add(60) {
            return Err(ChallengeError::Expired);
        }
        if counter.is_empty()
            || counter.len() > 20
            || !counter.bytes().all(|b| b.is_ascii_digit())
            || leading_zero_bits(challenge, counter) < u32::from(difficulty)
        {
            return Err(ChallengeError::WrongProof);
        }
        let claim = now.saturating_add(self.pass_ttl_s).to_string();
        let mac = self
            .sign(b"pass", &claim, who)
            .ok_or(ChallengeError::Forged)?;
        Ok(format!(
            "{PASS_COOKIE}={claim}.{mac}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
            self.pass_ttl_s
        ))
    }

    /// Whether one of the request's `Cookie` headers holds a pass for `who` that has not
    /// expired.
    pub fn has_pass<'a>(
        &self,
        who: &Binding,
        cookie_headers: impl Iterator<Item = &'a [u8]>,
        now: u64,
    ) -> bool {
        cookies(cookie_headers, PASS_COOKIE).any(|pass| {
            let Some((claim, mac)) = pass.split_once('.') else {
                return false;
            };
            let Ok(expires) = claim.parse::<u64>() else {
                return false;
            };
            // A pass claiming more than its time to live was not issued under this
            // configuration.
            now < expires
                && expires <= now.saturating_add(self.pass_ttl_s)
                && self.verify(b"pass", claim, who, mac)
        })
    }
}

/// The answer a page's script left in its cookie, if the request carries one.
pub fn answer<'a>(cookie_headers: impl Iterator<Item = &'a [u8]>) -> Option<&'a str> {
    cookies(cookie_headers, ANSWER_COOKIE).next()
}

/// The values of the cookies named `name` in `Cookie` headers.
fn cookies<'a>(
    headers: impl Iterator<Item = &'a [u8]>,
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    headers
        .filter_map(|h| std::str::from_utf8(h).ok())
        .flat_map(|h| h.split(';'))
        .filter_map(move |c| c.trim().strip_prefix(name)?.strip_prefix('='))
}

impl Challenger {
    /// `base64url(HMAC(key, kind | claim | binding))` under the current value of the key.
    fn sign(&self, kind: &[u8], claim: &str, who: &Binding) -> Option<String> {
        let values = self.key.load();
        let key = hmac::Key::new(hmac::HMAC_SHA256, values.first()?);
        Some(URL_SAFE_NO_PAD.encode(hmac::sign(&key, &signed(kind, claim, who)).as_ref()))
    }

    /// Whether `mac` signs the claim under any current value of the key (rotation), in
    /// constant time for each.
    fn verify(&self, kind: &[u8], claim: &str, who: &Binding, mac: &str) -> bool {
        let Ok(mac) = URL_SAFE_NO_PAD.decode(mac) else {
            return false;
        };
        let message = signed(kind, claim, who);
        self.key.load().iter().any(|value| {
            hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, value), &message, &mac).is_ok()
        })
    }
}

fn signed(kind: &[u8], claim: &str, who: &Binding) -> Vec<u8> {
    let mut m = Vec::with_capacity(kind.len() + claim.len() + 34);
    m.extend_from_slice(kind);
    m.push(b'|');
    m.extend_from_slice(claim.as_bytes());
    m.push(b'|');
    m.extend_from_slice(&who.0);
    m
}

/// Leading zero bits of SHA-256(`challenge:counter`), as the page's script computes it.
pub fn leading_zero_bits(challenge: &str, counter: &str) -> u32 {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(challenge.as_bytes());
    ctx.update(b":");
    ctx.update(counter.as_bytes());
    let hash = ctx.finish();
    let mut bits = 0;
    for &byte in hash.as_ref() {
        bits += byte.leading_zeros();
        if byte != 0 {
            break;
        }
    }
    bits
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The interstitial. Its SHA-256 is written from FIPS 180-4: `crypto.subtle` exists only in
/// secure contexts, and this page is also served over plain HTTP. The round constants are
/// computed from the primes as the standard defines them rather than listed.
const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>One moment</title>
<style>body{font:16px system-ui,sans-serif;margin:20vh auto;max-width:32em;text-align:center;color:#333}</style>
</head><body>
<p id="status">Checking that this is a browser. One moment&hellip;</p>
<noscript><p>This site needs JavaScript to tell browsers from automated clients.</p></noscript>
<script>
"use strict";
(function () {
  var challenge = "{{challenge}}", difficulty = {{difficulty}};
  function primes(n) {
    var out = [], c = 2;
    while (out.length < n) {
      var prime = true;
      for (var i = 0; i < out.length && out[i] * out[i] <= c; i++) if (c % out[i] === 0) { prime = false; break; }
      if (prime) out.push(c);
      c++;
    }
    return out;
  }
  function frac32(x) { return ((x - Math.floor(x)) * 4294967296) >>> 0; }
  var P = primes(64);
  var K = P.map(function (p) { return frac32(Math.cbrt(p)); });
  var H0 = P.slice(0, 8).map(function (p) { return frac32(Math.sqrt(p)); });
  var W = new Uint32Array(64);
  function rotr(x, n) { return (x >>> n) | (x << (32 - n)); }
  // SHA-256 of an ASCII string; returns the first word of the digest and the second.
  function sha256(text) {
    var len = text.length, blocks = ((len + 8) >> 6) + 1, words = new Uint32Array(blocks * 16);
    for (var i = 0; i < len; i++) words[i >> 2] |= text.charCodeAt(i) << (24 - 8 * (i & 3));
    words[len >> 2] |= 0x80 << (24 - 8 * (len & 3));
    words[blocks * 16 - 1] = len * 8;
    var h = H0.slice();
    for (var b = 0; b < blocks; b++) {
      for (var t = 0; t < 64; t++) {
        if (t < 16) W[t] = words[b * 16 + t];
        else {
          var s0 = rotr(W[t - 15], 7) ^ rotr(W[t - 15], 18) ^ (W[t - 15] >>> 3);
          var s1 = rotr(W[t - 2], 17) ^ rotr(W[t - 2], 19) ^ (W[t - 2] >>> 10);
          W[t] = (W[t - 16] + s0 + W[t - 7] + s1) >>> 0;
        }
      }
      var a = h[0], bb = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
      for (t = 0; t < 64; t++) {
        var S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
        var ch = (e & f) ^ (~e & g);
        var t1 = (hh + S1 + ch + K[t] + W[t]) >>> 0;
        var S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
        var maj = (a & bb) ^ (a & c) ^ (bb & c);
        var t2 = (S0 + maj) >>> 0;
        hh = g; g = f; f = e; e = (d + t1) >>> 0; d = c; c = bb; bb = a; a = (t1 + t2) >>> 0;
      }
      h[0] = (h[0] + a) >>> 0; h[1] = (h[1] + bb) >>> 0; h[2] = (h[2] + c) >>> 0; h[3] = (h[3] + d) >>> 0;
      h[4] = (h[4] + e) >>> 0; h[5] = (h[5] + f) >>> 0; h[6] = (h[6] + g) >>> 0; h[7] = (h[7] + hh) >>> 0;
    }
    return h;
  }
  function zeroBits(h) {
    var bits = 0;
    for (var i = 0; i < 8; i++) {
      if (h[i] === 0) { bits += 32; continue; }
      return bits + Math.clz32(h[i]);
    }
    return bits;
  }
  var n = 0;
  function work() {
    var until = Date.now() + 50;
    while (Date.now() < until) {
      for (var i = 0; i < 1000; i++, n++) {
        if (zeroBits(sha256(challenge + ":" + n)) >= difficulty) {
          document.cookie = "rampart_answer=" + challenge + "~" + n + "; Max-Age=300; Path=/; SameSite=Lax";
          location.reload();
          return;
        }
      }
    }
    setTimeout(work, 0);
  }
  work();
})();
</script>
</body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretValues;

    fn challenger(values: &[&str], ttl: u64) -> Challenger {
        let key = SharedSecret::new(
            "challenge-key",
            SecretValues::new(values.iter().map(|v| v.as_bytes().to_vec())),
        );
        let config = ChallengeConfig {
            secret: "challenge-key".into(),
            difficulty_bits: 8,
            pass_ttl_s: ttl,
        };
        Challenger::new(key, &config).expect("valid")
    }

    fn solve(challenge: &str, difficulty: u32) -> String {
        (0u64..)
            .map(|n| n.to_string())
            .find(|n| leading_zero_bits(challenge, n) >= difficulty)
            .expect("a solution")
    }

    fn answer(challenge: &str, n: &str) -> String {
        format!("{challenge}~{n}")
    }

    const NOW: u64 = 1_800_000_000;

    fn client() -> Binding {
        Binding::new(
            "198.51.100.7".parse().unwrap(),
            b"Mozilla/5.0 Firefox/130.0",
        )
    }

    fn cookie_value(set_cookie: &str) -> String {
        set_cookie.split(';').next().unwrap().to_string()
    }

    #[test]
    fn a_solved_challenge_earns_a_pass_for_that_client_only() {
        let c = challenger(&["k1"], 300);
        let challenge = c.issue(&client(), NOW).expect("issued");
        let n = solve(&challenge, 8);
        let pass = c
            .redeem(&client(), &answer(&challenge, &n), NOW + 5)
            .expect("redeemed");
        assert!(pass.contains("HttpOnly") && pass.contains("Max-Age=300"));
        let left = format!("a=1; {ANSWER_COOKIE}={}", answer(&challenge, &n));
        assert_eq!(
            super::answer([left.as_bytes()].into_iter()),
            Some(answer(&challenge, &n).as_str())
        );
        let cookie = cookie_value(&pass);
        let header = format!("theme=dark; {cookie}; other=1");
        assert!(c.has_pass(&client(), [header.as_bytes()].into_iter(), NOW + 10));
        // Another address, another user agent, or after it expired: no pass.
        let elsewhere = Binding::new(
            "198.51.100.8".parse().unwrap(),
            b"Mozilla/5.0 Firefox/130.0",
        );
        let other_ua = Binding::new("198.51.100.7".parse().unwrap(), b"curl/8.5.0");
        assert!(!c.has_pass(&elsewhere, [header.as_bytes()].into_iter(), NOW + 10));
        assert!(!c.has_pass(&other_ua, [header.as_bytes()].into_iter(), NOW + 10));
        assert!(!c.has_pass(&client(), [header.as_bytes()].into_iter(), NOW + 5 + 300));
    }

    #[test]
    fn forged_and_altered_passes_are_refused() {
        let c = challenger(&["k1"], 300);
        let other_key = challenger(&["k2"], 300);
        let challenge = other_key.issue(&client(), NOW).expect("issued");
        let n = solve(&challenge, 8);
        // A challenge signed with another key.
        assert_eq!(
            c.redeem(&client(), &answer(&challenge, &n), NOW).err(),
            Some(ChallengeError::Forged)
        );
        let pass = other_key
            .redeem(&client(), &answer(&challenge, &n), NOW)
            .expect("its own key");
        let cookie = cookie_value(&pass);
        assert!(!c.has_pass(&client(), [cookie.as_bytes()].into_iter(), NOW + 1));
        // A pass whose time was moved on keeps its MAC: refused.
        let (claim, mac) = cookie.split_once('=').unwrap().1.split_once('.').unwrap();
        let later = format!(
            "{PASS_COOKIE}={}.{mac}",
            claim.parse::<u64>().unwrap() + 100
        );
        assert!(!other_key.has_pass(&client(), [later.as_bytes()].into_iter(), NOW + 250));
        for junk in [
            "rampart_pass=",
            "rampart_pass=.",
            "rampart_pass=1.!!",
            "rampart_pass=x.y",
        ] {
            assert!(!c.has_pass(&client(), [junk.as_bytes()].into_iter(), NOW));
        }
    }

    #[test]
    fn a_rotated_key_keeps_passes_issued_under_the_old_one() {
        let old = challenger(&["k1"], 300);
        let rotated = challenger(&["k2", "k1"], 300);
        let challenge = old.issue(&client(), NOW).expect("issued");
        let n = solve(&challenge, 8);
        let pass = old
            .redeem(&client(), &answer(&challenge, &n), NOW)
            .expect("redeemed");
        let cookie = cookie_value(&pass);
        assert!(rotated.has_pass(&client(), [cookie.as_bytes()].into_iter(), NOW + 1));
        // A challenge issued before the rotation is still redeemable after it.
        assert!(rotated
            .redeem(&client(), &answer(&challenge, &n), NOW + 1)
            .is_ok());
    }

    #[test]
    fn wrong_late_or_malformed_answers_earn_nothing() {
        let c = challenger(&["k1"], 300);
        let challenge = c.issue(&client(), NOW).expect("issued");
        let n = solve(&challenge, 8);
        let wrong = (0u64..)
            .map(|n| n.to_string())
            .find(|n| leading_zero_bits(&challenge, n) < 8)
            .unwrap();
        let redeem = |q: &str, at: u64| c.redeem(&client(), q, at).err();
        assert_eq!(
            redeem(&answer(&challenge, &wrong), NOW),
            Some(ChallengeError::WrongProof)
        );
        assert_eq!(
            redeem(&answer(&challenge, &n), NOW + CHALLENGE_VALID_S + 1),
            Some(ChallengeError::Expired)
        );
        assert_eq!(
            c.redeem(
                &Binding::new("203.0.113.1".parse().unwrap(), b"x"),
                &answer(&challenge, &n),
                NOW
            )
            .err(),
            Some(ChallengeError::Forged)
        );
        // The difficulty is part of what is signed: lowering it breaks the MAC.
        let easier = challenge.replacen(".8.", ".1.", 1);
        assert_eq!(
            redeem(&answer(&easier, "0"), NOW),
            Some(ChallengeError::Forged)
        );
        for junk in [
            "",
            "~",
            "1.2~1",
            "~1",
            &format!("{challenge}~-1"),
            &format!("{challenge}~"),
            &format!("{challenge}~123456789012345678901"),
            &format!("{challenge}~1~2"),
        ] {
            assert!(redeem(junk, NOW).is_some(), "{junk:?}");
        }
    }

    #[test]
    fn difficulty_and_ttl_are_bounded() {
        let key = SharedSecret::new("k", SecretValues::new([b"k".to_vec()]));
        let config = |bits, ttl| ChallengeConfig {
            secret: "k".into(),
            difficulty_bits: bits,
            pass_ttl_s: ttl,
        };
        assert!(Challenger::new(key.clone(), &config(0, 300)).is_err());
        assert!(Challenger::new(key.clone(), &config(MAX_DIFFICULTY + 1, 300)).is_err());
        assert!(Challenger::new(key.clone(), &config(16, 0)).is_err());
        assert!(Challenger::new(key, &config(MAX_DIFFICULTY, 1)).is_ok());
    }

    #[test]
    fn the_page_carries_the_challenge_and_nothing_else_of_the_request() {
        let c = challenger(&["k1"], 300);
        let challenge = c.issue(&client(), NOW).expect("issued");
        let page = c.page(&challenge);
        assert!(page.contains(&format!("var challenge = \"{challenge}\", difficulty = 8;")));
        assert!(!page.contains("{{"));
        assert!(challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
    }
}
