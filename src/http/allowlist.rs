//! Address allow-lists (`--forwarded-allow-ips`, `--proxy-allow-from`):
//! exact IPs, CIDR networks, or `*`.

use std::net::IpAddr;

#[derive(Clone, Debug, Default)]
pub struct AllowList {
    any: bool,
    nets: Vec<(IpAddr, u8)>,
}

impl AllowList {
    /// Entries that are neither `*`, an IP nor a network are reported.
    pub fn parse(entries: &[String]) -> Result<AllowList, String> {
        let mut list = AllowList::default();
        for e in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if e == "*" {
                list.any = true;
                continue;
            }
            let (ip, bits) = match e.split_once('/') {
                Some((ip, bits)) => (ip, Some(bits)),
                None => (e, None),
            };
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("{e:?} is not an IP address or network"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("{e:?} has an invalid prefix length"))?,
                None => max,
            };
            list.nets.push((ip, bits));
        }
        Ok(list)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.any {
            return true;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.nets.iter().any(|(net, bits)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), *bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), *bits),
            _ => false,
        })
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = (bits / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[full] & mask == b[full] & mask
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
}
