//! What every member of a cluster must share, and naming exactly what differs when a peer
//! does not.
//!
//! A heartbeat carries only fingerprints of the shared configuration (one per port rule and
//! one over everything), which is enough to refuse a peer but not to say why. The identity
//! heartbeat (every 10 s, and soon after a peer is refused) carries the shared configuration
//! itself as TLVs, so the others can name the field: "host 3 (192.0.2.23) rule 2: ports
//! 80-80 here, 80-81 there". The fingerprints are computed over the same bytes the TLVs
//! carry, so the two can never disagree.
//!
//! TLVs (after the identity heartbeat's host name; one byte type, one byte length):
//!
//! ```text
//! 0x82 cluster  cluster IP (4), heartbeat period in ms (u32 LE), port rule count (1),
//!               mode (1: 1 unicast, 2 multicast, 3 igmp), cluster MAC (6)
//! 0x83 vip      one extra virtual IP: 4 or 16 bytes
//! 0x84 rule     index (1, from 0), vip (1 byte kind: 0 all, 4 or 6, then 0/4/16 bytes),
//!               first port (u16 LE), last port (u16 LE), protocol (1: 1 tcp, 2 udp, 3 both),
//!               mode (1: 1 multiple, 2 single, 3 disabled), affinity (1: 0 none, 1 single,
//!               2 network)
//! ```
//!
//! Per-host parameters (load weight, handling priority, dedicated IP) are not shared: hosts
//! may differ there, as in NLB.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use wlbs_dataplane::filter::{Affinity, FilterSpec, Mode, PortRule, Protocol, RuleVip};
use wlbs_dataplane::wire::EthernetAddress;

use crate::fnv::Fnv;
use crate::macs::MacMode;

const CLUSTER_TLV_LEN: usize = 16;

/// Identity TLV type: the cluster-wide settings.
pub const TLV_CLUSTER: u8 = 0x82;
/// Identity TLV type: one extra virtual IP.
pub const TLV_VIP: u8 = 0x83;
/// Identity TLV type: one port rule.
pub const TLV_RULE: u8 = 0x84;

/// The configuration every member must share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedConfig {
    pub cluster_ip: Ipv4Addr,
    /// Virtual IPs besides the cluster IP, in configuration order.
    pub vips: Vec<IpAddr>,
    pub heartbeat_period_ms: u32,
    pub rules: Vec<PortRule>,
    pub mode: MacMode,
    pub cluster_mac: EthernetAddress,
}

/// A TLV that is not a valid part of a shared configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed configuration TLV {kind:#04x} ({len} bytes)")]
pub struct TlvError {
    pub kind: u8,
    pub len: usize,
}

impl SharedConfig {
    pub fn new(
        spec: &FilterSpec,
        heartbeat_period_ms: u32,
        mode: MacMode,
        cluster_mac: EthernetAddress,
    ) -> SharedConfig {
        SharedConfig {
            mode,
            cluster_mac,
            cluster_ip: spec.cluster_ip,
            vips: spec
                .vips
                .iter()
                .copied()
                .filter(|v| *v != IpAddr::V4(spec.cluster_ip))
                .collect(),
            heartbeat_period_ms,
            rules: spec.rules.clone(),
        }
    }

    /// The TLVs (type, value) that describe this configuration, in a canonical order.
    pub fn to_tlvs(&self) -> Vec<(u8, Vec<u8>)> {
        let mut tlvs = Vec::with_capacity(1 + self.vips.len() + self.rules.len());
        let mut cluster = self.cluster_ip.octets().to_vec();
        cluster.extend_from_slice(&self.heartbeat_period_ms.to_le_bytes());
        cluster.push(self.rules.len() as u8);
        cluster.push(match self.mode {
            MacMode::Unicast => 1,
            MacMode::Multicast => 2,
            MacMode::Igmp => 3,
        });
        cluster.extend_from_slice(&self.cluster_mac.0);
        tlvs.push((TLV_CLUSTER, cluster));
        for vip in &self.vips {
            tlvs.push((TLV_VIP, ip_bytes(*vip)));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            tlvs.push((TLV_RULE, rule_bytes(i, rule)));
        }
        tlvs
    }

    /// Reads a configuration back from identity TLVs; other TLV types are ignored. `None`
    /// when there is no cluster TLV (a sender that does not describe its configuration).
    pub fn from_tlvs<'a>(
        tlvs: impl IntoIterator<Item = (u8, &'a [u8])>,
    ) -> Result<Option<SharedConfig>, TlvError> {
        let mut shared: Option<SharedConfig> = None;
        let mut rule_count = 0usize;
        let mut vips = Vec::new();
        let mut rules = Vec::new();
        for (kind, value) in tlvs {
            let bad = || TlvError {
                kind,
                len: value.len(),
            };
            match kind {
                TLV_CLUSTER => {
                    if value.len() != CLUSTER_TLV_LEN || shared.is_some() {
                        return Err(bad());
                    }
                    let mode = match value[9] {
                        1 => MacMode::Unicast,
                        2 => MacMode::Multicast,
                        3 => MacMode::Igmp,
                        _ => return Err(bad()),
                    };
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&value[10..16]);
                    shared = Some(SharedConfig {
                        mode,
                        cluster_mac: EthernetAddress(mac),
                        cluster_ip: Ipv4Addr::new(value[0], value[1], value[2], value[3]),
                        vips: Vec::new(),
                        heartbeat_period_ms: u32::from_le_bytes([
                            value[4], value[5], value[6], value[7],
                        ]),
                        rules: Vec::new(),
                    });
                    rule_count = value[8] as usize;
                }
                TLV_VIP => vips.push(parse_ip(value).ok_or_else(bad)?),
                TLV_RULE => {
                    let (index, rule) = parse_rule(value).ok_or_else(bad)?;
                    if index != rules.len() {
                        return Err(bad());
                    }
                    rules.push(rule);
                }
                _ => {}
            }
        }
        let Some(mut shared) = shared else {
            return Ok(None);
        };
        if rules.len() != rule_count {
            return Err(TlvError {
                kind: TLV_CLUSTER,
                len: CLUSTER_TLV_LEN,
            });
        }
        shared.vips = vips;
        shared.rules = rules;
        Ok(Some(shared))
    }

    /// Fingerprint of everything peers must share (the heartbeat's config fingerprint).
    pub fn fingerprint(&self) -> u32 {
        let mut h = Fnv::new();
        for (kind, value) in self.to_tlvs() {
            h.bytes(&[kind, value.len() as u8]);
            h.bytes(&value);
        }
        h.finish()
    }

    /// Per-rule fingerprints (the heartbeat's rule codes): any field of a rule changes its code.
    pub fn rule_codes(&self) -> Vec<u32> {
        self.rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut h = Fnv::new();
                h.bytes(&rule_bytes(i, r));
                h.finish()
            })
            .collect()
    }

    /// Every difference between this host's configuration (`self`, "here") and a peer's
    /// ("there"), one phrase each, rules numbered from 1 as in the configuration file.
    pub fn differences(&self, theirs: &SharedConfig) -> Vec<Difference> {
        let mut out = Vec::new();
        let mut field = |what: String, here: String, there: String| {
            if here != there {
                out.push(Difference { what, here, there });
            }
        };
        field(
            "cluster IP".into(),
            self.cluster_ip.to_string(),
            theirs.cluster_ip.to_string(),
        );
        field(
            "cluster mode".into(),
            self.mode.to_string(),
            theirs.mode.to_string(),
        );
        field(
            "cluster MAC".into(),
            self.cluster_mac.to_string(),
            theirs.cluster_mac.to_string(),
        );
        field("virtual IPs".into(), list(&self.vips), list(&theirs.vips));
        field(
            "heartbeat period".into(),
            format!("{} ms", self.heartbeat_period_ms),
            format!("{} ms", theirs.heartbeat_period_ms),
        );
        field(
            "port rules".into(),
            self.rules.len().to_string(),
            theirs.rules.len().to_string(),
        );
        for (i, (a, b)) in self.rules.iter().zip(&theirs.rules).enumerate() {
            let rule = |name: &str| format!("rule {}: {name}", i + 1);
            field(rule("vip"), vip_name(a.vip), vip_name(b.vip));
            field(rule("ports"), ports(a), ports(b));
            field(
                rule("protocol"),
                a.protocol.name().into(),
                b.protocol.name().into(),
            );
            field(rule("mode"), a.mode.name().into(), b.mode.name().into());
            field(
                rule("affinity"),
                a.affinity.name().into(),
                b.affinity.name().into(),
            );
        }
        out
    }
}

/// One field that differs between this host and a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// "cluster IP", "heartbeat period", "port rules" (their count), "rule 2: ports", ...
    pub what: String,
    pub here: String,
    pub there: String,
}

impl Difference {
    /// The diagnostic kind (metric label) of a difference that is one of NLB's field
    /// problems.
    pub fn kind(&self) -> Option<&'static str> {
        match self.what.as_str() {
            "cluster IP" | "cluster MAC" => Some("cluster_ip_mismatch"),
            "cluster mode" => Some("mode_mismatch"),
            _ => None,
        }
    }

    /// What the difference means in NLB's field problems (the "IP address conflict" of
    /// KB Q193598), when it is one of them.
    pub fn diagnosis(&self) -> Option<&'static str> {
        match self.what.as_str() {
            "cluster IP" => Some("cluster IP mismatch: the hosts were given different cluster IPs (KB Q193598, cause 1); configure the same [cluster] ip on every host"),
            "cluster MAC" => Some("cluster MAC mismatch: the hosts were given different cluster MACs (KB Q193598, cause 2); configure the same [cluster] mac on every host (\"auto\" derives it from the cluster IP)"),
            "cluster mode" => Some("mode mismatch: some hosts run unicast and others multicast, so the switch and the clients see two cluster MACs; configure the same [cluster] mode on every host"),
            _ => None,
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} here, {} there", self.what, self.here, self.there)
    }
}

/// The differences as one phrase: "rule 2: ports 80-80 here, 80-81 there; heartbeat ...",
/// followed by what the known field problems among them mean.
pub fn describe(differences: &[Difference]) -> String {
    let mut out = differences
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    for diagnosis in differences.iter().filter_map(Difference::diagnosis) {
        out.push_str(". ");
        out.push_str(diagnosis);
    }
    out
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn parse_ip(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

fn rule_bytes(index: usize, rule: &PortRule) -> Vec<u8> {
    let mut b = vec![index as u8];
    match rule.vip {
        RuleVip::All => b.push(0),
        RuleVip::Addr(IpAddr::V4(a)) => {
            b.push(4);
            b.extend_from_slice(&a.octets());
        }
        RuleVip::Addr(IpAddr::V6(a)) => {
            b.push(6);
            b.extend_from_slice(&a.octets());
        }
    }
    b.extend_from_slice(&rule.first_port.to_le_bytes());
    b.extend_from_slice(&rule.last_port.to_le_bytes());
    b.push(match rule.protocol {
        Protocol::Tcp => 1,
        Protocol::Udp => 2,
        Protocol::Both => 3,
    });
    b.push(match rule.mode {
        Mode::Multiple => 1,
        Mode::Single => 2,
        Mode::Disabled => 3,
    });
    b.push(match rule.affinity {
        Affinity::None => 0,
        Affinity::Single => 1,
        Affinity::Network => 2,
    });
    b
}

fn parse_rule(b: &[u8]) -> Option<(usize, PortRule)> {
    let (&index, rest) = b.split_first()?;
    let (&kind, rest) = rest.split_first()?;
    let (vip, rest) = match kind {
        0 => (RuleVip::All, rest),
        4 if rest.len() >= 4 => (RuleVip::Addr(parse_ip(&rest[..4])?), &rest[4..]),
        6 if rest.len() >= 16 => (RuleVip::Addr(parse_ip(&rest[..16])?), &rest[16..]),
        _ => return None,
    };
    let [f0, f1, l0, l1, protocol, mode, affinity] = rest else {
        return None;
    };
    Some((
        index as usize,
        PortRule {
            vip,
            first_port: u16::from_le_bytes([*f0, *f1]),
            last_port: u16::from_le_bytes([*l0, *l1]),
            protocol: match protocol {
                1 => Protocol::Tcp,
                2 => Protocol::Udp,
                3 => Protocol::Both,
                _ => return None,
            },
            mode: match mode {
                1 => Mode::Multiple,
                2 => Mode::Single,
                3 => Mode::Disabled,
                _ => return None,
            },
            affinity: match affinity {
                0 => Affinity::None,
                1 => Affinity::Single,
                2 => Affinity::Network,
                _ => return None,
            },
        },
    ))
}

fn list(ips: &[IpAddr]) -> String {
    if ips.is_empty() {
        return "none".into();
    }
    ips.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn vip_name(v: RuleVip) -> String {
    match v {
        RuleVip::All => "all".into(),
        RuleVip::Addr(a) => a.to_string(),
    }
}

fn ports(r: &PortRule) -> String {
    format!("{}-{}", r.first_port, r.last_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(first: u16, last: u16) -> PortRule {
        PortRule {
            vip: RuleVip::All,
            first_port: first,
            last_port: last,
            protocol: Protocol::Tcp,
            mode: Mode::Multiple,
            affinity: Affinity::Single,
        }
    }

    fn shared() -> SharedConfig {
        SharedConfig {
            cluster_ip: Ipv4Addr::new(192, 0, 2, 10),
            vips: vec![
                "2001:db8::10".parse().unwrap(),
                "198.51.100.7".parse().unwrap(),
            ],
            heartbeat_period_ms: 100,
            mode: crate::macs::MacMode::Unicast,
            cluster_mac: wlbs_dataplane::wire::EthernetAddress([0x02, 0xbf, 192, 0, 2, 10]),
            rules: vec![
                rule(80, 80),
                PortRule {
                    vip: RuleVip::Addr("2001:db8::10".parse().unwrap()),
                    protocol: Protocol::Both,
                    mode: Mode::Single,
                    affinity: Affinity::Network,
                    ..rule(1024, 65535)
                },
                PortRule {
                    vip: RuleVip::Addr("198.51.100.7".parse().unwrap()),
                    mode: Mode::Disabled,
                    affinity: Affinity::None,
                    protocol: Protocol::Udp,
                    ..rule(53, 53)
                },
            ],
        }
    }

    fn round_trip(s: &SharedConfig) -> SharedConfig {
        let tlvs = s.to_tlvs();
        SharedConfig::from_tlvs(tlvs.iter().map(|(k, v)| (*k, v.as_slice())))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn the_description_round_trips_through_tlvs() {
        let s = shared();
        assert_eq!(round_trip(&s), s);
        for (_, v) in s.to_tlvs() {
            assert!(v.len() <= 255);
        }
    }

    #[test]
    fn the_fields_that_differ_are_named_with_both_values() {
        let here = shared();
        let mut there = shared();
        there.rules[0].last_port = 81;
        there.rules[2].affinity = Affinity::Single;
        there.heartbeat_period_ms = 1000;
        let d = here.differences(&there);
        assert_eq!(
            describe(&d),
            "heartbeat period 100 ms here, 1000 ms there; rule 1: ports 80-80 here, 80-81 there; rule 3: affinity none here, single there"
        );
        assert!(here.differences(&here).is_empty());
    }

    #[test]
    fn a_different_rule_count_and_cluster_ip_are_named() {
        let here = shared();
        let mut there = shared();
        there.rules.pop();
        there.cluster_ip = Ipv4Addr::new(192, 0, 2, 11);
        there.vips.clear();
        assert_eq!(
            describe(&here.differences(&there)),
            "cluster IP 192.0.2.10 here, 192.0.2.11 there; virtual IPs 2001:db8::10,198.51.100.7 here, none there; port rules 3 here, 2 there. cluster IP mismatch: the hosts were given different cluster IPs (KB Q193598, cause 1); configure the same [cluster] ip on every host"
        );
        let d = here.differences(&there);
        assert!(d[0].diagnosis().unwrap().contains("KB Q193598, cause 1"));
        assert_eq!(d[1].diagnosis(), None);
        let mut other_mode = shared();
        other_mode.mode = MacMode::Multicast;
        other_mode.cluster_mac = EthernetAddress([0x03, 0xbf, 192, 0, 2, 10]);
        let d = here.differences(&other_mode);
        assert_eq!(
            describe(&d),
            "cluster mode unicast here, multicast there; cluster MAC 02:bf:c0:00:02:0a here, 03:bf:c0:00:02:0a there. mode mismatch: some hosts run unicast and others multicast, so the switch and the clients see two cluster MACs; configure the same [cluster] mode on every host. cluster MAC mismatch: the hosts were given different cluster MACs (KB Q193598, cause 2); configure the same [cluster] mac on every host (\"auto\" derives it from the cluster IP)"
        );
        assert!(d[0].diagnosis().unwrap().starts_with("mode mismatch"));
        assert!(d[1].diagnosis().unwrap().contains("cause 2"));
    }

    #[test]
    fn fingerprints_change_with_any_shared_field_and_only_then() {
        let base = shared();
        assert_eq!(base.fingerprint(), shared().fingerprint());
        let mut variants = Vec::new();
        let mut v = shared();
        v.heartbeat_period_ms = 101;
        variants.push(v);
        let mut v = shared();
        v.vips.pop();
        variants.push(v);
        let mut v = shared();
        v.rules[1].first_port = 1025;
        variants.push(v);
        let mut v = shared();
        v.rules[0].protocol = Protocol::Both;
        variants.push(v);
        for v in &variants {
            assert_ne!(v.fingerprint(), base.fingerprint(), "{v:?}");
        }
        let codes = base.rule_codes();
        assert_eq!(codes.len(), 3);
        assert_ne!(variants[2].rule_codes()[1], codes[1]);
        assert_eq!(variants[2].rule_codes()[0], codes[0]);
    }

    #[test]
    fn malformed_tlvs_are_refused_not_trusted() {
        let s = shared();
        let mut tlvs = s.to_tlvs();
        // A rule missing: the count in the cluster TLV no longer matches.
        tlvs.pop();
        assert!(SharedConfig::from_tlvs(tlvs.iter().map(|(k, v)| (*k, v.as_slice()))).is_err());
        const CLUSTER: [u8; 16] = [192, 0, 2, 10, 100, 0, 0, 0, 1, 1, 2, 0xbf, 192, 0, 2, 10];
        let bad: [(u8, &[u8]); 2] = [(TLV_CLUSTER, &CLUSTER), (TLV_RULE, &[0, 9])];
        assert!(SharedConfig::from_tlvs(bad).is_err());
        let unknown_protocol = [0u8, 0, 80, 0, 80, 0, 7, 1, 1];
        let bad: [(u8, &[u8]); 2] = [(TLV_CLUSTER, &CLUSTER), (TLV_RULE, &unknown_protocol)];
        assert!(SharedConfig::from_tlvs(bad).is_err());
        let mut unknown_mode = CLUSTER;
        unknown_mode[9] = 9;
        assert!(SharedConfig::from_tlvs([(TLV_CLUSTER, &unknown_mode[..])]).is_err());
        // No cluster TLV: nothing described (a host name only).
        let none: [(u8, &[u8]); 1] = [(0x81, b"h1")];
        assert_eq!(SharedConfig::from_tlvs(none), Ok(None));
    }
}
