//! Address allow-lists (`--forwarded-allow-ips`, `--proxy-allow-from`,
//! `--uwsgi-allow-from`): `*`, or entries that Python's
//! `ipaddress.ip_network(entry)` accepts, as gunicorn 27 validates them
//! (`config.validate_string_to_addr_list`) and matches peers against them
//! (`http.message._ip_in_allow_list`).
//!
//! This is the only parser of these lists: configuration validation
//! (start-up, `--check-config`, HUP) and the workers both call
//! [`AllowList::parse`], so a value that passes validation always boots.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Clone, Debug, Default)]
pub struct AllowList {
    any: bool,
    nets: Vec<Net>,
}

/// One network: the address as an integer (IPv4 in the low 32 bits) and the
/// prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Net {
    v6: bool,
    addr: u128,
    prefix: u32,
}

impl AllowList {
    /// Parses a list as gunicorn 27 validates it: every entry must be `*` or
    /// accepted by `ipaddress.ip_network` (strict). Entries arrive trimmed
    /// from the config's comma splitting; an empty one is refused, as
    /// `ip_network('')` refuses it (`"a, ,b"` is an error in gunicorn).
    pub fn parse(entries: &[String]) -> Result<AllowList, BadEntry> {
        let mut list = AllowList::default();
        for e in entries {
            if e == "*" {
                list.any = true;
                continue;
            }
            let net = Net::parse(e).ok_or_else(|| BadEntry(e.clone()))?;
            list.nets.push(net);
        }
        Ok(list)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.any {
            return true;
        }
        if self.nets.iter().any(|n| n.contains(ip)) {
            return true;
        }
        // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; gunicorn
        // compares that with IPv4 entries by version and never matches, so the
        // default 127.0.0.1 would not trust a local proxy. ferrocorn matches
        // the embedded IPv4 address too (a deliberate extension).
        match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .is_some_and(|v4| self.nets.iter().any(|n| n.contains(IpAddr::V4(v4)))),
            IpAddr::V4(_) => false,
        }
    }
}

impl Net {
    /// `ipaddress.ip_network(s)` with strict=True: `ADDRESS[/PREFIX]`, where
    /// PREFIX is a length (ASCII digits, leading zeros allowed) or, for IPv4
    /// only, a netmask (`255.0.0.0`) or a hostmask (`0.255.255.255`); host
    /// bits must be zero. An IPv6 scope (`fe80::1%eth0`) is accepted and,
    /// as in Python's containment test, ignored.
    fn parse(s: &str) -> Option<Net> {
        let (addr, prefix) = match s.split_once('/') {
            Some((_, p)) if p.contains('/') => return None,
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        // Python tries IPv4Network first, then IPv6Network.
        let (v6, addr, bits) = match parse_v4(addr) {
            Some(a) => (false, u128::from(u32::from(a)), 32),
            None => (true, u128::from(parse_v6(addr)?), 128),
        };
        let prefix = match prefix {
            None => bits,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                // int('0008') == 8 in Python; cap the length so that parse
                // cannot overflow on a long run of digits.
                let digits = p.trim_start_matches('0');
                if digits.len() > 3 {
                    return None;
                }
                let n = if digits.is_empty() {
                    0
                } else {
                    digits.parse::<u32>().ok()?
                };
                if n > bits {
                    return None;
                }
                n
            }
            Some(p) if !v6 => {
                let m = u32::from(parse_v4(p)?);
                // A netmask (ones then zeros) first, so 0.0.0.0 is /0 and
                // 255.255.255.255 is /32, then a hostmask (zeros then ones).
                mask_prefix(m).or_else(|| mask_prefix(!m))?
            }
            Some(_) => return None,
        };
        let host = bits - prefix;
        let host_mask = if host == 0 { 0 } else { (1u128 << host) - 1 };
        if addr & host_mask != 0 {
            return None;
        }
        Some(Net { v6, addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let (v6, addr, bits) = match ip {
            IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (true, u128::from(a), 128),
        };
        if v6 != self.v6 {
            return false;
        }
        let host = bits - self.prefix;
        // Shifting a u128 by 128 would overflow: a /0 network holds everything.
        host >= 128 || addr >> host == self.addr >> host
    }
}

/// The prefix length of a contiguous netmask (leading ones, then zeros).
fn mask_prefix(m: u32) -> Option<u32> {
    let ones = m.leading_ones();
    (ones + m.trailing_zeros() >= 32).then_some(ones)
}

/// Python's IPv4 parser: four dotted decimal octets of at most three digits,
/// no leading zeros, each at most 255. The standard library's parser has the
/// same rules.
fn parse_v4(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

/// Python's IPv6 parser, including an optional `%scope` suffix (non-empty,
/// without a second `%`), which is dropped.
fn parse_v6(s: &str) -> Option<Ipv6Addr> {
    let addr = match s.split_once('%') {
        Some((_, scope)) if scope.is_empty() || scope.contains('%') => return None,
        Some((a, _)) => a,
        None => s,
    };
    addr.parse().ok()
}

/// The first entry of a list that is neither `*` nor a network gunicorn
/// accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadEntry(pub String);

impl BadEntry {
    /// What is wrong, with the entry quoted by the caller: the configuration
    /// quotes values as Python's `repr` does in all its messages (this module
    /// stays below config, so it does not quote them itself).
    pub fn message(&self, quoted: &str) -> String {
        format!(
            "{quoted} is not an IP address, a network such as 10.0.0.0/8 \
             (without host bits set), or *"
        )
    }
}

impl fmt::Display for BadEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message(&format!("{:?}", self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> AllowList {
        AllowList::parse(&s.split(',').map(String::from).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn matches_ips_and_networks() {
        let l = list("127.0.0.1,::1,10.0.0.0/8,192.168.1.128/25");
        assert!(l.contains("127.0.0.1".parse().unwrap()));
        assert!(!l.contains("127.0.0.2".parse().unwrap()));
        assert!(l.contains("::1".parse().unwrap()));
        assert!(l.contains("10.200.1.1".parse().unwrap()));
        assert!(l.contains("192.168.1.200".parse().unwrap()));
        assert!(!l.contains("192.168.1.100".parse().unwrap()));
        assert!(l.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(list("*").contains("8.8.8.8".parse().unwrap()));
        assert!(AllowList::parse(&["nope".into()]).is_err());
        assert!(AllowList::parse(&["10.0.0.0/33".into()]).is_err());
    }

    #[test]
    fn netmask_hostmask_and_edge_prefixes_match() {
        let l = list("10.0.0.0/255.0.0.0,172.16.0.0/0.15.255.255");
        assert!(l.contains("10.1.2.3".parse().unwrap()));
        assert!(!l.contains("11.0.0.1".parse().unwrap()));
        assert!(l.contains("172.31.255.255".parse().unwrap()));
        assert!(!l.contains("172.32.0.0".parse().unwrap()));
        let all4 = list("0.0.0.0/0");
        assert!(all4.contains("203.0.113.9".parse().unwrap()));
        assert!(!all4.contains("2001:db8::1".parse().unwrap()));
        let all6 = list("::/0");
        assert!(all6.contains("2001:db8::1".parse().unwrap()));
        // Python compares versions first: an IPv4 peer is not in an IPv6 net.
        assert!(!all6.contains("203.0.113.9".parse().unwrap()));
        // The scope is ignored when matching, as in Python.
        let scoped = list("fe80::%eth0/64");
        assert!(scoped.contains("fe80::1234".parse().unwrap()));
        // A v4-mapped peer matches an IPv6 network written in that form too.
        let mapped = list("::ffff:0:0/96");
        assert!(mapped.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!mapped.contains("10.0.0.1".parse().unwrap()));
    }

    /// What `ipaddress.ip_network(s)` (Python 3.11, strict) does with each
    /// value: Some(prefix length) or None (ValueError). Generated with
    /// Python, not written by hand.
    const PYTHON: &[(&str, Option<u32>)] = &[
        ("127.0.0.1", Some(32)),
        ("::1", Some(128)),
        ("10.0.0.0/8", Some(8)),
        ("192.168.1.0/24", Some(24)),
        ("fd00::/8", Some(8)),
        ("10.0.0.0/255.0.0.0", Some(8)),
        ("10.0.0.0/0.255.255.255", Some(8)),
        ("0.0.0.0/0.0.0.0", Some(0)),
        ("10.0.0.0/255.255.255.255", Some(32)),
        ("10.0.0.1/255.255.255.255", Some(32)),
        ("10.0.0.0/08", Some(8)),
        ("10.0.0.0/008", Some(8)),
        ("10.0.0.0/000000000000000008", Some(8)),
        ("10.0.0.0/32", Some(32)),
        ("127.0.0.0/255.0.0.0", Some(8)),
        ("0.0.0.0/0", Some(0)),
        ("::/0", Some(0)),
        ("1::/16", Some(16)),
        ("FE80::1", Some(128)),
        ("fe80::%eth0", Some(128)),
        ("fe80::%eth0/64", Some(64)),
        ("::1%1", Some(128)),
        ("::ffff:1.2.3.4", Some(128)),
        ("::ffff:1.2.3.4/128", Some(128)),
        ("::ffff:1.2.3.0/120", Some(120)),
        ("::ffff:0:0/96", Some(96)),
        ("::1/0128", Some(128)),
        ("1:2:3:4:5:6:7::", Some(128)),
        ("::1.2.3.4", Some(128)),
        ("0000:0:0:0:0:0:0:1", Some(128)),
        ("::", Some(128)),
        ("1:2:3:4:5:6:1.2.3.4", Some(128)),
        ("192.168.1.1/24", None),
        ("10.0.0.0/33", None),
        ("10.0.0.0/0.0.0.0", None),
        ("10.0.0.0/255.0.255.0", None),
        ("1.2.3.4/255.255.0.255", None),
        ("1.2.3.4/0.0.255.255", None),
        ("127.0.0.1/255.0.0.0", None),
        ("1::1/16", None),
        ("example.com", None),
        ("", None),
        (" ", None),
        ("1.2.3", None),
        ("10.0.0.0/", None),
        ("10.0.0.0/+8", None),
        ("10.0.0.0/ 8", None),
        ("10.0.0.0/8/8", None),
        ("10.0.0.0/0x8", None),
        ("10.0.0.0/255.0.0.0.0", None),
        ("010.0.0.0/8", None),
        ("1.2.3.04", None),
        ("1.2.3.256", None),
        ("\u{ff11}.2.3.4", None),
        ("1.2.3.4/\u{ff18}", None),
        ("1.2.3.4%x", None),
        ("fe80::/64%eth0", None),
        ("fe80::%/64", None),
        ("::1%", None),
        ("::1%a%b", None),
        ("::/ffff::", None),
        ("::1/129", None),
        ("1:2:3:4:5:6:7:8:9", None),
        ("1:2:3:4:5:6:7:1.2.3.4", None),
        ("1::2::3", None),
        ("00000::1", None),
        ("::ffff:1.2.3.04", None),
        (":1::", None),
        ("1:2:3:4:5:6:7:8::", None),
    ];

    #[test]
    fn accepts_exactly_what_python_ip_network_accepts() {
        for (s, want) in PYTHON {
            let got = Net::parse(s).map(|n| n.prefix);
            assert_eq!(got, *want, "{s:?}");
        }
    }

    #[test]
    fn errors_quote_the_entry() {
        let e = AllowList::parse(&["127.0.0.1".into(), "10.0.0.1/8".into()]).unwrap_err();
        assert_eq!(e, BadEntry("10.0.0.1/8".into()));
        assert_eq!(
            e.to_string(),
            "\"10.0.0.1/8\" is not an IP address, a network such as 10.0.0.0/8 \
             (without host bits set), or *"
        );
        assert!(AllowList::parse(&["".into()]).is_err());
        assert!(AllowList::parse(&["*".into(), "bad".into()]).is_err());
    }
}
