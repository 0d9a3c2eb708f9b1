//! Who the client is, at the network level: its address, also behind trusted proxies.
//!
//! A TLS-terminating proxy (nginx, haproxy, an ingress controller) connects from its own
//! address, so every client would share one anonymous quota and one connection budget. Behind
//! a proxy listed in `trusted_proxies`, the client is the address the proxy names in the one
//! header it writes, `X-Forwarded-For` by default or `Forwarded` (RFC 7239): the right-most
//! address that is not itself a trusted proxy, since each proxy appends the address it saw.
//! The other header is never read: a proxy passes it on from the client unchanged. From any
//! other peer neither is read: a client cannot choose its own address.
//!
//! Quotas, the failed-authentication throttle and the per-address connection limit count an
//! IPv6 client by its /64 ([`accountable`]): one host commonly holds a whole /64.

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
        // An IPv4-mapped block (::ffff:10.0.0.0/104) is that IPv4 block, as its addresses are.
        if let IpAddr::V6(v6) = net {
            if let Some(v4) = v6.to_ipv4_mapped() {
                let prefix = prefix.checked_sub(96).ok_or_else(bad)?;
                return Ok(Cidr { net: IpAddr::V4(v4), prefix });
            }
        }
        Ok(Cidr { net, prefix })
    }
}

/// The header trusted proxies name the client in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardHeader {
    #[default]
    XForwardedFor,
    Forwarded,
}

impl std::str::FromStr for ForwardHeader {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(ForwardHeader::XForwardedFor),
            "forwarded" => Ok(ForwardHeader::Forwarded),
            _ => Err(format!("{text:?} is not x-forwarded-for or forwarded")),
        }
    }
}

/// The address block a client is counted under: an IPv4 address itself (an IPv4-mapped IPv6
/// one as IPv4), an IPv6 address its /64.
pub fn accountable(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
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

/// The proxies whose forwarding header is believed, and which header that is.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    blocks: Vec<Cidr>,
    header: ForwardHeader,
}

impl TrustedProxies {
    pub fn new(blocks: Vec<Cidr>, header: ForwardHeader) -> Self {
        TrustedProxies { blocks, header }
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.blocks.iter().any(|c| c.contains(ip))
    }

    /// The client of a request that arrived from `peer`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.blocks.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let chain = forwarded_for(headers, self.header);
        // From the proxy nearest us outwards: the first address no trusted proxy has.
        chain.iter().rev().copied().find(|ip| !self.trusts(*ip)).or_else(|| chain.first().copied()).unwrap_or(peer)
    }
}

/// The client addresses a request names in `header`, nearest the client first. Unparseable
/// entries (`unknown`, obfuscated identifiers) end the chain there, so nothing before them is
/// believed.
fn forwarded_for(headers: &HeaderMap, header: ForwardHeader) -> Vec<IpAddr> {
    let values = |name| headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    let items: Vec<Option<IpAddr>> = if header == ForwardHeader::Forwarded {
        values("forwarded")
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
    fn ipv4_mapped_blocks_are_their_ipv4_blocks() {
        let one: Cidr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()) && !one.contains("10.1.2.3".parse().unwrap()));
        let block: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(block.contains("10.200.0.1".parse().unwrap()) && !block.contains("11.0.0.1".parse().unwrap()));
        assert!("::ffff:10.0.0.0/90".parse::<Cidr>().is_err());
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a = accountable("2001:db8:1:2:aaaa::1".parse().unwrap());
        assert_eq!(a, "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_eq!(accountable("2001:db8:1:2:ffff::9".parse().unwrap()), a);
        assert_eq!(accountable("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(accountable("192.0.2.1".parse().unwrap()), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let t = TrustedProxies::new(vec!["127.0.0.1".parse().unwrap()], ForwardHeader::XForwardedFor);
        let proxy = "127.0.0.1".parse().unwrap();
        // A client's own Forwarded header, passed on by an nginx that writes X-Forwarded-For.
        let h = headers(&[("forwarded", "for=1.2.3.4"), ("x-forwarded-for", "198.51.100.2")]);
        assert_eq!(t.client(proxy, &h), "198.51.100.2".parse::<IpAddr>().unwrap());
        let only_forwarded = headers(&[("forwarded", "for=1.2.3.4")]);
        assert_eq!(t.client(proxy, &only_forwarded), proxy);
    }

    #[test]
    fn only_trusted_peers_may_name_the_client() {
        let t = TrustedProxies::new(
            vec!["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
            ForwardHeader::XForwardedFor,
        );
        let fwd_t = TrustedProxies::new(vec!["127.0.0.1".parse().unwrap()], ForwardHeader::Forwarded);
        let (proxy, stranger) = ("127.0.0.1".parse().unwrap(), "192.0.2.7".parse().unwrap());
        let h = headers(&[("x-forwarded-for", "198.51.100.1, 10.0.0.5")]);
        assert_eq!(t.client(proxy, &h), "198.51.100.1".parse::<IpAddr>().unwrap());
        assert_eq!(t.client(stranger, &h), stranger, "an untrusted peer's header is ignored");
        // A client that forges the header gets its real address appended by the proxy.
        let forged = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.50")]);
        assert_eq!(t.client(proxy, &forged), "203.0.113.50".parse::<IpAddr>().unwrap());
        let fwd = headers(&[("forwarded", "for=198.51.100.9;proto=https, for=\"[2001:db8::7]:4711\"")]);
        assert_eq!(fwd_t.client(proxy, &fwd), "2001:db8::7".parse::<IpAddr>().unwrap());
        assert_eq!(t.client(proxy, &headers(&[("x-forwarded-for", "unknown")])), proxy);
        assert_eq!(t.client(proxy, &HeaderMap::new()), proxy);
        assert_eq!(TrustedProxies::default().client(proxy, &h), proxy);
    }
}
