//! Deriving the client address from `X-Forwarded-For`.
//!
//! The header is believed only when the socket peer is a trusted proxy, and then only up to
//! the rightmost hop that is not itself a trusted proxy: everything left of that hop was
//! written by the client and can say anything.

use std::net::IpAddr;

use crate::net::{canonical, NetSet};

/// The client address for `peer`, given the `X-Forwarded-For` header values in order.
pub fn client_address<'a>(
    peer: IpAddr,
    xff_values: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &NetSet,
) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    for value in xff_values.rev() {
        for hop in value.rsplit(',') {
            let Some(ip) = parse_hop(hop) else {
                // A hop we cannot read: stop at the last address a trusted proxy vouched for.
                return client;
            };
            client = canonical(ip);
            if !trusted.contains(client) {
                return client;
            }
        }
    }
    client
}

/// Accepts `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` and `[2001:db8::1]:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let (host, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted() -> NetSet {
        NetSet::new(["10.0.0.0/8".parse().unwrap()])
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_xff_says() {
        let c = client_address(ip("203.0.113.9"), ["10.20.0.5"].into_iter(), &trusted());
        assert_eq!(c, ip("203.0.113.9"));
    }

    #[test]
    fn rightmost_untrusted_hop_wins() {
        let c = client_address(
            ip("10.1.1.1"),
            ["10.20.0.5, 198.51.100.7, 10.2.2.2"].into_iter(),
            &trusted(),
        );
        assert_eq!(
            c,
            ip("198.51.100.7"),
            "the spoofed leftmost entry is ignored"
        );
    }

    #[test]
    fn several_header_lines_are_one_list() {
        let c = client_address(
            ip("10.1.1.1"),
            ["198.51.100.7", "10.3.3.3"].into_iter(),
            &trusted(),
        );
        assert_eq!(c, ip("198.51.100.7"));
    }

    #[test]
    fn garbage_stops_at_last_vouched_address() {
        let c = client_address(ip("10.1.1.1"), ["evil, 10.2.2.2"].into_iter(), &trusted());
        assert_eq!(c, ip("10.2.2.2"));
    }

    #[test]
    fn ports_and_brackets() {
        let t = trusted();
        let peer = ip("10.1.1.1");
        assert_eq!(
            client_address(peer, ["198.51.100.7:443"].into_iter(), &t),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(peer, ["[2001:db8::1]:443"].into_iter(), &t),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_address(peer, ["2001:db8::2"].into_iter(), &t),
            ip("2001:db8::2")
        );
        assert_eq!(client_address(peer, std::iter::empty(), &t), peer);
    }
}
