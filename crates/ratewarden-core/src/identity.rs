//! Who the client is: its IP address, from the TCP peer and, only when the peer is a
//! trusted proxy, from the forwarding header that proxy sets.
//!
//! Rules, as nginx's `real_ip_recursive on` applies them:
//! - A peer that is not a trusted proxy is the client, whatever headers it sends (it can
//!   write anything into `X-Forwarded-For`); such headers are reported as spoofing.
//! - Behind trusted proxies, the forwarding list is read from the right (the hop closest
//!   to us) and trusted addresses are skipped: the first untrusted address is the client.
//!   Everything to its left was written by the client and means nothing.
//! - An entry that is not an address (`unknown`, `_hidden`, garbage) stops the walk: the
//!   client is then the last trusted hop that reported it, never something further left.
//! - IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are the IPv4 client they carry.
//!
//! Only one header is honoured, the one the operator's proxy sets: honouring a second
//! would let a client smuggle an address in the header its proxy passes through untouched.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 address in dotted decimal, exactly as its `Display` writes it (or a network,
/// as `Ipv4Net` writes it), rendered without the formatting machinery: every request
/// renders one (its counter key, the `X-Forwarded-For` the upstream hears), and
/// `Display` costs more than the rest of that.
#[derive(Clone, Copy)]
pub struct DottedQuad {
    /// Room for `255.255.255.255/32`, and for a whole octet written past the end.
    text: [u8; 21],
    len: usize,
}

/// Each octet's decimal digits, padded to three, and how many of them it has.
const OCTETS: [([u8; 3], u8); 256] = {
    let mut table = [([0; 3], 0); 256];
    let mut i = 0;
    while i < 256 {
        let n = i as u8;
        table[i] = if n >= 100 {
            ([b'0' + n / 100, b'0' + n / 10 % 10, b'0' + n % 10], 3)
        } else if n >= 10 {
            ([b'0' + n / 10, b'0' + n % 10, 0], 2)
        } else {
            ([b'0' + n, 0, 0], 1)
        };
        i += 1;
    }
    table
};

impl DottedQuad {
    /// Renders `address`.
    pub fn new(address: Ipv4Addr) -> DottedQuad {
        let mut quad = DottedQuad {
            text: [0; 21],
            len: 0,
        };
        for (i, octet) in address.octets().into_iter().enumerate() {
            if i > 0 {
                quad.push(b'.');
            }
            quad.push_octet(octet);
        }
        quad
    }

    /// Renders `network`: its address, `/` and its prefix length.
    pub fn network(network: ipnet::Ipv4Net) -> DottedQuad {
        let mut quad = DottedQuad::new(network.addr());
        quad.push(b'/');
        quad.push_octet(network.prefix_len());
        quad
    }

    fn push_octet(&mut self, octet: u8) {
        // Three bytes written, the digits counted: no division, no branch per digit.
        let (digits, count) = OCTETS[usize::from(octet)];
        if let Some(room) = self.text.get_mut(self.len..self.len + 3) {
            room.copy_from_slice(&digits);
            self.len += usize::from(count);
        }
    }

    fn push(&mut self, byte: u8) {
        if let Some(room) = self.text.get_mut(self.len) {
            *room = byte;
            self.len += 1;
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits, dots and a slash were written.
        std::str::from_utf8(&self.text[..self.len]).unwrap_or_default()
    }
}

/// Which header trusted proxies use to pass on the client's address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardingHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
    Forwarded,
}

impl ForwardingHeader {
    /// The header's name, lower case.
    pub fn name(self) -> &'static str {
        match self {
            ForwardingHeader::XForwardedFor => "x-forwarded-for",
            ForwardingHeader::Forwarded => "forwarded",
        }
    }
}

/// The networks whose forwarding headers are believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    /// Trusts the given networks (IPv4-mapped IPv6 networks are taken as IPv4).
    pub fn new(networks: impl IntoIterator<Item = IpNet>) -> TrustedProxies {
        TrustedProxies {
            networks: networks.into_iter().map(canonical_network).collect(),
        }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.networks.iter().any(|n| n.contains(&ip))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }
}

/// The client as identified, and whether the request tried to claim another address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddress {
    /// The client's address.
    pub ip: IpAddr,
    /// The request carried forwarding headers that were not believed: sent by a peer that
    /// is not a trusted proxy. A signal for abuse detection, never a reason to trust them.
    pub spoofed_forwarding: bool,
    /// The request came through a trusted proxy (the socket peer is one).
    pub via_trusted_proxy: bool,
}

/// The client's address for a request from `peer` whose forwarding header (as chosen by
/// `header`) has the given values, in the order received.
pub fn client_address<'a>(
    peer: IpAddr,
    header: ForwardingHeader,
    values: impl IntoIterator<Item = &'a [u8], IntoIter: DoubleEndedIterator>,
    trusted: &TrustedProxies,
) -> ClientAddress {
    let peer = canonical_ip(peer);
    let mut values = values.into_iter();
    if !trusted.contains(peer) {
        return ClientAddress {
            ip: peer,
            spoofed_forwarding: values.next().is_some(),
            via_trusted_proxy: false,
        };
    }
    let mut client = peer;
    walk_vouched(header, values, trusted, |ip| client = ip);
    ClientAddress {
        ip: client,
        spoofed_forwarding: false,
        via_trusted_proxy: true,
    }
}

/// The addresses a request from `peer` passed through that the gateway can vouch for,
/// in `X-Forwarded-For` order: the client as [`client_address`] identifies it, each
/// trusted proxy between it and the peer, and the peer. What a client wrote to the left
/// of its own address (anything, from anyone) is not among them; from a peer that is
/// not a trusted proxy, only the peer is.
pub fn vouched_chain<'a>(
    peer: IpAddr,
    header: ForwardingHeader,
    values: impl IntoIterator<Item = &'a [u8], IntoIter: DoubleEndedIterator>,
    trusted: &TrustedProxies,
) -> Vec<IpAddr> {
    let peer = canonical_ip(peer);
    let mut chain = vec![peer];
    if trusted.contains(peer) {
        walk_vouched(header, values, trusted, |ip| chain.push(ip));
    }
    chain.reverse();
    chain
}

/// Walks the forwarding header a trusted peer sent from the right, calling `visit` with
/// each address up to and including the first that is not trusted; an entry that is no
/// address (`unknown`, `_hidden`, junk) ends the walk before it.
fn walk_vouched<'a>(
    header: ForwardingHeader,
    values: impl IntoIterator<Item = &'a [u8], IntoIter: DoubleEndedIterator>,
    trusted: &TrustedProxies,
    mut visit: impl FnMut(IpAddr),
) {
    // Entries of all header lines as one list, from the right; read in place (no list
    // is built: this runs for every request that comes through a proxy).
    let entries = values
        .into_iter()
        .rev()
        .flat_map(|v| v.rsplit(|&b| b == b','));
    for entry in entries {
        let parsed = match header {
            ForwardingHeader::XForwardedFor => parse_address(trim(entry)),
            ForwardingHeader::Forwarded => forwarded_for(entry).and_then(parse_address),
        };
        let Some(ip) = parsed else { break };
        visit(ip);
        if !trusted.contains(ip) {
            break;
        }
    }
}

/// `::ffff:a.b.c.d` is `a.b.c.d`; every other address is itself.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// `::ffff:10.0.0.0/104` is `10.0.0.0/8`; every other network is itself (truncated).
pub fn canonical_network(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let (Some(v4), true) = (v6.network().to_ipv4_mapped(), v6.prefix_len() >= 96) {
            if let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96) {
                return IpNet::V4(n.trunc());
            }
        }
    }
    net.trunc()
}

/// The network an address is limited as: itself for IPv4, its `/prefix` for IPv6 (one
/// host usually owns a whole /64, and rotating inside it must not buy new quota).
pub fn client_network(ip: IpAddr, ipv6_prefix: u8) -> IpNet {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => IpNet::from(IpAddr::V4(v4)),
        IpAddr::V6(v6) => {
            let prefix = ipv6_prefix.min(128);
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            let net = Ipv6Addr::from(u128::from(v6) & mask);
            IpNet::new(IpAddr::V6(net), prefix).unwrap_or(IpNet::from(IpAddr::V6(net)))
        }
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// The `for=` value of one `Forwarded` element (`for=a;proto=https`), unquoted.
fn forwarded_for(element: &[u8]) -> Option<&[u8]> {
    element.split(|&b| b == b';').find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (&pair[..eq], &pair[eq + 1..]);
        if !name.trim_ascii().eq_ignore_ascii_case(b"for") {
            return None;
        }
        let value = trim(value);
        Some(
            value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value),
        )
    })
}

/// An address as forwarding headers write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:4711`. Anything else (`unknown`, `_hidden`, junk) is
/// `None`.
fn parse_address(text: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(text).ok()?;
    if text.len() > 64 {
        return None;
    }
    let host = if let Some(rest) = text.strip_prefix('[') {
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || valid_port(after)) {
            return None;
        }
        &rest[..end]
    } else if text.matches(':').count() == 1 {
        let (host, port) = text.split_once(':')?;
        if !valid_port(port) {
            return None;
        }
        host
    } else {
        text
    };
    host.parse::<IpAddr>().ok().map(canonical_ip)
}

fn valid_port(text: &str) -> bool {
    text.strip_prefix(':')
        .unwrap_or(text)
        .parse::<u16>()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn a_dotted_quad_reads_as_display_writes_it(octets in proptest::prelude::any::<[u8; 4]>()) {
            let address = Ipv4Addr::from(octets);
            let quad = DottedQuad::new(address);
            proptest::prop_assert_eq!(quad.as_str(), address.to_string());
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().expect("net")))
    }

    fn xff(peer: &str, values: &[&str], proxies: &TrustedProxies) -> ClientAddress {
        client_address(
            ip(peer),
            ForwardingHeader::XForwardedFor,
            values.iter().map(|v| v.as_bytes()),
            proxies,
        )
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let proxies = trusted(&["10.0.0.0/8"]);
        for claim in ["1.1.1.1", "10.0.0.1", "garbage", "1.1.1.1, 2.2.2.2"] {
            let c = xff("203.0.113.5", &[claim], &proxies);
            assert_eq!(c.ip, ip("203.0.113.5"));
            assert!(c.spoofed_forwarding);
        }
        let plain = xff("203.0.113.5", &[], &proxies);
        assert!(!plain.spoofed_forwarding);
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_address_wins() {
        let proxies = trusted(&["10.0.0.0/8"]);
        let c = xff("10.0.0.1", &["6.6.6.6, 198.51.100.7, 10.1.1.1"], &proxies);
        assert_eq!(c.ip, ip("198.51.100.7"));
        assert!(!c.spoofed_forwarding);
        // The same list split over several header lines.
        let c = xff(
            "10.0.0.1",
            &["6.6.6.6", "198.51.100.7", "10.1.1.1"],
            &proxies,
        );
        assert_eq!(c.ip, ip("198.51.100.7"));
        // All hops trusted: the leftmost one is the best we know.
        let c = xff("10.0.0.1", &["10.9.9.9, 10.1.1.1"], &proxies);
        assert_eq!(c.ip, ip("10.9.9.9"));
        // No header at all: the proxy itself.
        assert_eq!(xff("10.0.0.1", &[], &proxies).ip, ip("10.0.0.1"));
    }

    #[test]
    fn junk_stops_the_walk_at_the_last_trusted_hop() {
        let proxies = trusted(&["10.0.0.0/8"]);
        for junk in [
            "unknown",
            "_hidden",
            "",
            "1.2.3",
            "::ffff:zz",
            "\u{0}",
            "1.1.1.1:99999",
        ] {
            let header = format!("6.6.6.6, {junk}, 10.1.1.1");
            assert_eq!(
                xff("10.0.0.1", &[&header], &proxies).ip,
                ip("10.1.1.1"),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn forwarded_header_forms() {
        let proxies = trusted(&["10.0.0.0/8"]);
        let fwd = |values: &[&str]| {
            client_address(
                ip("10.0.0.1"),
                ForwardingHeader::Forwarded,
                values.iter().map(|v| v.as_bytes()),
                &proxies,
            )
            .ip
        };
        assert_eq!(
            fwd(&["for=192.0.2.60;proto=http;by=203.0.113.43"]),
            ip("192.0.2.60")
        );
        assert_eq!(
            fwd(&["for=\"[2001:db8:cafe::17]:4711\""]),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(fwd(&["for=6.6.6.6, For=198.51.100.2"]), ip("198.51.100.2"));
        assert_eq!(fwd(&["for=unknown"]), ip("10.0.0.1"));
        assert_eq!(fwd(&["for=_hidden, for=10.2.2.2"]), ip("10.2.2.2"));
        assert_eq!(fwd(&["proto=https"]), ip("10.0.0.1"));
        assert_eq!(fwd(&["for=\"[::ffff:1.2.3.4]\""]), ip("1.2.3.4"));
    }

    #[test]
    fn ipv4_mapped_addresses_are_the_ipv4_client() {
        assert_eq!(canonical_ip(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical_ip(ip("::ffff:102:304")), ip("1.2.3.4"));
        assert_eq!(canonical_ip(ip("2001:db8::1")), ip("2001:db8::1"));
        let proxies = trusted(&["::ffff:10.0.0.0/104"]);
        assert!(proxies.contains(ip("10.1.2.3")));
        assert!(proxies.contains(ip("::ffff:10.1.2.3")));
    }

    #[test]
    fn ipv6_clients_are_grouped_by_prefix_ipv4_clients_are_not() {
        let a = client_network(ip("2001:db8:1:2:aaaa::1"), 64);
        let b = client_network(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), 64);
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_ne!(a, client_network(ip("2001:db8:1:3::1"), 64));
        assert_ne!(
            client_network(ip("1.2.3.4"), 64),
            client_network(ip("1.2.3.5"), 64)
        );
        assert_eq!(
            client_network(ip("::ffff:1.2.3.4"), 64).to_string(),
            "1.2.3.4/32"
        );
        assert_eq!(client_network(ip("2001:db8::1"), 0).to_string(), "::/0");
        assert_eq!(
            client_network(ip("2001:db8::1"), 200).to_string(),
            "2001:db8::1/128"
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let proxies = trusted(&["0.0.0.0/0", "::/0"]);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            let mut value = Vec::new();
            for _ in 0..(seed % 40) {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let alphabet = b"0123456789abcdef:.,;=[]\"_ forFOR\xff\x00";
                value.push(alphabet[(seed >> 33) as usize % alphabet.len()]);
            }
            for header in [ForwardingHeader::XForwardedFor, ForwardingHeader::Forwarded] {
                let _ = client_address(ip("10.0.0.1"), header, [value.as_slice()], &proxies);
                let _ = vouched_chain(ip("10.0.0.1"), header, [value.as_slice()], &proxies);
            }
        }
    }

    fn chain(peer: &str, values: &[&str], proxies: &TrustedProxies) -> Vec<String> {
        vouched_chain(
            ip(peer),
            ForwardingHeader::XForwardedFor,
            values.iter().map(|v| v.as_bytes()),
            proxies,
        )
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    #[test]
    fn the_vouched_chain_runs_from_the_client_to_the_peer() {
        let proxies = trusted(&["10.0.0.0/8"]);
        // What the client wrote left of itself is dropped; the peer is appended.
        assert_eq!(
            chain("10.0.0.1", &["6.6.6.6, 203.0.113.7, 10.1.1.1"], &proxies),
            ["203.0.113.7", "10.1.1.1", "10.0.0.1"]
        );
        // Several header lines are one list; mapped addresses are IPv4.
        assert_eq!(
            chain(
                "::ffff:10.0.0.1",
                &["203.0.113.7", "::ffff:10.1.1.1"],
                &proxies
            ),
            ["203.0.113.7", "10.1.1.1", "10.0.0.1"]
        );
        // Junk ends the walk at the last readable hop.
        assert_eq!(
            chain("10.0.0.1", &["203.0.113.7, unknown, 10.1.1.1"], &proxies),
            ["10.1.1.1", "10.0.0.1"]
        );
        // From an untrusted peer, the peer alone.
        assert_eq!(
            chain("198.51.100.2", &["203.0.113.7, 10.1.1.1"], &proxies),
            ["198.51.100.2"]
        );
        assert_eq!(chain("10.0.0.1", &[], &proxies), ["10.0.0.1"]);
        let forwarded = vouched_chain(
            ip("10.0.0.1"),
            ForwardingHeader::Forwarded,
            [br#"for=6.6.6.6, for="[2001:db8::17]:4711";proto=https"#.as_slice()],
            &proxies,
        );
        assert_eq!(forwarded, [ip("2001:db8::17"), ip("10.0.0.1")]);
    }

    proptest::proptest! {
        #[test]
        fn the_vouched_chain_starts_at_the_identified_client_and_ends_at_the_peer(
            peer in 0_u8..4,
            entries in proptest::collection::vec(
                proptest::sample::select(vec![
                    "10.0.0.1", "10.0.0.2", "203.0.113.7", "[2001:db8::1]:80", "unknown",
                    "::ffff:10.0.0.3", "junk", " 198.51.100.9 ", "",
                ]),
                0..6,
            ),
        ) {
            let proxies = trusted(&["10.0.0.0/8"]);
            let peer = ["10.0.0.9", "203.0.113.1", "::ffff:10.0.0.8", "2001:db8::2"][usize::from(peer)];
            let value = entries.join(",");
            for header in [ForwardingHeader::XForwardedFor, ForwardingHeader::Forwarded] {
                let client = client_address(ip(peer), header, [value.as_bytes()], &proxies);
                let chain = vouched_chain(ip(peer), header, [value.as_bytes()], &proxies);
                proptest::prop_assert_eq!(chain.first().copied(), Some(client.ip));
                proptest::prop_assert_eq!(chain.last().copied(), Some(canonical_ip(ip(peer))));
                // Everything after the client is a trusted proxy.
                proptest::prop_assert!(chain[1..].iter().all(|&hop| proxies.contains(hop)));
            }
        }
    }
}
