//! A set of IP networks answering "is this address in it?" in O(log n), for reputation
//! lists of any size (a threat feed can hold hundreds of thousands of CIDRs).
//!
//! Networks become address ranges, sorted and merged (overlapping and adjacent ranges
//! join), one list for IPv4 and one for IPv6; a lookup is a binary search. IPv4-mapped
//! IPv6 networks are stored as IPv4, as client addresses are.

use crate::identity::canonical_network;
use ipnet::IpNet;
use std::net::IpAddr;

/// An immutable set of networks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkSet {
    /// IPv4 ranges (addresses widened to u128, so one search serves both families).
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

impl NetworkSet {
    /// The set of `networks`.
    pub fn new(networks: impl IntoIterator<Item = IpNet>) -> NetworkSet {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for network in networks.into_iter().map(canonical_network) {
            match network {
                IpNet::V4(n) => v4.push((
                    u128::from(u32::from(n.network())),
                    u128::from(u32::from(n.broadcast())),
                )),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        NetworkSet {
            v4: merged(v4),
            v6: merged(v6),
        }
    }

    /// Whether `ip` lies in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => within(&self.v4, u128::from(u32::from(ip))),
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => within(&self.v4, u128::from(u32::from(v4))),
                None => within(&self.v6, u128::from(ip)),
            },
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Disjoint ranges held (after merging).
    pub fn ranges(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

/// Sorted, with overlapping and adjacent ranges joined.
fn merged(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some((_, last_end)) if start <= last_end.saturating_add(1) => {
                *last_end = (*last_end).max(end);
            }
            _ => out.push((start, end)),
        }
    }
    out
}

fn within(ranges: &[(u128, u128)], ip: u128) -> bool {
    // The last range starting at or before `ip`.
    let i = ranges.partition_point(|(start, _)| *start <= ip);
    i > 0 && ranges[i - 1].1 >= ip
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(networks: &[&str]) -> NetworkSet {
        NetworkSet::new(
            networks
                .iter()
                .map(|n| n.parse::<IpNet>().expect("network")),
        )
    }

    #[test]
    fn membership_follows_the_networks() {
        let s = set(&["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "10.1.0.0/16"]);
        assert!(s.contains("10.200.1.1".parse().expect("ip")));
        assert!(s.contains("192.0.2.7".parse().expect("ip")));
        assert!(!s.contains("192.0.2.8".parse().expect("ip")));
        assert!(s.contains("2001:db8:1::9".parse().expect("ip")));
        assert!(!s.contains("2001:db9::1".parse().expect("ip")));
        assert!(
            s.contains("::ffff:10.2.3.4".parse().expect("ip")),
            "IPv4-mapped"
        );
        assert_eq!(s.ranges(), 3, "the /16 inside the /8 merged away");
        assert!(set(&["0.0.0.0/0"]).contains("255.255.255.255".parse().expect("ip")));
        assert!(!NetworkSet::default().contains("1.2.3.4".parse().expect("ip")));
    }

    proptest! {
        #[test]
        fn lookups_agree_with_a_linear_scan(
            networks in prop::collection::vec((any::<u32>(), 8u8..=32), 0..40),
            probes in prop::collection::vec(any::<u32>(), 50),
        ) {
            let nets: Vec<IpNet> = networks
                .iter()
                .map(|(a, p)| IpNet::V4(ipnet::Ipv4Net::new((*a).into(), *p).expect("prefix").trunc()))
                .collect();
            let s = NetworkSet::new(nets.clone());
            for probe in probes.iter().chain(networks.iter().map(|(a, _)| a)) {
                let ip = IpAddr::V4((*probe).into());
                prop_assert_eq!(s.contains(ip), nets.iter().any(|n| n.contains(&ip)));
            }
        }
    }
}
