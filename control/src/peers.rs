//! What this host knows about the other hosts beyond membership: names, MACs, and how their
//! configuration differs from ours. Fed by identity heartbeats; read by the log and `query`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use wlbs_dataplane::wire::EthernetAddress;

use crate::consistency::{describe, Difference, SharedConfig};
use crate::membership::wire::Identity;

/// One other host, as its heartbeats and identity heartbeats show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    pub name: Option<String>,
    pub dedicated_ip: Option<Ipv4Addr>,
    /// Source MAC of its last heartbeat or identity (the masked MAC in unicast mode).
    pub mac: Option<EthernetAddress>,
    /// Where its shared configuration differs from ours (empty: same, or not described).
    pub differences: Vec<Difference>,
    /// Whether its identity described its configuration at all.
    pub described: bool,
}

impl PeerInfo {
    /// "host 3 (192.0.2.23, 02:03:c0:00:02:0a)".
    pub fn name_of(&self, priority: u8) -> String {
        let mut parts = Vec::new();
        if let Some(name) = self.name.as_ref().filter(|n| !n.is_empty()) {
            parts.push(name.clone());
        }
        if let Some(ip) = self.dedicated_ip {
            parts.push(ip.to_string());
        }
        if let Some(mac) = self.mac {
            parts.push(mac.to_string());
        }
        if parts.is_empty() {
            format!("host {priority}")
        } else {
            format!("host {priority} ({})", parts.join(", "))
        }
    }
}

/// Every other host heard, by priority.
#[derive(Debug, Clone)]
pub struct Peers {
    ours: SharedConfig,
    by_priority: BTreeMap<u8, PeerInfo>,
}

impl Peers {
    pub fn new(ours: SharedConfig) -> Peers {
        Peers {
            ours,
            by_priority: BTreeMap::new(),
        }
    }

    /// Our configuration changed (a reload): differences are compared anew as identities
    /// arrive.
    pub fn set_ours(&mut self, ours: SharedConfig) {
        self.ours = ours;
    }

    pub fn get(&self, priority: u8) -> Option<&PeerInfo> {
        self.by_priority.get(&priority)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u8, &PeerInfo)> {
        self.by_priority.iter().map(|(p, i)| (*p, i))
    }

    /// A heartbeat came from `priority` with source `mac`. True when its dedicated IP is new
    /// or changed.
    pub fn heard(&mut self, priority: u8, dedicated_ip: Ipv4Addr, mac: EthernetAddress) -> bool {
        let peer = self.by_priority.entry(priority).or_default();
        peer.mac = Some(mac);
        let ip = (!dedicated_ip.is_unspecified()).then_some(dedicated_ip);
        let changed = ip.is_some() && peer.dedicated_ip != ip;
        if changed {
            peer.dedicated_ip = ip;
        }
        changed
    }

    /// An identity heartbeat arrived. Returns the line to log when what differs from our
    /// configuration changed (a new difference, or the peer fixed its configuration), so a
    /// peer repeating the same identity every 10 s is logged once.
    pub fn identity(&mut self, id: &Identity) -> Option<String> {
        let priority = id.repr.host_priority;
        let peer = self.by_priority.entry(priority).or_default();
        peer.name = Some(id.repr.host_name.clone());
        peer.mac = Some(id.src);
        if let Some(ip) = id.repr.dedicated_ip {
            peer.dedicated_ip = Some(ip);
        }
        peer.described = id.shared.is_some();
        let differences = id
            .shared
            .as_ref()
            .map(|theirs| self.ours.differences(theirs))
            .unwrap_or_default();
        if differences == peer.differences {
            return None;
        }
        let before = std::mem::replace(&mut peer.differences, differences);
        let peer = &self.by_priority[&priority];
        Some(if peer.differences.is_empty() {
            format!(
                "{}: configuration now matches ours (was: {})",
                peer.name_of(priority),
                describe(&before)
            )
        } else {
            format!(
                "{} configuration differs: {}",
                peer.name_of(priority),
                describe(&peer.differences)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::IdentityRepr;
    use wlbs_dataplane::filter::{Affinity, Mode, PortRule, Protocol, RuleVip};

    fn shared(last_port: u16) -> SharedConfig {
        SharedConfig {
            cluster_ip: Ipv4Addr::new(192, 0, 2, 10),
            vips: vec![],
            heartbeat_period_ms: 100,
            mode: crate::macs::MacMode::Unicast,
            cluster_mac: wlbs_dataplane::wire::EthernetAddress([0x02, 0xbf, 192, 0, 2, 10]),
            rules: vec![PortRule {
                vip: RuleVip::All,
                first_port: 80,
                last_port,
                protocol: Protocol::Tcp,
                mode: Mode::Multiple,
                affinity: Affinity::None,
            }],
        }
    }

    fn identity(last_port: u16) -> Identity {
        Identity {
            repr: IdentityRepr {
                version: 0x0206,
                host_priority: 3,
                cluster_ip: Ipv4Addr::new(192, 0, 2, 10),
                dedicated_ip: Some(Ipv4Addr::new(192, 0, 2, 23)),
                host_name: "web-3".into(),
                others: vec![],
            },
            shared: Some(shared(last_port)),
            src: EthernetAddress([2, 3, 192, 0, 2, 10]),
        }
    }

    #[test]
    fn a_differing_peer_is_named_once_and_again_when_it_is_fixed() {
        let mut peers = Peers::new(shared(80));
        assert_eq!(
            peers.identity(&identity(81)).as_deref(),
            Some("host 3 (web-3, 192.0.2.23, 02:03:c0:00:02:0a) configuration differs: rule 1: ports 80-80 here, 80-81 there")
        );
        assert_eq!(peers.identity(&identity(81)), None);
        assert_eq!(peers.get(3).unwrap().differences.len(), 1);
        let fixed = peers.identity(&identity(80)).unwrap();
        assert!(fixed.contains("now matches"), "{fixed}");
        assert!(peers.get(3).unwrap().differences.is_empty());
        // A matching peer is not worth a line.
        let mut fresh = Peers::new(shared(80));
        assert_eq!(fresh.identity(&identity(80)), None);
    }
}
