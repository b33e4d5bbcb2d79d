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

#[cfg(test)]
mod tests {
    use super::*;

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
