//! The filter table: an immutable snapshot of what this host takes, built by the control
//! thread and published lock-free (workers load it once per burst, so each packet is judged by
//! exactly one table). A port lookup is one array index; a bucket test is one bit test.

use std::net::IpAddr;

use super::hash::{self, Affinity};
use super::{FilterSpec, Mode, Protocol, RuleVip};

/// What this host does with one rule's 60 buckets (bit b = bucket b).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RuleOwnership {
    /// Fully ours: we take every packet.
    pub owned: u64,
    /// Moving to us: new TCP connections are ours; the old owner keeps its established
    /// connections and its UDP until the hand-off completes.
    pub incoming: u64,
    /// Moving away: we keep the connections we hold descriptors for (and UDP), nothing new.
    pub outgoing: u64,
    /// Single-host rule: we are its handler.
    pub handler: bool,
}

impl RuleOwnership {
    /// All 60 buckets.
    pub const ALL_BUCKETS: u64 = (1u64 << hash::BUCKETS) - 1;

    /// Buckets that are ours in any way (owned, incoming or outgoing): a packet in any other
    /// bucket is decided without the descriptors.
    #[inline(always)]
    pub fn reach(&self) -> u64 {
        self.owned | self.incoming | self.outgoing
    }

    pub fn owning(buckets: u64) -> RuleOwnership {
        RuleOwnership {
            owned: buckets,
            ..RuleOwnership::default()
        }
    }
}

/// A rule as the per-packet path reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleEntry {
    pub mode: Mode,
    pub affinity: Affinity,
    /// `hash::v4_prefix(seed, affinity)`, so an IPv4 packet costs one mix.
    pub v4_prefix: u64,
    pub protocol: Protocol,
    pub ownership: RuleOwnership,
}

/// No rule covers the port.
pub const NO_RULE: u8 = u8::MAX;

/// Port -> rule index for one (VIP, transport) pair. 64 KiB; VIPs without rules of their own
/// share the "all" map.
type PortMap = Box<[u8; 65536]>;
const PORT_MAP_LEN: usize = 65536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp = 0,
    Udp = 1,
}

impl Transport {
    /// The IP protocol number.
    pub fn protocol(self) -> u8 {
        match self {
            Transport::Tcp => crate::conn::PROTO_TCP,
            Transport::Udp => crate::conn::PROTO_UDP,
        }
    }
}

/// The immutable snapshot the workers read.
pub struct FilterTable {
    /// Increases with every table the control thread publishes.
    pub generation: u64,
    pub seed: u64,
    vips4: Vec<u32>,
    vips6: Vec<u128>,
    dedicated4: Vec<u32>,
    dedicated6: Vec<u128>,
    /// Every port map, back to back, so a lookup is one offset and one byte load.
    maps: Vec<u8>,
    /// Per VIP (v4 slots first, then v6) and transport: offset of its map in `maps`.
    vip_maps: Vec<[u32; 2]>,
    rules: Vec<RuleEntry>,
    /// We are the default host: we take VIP traffic no rule covers.
    pub default_host: bool,
    /// A stopped host takes no VIP traffic at all.
    pub running: bool,
}

/// A VIP found by address: its slot in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipSlot(u16);

impl FilterTable {
    /// Builds the table. `ownership[i]` belongs to `spec.rules[i]` (missing entries own
    /// nothing). The spec is assumed valid (the control plane validated the configuration).
    pub fn new(
        spec: &FilterSpec,
        ownership: &[RuleOwnership],
        default_host: bool,
        running: bool,
        generation: u64,
    ) -> FilterTable {
        let mut vips4 = Vec::new();
        let mut vips6 = Vec::new();
        for vip in &spec.vips {
            match vip {
                IpAddr::V4(a) => vips4.push(u32::from(*a)),
                IpAddr::V6(a) => vips6.push(u128::from(*a)),
            }
        }
        let mut dedicated4 = Vec::new();
        let mut dedicated6 = Vec::new();
        for d in &spec.dedicated {
            match d {
                IpAddr::V4(a) => dedicated4.push(u32::from(*a)),
                IpAddr::V6(a) => dedicated6.push(u128::from(*a)),
            }
        }
        let ordered_vips: Vec<IpAddr> = vips4
            .iter()
            .map(|a| IpAddr::V4((*a).into()))
            .chain(vips6.iter().map(|a| IpAddr::V6((*a).into())))
            .collect();

        let fill = |map: &mut PortMap, vip: RuleVip, transport: Transport| {
            for (i, rule) in spec.rules.iter().enumerate() {
                let covers = match transport {
                    Transport::Tcp => rule.protocol.covers_tcp(),
                    Transport::Udp => rule.protocol.covers_udp(),
                };
                if covers && rule.vip == vip {
                    for p in rule.first_port..=rule.last_port {
                        map[p as usize] = i as u8;
                    }
                }
            }
        };
        // Maps 0 and 1: the "all" rules for TCP and UDP.
        let mut maps: Vec<PortMap> = Vec::new();
        for t in [Transport::Tcp, Transport::Udp] {
            let mut m: PortMap = Box::new([NO_RULE; 65536]);
            fill(&mut m, RuleVip::All, t);
            maps.push(m);
        }
        let mut vip_maps = Vec::with_capacity(ordered_vips.len());
        for vip in &ordered_vips {
            let has_own = spec.rules.iter().any(|r| r.vip == RuleVip::Addr(*vip));
            if !has_own {
                vip_maps.push([0, PORT_MAP_LEN as u32]);
                continue;
            }
            let mut offsets = [0u32; 2];
            for t in [Transport::Tcp, Transport::Udp] {
                // A VIP's own rules take precedence over "all" rules for the same port.
                let mut m = maps[t as usize].clone();
                fill(&mut m, RuleVip::Addr(*vip), t);
                offsets[t as usize] = (maps.len() * PORT_MAP_LEN) as u32;
                maps.push(m);
            }
            vip_maps.push(offsets);
        }
        let mut flat = Vec::with_capacity(maps.len() * PORT_MAP_LEN);
        for m in &maps {
            flat.extend_from_slice(&m[..]);
        }
        let maps = flat;
        let rules = spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| RuleEntry {
                mode: r.mode,
                affinity: r.affinity,
                v4_prefix: hash::v4_prefix(hash::seed(spec.cluster_ip), r.affinity),
                protocol: r.protocol,
                ownership: ownership.get(i).copied().unwrap_or_default(),
            })
            .collect();
        FilterTable {
            generation,
            seed: hash::seed(spec.cluster_ip),
            vips4,
            vips6,
            dedicated4,
            dedicated6,
            maps,
            vip_maps,
            rules,
            default_host,
            running,
        }
    }

    #[inline]
    pub fn vip4(&self, addr: u32) -> Option<VipSlot> {
        self.vips4
            .iter()
            .position(|&v| v == addr)
            .map(|i| VipSlot(i as u16))
    }

    #[inline]
    pub fn vip6(&self, addr: u128) -> Option<VipSlot> {
        self.vips6
            .iter()
            .position(|&v| v == addr)
            .map(|i| VipSlot((self.vips4.len() + i) as u16))
    }

    #[inline]
    pub fn is_dedicated4(&self, addr: u32) -> bool {
        self.dedicated4.contains(&addr)
    }

    #[inline]
    pub fn is_dedicated6(&self, addr: u128) -> bool {
        self.dedicated6.contains(&addr)
    }

    /// The rule covering `port` on `vip` for `transport`, if any.
    #[inline]
    pub fn rule_for(&self, vip: VipSlot, transport: Transport, port: u16) -> Option<u8> {
        let offset = self.vip_maps.get(vip.0 as usize)?[transport as usize] as usize;
        let r = *self.maps.get(offset + port as usize)?;
        (r != NO_RULE).then_some(r)
    }

    #[inline]
    pub fn rule(&self, index: u8) -> &RuleEntry {
        &self.rules[index as usize]
    }

    pub fn rules(&self) -> &[RuleEntry] {
        &self.rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::PortRule;
    use std::net::Ipv4Addr;

    fn rule(vip: RuleVip, first: u16, last: u16, protocol: Protocol) -> PortRule {
        PortRule {
            vip,
            first_port: first,
            last_port: last,
            protocol,
            mode: Mode::Multiple,
            affinity: Affinity::Single,
        }
    }

    #[test]
    fn vip_rules_take_precedence_over_all_rules() {
        let vip2: IpAddr = "192.0.2.20".parse().unwrap();
        let v6: IpAddr = "2001:db8::20".parse().unwrap();
        let spec = FilterSpec {
            cluster_ip: Ipv4Addr::new(192, 0, 2, 10),
            vips: vec!["192.0.2.10".parse().unwrap(), vip2, v6],
            dedicated: vec!["192.0.2.11".parse().unwrap()],
            rules: vec![
                rule(RuleVip::All, 0, 65535, Protocol::Both),
                rule(RuleVip::Addr(vip2), 80, 80, Protocol::Tcp),
                rule(RuleVip::Addr(v6), 53, 53, Protocol::Udp),
            ],
        };
        let t = FilterTable::new(&spec, &[], false, true, 1);
        let primary = t.vip4(u32::from(Ipv4Addr::new(192, 0, 2, 10))).unwrap();
        let second = t.vip4(u32::from(Ipv4Addr::new(192, 0, 2, 20))).unwrap();
        let six = t.vip6(u128::from(
            "2001:db8::20".parse::<std::net::Ipv6Addr>().unwrap(),
        ));
        let six = six.unwrap();
        assert_eq!(t.rule_for(primary, Transport::Tcp, 80), Some(0));
        assert_eq!(t.rule_for(second, Transport::Tcp, 80), Some(1));
        assert_eq!(t.rule_for(second, Transport::Udp, 80), Some(0));
        assert_eq!(t.rule_for(second, Transport::Tcp, 81), Some(0));
        assert_eq!(t.rule_for(six, Transport::Udp, 53), Some(2));
        assert_eq!(t.rule_for(six, Transport::Tcp, 53), Some(0));
        assert!(t.vip4(u32::from(Ipv4Addr::new(192, 0, 2, 11))).is_none());
        assert!(t.is_dedicated4(u32::from(Ipv4Addr::new(192, 0, 2, 11))));
    }

    #[test]
    fn uncovered_ports_have_no_rule() {
        let spec = FilterSpec {
            cluster_ip: Ipv4Addr::new(192, 0, 2, 10),
            vips: vec!["192.0.2.10".parse().unwrap()],
            dedicated: vec![],
            rules: vec![rule(RuleVip::All, 80, 81, Protocol::Tcp)],
        };
        let t = FilterTable::new(&spec, &[], true, true, 1);
        let v = t.vip4(u32::from(Ipv4Addr::new(192, 0, 2, 10))).unwrap();
        assert_eq!(t.rule_for(v, Transport::Tcp, 79), None);
        assert_eq!(t.rule_for(v, Transport::Tcp, 81), Some(0));
        assert_eq!(t.rule_for(v, Transport::Udp, 80), None);
        assert_eq!(t.rule_for(v, Transport::Tcp, 65535), None);
    }
}
