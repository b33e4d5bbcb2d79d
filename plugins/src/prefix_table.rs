//! Large IP lists (reputation feeds, datacenter networks) as compact tries.
//!
//! A list is a set: an address either falls in one of its prefixes or not. The prefixes are
//! made disjoint when the table is built (a prefix inside a shorter one adds nothing), then
//! laid out as a trie that consumes one address byte per level. Each node holds two 256-bit
//! maps, the slots where a prefix ends and the slots with a deeper node, and finds a child by
//! counting the bits below its slot, so a node costs 72 bytes whatever its fan-out. A lookup
//! reads at most 4 nodes for IPv4 and 16 for IPv6, however many prefixes the list holds.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use thiserror::Error;

use crate::net::canonical;

/// A list file line that is not an address, a network or a comment.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{file}:{line}: {message}")]
pub struct ListError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// An immutable set of IPv4 and IPv6 networks.
#[derive(Default)]
pub struct PrefixTable {
    v4: Trie,
    v6: Trie,
    prefixes: usize,
}

impl PrefixTable {
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in nets {
            match net.trunc() {
                IpNet::V4(n) => v4.push(((u32::from(n.addr()) as u128) << 96, n.prefix_len())),
                IpNet::V6(n) => v6.push((u128::from(n.addr()), n.prefix_len())),
            }
        }
        let (v4, v6) = (Trie::build(v4), Trie::build(v6));
        PrefixTable {
            prefixes: v4.prefixes + v6.prefixes,
            v4,
            v6,
        }
    }

    /// Reads list files; see [`read_lists`].
    pub fn parse<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ListError> {
        Ok(PrefixTable::new(read_lists(files)?))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(v4) => self.v4.contains((u32::from(v4) as u128) << 96, 4),
            IpAddr::V6(v6) => self.v6.contains(u128::from(v6), 16),
        }
    }

    /// Disjoint prefixes held, after those inside others were dropped.
    pub fn len(&self) -> usize {
        self.prefixes
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes == 0
    }

    /// Heap bytes held by the tries.
    pub fn heap_bytes(&self) -> usize {
        (self.v4.nodes.capacity() + self.v6.nodes.capacity()) * std::mem::size_of::<Node>()
    }
}

impl fmt::Debug for PrefixTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrefixTable({} prefixes)", self.prefixes)
    }
}

/// Reads list files `(name, text)`: one address or network a line, `#` and `;` start
/// comments (`1.2.3.0/24 ; SBL123` as in Spamhaus DROP), and JSON lines with a `cidr` field
/// (Spamhaus' `drop_v4.json`). Host bits set in a network are ignored.
pub fn read_lists<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<IpNet>, ListError> {
    let mut nets = Vec::new();
    for (file, text) in files {
        for (i, line) in text.lines().enumerate() {
            let error = |message: String| ListError {
                file: file.to_string(),
                line: i + 1,
                message,
            };
            if let Some(net) = parse_line(line).map_err(error)? {
                nets.push(net);
            }
        }
    }
    Ok(nets)
}

fn parse_line(line: &str) -> Result<Option<IpNet>, String> {
    let line = line.trim();
    if line.starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("JSON line: {e}"))?;
        // Feeds end with a metadata object that has no `cidr`.
        return match value.get("cidr") {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => parse_net(s).map(Some),
            Some(other) => Err(format!("`cidr` is not a string: {other}")),
        };
    }
    let entry = line
        .split(['#', ';'])
        .next()
        .and_then(|s| s.split_whitespace().next());
    entry.map(parse_net).transpose()
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    if s.contains('/') {
        s.parse::<IpNet>()
            .map_err(|_| format!("{s:?} is not an IP network"))
    } else {
        s.parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{s:?} is not an IP address or network"))
    }
}

/// Prefixes as `(address left-aligned in 128 bits, length)`.
#[derive(Default)]
struct Trie {
    nodes: Vec<Node>,
    /// A `/0` is in the list: everything matches.
    everything: bool,
    prefixes: usize,
}

#[derive(Clone, Copy, Default)]
struct Node {
    /// Slots of this level's byte covered by a prefix that ends here.
    ends: [u64; 4],
    /// Slots that continue in a deeper node.
    children: [u64; 4],
    /// Where this node's children start in `nodes`; they are contiguous, in slot order.
    first_child: u32,
}

fn bit(map: &[u64; 4], slot: u8) -> bool {
    map[usize::from(slot >> 6)] & (1 << (slot & 63)) != 0
}

/// Set bits of `map` below `slot`: the index of `slot`'s child among its siblings.
fn rank(map: &[u64; 4], slot: u8) -> usize {
    let word = usize::from(slot >> 6);
    let below: u32 = map[..word].iter().map(|w| w.count_ones()).sum();
    (below + (map[word] & ((1u64 << (slot & 63)) - 1)).count_ones()) as usize
}

fn byte_at(addr: u128, level: usize) -> u8 {
    (addr >> (120 - 8 * level)) as u8
}

impl Trie {
    fn build(mut prefixes: Vec<(u128, u8)>) -> Trie {
        prefixes.sort_unstable();
        prefixes.dedup();
        // Sorted by address then length, a prefix that contains others comes before them.
        let mut disjoint: Vec<(u128, u8)> = Vec::with_capacity(prefixes.len());
        for (addr, len) in prefixes {
            if len == 0 {
                return Trie {
                    nodes: Vec::new(),
                    everything: true,
                    prefixes: 1,
                };
            }
            let inside_last = disjoint
                .last()
                .is_some_and(|&(a, l)| (addr ^ a) >> (128 - u32::from(l)) == 0);
            if !inside_last {
                disjoint.push((addr, len));
            }
        }
        let mut trie = Trie {
            nodes: Vec::new(),
            everything: false,
            prefixes: disjoint.len(),
        };
        if !disjoint.is_empty() {
            trie.nodes.push(Node::default());
            trie.fill(&disjoint, 0, 0);
            trie.nodes.shrink_to_fit();
        }
        trie
    }

    /// Builds the node at `at` for `prefixes`, which all agree on the bytes above `level`.
    fn fill(&mut self, prefixes: &[(u128, u8)], level: usize, at: usize) {
        let level_end = 8 * (level as u8 + 1);
        let mut node = Node::default();
        let mut groups = Vec::new();
        let mut i = 0;
        while i < prefixes.len() {
            let (addr, len) = prefixes[i];
            let slot = byte_at(addr, level);
            if len <= level_end {
                // A prefix ending inside this byte covers a run of slots.
                let span = 1usize << (level_end - len);
                for s in usize::from(slot)..usize::from(slot) + span {
                    node.ends[s >> 6] |= 1 << (s & 63);
                }
                i += 1;
            } else {
                let run = prefixes[i..]
                    .iter()
                    .take_while(|&&(a, _)| byte_at(a, level) == slot)
                    .count();
                node.children[usize::from(slot >> 6)] |= 1 << (slot & 63);
                groups.push(i..i + run);
                i += run;
            }
        }
        let first = self.nodes.len();
        node.first_child = first as u32;
        self.nodes[at] = node;
        self.nodes.resize(first + groups.len(), Node::default());
        for (k, group) in groups.into_iter().enumerate() {
            self.fill(&prefixes[group], level + 1, first + k);
        }
    }

    fn contains(&self, addr: u128, levels: usize) -> bool {
        if self.everything {
            return true;
        }
        let mut at = 0;
        for level in 0..levels {
            let Some(node) = self.nodes.get(at) else {
                return false;
            };
            let slot = byte_at(addr, level);
            if bit(&node.ends, slot) {
                return true;
            }
            if !bit(&node.children, slot) {
                return false;
            }
            at = node.first_child as usize + rank(&node.children, slot);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(list: &str) -> PrefixTable {
        PrefixTable::parse([("test.txt", list)]).expect("list parses")
    }

    fn has(t: &PrefixTable, ip: &str) -> bool {
        t.contains(ip.parse().expect("test address"))
    }

    #[test]
    fn networks_of_every_length_match_exactly_their_addresses() {
        for len in 1..=32u8 {
            let t = PrefixTable::new([format!("172.16.0.0/{len}").parse().expect("net")]);
            let size = 1u64 << (32 - len);
            let base = u32::from(std::net::Ipv4Addr::new(172, 16, 0, 0)) as u64 & !(size - 1);
            let inside = [base, base + size - 1, base + size / 2];
            for a in inside {
                assert!(
                    t.contains(IpAddr::from((a as u32).to_be_bytes())),
                    "/{len} {a}"
                );
            }
            if base > 0 {
                assert!(!t.contains(IpAddr::from(((base - 1) as u32).to_be_bytes())));
            }
            if base + size < 1 << 32 {
                assert!(!t.contains(IpAddr::from(((base + size) as u32).to_be_bytes())));
            }
        }
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let t = table("2001:db8:ab00::/40\n::ffff:0:0/96\n198.51.100.7\n");
        assert!(has(&t, "2001:db8:abff:1::1"));
        assert!(!has(&t, "2001:db8:ac00::1"));
        assert!(has(&t, "198.51.100.7"));
        assert!(
            has(&t, "::ffff:198.51.100.7"),
            "a mapped peer is its IPv4 address"
        );
        assert!(!has(&t, "198.51.100.8"));
    }

    #[test]
    fn nested_and_duplicate_prefixes_collapse() {
        let t = table("10.0.0.0/8\n10.1.0.0/16\n10.1.2.3\n10.0.0.0/8\n11.0.0.0/24\n");
        assert_eq!(t.len(), 2);
        assert!(has(&t, "10.200.1.1") && has(&t, "11.0.0.255") && !has(&t, "11.0.1.0"));
    }

    #[test]
    fn public_list_formats() {
        let t = table(
            "; Spamhaus DROP List\n\
             1.10.16.0/20 ; SBL256894\n\
             # a comment\n\
             \n\
             203.0.113.9   # single host\n\
             {\"cidr\":\"192.0.2.0/24\",\"sblid\":\"SBL1\",\"rir\":\"arin\"}\n\
             {\"type\":\"metadata\",\"timestamp\":1}\n\
             198.51.100.77/24\n",
        );
        assert_eq!(t.len(), 4);
        for ip in ["1.10.31.255", "203.0.113.9", "192.0.2.200", "198.51.100.1"] {
            assert!(has(&t, ip), "{ip}");
        }
        assert!(!has(&t, "1.10.32.0"));
    }

    #[test]
    fn a_bad_line_names_file_and_line() {
        let e = PrefixTable::parse([("lists/bad.txt", "1.2.3.4\n# ok\n1.2.3.999/24\n")])
            .expect_err("refused");
        assert_eq!((e.file.as_str(), e.line), ("lists/bad.txt", 3));
        assert!(e.message.contains("1.2.3.999/24"), "{}", e.message);
    }

    #[test]
    fn zero_length_prefix_matches_everything_of_its_family() {
        let t = table("0.0.0.0/0\n");
        assert!(has(&t, "8.8.8.8") && !has(&t, "2001:db8::1"));
    }

    #[test]
    fn agrees_with_a_linear_scan_on_random_lists() {
        let mut rng = crate::test_rng::Xorshift(0x9e37_79b9_7f4a_7c15);
        let mut next = move || rng.next();
        let nets: Vec<IpNet> = (0..2000)
            .map(|_| {
                let r = next();
                let len = (r % 33) as u8;
                let addr = std::net::Ipv4Addr::from((r >> 32) as u32 & 0x0fff_ffff);
                IpNet::V4(ipnet::Ipv4Net::new(addr, len.max(4)).expect("len"))
            })
            .collect();
        let t = PrefixTable::new(nets.clone());
        for _ in 0..20_000 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(
                (next() >> 32) as u32 & 0x1fff_ffff,
            ));
            let expected = nets.iter().any(|n| n.contains(&ip));
            assert_eq!(t.contains(ip), expected, "{ip}");
        }
    }
}
