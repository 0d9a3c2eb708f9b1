//! Who the client is, at the network level: its address, also behind trusted proxies.
//!
//! A TLS-terminating proxy (nginx, haproxy, an ingress controller) connects from its own
//! address, so every client would share one anonymous quota and one connection budget. Behind
//! a proxy listed in `trusted_proxies`, the client is the address the proxy names in
//! `Forwarded` (RFC 7239) or `X-Forwarded-For`: the right-most address that is not itself a
//! trusted proxy, since each proxy appends the address it saw. From any other peer these
//! headers are ignored: a client cannot choose its own address.

use std::net::IpAddr;

use hyper::header::HeaderMap;

/// An address block: `10.0.0.0/8`, `::1/128`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an address or an address block (10.0.0.0/8, ::1, fd00::/8)");
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (text.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { net, prefix })
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The bits of an address, IPv4-mapped IPv6 addresses as their IPv4 form.
fn bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(v4) => (true, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (true, u128::from(u32::from(v4))),
            None => (false, u128::from(v6)),
        },
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (v4, net) = bits(self.net);
        let (ip_v4, ip) = bits(ip);
        if v4 != ip_v4 {
            return false;
        }
        let width = if v4 { 32 } else { 128 };
        let shift = width - u32::from(self.prefix);
        shift >= width || (net >> shift) == (ip >> shift)
    }
}

/// The proxies whose forwarding headers are believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn new(blocks: Vec<Cidr>) -> Self {
        TrustedProxies(blocks)
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client of a request that arrived from `peer`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.0.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let chain = forwarded_for(headers);
        // From the proxy nearest us outwards: the first address no trusted proxy has.
        chain.iter().rev().copied().find(|ip| !self.trusts(*ip)).or_else(|| chain.first().copied()).unwrap_or(peer)
    }
}

/// The client addresses a request names, nearest the client first: `Forwarded: for=` if the
/// request has that header, else `X-Forwarded-For`. Unparseable entries (`unknown`, obfuscated
/// identifiers) end the chain there, so nothing before them is believed.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let values = |name| headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    let forwarded = values("forwarded");
    let items: Vec<Option<IpAddr>> = if !forwarded.is_empty() {
        forwarded
            .split(',')
            .map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then(|| parse_node(v.trim().trim_matches('"')))?
                })
            })
            .collect()
    } else {
        values("x-forwarded-for").split(',').filter(|s| !s.trim().is_empty()).map(|s| parse_node(s.trim())).collect()
    };
    // Only the unbroken run of readable addresses next to us counts.
    let readable = items.iter().rev().take_while(|i| i.is_some()).count();
    items[items.len() - readable..].iter().map(|i| i.expect("readable")).collect()
}

/// An address as forwarding headers write it: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]`,
/// `[2001:db8::1]:4711` or a bare IPv6 address.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    text.rsplit_once(':').and_then(|(ip, port)| port.parse::<u16>().ok().and(ip.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn blocks_contain_their_addresses() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()) && !c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()), "IPv4-mapped addresses");
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()) && !one.contains("::2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()) && !all.contains("::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x", "10.0.0.0/", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn only_trusted_peers_may_name_the_client() {
        let t = TrustedProxies::new(vec!["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()]);
        let (proxy, stranger) = ("127.0.0.1".parse().unwrap(), "192.0.2.7".parse().unwrap());
        let h = headers(&[("x-forwarded-for", "198.51.100.1, 10.0.0.5")]);
        assert_eq!(t.client(proxy, &h), "198.51.100.1".parse::<IpAddr>().unwrap());
        assert_eq!(t.client(stranger, &h), stranger, "an untrusted peer's header is ignored");
        // A client that forges the header gets its real address appended by the proxy.
        let forged = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.50")]);
        assert_eq!(t.client(proxy, &forged), "203.0.113.50".parse::<IpAddr>().unwrap());
        let fwd = headers(&[("forwarded", "for=198.51.100.9;proto=https, for=\"[2001:db8::7]:4711\"")]);
        assert_eq!(t.client(proxy, &fwd), "2001:db8::7".parse::<IpAddr>().unwrap());
        assert_eq!(t.client(proxy, &headers(&[("x-forwarded-for", "unknown")])), proxy);
        assert_eq!(t.client(proxy, &HeaderMap::new()), proxy);
        assert_eq!(TrustedProxies::default().client(proxy, &h), proxy);
    }
}
