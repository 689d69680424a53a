//! Who the client is: the one place that turns a request's peer address and
//! `X-Forwarded-For` into the client IP that key allowlists, the login limit and the
//! logs all use (DESIGN.md "Trust rules").

use std::net::{IpAddr, SocketAddr};

use actix_web::HttpRequest;
use ipnet::IpNet;

/// The reverse proxies whose `X-Forwarded-For` is believed (`TOLLGATE_TRUSTED_PROXIES`).
/// Empty (the default): the header is ignored and the client is the peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Trusts the proxies in `nets` (a bare address is a network of one).
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    /// Whether `ip` is one of the trusted proxies.
    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client IP of `req`: the peer, unless the peer is a trusted proxy; then the
    /// right-most `X-Forwarded-For` entry that is not itself a trusted proxy. The
    /// header's raw bytes are split on `,`, so a byte that is not ASCII spoils only
    /// its own hop.
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip().to_canonical();
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .flat_map(|v| v.as_bytes().split(|b| *b == b','));
        Some(self.resolve(peer, forwarded))
    }

    /// The client behind `peer`, walking the `forwarded` hops (oldest first) from the
    /// right while they are trusted proxies. An entry that does not parse ends the walk
    /// at the last address known good: nothing left of it can be believed.
    fn resolve<'a>(&self, peer: IpAddr, forwarded: impl Iterator<Item = &'a [u8]>) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&[u8]> = forwarded.collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`,
/// `[::1]:5`). Bytes that are not ASCII make it unparsable.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let hop = std::str::from_utf8(hop).ok()?.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(nets: &str) -> TrustedProxies {
        TrustedProxies::new(nets.split(',').map(|n| n.trim().parse().unwrap()).collect())
    }

    fn resolve(nets: &str, peer: &str, xff: &str) -> IpAddr {
        let t = if nets.is_empty() {
            TrustedProxies::default()
        } else {
            trusted(nets)
        };
        resolve_bytes(&t, peer, xff.as_bytes())
    }

    fn resolve_bytes(t: &TrustedProxies, peer: &str, xff: &[u8]) -> IpAddr {
        let hops = xff.split(|b| *b == b',');
        t.resolve(ip(peer), hops.filter(|h| !h.trim_ascii().is_empty()))
    }

    #[test]
    fn a_hop_with_a_byte_that_is_not_ascii_ends_the_walk_there() {
        let t = trusted("127.0.0.1/32, 172.16.0.0/12");
        let resolve = |xff: &[u8]| resolve_bytes(&t, "127.0.0.1", xff);
        // The spoiled hop is left of the client: the client is still found.
        assert_eq!(resolve(b"\xff1.2.3.4, 10.1.2.3"), ip("10.1.2.3"));
        assert_eq!(resolve(b"1.2.3.4, 10.1.2.3, 172.16.0.5"), ip("10.1.2.3"));
        // The spoiled hop is where the client should be: the last proxy known.
        assert_eq!(
            resolve(b"10.1.2.3, 10.\xc3\xa9.0.1, 172.16.0.5"),
            ip("172.16.0.5")
        );
        assert_eq!(resolve(b"\xff"), ip("127.0.0.1"));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        assert_eq!(resolve("", "1.2.3.4", "10.0.0.1"), ip("1.2.3.4"));
        assert_eq!(
            resolve("127.0.0.1/32", "1.2.3.4", "10.0.0.1"),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_hop_is_the_client() {
        let t = "127.0.0.1/32, 172.16.0.0/12";
        assert_eq!(resolve(t, "127.0.0.1", "9.9.9.9, 10.1.2.3"), ip("10.1.2.3"));
        assert_eq!(
            resolve(t, "127.0.0.1", "10.1.2.3, 172.16.0.5"),
            ip("10.1.2.3")
        );
        assert_eq!(resolve(t, "127.0.0.1", "10.1.2.3:4711"), ip("10.1.2.3"));
        assert_eq!(
            resolve(t, "127.0.0.1", "[2001:db8::1]:80"),
            ip("2001:db8::1")
        );
        // No header, or only proxies: the furthest proxy known.
        assert_eq!(resolve(t, "127.0.0.1", ""), ip("127.0.0.1"));
        assert_eq!(
            resolve(t, "127.0.0.1", "172.16.0.9, 172.16.0.5"),
            ip("172.16.0.9")
        );
        // Garbage stops the walk at the last good address.
        assert_eq!(
            resolve(t, "127.0.0.1", "10.1.2.3, junk, 172.16.0.5"),
            ip("172.16.0.5")
        );
    }
}
