use std::net::IpAddr;

use ipnet::IpNet;

/// A small set of networks (internal CIDRs, trusted proxies).
///
/// Linear scan: these sets hold a handful of entries; large lists belong to `ip_reputation`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetSet(Vec<IpNet>);

impl NetSet {
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        NetSet(nets.into_iter().map(|n| n.trunc()).collect())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.20.0.1`, as a dual-stack socket reports them)
/// are matched as the IPv4 address they carry.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Appends `ip` as `Display` writes it. An address is written on every request (the
/// forwarded-for header, the access log), and IPv4 by hand costs a tenth of `fmt`'s
/// machinery; IPv6 is rare enough to go through `fmt`.
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_ip_writes_what_display_writes() {
        use std::net::{Ipv4Addr, Ipv6Addr};
        let mut rng = crate::test_rng::Xorshift(0x9e37_79b9_7f4a_7c15);
        let mut cases: Vec<IpAddr> = ["0.0.0.0", "255.255.255.255", "10.0.9.100", "::", "::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        for _ in 0..10_000 {
            cases.push(IpAddr::V4(Ipv4Addr::from(rng.next() as u32)));
            cases.push(IpAddr::V6(Ipv6Addr::from(u128::from(rng.next()) << 64)));
        }
        for ip in cases {
            let mut out = b"x".to_vec();
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x{ip}").into_bytes());
        }
    }

    #[test]
    fn mapped_v6_matches_v4_network() {
        let set = NetSet::new(["10.20.0.0/16".parse().unwrap()]);
        assert!(set.contains("10.20.3.4".parse().unwrap()));
        assert!(set.contains("::ffff:10.20.3.4".parse().unwrap()));
        assert!(!set.contains("10.21.0.1".parse().unwrap()));
        assert!(!set.contains("::1".parse().unwrap()));
    }

    #[test]
    fn host_bits_in_config_are_ignored() {
        let set = NetSet::new(["10.20.9.9/16".parse().unwrap()]);
        assert!(set.contains("10.20.0.1".parse().unwrap()));
    }
}
