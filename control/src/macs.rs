//! Cluster MAC addresses: the three MAC modes, the addresses NLB derives from the cluster IP
//! `a.b.c.d`, the masked source MAC, and what `wlbs ip2mac` prints for the network admin.
//!
//! | mode | cluster MAC | |
//! |---|---|---|
//! | unicast | `02-BF-a-b-c-d` | every host's cluster port answers to it; frames leave with the masked source `02-<priority>-a-b-c-d` |
//! | multicast | `03-BF-a-b-c-d` | ports keep their own MAC and also accept this one |
//! | igmp | `01-00-5E-7F-c-d` | hosts join `239.255.c.d`, so snooping switches limit the flood |
//!
//! Pure functions of the cluster IP: no port, no I/O.

use core::fmt;
use core::str::FromStr;
use std::net::{Ipv4Addr, Ipv6Addr};

use wlbs_dataplane::wire::EthernetAddress;

use crate::membership::MAX_PRIORITY;

/// How the cluster shares one address among its hosts (`[cluster] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MacMode {
    /// `02-BF-a-b-c-d`, NLB's default: needs a port that can take the cluster MAC.
    #[default]
    Unicast,
    /// `03-BF-a-b-c-d`: a multicast MAC the ports accept besides their own.
    Multicast,
    /// `01-00-5E-7F-c-d`, the MAC of group `239.255.c.d`, which the hosts join with IGMP.
    Igmp,
}

impl MacMode {
    /// Every mode, in the order `ip2mac` prints them.
    pub const ALL: [MacMode; 3] = [MacMode::Unicast, MacMode::Multicast, MacMode::Igmp];

    /// The configuration spelling: `unicast`, `multicast`, `igmp`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MacMode::Unicast => "unicast",
            MacMode::Multicast => "multicast",
            MacMode::Igmp => "igmp",
        }
    }
}

impl fmt::Display for MacMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `mode` that is none of `unicast`, `multicast`, `igmp`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cluster MAC mode {0:?}: expected \"unicast\", \"multicast\" or \"igmp\"")]
pub struct ParseMacModeError(pub String);

impl FromStr for MacMode {
    type Err = ParseMacModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MacMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == s)
            .ok_or_else(|| ParseMacModeError(s.to_owned()))
    }
}

/// The IGMP version of the membership reports a host sends in igmp mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IgmpVersion {
    /// RFC 1112: reports of type `0x12`, no leave message.
    V1,
    /// RFC 2236: reports of type `0x16` with the Router Alert option, and a leave on stop.
    #[default]
    V2,
}

impl fmt::Display for IgmpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IgmpVersion::V1 => "v1",
            IgmpVersion::V2 => "v2",
        })
    }
}

/// An IGMP version that is neither 1 nor 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported IGMP version {0:?}: expected \"v1\" or \"v2\" (or 1, 2)")]
pub struct ParseIgmpVersionError(pub String);

impl FromStr for IgmpVersion {
    type Err = ParseIgmpVersionError;

    /// Accepts `v1`, `v2`, `1`, `2`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "v1" | "1" => Ok(IgmpVersion::V1),
            "v2" | "2" => Ok(IgmpVersion::V2),
            _ => Err(ParseIgmpVersionError(s.to_owned())),
        }
    }
}

/// First two octets of a unicast cluster MAC and of a masked source (`02-..`).
const UNICAST_PREFIX: [u8; 2] = [0x02, 0xbf];
const MULTICAST_PREFIX: [u8; 2] = [0x03, 0xbf];
/// `01-00-5E` (the IPv4 multicast OUI) followed by `7F`, the low seven bits of `239.255`'s
/// second octet.
const IGMP_PREFIX: [u8; 4] = [0x01, 0x00, 0x5e, 0x7f];

/// The MAC addresses and IGMP group of one cluster, all derived from its cluster IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClusterMacs {
    cluster_ip: Ipv4Addr,
}

impl ClusterMacs {
    pub const fn new(cluster_ip: Ipv4Addr) -> Self {
        Self { cluster_ip }
    }

    pub const fn cluster_ip(&self) -> Ipv4Addr {
        self.cluster_ip
    }

    /// `02-BF-a-b-c-d`.
    pub const fn unicast(&self) -> EthernetAddress {
        let [a, b, c, d] = self.cluster_ip.octets();
        EthernetAddress([UNICAST_PREFIX[0], UNICAST_PREFIX[1], a, b, c, d])
    }

    /// `03-BF-a-b-c-d`.
    pub const fn multicast(&self) -> EthernetAddress {
        let [a, b, c, d] = self.cluster_ip.octets();
        EthernetAddress([MULTICAST_PREFIX[0], MULTICAST_PREFIX[1], a, b, c, d])
    }

    /// `01-00-5E-7F-c-d`: the MAC of [`igmp_group`](Self::igmp_group).
    pub const fn igmp(&self) -> EthernetAddress {
        let [_, _, c, d] = self.cluster_ip.octets();
        let [p0, p1, p2, p3] = IGMP_PREFIX;
        EthernetAddress([p0, p1, p2, p3, c, d])
    }

    /// `239.255.c.d`, the group the hosts join in igmp mode.
    pub const fn igmp_group(&self) -> Ipv4Addr {
        let [_, _, c, d] = self.cluster_ip.octets();
        Ipv4Addr::new(239, 255, c, d)
    }

    /// The cluster MAC of `mode`.
    pub const fn cluster_mac(&self, mode: MacMode) -> EthernetAddress {
        match mode {
            MacMode::Unicast => self.unicast(),
            MacMode::Multicast => self.multicast(),
            MacMode::Igmp => self.igmp(),
        }
    }

    /// `02-<priority>-a-b-c-d`: the Ethernet source of every frame a host sends from its
    /// cluster port in unicast mode, so the switch never learns `02-BF-..`. `priority` is
    /// the host priority, 1..=32.
    pub const fn masked_source(&self, priority: u8) -> EthernetAddress {
        let [a, b, c, d] = self.cluster_ip.octets();
        EthernetAddress([0x02, priority, a, b, c, d])
    }

    /// The host priority of a masked source `02-<priority>-a-b-c-d` of this cluster; `None`
    /// for any other MAC, the unicast cluster MAC `02-BF-..` included.
    pub fn is_masked_source(&self, mac: EthernetAddress) -> Option<u8> {
        let priority = mac.0[1];
        (mac == self.masked_source(priority) && (1..=MAX_PRIORITY).contains(&priority))
            .then_some(priority)
    }

    /// Which of this cluster's three cluster MACs `mac` is, if any.
    pub fn mode_of(&self, mac: EthernetAddress) -> Option<MacMode> {
        MacMode::ALL
            .into_iter()
            .find(|&mode| self.cluster_mac(mode) == mac)
    }

    /// Whether `mac` is one of this cluster's cluster MACs, in any mode.
    pub fn is_cluster_mac(&self, mac: EthernetAddress) -> bool {
        self.mode_of(mac).is_some()
    }
}

/// The mode of a MAC shaped like some cluster's cluster MAC (`02-BF-..`, `03-BF-..`,
/// `01-00-5E-7F-..`), whichever cluster it belongs to; `None` for other MACs.
pub fn cluster_style_mode(mac: EthernetAddress) -> Option<MacMode> {
    let b = mac.0;
    if b[..2] == UNICAST_PREFIX {
        Some(MacMode::Unicast)
    } else if b[..2] == MULTICAST_PREFIX {
        Some(MacMode::Multicast)
    } else if b[..4] == IGMP_PREFIX {
        Some(MacMode::Igmp)
    } else {
        None
    }
}

/// The Ethernet address an IPv4 multicast group maps to (RFC 1112 section 6.4): `01-00-5E`
/// and the group's low 23 bits.
pub const fn ipv4_multicast_mac(group: Ipv4Addr) -> EthernetAddress {
    let [_, b, c, d] = group.octets();
    EthernetAddress([0x01, 0x00, 0x5e, b & 0x7f, c, d])
}

/// The Ethernet address an IPv6 multicast address maps to (RFC 2464 section 7): `33-33` and
/// its low 32 bits.
pub const fn ipv6_multicast_mac(group: Ipv6Addr) -> EthernetAddress {
    let o = group.octets();
    EthernetAddress([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// The Windows spelling, `02-BF-C0-00-02-0A`, as NLB Manager and `wlbs ip2mac` show it.
pub fn windows_form(mac: EthernetAddress) -> String {
    let b = mac.0;
    format!(
        "{:02X}-{:02X}-{:02X}-{:02X}-{:02X}-{:02X}",
        b[0], b[1], b[2], b[3], b[4], b[5]
    )
}

/// The Cisco IOS spelling, `03bf.c000.020a`.
pub fn cisco_form(mac: EthernetAddress) -> String {
    let b = mac.0;
    format!(
        "{:02x}{:02x}.{:02x}{:02x}.{:02x}{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5]
    )
}

/// What `wlbs ip2mac A.B.C.D` prints: the three cluster MACs of cluster IP `ip` (also in the
/// Windows spelling), the IGMP group, and for the multicast modes the static ARP entries a
/// router needs and the static MAC-table (or group) entries a switch needs. `vips` are the
/// cluster's other IPv4 VIPs: each needs its own ARP entry for the same MAC.
///
/// Placeholders the admin replaces are in capitals: `IFACE`, `VLAN`, `IF1`, `IF2`, `BRIDGE`,
/// `PORT`.
pub fn ip2mac_report(ip: Ipv4Addr, vips: &[Ipv4Addr]) -> String {
    let macs = ClusterMacs::new(ip);
    let mut ips = vec![ip];
    ips.extend(vips.iter().copied().filter(|vip| *vip != ip));

    let mut out = String::new();
    let mut line = |text: &str| {
        out.push_str(text);
        out.push('\n');
    };
    line(&format!("Cluster IP {ip}"));
    for mode in MacMode::ALL {
        let mac = macs.cluster_mac(mode);
        line(&format!(
            "  {:<10} cluster MAC {mac}  (Windows: {})",
            mode.as_str(),
            windows_form(mac)
        ));
    }
    line(&format!("  {:<10} IGMP group  {}", "", macs.igmp_group()));
    line("");
    line("unicast mode: nothing to configure. Every host masks its source MAC, so the switch");
    line("never learns the cluster MAC and floods frames for it to every port.");
    line("");
    line("Multicast modes: a router that refuses to map a unicast IP to a multicast MAC");
    line("(RFC 1812 3.3.2) needs a static ARP entry; a switch floods the cluster MAC to every");
    line("port of the VLAN unless told which ports lead to cluster hosts. Replace the words in");
    line("capitals: IFACE the router's interface toward the cluster, VLAN the cluster's VLAN,");
    line("IF1 IF2 and PORT the switch ports of the cluster hosts, BRIDGE the Linux bridge.");

    let multicast = macs.multicast();
    line("");
    line(&format!("multicast mode ({multicast})"));
    static_arp_entries(&mut line, &ips, multicast);
    line("  static MAC table entry on the switch, listing every cluster host's port:");
    line(&format!(
        "    Cisco IOS     mac address-table static {} vlan VLAN interface IF1 IF2",
        cisco_form(multicast)
    ));
    // The Linux bridge looks IPv4 frames up by destination IP, not MAC: the cluster's frames
    // (to a unicast VIP, in a multicast MAC) are unregistered multicast to it, flooded to
    // the ports with mcast_flood on, whatever its mdb or fdb say about the MAC.
    line("    Linux bridge  it floods them as unregistered multicast; keep them off the");
    line("                  other ports with: bridge link set dev PORT mcast_flood off");
    let (igmp, group) = (macs.igmp(), macs.igmp_group());
    line("");
    line(&format!("igmp mode ({igmp}, group {group})"));
    static_arp_entries(&mut line, &ips, igmp);
    line("  the switch learns the hosts' ports from their IGMP reports: turn IGMP");
    line("  snooping on and make sure the VLAN has a querier, or add the group statically:");
    line(&format!(
        "    Cisco IOS     ip igmp snooping vlan VLAN static {group} interface IF1"
    ));
    line(&format!(
        "    Linux bridge  bridge mdb add dev BRIDGE port PORT grp {group} permanent"
    ));
    line("                  (once per PORT; a querier: ip link set dev BRIDGE type bridge");
    line("                  mcast_snooping 1 mcast_querier 1). Its mdb keys IPv4 frames by");
    line("                  destination IP, so the VIP's frames still flood as unregistered");
    line("                  multicast: bridge link set dev PORT mcast_flood off on other ports");
    out
}

/// The router's static ARP entries mapping each of `ips` to `mac`, Linux and Cisco IOS.
fn static_arp_entries(line: &mut impl FnMut(&str), ips: &[Ipv4Addr], mac: EthernetAddress) {
    line("  static ARP entry on the router:");
    for ip in ips {
        line(&format!(
            "    Linux         ip neigh replace {ip} lladdr {mac} dev IFACE nud permanent"
        ));
        line(&format!(
            "    Cisco IOS     arp {ip} {} ARPA",
            cisco_form(mac)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

    fn mac(s: &str) -> EthernetAddress {
        s.parse().unwrap()
    }

    #[test]
    fn cluster_macs_follow_the_cluster_ip() {
        let macs = ClusterMacs::new(CLUSTER_IP);
        assert_eq!(macs.unicast(), mac("02-BF-C0-00-02-0A"));
        assert_eq!(macs.multicast(), mac("03-BF-C0-00-02-0A"));
        assert_eq!(macs.igmp(), mac("01-00-5E-7F-02-0A"));
        assert_eq!(macs.igmp_group(), Ipv4Addr::new(239, 255, 2, 10));
        assert_eq!(ipv4_multicast_mac(macs.igmp_group()), macs.igmp());
        assert_eq!(macs.cluster_mac(MacMode::Unicast), macs.unicast());
        assert_eq!(macs.cluster_mac(MacMode::Multicast), macs.multicast());
        assert_eq!(macs.cluster_mac(MacMode::Igmp), macs.igmp());
    }

    #[test]
    fn masked_source_carries_the_host_priority() {
        let macs = ClusterMacs::new(CLUSTER_IP);
        assert_eq!(macs.masked_source(5), mac("02-05-C0-00-02-0A"));
        assert_eq!(macs.is_masked_source(mac("02-05-C0-00-02-0A")), Some(5));
        assert_eq!(macs.is_masked_source(mac("02-20-C0-00-02-0A")), Some(32));
        assert_eq!(macs.is_masked_source(mac("02-01-C0-00-02-0A")), Some(1));
        // Priority out of range, the cluster MAC itself, another cluster, another kind of MAC.
        for other in [
            "02-00-C0-00-02-0A",
            "02-21-C0-00-02-0A",
            "02-BF-C0-00-02-0A",
            "02-05-C0-00-02-0B",
            "06-05-C0-00-02-0A",
        ] {
            assert_eq!(macs.is_masked_source(mac(other)), None, "{other}");
        }
    }

    #[test]
    fn cluster_mac_predicates_tell_this_cluster_from_others() {
        let macs = ClusterMacs::new(CLUSTER_IP);
        assert_eq!(
            macs.mode_of(mac("03-BF-C0-00-02-0A")),
            Some(MacMode::Multicast)
        );
        assert!(macs.is_cluster_mac(mac("01-00-5E-7F-02-0A")));
        assert!(!macs.is_cluster_mac(mac("02-BF-C0-00-02-0B")));
        assert!(!macs.is_cluster_mac(macs.masked_source(3)));

        assert_eq!(
            cluster_style_mode(mac("02-BF-0A-00-00-01")),
            Some(MacMode::Unicast)
        );
        assert_eq!(
            cluster_style_mode(mac("03-BF-0A-00-00-01")),
            Some(MacMode::Multicast)
        );
        assert_eq!(
            cluster_style_mode(mac("01-00-5E-7F-00-01")),
            Some(MacMode::Igmp)
        );
        // Another IPv4 multicast MAC, a masked source, a vendor MAC.
        for other in [
            "01-00-5E-00-00-02",
            "02-05-C0-00-02-0A",
            "00-15-5D-01-02-03",
        ] {
            assert_eq!(cluster_style_mode(mac(other)), None, "{other}");
        }
    }

    #[test]
    fn multicast_groups_map_to_their_macs() {
        assert_eq!(
            ipv4_multicast_mac(Ipv4Addr::new(224, 0, 0, 2)),
            mac("01-00-5E-00-00-02")
        );
        // Only 23 bits survive: 224.128.0.1 shares a MAC with 224.0.0.1.
        assert_eq!(
            ipv4_multicast_mac(Ipv4Addr::new(224, 128, 0, 1)),
            mac("01-00-5E-00-00-01")
        );
        assert_eq!(
            ipv6_multicast_mac("ff02::1:ff00:10".parse().unwrap()),
            mac("33-33-FF-00-00-10")
        );
    }

    #[test]
    fn mac_spellings_for_windows_and_cisco() {
        let multicast = mac("03:bf:c0:00:02:0a");
        assert_eq!(windows_form(multicast), "03-BF-C0-00-02-0A");
        assert_eq!(cisco_form(multicast), "03bf.c000.020a");
    }

    #[test]
    fn modes_parse_and_print_their_config_names() {
        for mode in MacMode::ALL {
            assert_eq!(mode.to_string().parse::<MacMode>(), Ok(mode));
        }
        assert_eq!(MacMode::default(), MacMode::Unicast);
        let err = "Multicast".parse::<MacMode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown cluster MAC mode \"Multicast\": expected \"unicast\", \"multicast\" or \"igmp\""
        );
    }

    #[test]
    fn igmp_version_defaults_to_v2() {
        assert_eq!(IgmpVersion::default(), IgmpVersion::V2);
        assert_eq!("v1".parse(), Ok(IgmpVersion::V1));
        assert_eq!("1".parse(), Ok(IgmpVersion::V1));
        assert_eq!("2".parse(), Ok(IgmpVersion::V2));
        assert_eq!(IgmpVersion::V2.to_string(), "v2");
        assert!("v3".parse::<IgmpVersion>().is_err());
    }

    #[test]
    fn ip2mac_prints_macs_group_and_the_admin_lines() {
        let expected = "\
Cluster IP 192.0.2.10
  unicast    cluster MAC 02:bf:c0:00:02:0a  (Windows: 02-BF-C0-00-02-0A)
  multicast  cluster MAC 03:bf:c0:00:02:0a  (Windows: 03-BF-C0-00-02-0A)
  igmp       cluster MAC 01:00:5e:7f:02:0a  (Windows: 01-00-5E-7F-02-0A)
             IGMP group  239.255.2.10

unicast mode: nothing to configure. Every host masks its source MAC, so the switch
never learns the cluster MAC and floods frames for it to every port.

Multicast modes: a router that refuses to map a unicast IP to a multicast MAC
(RFC 1812 3.3.2) needs a static ARP entry; a switch floods the cluster MAC to every
port of the VLAN unless told which ports lead to cluster hosts. Replace the words in
capitals: IFACE the router's interface toward the cluster, VLAN the cluster's VLAN,
IF1 IF2 and PORT the switch ports of the cluster hosts, BRIDGE the Linux bridge.

multicast mode (03:bf:c0:00:02:0a)
  static ARP entry on the router:
    Linux         ip neigh replace 192.0.2.10 lladdr 03:bf:c0:00:02:0a dev IFACE nud permanent
    Cisco IOS     arp 192.0.2.10 03bf.c000.020a ARPA
  static MAC table entry on the switch, listing every cluster host's port:
    Cisco IOS     mac address-table static 03bf.c000.020a vlan VLAN interface IF1 IF2
    Linux bridge  it floods them as unregistered multicast; keep them off the
                  other ports with: bridge link set dev PORT mcast_flood off

igmp mode (01:00:5e:7f:02:0a, group 239.255.2.10)
  static ARP entry on the router:
    Linux         ip neigh replace 192.0.2.10 lladdr 01:00:5e:7f:02:0a dev IFACE nud permanent
    Cisco IOS     arp 192.0.2.10 0100.5e7f.020a ARPA
  the switch learns the hosts' ports from their IGMP reports: turn IGMP
  snooping on and make sure the VLAN has a querier, or add the group statically:
    Cisco IOS     ip igmp snooping vlan VLAN static 239.255.2.10 interface IF1
    Linux bridge  bridge mdb add dev BRIDGE port PORT grp 239.255.2.10 permanent
                  (once per PORT; a querier: ip link set dev BRIDGE type bridge
                  mcast_snooping 1 mcast_querier 1). Its mdb keys IPv4 frames by
                  destination IP, so the VIP's frames still flood as unregistered
                  multicast: bridge link set dev PORT mcast_flood off on other ports
";
        assert_eq!(ip2mac_report(CLUSTER_IP, &[]), expected);
    }

    #[test]
    fn ip2mac_lists_an_arp_entry_per_vip() {
        let report = ip2mac_report(CLUSTER_IP, &[CLUSTER_IP, Ipv4Addr::new(192, 0, 2, 11)]);
        for (ip, mac) in [
            ("192.0.2.10", "03:bf:c0:00:02:0a"),
            ("192.0.2.11", "03:bf:c0:00:02:0a"),
            ("192.0.2.11", "01:00:5e:7f:02:0a"),
        ] {
            let entry = format!("ip neigh replace {ip} lladdr {mac} dev IFACE nud permanent");
            assert_eq!(report.matches(&entry).count(), 1, "{entry}");
        }
        // Extra VIPs share the cluster IP's MACs: nothing is derived from them.
        assert!(!report.contains("c0:00:02:0b"));
    }
}
