//! Address resolution for the cluster's VIPs (ARP, IPv6 neighbour discovery), IGMP membership
//! in igmp mode, and the diagnostics that name why a network sees an "IP address conflict".
//!
//! A pure state machine (sans-IO, like [`crate::membership`]): no port, no clock. The control
//! thread hands it the control frames seen on the cluster port and the ARP / ND frames the
//! host side sends toward it, and sends what it returns; time comes in as `now_ms`.
//!
//! ```text
//! on_cluster_frame(frame, now)   a frame from the wire: answers, pass-to-host, diagnostics
//! on_host_frame(frame)           a frame from the host side: pass, drop or rewrite
//! start_frames() / stop_frames() gratuitous ARP, unsolicited NA, IGMP report / leave
//! poll_timeout() / handle_timeout(now)   periodic and query-answering IGMP reports
//! check_source(src)              the cheap per-frame test for a leaked cluster MAC
//! ```
//!
//! **Every host answers.** An ARP request or neighbour solicitation for a VIP reaches every
//! host (that is what the cluster MAC is for), and every host answers it, as NLB does. The
//! answers differ only in the Ethernet source (each host's masked source in unicast mode), so
//! whichever the requester keeps, its cache maps the VIP to the cluster MAC; and no host has
//! to be elected to answer while hosts join and leave.
//!
//! **The host side never speaks for a VIP.** Its ARP replies, gratuitous ARPs, probes and
//! neighbour advertisements for a VIP are dropped: they would map the VIP to one host's MAC
//! and send the whole cluster's traffic to it. Its ARP requests and neighbour solicitations
//! sent *from* a VIP (to resolve a client or the router) are rewritten to carry the cluster MAC,
//! because a neighbour that already caches the VIP updates it from any request (RFC 826).
//!
//! Frames are untagged Ethernet II: a VLAN-tagged frame is "anything else" and passes.

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use wlbs_dataplane::wire::{
    arp, ethernet, icmpv6, igmp, ipv4, ipv6, EtherType, EthernetAddress, IpProtocol,
};

use crate::macs::{
    cluster_style_mode, ipv4_multicast_mac, ipv6_multicast_mac, ClusterMacs, IgmpVersion, MacMode,
};
use crate::membership::MAX_PRIORITY;

/// Period of the unsolicited IGMP membership reports in igmp mode: well inside the 260 s a
/// snooping switch keeps a group without reports (RFC 2236's default membership interval).
pub const IGMP_REPORT_INTERVAL_MS: u64 = 60_000;
/// How long an IGMPv1 querier's presence makes an IGMPv2 host speak v1 (RFC 2236 section 8.11).
const V1_ROUTER_PRESENT_MS: u64 = 400_000;
/// Ethernet's minimum frame without FCS: frames built here are padded to it, so no PMD has to.
const MIN_FRAME_LEN: usize = 60;
/// Destination of IGMPv2 leaves.
const ALL_ROUTERS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 2);
/// Destination of unsolicited neighbour advertisements.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// IPv4 Router Alert option (RFC 2113): type 148 (copied, number 20), length 4, value 0.
const ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0x00, 0x00];
/// The hop limit every neighbour discovery message is sent and must arrive with (RFC 4861
/// section 7.1): proof it was not routed.
const ND_HOP_LIMIT: u8 = 255;
/// DSCP CS6, network control: the ToS 0xc0 hosts give IGMP.
const DSCP_NETWORK_CONTROL: u8 = 48;
/// Neighbour discovery option "source link-layer address" (RFC 4861 section 4.6.1).
const ND_OPTION_SOURCE_LLADDR: u8 = 1;

/// What the neighbour logic needs to know about the cluster and this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourConfig {
    pub mode: MacMode,
    /// The IGMP version of reports in igmp mode.
    pub igmp_version: IgmpVersion,
    /// The primary cluster IP: a VIP, and the source of every derived cluster MAC.
    pub cluster_ip: Ipv4Addr,
    /// The other VIPs, IPv4 or IPv6 (the cluster IP may be repeated here).
    pub vips: Vec<IpAddr>,
    /// This host's own address on the cluster network, if it has one.
    pub dedicated_ip: Option<Ipv4Addr>,
    /// Host priority, 1..=32: the masked source MAC, and this host's slot in query answers.
    pub priority: u8,
    /// The cluster port's own MAC (in unicast mode, the cluster MAC once it is programmed).
    pub nic_mac: EthernetAddress,
    /// An explicit cluster MAC (`[cluster] mac`); `None` derives it from the cluster IP and
    /// the mode ("auto").
    pub cluster_mac: Option<EthernetAddress>,
    /// Unicast mode: frames leave with source `02-<priority>-a-b-c-d` (NLB's MaskSourceMAC).
    pub mask_source_mac: bool,
    /// Multicast modes: ARP and ND answers carry the cluster MAC (true) or the port's own MAC
    /// (false, for routers that refuse a multicast MAC for a unicast IP), as NLB's
    /// MulticastSpoof.
    pub multicast_spoof: bool,
}

impl NeighbourConfig {
    /// A unicast cluster with NLB's defaults: source masking and multicast spoofing on,
    /// IGMPv2, the MAC derived from the cluster IP, no extra VIP, no dedicated IP.
    pub fn new(cluster_ip: Ipv4Addr, priority: u8, nic_mac: EthernetAddress) -> Self {
        Self {
            mode: MacMode::Unicast,
            igmp_version: IgmpVersion::V2,
            cluster_ip,
            vips: Vec::new(),
            dedicated_ip: None,
            priority,
            nic_mac,
            cluster_mac: None,
            mask_source_mac: true,
            multicast_spoof: true,
        }
    }
}

/// Which of the two configuration mistakes of KB Q193598 a [`Diagnostic::ClusterIpMismatch`]
/// shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MismatchCause {
    /// Another IP is mapped to this cluster's MAC: hosts were given different cluster IPs
    /// (cause 1).
    DifferentClusterIp,
    /// A VIP of this cluster is mapped to another cluster's MAC: hosts were given different
    /// cluster MACs (cause 2).
    DifferentClusterMac,
}

/// A misconfiguration seen on the wire (or met at bring-up), named with the offending host
/// and the fix. `Display` is the log line; [`kind`](Diagnostic::kind) the metric label.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Diagnostic {
    /// An ARP maps another IP to this cluster's MAC, or a VIP to another cluster's MAC.
    ClusterIpMismatch {
        cause: MismatchCause,
        /// The IP the frame claims.
        ip: IpAddr,
        /// The MAC the frame maps it to.
        mac: EthernetAddress,
        /// This cluster's MAC.
        cluster_mac: EthernetAddress,
        /// Ethernet source of the frame: the host to look at.
        source: EthernetAddress,
        /// That host's priority, when its source is a masked `02-<priority>-..` MAC.
        priority: Option<u8>,
    },
    /// A machine that is not a cluster host claims a VIP or this host's dedicated IP.
    IpAddressConflict {
        ip: IpAddr,
        mac: EthernetAddress,
        source: EthernetAddress,
        /// `ip` is this host's dedicated IP, not a VIP.
        dedicated: bool,
    },
    /// A frame on the wire carries this cluster's unicast MAC as its Ethernet source.
    ClusterMacLeaked {
        mac: EthernetAddress,
        /// The sender's IP, when the frame is ARP, IPv4 or IPv6.
        sender_ip: Option<IpAddr>,
    },
    /// A cluster host answers for a VIP with this cluster's MAC of another mode.
    ModeMismatch {
        ip: IpAddr,
        mac: EthernetAddress,
        peer_mode: MacMode,
        our_mode: MacMode,
        source: EthernetAddress,
        priority: Option<u8>,
    },
    /// The cluster port could not take the unicast cluster MAC; `fallback` names what the
    /// appliance runs with instead (an extra MAC filter, promiscuous mode).
    MacNotProgrammable { fallback: String },
}

impl Diagnostic {
    /// A stable snake_case name, for the metric label.
    pub const fn kind(&self) -> &'static str {
        match self {
            Diagnostic::ClusterIpMismatch { .. } => "cluster_ip_mismatch",
            Diagnostic::IpAddressConflict { .. } => "ip_address_conflict",
            Diagnostic::ClusterMacLeaked { .. } => "cluster_mac_leaked",
            Diagnostic::ModeMismatch { .. } => "mode_mismatch",
            Diagnostic::MacNotProgrammable { .. } => "mac_not_programmable",
        }
    }
}

/// "host 02:05:c0:00:02:0a (priority 5)".
struct Host(EthernetAddress, Option<u8>);

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host {}", self.0)?;
        if let Some(priority) = self.1 {
            write!(f, " (priority {priority})")?;
        }
        Ok(())
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Diagnostic::ClusterIpMismatch {
                cause: MismatchCause::DifferentClusterIp,
                ip,
                mac,
                source,
                priority,
                ..
            } => write!(
                f,
                "cluster IP mismatch: {} maps {ip} to this cluster's MAC {mac}, but {ip} is not \
                 a VIP here: the hosts were given different cluster IPs (KB Q193598, cause 1). \
                 Fix: configure the same [cluster] ip and vips on every host",
                Host(*source, *priority)
            ),
            Diagnostic::ClusterIpMismatch {
                cause: MismatchCause::DifferentClusterMac,
                ip,
                mac,
                cluster_mac,
                source,
                priority,
            } => write!(
                f,
                "cluster IP mismatch: {} maps our VIP {ip} to {mac}, the MAC of another \
                 cluster, but this cluster's MAC is {cluster_mac}: the hosts were given \
                 different cluster MACs (KB Q193598, cause 2). Fix: configure the same \
                 [cluster] mac on every host (\"auto\" derives it from the cluster IP)",
                Host(*source, *priority)
            ),
            Diagnostic::IpAddressConflict {
                ip,
                mac,
                source,
                dedicated,
            } => {
                let what = if *dedicated {
                    "our dedicated IP"
                } else {
                    "our VIP"
                };
                write!(f, "IP address conflict: {what} {ip} is claimed by {mac}")?;
                if source != mac {
                    write!(f, " (in a frame from {source})")?;
                }
                write!(
                    f,
                    ", which is neither this cluster's MAC nor a cluster host's: a machine \
                     outside the cluster uses the address (the conflict of KB Q193598, from \
                     outside). Fix: take {ip} off the machine with MAC {mac}, or give this {} \
                     another address",
                    if *dedicated { "host" } else { "cluster" },
                )
            }
            Diagnostic::ClusterMacLeaked { mac, sender_ip } => {
                write!(
                    f,
                    "cluster MAC leaked: a frame with this cluster's MAC {mac} as its source"
                )?;
                if let Some(ip) = sender_ip {
                    write!(f, " (sent from {ip})")?;
                }
                write!(
                    f,
                    " was seen on the wire: a switch learns the MAC from it and sends all \
                     cluster traffic to that one port, so one host gets everything (KB \
                     Q258609). Fix: keep mask_source_mac on, on every host, and find what \
                     sends unmasked frames from a cluster port (a capture tool or a second \
                     driver bound below the load balancer)"
                )
            }
            Diagnostic::ModeMismatch {
                ip,
                mac,
                peer_mode,
                our_mode,
                source,
                priority,
            } => write!(
                f,
                "mode mismatch: {} answers for our VIP {ip} with {mac}, this cluster's \
                 {peer_mode} MAC, but this host runs in {our_mode} mode: clients and switches \
                 see two cluster MACs (as with different cluster MACs, KB Q193598 cause 2). \
                 Fix: configure the same [cluster] mode on every host",
                Host(*source, *priority)
            ),
            Diagnostic::MacNotProgrammable { fallback } => write!(
                f,
                "cluster MAC not programmable: the cluster port cannot take the unicast \
                 cluster MAC as its address, running with {fallback} instead (KB Q193598, \
                 cause 3: a NIC that cannot change its MAC). If that fallback misses the \
                 cluster's traffic or costs too much: use a NIC whose driver can take another \
                 MAC, or run the cluster in multicast mode ([cluster] mode = \"multicast\")"
            ),
        }
    }
}

/// What to do with a frame that arrived on the cluster port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Frames to send on the cluster port (answers), each a whole Ethernet frame.
    pub transmit: Vec<Vec<u8>>,
    /// Whether the frame still goes on to the host side. False for what the appliance owns:
    /// ARP requests for a VIP, ARP that claims a VIP, neighbour solicitations and
    /// advertisements for a VIP.
    pub pass_to_host: bool,
    /// Misconfigurations the frame shows.
    pub diagnostics: Vec<Diagnostic>,
}

impl Outcome {
    fn pass() -> Self {
        Self {
            transmit: Vec::new(),
            pass_to_host: true,
            diagnostics: Vec::new(),
        }
    }
}

/// What to do with a frame the host side sends toward the cluster port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostFrame {
    /// Send it unchanged.
    Pass,
    /// Do not send it: it would speak for a VIP.
    Drop,
    /// Send this frame instead: the same request with the cluster MAC as its sender.
    Rewrite(Vec<u8>),
}

/// ARP, neighbour discovery and IGMP for one host of one cluster.
#[derive(Debug, Clone)]
pub struct Neighbour {
    config: NeighbourConfig,
    macs: ClusterMacs,
    cluster_mac: EthernetAddress,
    vips_v4: Vec<Ipv4Addr>,
    vips_v6: Vec<Ipv6Addr>,
    /// Peers' dedicated IPs, which they may map to the cluster MAC (NLB does in unicast mode).
    peer_dedicated_ips: Vec<Ipv4Addr>,
    /// igmp mode: when the next unsolicited report is due.
    next_report_ms: u64,
    /// igmp mode: when the answer to a query is due.
    query_answer_ms: Option<u64>,
    /// An IGMPv1 querier was heard: report in v1 and send no leave until then.
    v1_querier_until_ms: Option<u64>,
}

impl Neighbour {
    /// Starts at `now_ms`, when the shell sends [`start_frames`](Self::start_frames); the
    /// first periodic IGMP report is due one interval later.
    pub fn new(config: NeighbourConfig, now_ms: u64) -> Self {
        let macs = ClusterMacs::new(config.cluster_ip);
        let cluster_mac = config
            .cluster_mac
            .unwrap_or_else(|| macs.cluster_mac(config.mode));
        let mut vips_v4 = vec![config.cluster_ip];
        let mut vips_v6 = Vec::new();
        for vip in &config.vips {
            match *vip {
                IpAddr::V4(v4) if !vips_v4.contains(&v4) => vips_v4.push(v4),
                IpAddr::V6(v6) if !vips_v6.contains(&v6) => vips_v6.push(v6),
                _ => {}
            }
        }
        Self {
            config,
            macs,
            cluster_mac,
            vips_v4,
            vips_v6,
            peer_dedicated_ips: Vec::new(),
            next_report_ms: now_ms.saturating_add(IGMP_REPORT_INTERVAL_MS),
            query_answer_ms: None,
            v1_querier_until_ms: None,
        }
    }

    pub fn config(&self) -> &NeighbourConfig {
        &self.config
    }

    /// The MAC the cluster port receives the cluster's traffic on.
    pub fn cluster_mac(&self) -> EthernetAddress {
        self.cluster_mac
    }

    /// The MAC ARP replies and neighbour advertisements map the VIPs to: the cluster MAC, or
    /// the port's own MAC in a multicast mode with `multicast_spoof` off.
    pub fn advertised_mac(&self) -> EthernetAddress {
        if self.config.mode == MacMode::Unicast || self.config.multicast_spoof {
            self.cluster_mac
        } else {
            self.config.nic_mac
        }
    }

    /// The Ethernet source of every frame built here: the masked source in unicast mode with
    /// `mask_source_mac` on, else the port's own MAC (a multicast cluster MAC can never be a
    /// source).
    pub fn source_mac(&self) -> EthernetAddress {
        if self.config.mode == MacMode::Unicast && self.config.mask_source_mac {
            self.macs.masked_source(self.config.priority)
        } else {
            self.config.nic_mac
        }
    }

    /// The IGMP group this host joins: `239.255.c.d` in igmp mode, else none.
    pub fn igmp_group(&self) -> Option<Ipv4Addr> {
        (self.config.mode == MacMode::Igmp).then(|| self.macs.igmp_group())
    }

    /// Whether `ip` is one of the cluster's VIPs (the cluster IP included).
    pub fn is_vip(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.is_vip_v4(v4),
            IpAddr::V6(v6) => self.is_vip_v6(v6),
        }
    }

    fn is_vip_v4(&self, ip: Ipv4Addr) -> bool {
        self.vips_v4.contains(&ip)
    }

    fn is_vip_v6(&self, ip: Ipv6Addr) -> bool {
        self.vips_v6.contains(&ip)
    }

    /// The peers' dedicated IPs (from their heartbeats): a peer mapping one of them to the
    /// cluster MAC is not a cluster IP mismatch.
    pub fn set_peer_dedicated_ips(&mut self, ips: &[Ipv4Addr]) {
        self.peer_dedicated_ips = ips.to_vec();
    }

    /// A frame with `source` as its Ethernet source leaks the cluster MAC if the cluster runs
    /// in unicast mode with masking and `source` is the cluster MAC: the one address a switch
    /// must never learn. (Without masking, configured for a hub or a switch told to flood,
    /// such sources are expected; a multicast cluster MAC is never learned.) Cheap enough
    /// for every frame.
    pub fn check_source(&self, source: EthernetAddress) -> Option<Diagnostic> {
        self.leaks_cluster_mac(source)
            .then_some(Diagnostic::ClusterMacLeaked {
                mac: source,
                sender_ip: None,
            })
    }

    fn leaks_cluster_mac(&self, source: EthernetAddress) -> bool {
        self.watched_source() == Some(source)
    }

    /// The source MAC the data path must watch for (the cluster MAC, when seeing it as a
    /// source is a leak: unicast mode with masking); `None`: nothing to watch.
    pub fn watched_source(&self) -> Option<EthernetAddress> {
        (self.config.mode == MacMode::Unicast && self.config.mask_source_mac)
            .then_some(self.cluster_mac)
    }

    /// A frame seen on the cluster port: answers ARP requests and neighbour solicitations for
    /// the VIPs, schedules the answer to IGMP queries for our group, and reports what the
    /// frame shows is misconfigured. Malformed frames pass to the host and change nothing.
    pub fn on_cluster_frame(&mut self, frame: &[u8], now_ms: u64) -> Outcome {
        let mut outcome = Outcome::pass();
        let Ok(eth) = ethernet::Frame::new_checked(frame) else {
            return outcome;
        };
        let source = eth.src_addr();
        let payload = eth.payload();
        if self.leaks_cluster_mac(source) {
            outcome.diagnostics.push(Diagnostic::ClusterMacLeaked {
                mac: source,
                sender_ip: sender_ip(eth.ethertype(), payload),
            });
        }
        match eth.ethertype() {
            EtherType::ARP => self.cluster_arp(source, payload, &mut outcome),
            EtherType::IPV6 => self.cluster_neighbour_discovery(source, payload, &mut outcome),
            EtherType::IPV4 => self.cluster_igmp(payload, now_ms),
            _ => {}
        }
        outcome
    }

    fn cluster_arp(&self, source: EthernetAddress, payload: &[u8], outcome: &mut Outcome) {
        let Ok(arp) = arp::Packet::new_checked(payload).and_then(|p| arp::Repr::parse(&p)) else {
            return;
        };
        if arp.operation != arp::Operation::REQUEST && arp.operation != arp::Operation::REPLY {
            return;
        }
        outcome.diagnostics.extend(self.judge_arp(source, &arp));
        let asks_for_vip =
            arp.operation == arp::Operation::REQUEST && self.is_vip_v4(arp.target_protocol_addr);
        // A peer announcing the VIP (RFC 5227: sender and target the same) is not asking.
        if asks_for_vip && !arp.is_gratuitous() {
            outcome.transmit.push(self.arp_reply(source, &arp));
        }
        if asks_for_vip || self.is_vip_v4(arp.source_protocol_addr) {
            outcome.pass_to_host = false;
        }
    }

    fn arp_reply(&self, source: EthernetAddress, request: &arp::Repr) -> Vec<u8> {
        let sender = request.source_hardware_addr;
        let requester = if sender.is_unicast() && sender != EthernetAddress::default() {
            sender
        } else {
            source
        };
        arp_frame(
            requester,
            self.source_mac(),
            &arp::Repr {
                operation: arp::Operation::REPLY,
                source_hardware_addr: self.advertised_mac(),
                source_protocol_addr: request.target_protocol_addr,
                target_hardware_addr: request.source_hardware_addr,
                // 0.0.0.0 for an RFC 5227 probe, as the prober expects.
                target_protocol_addr: request.source_protocol_addr,
            },
        )
    }

    /// What the sender mapping of an ARP request or reply says about the configuration.
    fn judge_arp(&self, source: EthernetAddress, arp: &arp::Repr) -> Option<Diagnostic> {
        let ip = arp.source_protocol_addr;
        let mac = arp.source_hardware_addr;
        if ip.is_unspecified() {
            // An RFC 5227 probe claims nothing yet; the reply defends the VIP.
            return None;
        }
        if self.is_vip_v4(ip) {
            return self.judge_vip_claim(IpAddr::V4(ip), mac, source);
        }
        if Some(ip) == self.config.dedicated_ip {
            return self.judge_dedicated_claim(ip, mac, source);
        }
        let on_our_mac = mac == self.cluster_mac || self.macs.is_cluster_mac(mac);
        (on_our_mac && !self.peer_dedicated_ips.contains(&ip)).then(|| {
            Diagnostic::ClusterIpMismatch {
                cause: MismatchCause::DifferentClusterIp,
                ip: IpAddr::V4(ip),
                mac,
                cluster_mac: self.cluster_mac,
                source,
                priority: self.peer_priority(source, IpAddr::V4(ip)),
            }
        })
    }

    /// Someone maps one of our VIPs to `mac`.
    fn judge_vip_claim(
        &self,
        ip: IpAddr,
        mac: EthernetAddress,
        source: EthernetAddress,
    ) -> Option<Diagnostic> {
        if mac == self.cluster_mac || mac == self.config.nic_mac {
            return None;
        }
        let priority = self.peer_priority(source, ip);
        if let Some(peer_mode) = self.macs.mode_of(mac) {
            if peer_mode != self.config.mode {
                return Some(Diagnostic::ModeMismatch {
                    ip,
                    mac,
                    peer_mode,
                    our_mode: self.config.mode,
                    source,
                    priority,
                });
            }
            // The derived MAC of our own mode, while this host was given an explicit one:
            // falls through to "another cluster's MAC".
        }
        if cluster_style_mode(mac).is_some() {
            return Some(Diagnostic::ClusterIpMismatch {
                cause: MismatchCause::DifferentClusterMac,
                ip,
                mac,
                cluster_mac: self.cluster_mac,
                source,
                priority,
            });
        }
        // With spoofing off, peers answer with their own port MACs, which cannot be told
        // from a stranger's.
        let peers_answer_with_own_macs =
            self.config.mode != MacMode::Unicast && !self.config.multicast_spoof;
        if self.macs.is_masked_source(mac).is_some() || peers_answer_with_own_macs {
            return None;
        }
        Some(Diagnostic::IpAddressConflict {
            ip,
            mac,
            source,
            dedicated: false,
        })
    }

    /// Someone maps this host's dedicated IP to `mac`.
    fn judge_dedicated_claim(
        &self,
        ip: Ipv4Addr,
        mac: EthernetAddress,
        source: EthernetAddress,
    ) -> Option<Diagnostic> {
        let cluster_host = mac == self.config.nic_mac
            || mac == self.cluster_mac
            || cluster_style_mode(mac).is_some()
            || self.macs.is_masked_source(mac).is_some();
        (!cluster_host).then_some(Diagnostic::IpAddressConflict {
            ip: IpAddr::V4(ip),
            mac,
            source,
            dedicated: true,
        })
    }

    /// The priority in a masked source, of this cluster or of the cluster `claimed` would
    /// make (a host configured with another cluster IP masks with that IP).
    fn peer_priority(&self, source: EthernetAddress, claimed: IpAddr) -> Option<u8> {
        self.macs.is_masked_source(source).or(match claimed {
            IpAddr::V4(ip) => ClusterMacs::new(ip).is_masked_source(source),
            IpAddr::V6(_) => None,
        })
    }

    fn cluster_neighbour_discovery(
        &self,
        source: EthernetAddress,
        payload: &[u8],
        outcome: &mut Outcome,
    ) {
        let Some((src_ip, message)) = parse_neighbour_discovery(payload) else {
            return;
        };
        match message {
            icmpv6::Repr::NeighborSolicit {
                target_addr,
                source_lladdr,
            } if self.is_vip_v6(target_addr) => {
                outcome.pass_to_host = false;
                let advert = if src_ip.is_unspecified() {
                    // Another host's duplicate address detection: defend the VIP to all nodes,
                    // unsolicited (RFC 4861 section 7.2.4).
                    self.neighbor_advert(ALL_NODES, target_addr, false)
                } else {
                    let requester = source_lladdr.unwrap_or(source);
                    self.neighbor_advert_to(requester, src_ip, target_addr, true)
                };
                outcome.transmit.push(advert);
            }
            icmpv6::Repr::NeighborAdvert {
                target_addr,
                target_lladdr,
                ..
            } if self.is_vip_v6(target_addr) => {
                outcome.pass_to_host = false;
                let mac = target_lladdr.unwrap_or(source);
                outcome.diagnostics.extend(self.judge_vip_claim(
                    IpAddr::V6(target_addr),
                    mac,
                    source,
                ));
            }
            _ => {}
        }
    }

    /// A neighbour advertisement for `target` to a multicast `dst`.
    fn neighbor_advert(&self, dst: Ipv6Addr, target: Ipv6Addr, solicited: bool) -> Vec<u8> {
        self.neighbor_advert_to(ipv6_multicast_mac(dst), dst, target, solicited)
    }

    fn neighbor_advert_to(
        &self,
        eth_dst: EthernetAddress,
        dst: Ipv6Addr,
        target: Ipv6Addr,
        solicited: bool,
    ) -> Vec<u8> {
        let advert = icmpv6::Repr::NeighborAdvert {
            router_flag: false,
            solicited_flag: solicited,
            // Override: the cluster MAC replaces whatever a neighbour cached, e.g. after a
            // mode change (RFC 4861 section 7.2.4: set unless anycast or proxied).
            override_flag: true,
            target_addr: target,
            target_lladdr: Some(self.advertised_mac()),
        };
        icmpv6_frame(eth_dst, self.source_mac(), target, dst, &advert)
    }

    fn cluster_igmp(&mut self, payload: &[u8], now_ms: u64) {
        let Some(group) = self.igmp_group() else {
            return;
        };
        let Some((version, max_resp_code, queried)) = parse_igmp_query(payload) else {
            return;
        };
        if !(queried.is_unspecified() || queried == group) {
            return;
        }
        self.expire_v1_querier(now_ms);
        if version == igmp::Version::V1 {
            self.v1_querier_until_ms = Some(now_ms.saturating_add(V1_ROUTER_PRESENT_MS));
        }
        let max_resp_ms = igmp::max_resp_time(version, max_resp_code).as_millis() as u64;
        // Hosts spread their answers over the allowed time by priority: deterministic, and no
        // two hosts answer at once. Every host answers (no report suppression): a snooping
        // switch must hear each port.
        let slot = u64::from(self.config.priority.clamp(1, MAX_PRIORITY) - 1);
        let due = now_ms.saturating_add(max_resp_ms * slot / u64::from(MAX_PRIORITY));
        // RFC 2236 section 3: a running timer is reset only if the new one is sooner.
        self.query_answer_ms = Some(self.query_answer_ms.map_or(due, |t| t.min(due)));
    }

    fn expire_v1_querier(&mut self, now_ms: u64) {
        if self
            .v1_querier_until_ms
            .is_some_and(|until| until <= now_ms)
        {
            self.v1_querier_until_ms = None;
        }
    }

    /// A frame the host side sends toward the cluster port: drops the host's own claims on a
    /// VIP (ARP replies, gratuitous ARP, probes, neighbour advertisements, duplicate address
    /// detection) and rewrites its requests sent from a VIP to carry the cluster MAC.
    /// Everything else, malformed frames included, passes.
    pub fn on_host_frame(&self, frame: &[u8]) -> HostFrame {
        let Ok(eth) = ethernet::Frame::new_checked(frame) else {
            return HostFrame::Pass;
        };
        match eth.ethertype() {
            EtherType::ARP => self.host_arp(frame),
            EtherType::IPV6 => self.host_neighbour_discovery(frame),
            _ => HostFrame::Pass,
        }
    }

    fn host_arp(&self, frame: &[u8]) -> HostFrame {
        let Ok(arp) = arp::Packet::new_checked(&frame[ethernet::HEADER_LEN..]) else {
            return HostFrame::Pass;
        };
        let (sender, target) = (arp.source_protocol_addr(), arp.target_protocol_addr());
        let operation = arp.operation();
        if operation == arp::Operation::REQUEST && sender.is_unspecified() {
            // A probe for a VIP would be answered by the peers and look like a conflict.
            return if self.is_vip_v4(target) {
                HostFrame::Drop
            } else {
                HostFrame::Pass
            };
        }
        if !self.is_vip_v4(sender) {
            return HostFrame::Pass;
        }
        if operation != arp::Operation::REQUEST || sender == target {
            return HostFrame::Drop;
        }
        if arp.source_hardware_addr() == self.advertised_mac() {
            return HostFrame::Pass;
        }
        let mut rewritten = frame.to_vec();
        arp::Packet::new_unchecked(&mut rewritten[ethernet::HEADER_LEN..])
            .set_source_hardware_addr(self.advertised_mac());
        HostFrame::Rewrite(rewritten)
    }

    fn host_neighbour_discovery(&self, frame: &[u8]) -> HostFrame {
        let Ok(ip) = ipv6::Packet::new_checked(&frame[ethernet::HEADER_LEN..]) else {
            return HostFrame::Pass;
        };
        if ip.next_header() != IpProtocol::ICMPV6 {
            return HostFrame::Pass;
        }
        // The host's own frames are not checksum-verified: they may still await offload.
        let Ok(message) = icmpv6::Packet::new_checked(ip.payload()) else {
            return HostFrame::Pass;
        };
        let Some(target) = message.target_addr() else {
            return HostFrame::Pass;
        };
        match message.msg_type() {
            icmpv6::Message::NEIGHBOR_ADVERT if self.is_vip_v6(target) => HostFrame::Drop,
            icmpv6::Message::NEIGHBOR_SOLICIT
                if self.is_vip_v6(target) && ip.src_addr().is_unspecified() =>
            {
                HostFrame::Drop
            }
            icmpv6::Message::NEIGHBOR_SOLICIT if self.is_vip_v6(ip.src_addr()) => {
                let offset = ethernet::HEADER_LEN + ipv6::HEADER_LEN;
                let range = offset..offset + ip.payload().len();
                let mut rewritten = frame.to_vec();
                if set_source_lladdr(&mut rewritten[range.clone()], self.advertised_mac()) {
                    icmpv6::Packet::new_unchecked(&mut rewritten[range])
                        .fill_checksum(&ip.pseudo_header());
                    HostFrame::Rewrite(rewritten)
                } else {
                    HostFrame::Pass
                }
            }
            _ => HostFrame::Pass,
        }
    }

    /// What to send when the appliance starts, or when the mode or the cluster MAC changes: a
    /// gratuitous ARP for every IPv4 VIP, an unsolicited neighbour advertisement for every
    /// IPv6 VIP, and in igmp mode a membership report.
    pub fn start_frames(&self) -> Vec<Vec<u8>> {
        let mut frames: Vec<Vec<u8>> = self
            .vips_v4
            .iter()
            .map(|&vip| {
                // An RFC 5227 announcement: a request whose sender and target are the VIP.
                arp_frame(
                    EthernetAddress::BROADCAST,
                    self.source_mac(),
                    &arp::Repr {
                        operation: arp::Operation::REQUEST,
                        source_hardware_addr: self.advertised_mac(),
                        source_protocol_addr: vip,
                        target_hardware_addr: EthernetAddress::default(),
                        target_protocol_addr: vip,
                    },
                )
            })
            .collect();
        frames.extend(
            self.vips_v6
                .iter()
                .map(|&vip| self.neighbor_advert(ALL_NODES, vip, false)),
        );
        frames.extend(self.igmp_report());
        frames
    }

    /// What to send when the appliance stops: in igmp mode with IGMPv2, a leave for the group
    /// (IGMPv1 has none).
    pub fn stop_frames(&self) -> Vec<Vec<u8>> {
        let Some(group) = self.igmp_group() else {
            return Vec::new();
        };
        if self.report_version() == IgmpVersion::V1 {
            return Vec::new();
        }
        vec![self.igmp_frame(ALL_ROUTERS, &igmp::Repr::LeaveGroup { group_addr: group })]
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has something to send; `None` when
    /// nothing is scheduled (every mode but igmp).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.igmp_group()?;
        Some(
            self.query_answer_ms
                .map_or(self.next_report_ms, |t| t.min(self.next_report_ms)),
        )
    }

    /// Sends the IGMP report that is due at `now_ms`: periodic, or the answer to a query
    /// (one report when both are due).
    pub fn handle_timeout(&mut self, now_ms: u64) -> Vec<Vec<u8>> {
        if self.igmp_group().is_none() {
            return Vec::new();
        }
        self.expire_v1_querier(now_ms);
        let mut due = false;
        if self.query_answer_ms.is_some_and(|t| t <= now_ms) {
            self.query_answer_ms = None;
            due = true;
        }
        if self.next_report_ms <= now_ms {
            // From now, not from the missed deadline: a stalled thread sends one report, not
            // a burst.
            self.next_report_ms = now_ms.saturating_add(IGMP_REPORT_INTERVAL_MS);
            due = true;
        }
        if due {
            self.igmp_report().into_iter().collect()
        } else {
            Vec::new()
        }
    }

    fn report_version(&self) -> IgmpVersion {
        if self.v1_querier_until_ms.is_some() {
            IgmpVersion::V1
        } else {
            self.config.igmp_version
        }
    }

    /// The membership report for our group, in igmp mode.
    fn igmp_report(&self) -> Option<Vec<u8>> {
        let group = self.igmp_group()?;
        let report = match self.report_version() {
            IgmpVersion::V1 => igmp::Repr::ReportV1 { group_addr: group },
            IgmpVersion::V2 => igmp::Repr::ReportV2 { group_addr: group },
        };
        Some(self.igmp_frame(group, &report))
    }

    /// An IGMP message from this host to `dst`, TTL 1. The source is the dedicated IP, which
    /// tells hosts apart in a switch's snooping table, else the cluster IP.
    fn igmp_frame(&self, dst: Ipv4Addr, message: &igmp::Repr<'_>) -> Vec<u8> {
        // RFC 2236 messages carry Router Alert; RFC 1112 reports predate it.
        let options: &[u8] = match message {
            igmp::Repr::ReportV1 { .. } => &[],
            _ => &ROUTER_ALERT,
        };
        let header_len = ipv4::HEADER_LEN + options.len();
        let ip = ipv4::Repr {
            src_addr: self.config.dedicated_ip.unwrap_or(self.config.cluster_ip),
            dst_addr: dst,
            protocol: IpProtocol::IGMP,
            // Counts the options too: `emit` derives the total length from it.
            payload_len: options.len() + message.buffer_len(),
            ttl: 1,
            dscp: DSCP_NETWORK_CONTROL,
            ecn: 0,
            ident: 0,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        };
        build_frame(
            ipv4_multicast_mac(dst),
            self.source_mac(),
            EtherType::IPV4,
            ip.buffer_len(),
            |buf| {
                let mut packet = ipv4::Packet::new_unchecked(&mut *buf);
                // `ipv4::Repr` emits a bare 20-byte header: add the options, then redo the
                // header length and checksum.
                ip.emit(&mut packet);
                packet.set_header_len(header_len);
                packet.options_mut().copy_from_slice(options);
                packet.fill_checksum();
                message.emit(&mut igmp::Packet::new_unchecked(&mut buf[header_len..]));
            },
        )
    }
}

/// The sender's IP of an ARP, IPv4 or IPv6 packet, when it has one.
fn sender_ip(ethertype: EtherType, payload: &[u8]) -> Option<IpAddr> {
    let ip = match ethertype {
        EtherType::ARP => IpAddr::V4(
            arp::Packet::new_checked(payload)
                .ok()?
                .source_protocol_addr(),
        ),
        EtherType::IPV4 => IpAddr::V4(ipv4::Packet::new_checked(payload).ok()?.src_addr()),
        EtherType::IPV6 => IpAddr::V6(ipv6::Packet::new_checked(payload).ok()?.src_addr()),
        _ => return None,
    };
    (!ip.is_unspecified()).then_some(ip)
}

/// The source and message of a valid neighbour solicitation or advertisement: ICMPv6 right
/// after the IPv6 header (ND carries no extension headers), hop limit 255, checksum right.
fn parse_neighbour_discovery(payload: &[u8]) -> Option<(Ipv6Addr, icmpv6::Repr<'_>)> {
    let ip = ipv6::Packet::new_checked(payload).ok()?;
    if ip.next_header() != IpProtocol::ICMPV6 || ip.hop_limit() != ND_HOP_LIMIT {
        return None;
    }
    let packet = icmpv6::Packet::new_checked(ip.payload()).ok()?;
    let message = icmpv6::Repr::parse(&packet, &ip.pseudo_header()).ok()?;
    matches!(
        message,
        icmpv6::Repr::NeighborSolicit { .. } | icmpv6::Repr::NeighborAdvert { .. }
    )
    .then_some((ip.src_addr(), message))
}

/// Version, max response code and group of a valid IGMP membership query.
fn parse_igmp_query(payload: &[u8]) -> Option<(igmp::Version, u8, Ipv4Addr)> {
    let ip = ipv4::Packet::new_checked(payload).ok()?;
    ipv4::Repr::parse(&ip).ok()?;
    if ip.protocol() != IpProtocol::IGMP || ip.is_fragment() {
        return None;
    }
    let packet = igmp::Packet::new_checked(ip.payload()).ok()?;
    match igmp::Repr::parse(&packet).ok()? {
        igmp::Repr::MembershipQuery {
            version,
            max_resp_code,
            group_addr,
        } => Some((version, max_resp_code, group_addr)),
        _ => None,
    }
}

/// Points the source link-layer address option of a neighbour solicitation (`message`, the
/// whole ICMPv6 message) at `mac`. False if there is none, it already is `mac`, or the
/// options are malformed.
fn set_source_lladdr(message: &mut [u8], mac: EthernetAddress) -> bool {
    let mut at = icmpv6::ND_HEADER_LEN;
    while let Some(&[kind, units]) = message.get(at..at + 2) {
        let len = usize::from(units) * 8;
        let Some(option) = message.get_mut(at..at + len).filter(|_| len > 0) else {
            return false;
        };
        if kind == ND_OPTION_SOURCE_LLADDR && len == 8 {
            if option[2..] == mac.0 {
                return false;
            }
            option[2..].copy_from_slice(&mac.0);
            return true;
        }
        at += len;
    }
    false
}

/// An Ethernet II frame around a `len`-byte payload written by `fill`, padded to the minimum
/// frame length. `fill` gets exactly the payload, so checksums over "the rest of the buffer"
/// do not cover the padding.
fn build_frame(
    dst: EthernetAddress,
    src: EthernetAddress,
    ethertype: EtherType,
    len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let mut frame = vec![0u8; (ethernet::HEADER_LEN + len).max(MIN_FRAME_LEN)];
    ethernet::Repr {
        src_addr: src,
        dst_addr: dst,
        ethertype,
    }
    .emit(&mut ethernet::Frame::new_unchecked(&mut frame[..]));
    fill(&mut frame[ethernet::HEADER_LEN..ethernet::HEADER_LEN + len]);
    frame
}

fn arp_frame(dst: EthernetAddress, src: EthernetAddress, message: &arp::Repr) -> Vec<u8> {
    build_frame(dst, src, EtherType::ARP, message.buffer_len(), |buf| {
        message.emit(&mut arp::Packet::new_unchecked(buf));
    })
}

/// A neighbour discovery message from `src_ip` to `dst_ip`, hop limit 255.
fn icmpv6_frame(
    eth_dst: EthernetAddress,
    eth_src: EthernetAddress,
    src_ip: Ipv6Addr,
    dst_ip: Ipv6Addr,
    message: &icmpv6::Repr<'_>,
) -> Vec<u8> {
    let ip = ipv6::Repr {
        src_addr: src_ip,
        dst_addr: dst_ip,
        next_header: IpProtocol::ICMPV6,
        payload_len: message.buffer_len(),
        hop_limit: ND_HOP_LIMIT,
        traffic_class: 0,
        flow_label: 0,
    };
    build_frame(eth_dst, eth_src, EtherType::IPV6, ip.buffer_len(), |buf| {
        ip.emit(&mut ipv6::Packet::new_unchecked(&mut *buf));
        message.emit(
            &mut icmpv6::Packet::new_unchecked(&mut buf[ipv6::HEADER_LEN..]),
            &ip.pseudo_header(),
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const VIP2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
    const DEDICATED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 23);
    const PRIORITY: u8 = 3;
    const NIC: EthernetAddress = EthernetAddress([0x00, 0x15, 0x5d, 0x00, 0x00, 0x23]);
    const CLIENT_MAC: EthernetAddress = EthernetAddress([0x00, 0x15, 0x5d, 0x01, 0x02, 0x03]);
    const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const STRANGER: EthernetAddress = EthernetAddress([0x00, 0x0c, 0x29, 0xaa, 0xbb, 0xcc]);
    const UNICAST_MAC: EthernetAddress = EthernetAddress([0x02, 0xbf, 0xc0, 0x00, 0x02, 0x0a]);
    const MULTICAST_MAC: EthernetAddress = EthernetAddress([0x03, 0xbf, 0xc0, 0x00, 0x02, 0x0a]);
    const IGMP_MAC: EthernetAddress = EthernetAddress([0x01, 0x00, 0x5e, 0x7f, 0x02, 0x0a]);
    const MASKED: EthernetAddress = EthernetAddress([0x02, PRIORITY, 0xc0, 0x00, 0x02, 0x0a]);
    const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 2, 10);

    fn config(mode: MacMode) -> NeighbourConfig {
        NeighbourConfig {
            mode,
            vips: vec![IpAddr::V4(VIP2), IpAddr::V6(VIP6)],
            dedicated_ip: Some(DEDICATED),
            ..NeighbourConfig::new(CLUSTER_IP, PRIORITY, NIC)
        }
    }

    fn neighbour(mode: MacMode) -> Neighbour {
        Neighbour::new(config(mode), 0)
    }

    fn arp(
        operation: arp::Operation,
        sha: EthernetAddress,
        spa: Ipv4Addr,
        tpa: Ipv4Addr,
    ) -> arp::Repr {
        arp::Repr {
            operation,
            source_hardware_addr: sha,
            source_protocol_addr: spa,
            target_hardware_addr: EthernetAddress::default(),
            target_protocol_addr: tpa,
        }
    }

    /// A broadcast "who-has `tpa` tell `spa`" from `sha`.
    fn who_has(sha: EthernetAddress, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
        arp_frame(
            EthernetAddress::BROADCAST,
            sha,
            &arp(arp::Operation::REQUEST, sha, spa, tpa),
        )
    }

    /// An ARP reply mapping `spa` to `sha`, sent from Ethernet source `source`.
    fn is_at(source: EthernetAddress, sha: EthernetAddress, spa: Ipv4Addr) -> Vec<u8> {
        arp_frame(
            CLIENT_MAC,
            source,
            &arp(arp::Operation::REPLY, sha, spa, CLIENT_IP),
        )
    }

    fn parse_arp(frame: &[u8]) -> (ethernet::Repr, arp::Repr) {
        assert!(frame.len() >= MIN_FRAME_LEN);
        let eth = ethernet::Frame::new_checked(frame).unwrap();
        let header = ethernet::Repr::parse(&eth).unwrap();
        assert_eq!(header.ethertype, EtherType::ARP);
        let message = arp::Repr::parse(&arp::Packet::new_checked(eth.payload()).unwrap()).unwrap();
        (header, message)
    }

    /// Ethernet header, IPv6 header and ICMPv6 message of a frame, all checked (the ICMPv6
    /// checksum included).
    fn parse_icmpv6(frame: &[u8]) -> (ethernet::Repr, ipv6::Repr, icmpv6::Repr<'_>) {
        assert!(frame.len() >= MIN_FRAME_LEN);
        let eth = ethernet::Frame::new_checked(frame).unwrap();
        let header = ethernet::Repr::parse(&eth).unwrap();
        assert_eq!(header.ethertype, EtherType::IPV6);
        let ip = ipv6::Packet::new_checked(eth.payload()).unwrap();
        let ip_repr = ipv6::Repr::parse(&ip).unwrap();
        let message = icmpv6::Repr::parse(
            &icmpv6::Packet::new_checked(ip.payload()).unwrap(),
            &ip.pseudo_header(),
        )
        .unwrap();
        (header, ip_repr, message)
    }

    struct Igmp {
        eth: ethernet::Repr,
        ip: ipv4::Repr,
        options: Vec<u8>,
        message: igmp::Repr<'static>,
    }

    /// An IGMP frame, all checked (IPv4 header and IGMP checksums included).
    fn parse_igmp(frame: &[u8]) -> Igmp {
        assert!(frame.len() >= MIN_FRAME_LEN);
        let eth = ethernet::Frame::new_checked(frame).unwrap();
        let header = ethernet::Repr::parse(&eth).unwrap();
        assert_eq!(header.ethertype, EtherType::IPV4);
        let ip = ipv4::Packet::new_checked(eth.payload()).unwrap();
        let ip_repr = ipv4::Repr::parse(&ip).unwrap();
        assert_eq!(ip_repr.protocol, IpProtocol::IGMP);
        let message =
            match igmp::Repr::parse(&igmp::Packet::new_checked(ip.payload()).unwrap()).unwrap() {
                igmp::Repr::ReportV1 { group_addr } => igmp::Repr::ReportV1 { group_addr },
                igmp::Repr::ReportV2 { group_addr } => igmp::Repr::ReportV2 { group_addr },
                igmp::Repr::LeaveGroup { group_addr } => igmp::Repr::LeaveGroup { group_addr },
                other => panic!("not a report or leave: {other:?}"),
            };
        Igmp {
            eth: header,
            ip: ip_repr,
            options: ip.options().to_vec(),
            message,
        }
    }

    fn solicit(source: EthernetAddress, src_ip: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
        let dst = solicited_node(target);
        let lladdr = (!src_ip.is_unspecified()).then_some(source);
        icmpv6_frame(
            ipv6_multicast_mac(dst),
            source,
            src_ip,
            dst,
            &icmpv6::Repr::NeighborSolicit {
                target_addr: target,
                source_lladdr: lladdr,
            },
        )
    }

    fn advert(source: EthernetAddress, target: Ipv6Addr, lladdr: EthernetAddress) -> Vec<u8> {
        icmpv6_frame(
            ipv6_multicast_mac(ALL_NODES),
            source,
            target,
            ALL_NODES,
            &icmpv6::Repr::NeighborAdvert {
                router_flag: false,
                solicited_flag: false,
                override_flag: true,
                target_addr: target,
                target_lladdr: Some(lladdr),
            },
        )
    }

    fn solicited_node(target: Ipv6Addr) -> Ipv6Addr {
        let o = target.octets();
        Ipv6Addr::new(
            0xff02,
            0,
            0,
            0,
            0,
            1,
            0xff00 | u16::from(o[13]),
            u16::from_be_bytes([o[14], o[15]]),
        )
    }

    /// An IGMP query from a router, Router Alert included.
    fn query(max_resp_code: u8, group: Ipv4Addr) -> Vec<u8> {
        let dst = if group.is_unspecified() {
            Ipv4Addr::new(224, 0, 0, 1)
        } else {
            group
        };
        let message = igmp::Repr::MembershipQuery {
            version: if max_resp_code == 0 {
                igmp::Version::V1
            } else {
                igmp::Version::V2
            },
            max_resp_code,
            group_addr: group,
        };
        let router = NeighbourConfig {
            mode: MacMode::Igmp,
            dedicated_ip: Some(CLIENT_IP),
            ..NeighbourConfig::new(CLUSTER_IP, 1, CLIENT_MAC)
        };
        Neighbour::new(router, 0).igmp_frame(dst, &message)
    }

    // ARP answers.

    #[test]
    fn unicast_host_answers_arp_for_the_cluster_ip_with_cluster_mac_from_masked_source() {
        let mut host = neighbour(MacMode::Unicast);
        let outcome = host.on_cluster_frame(&who_has(CLIENT_MAC, CLIENT_IP, CLUSTER_IP), 0);
        assert!(!outcome.pass_to_host);
        assert!(outcome.diagnostics.is_empty());
        let [reply] = &outcome.transmit[..] else {
            panic!("one reply expected: {outcome:?}");
        };
        let (eth, arp) = parse_arp(reply);
        assert_eq!(eth.src_addr, MASKED);
        assert_eq!(eth.dst_addr, CLIENT_MAC);
        assert_eq!(arp.operation, arp::Operation::REPLY);
        assert_eq!(arp.source_hardware_addr, UNICAST_MAC);
        assert_eq!(arp.source_protocol_addr, CLUSTER_IP);
        assert_eq!(arp.target_hardware_addr, CLIENT_MAC);
        assert_eq!(arp.target_protocol_addr, CLIENT_IP);
    }

    #[test]
    fn every_ipv4_vip_is_answered() {
        let mut host = neighbour(MacMode::Unicast);
        let outcome = host.on_cluster_frame(&who_has(CLIENT_MAC, CLIENT_IP, VIP2), 0);
        let (_, arp) = parse_arp(&outcome.transmit[0]);
        assert_eq!(arp.source_protocol_addr, VIP2);
        assert_eq!(arp.source_hardware_addr, UNICAST_MAC);
    }

    #[test]
    fn unicast_without_masking_sends_from_the_port_mac() {
        let mut host = Neighbour::new(
            NeighbourConfig {
                mask_source_mac: false,
                ..config(MacMode::Unicast)
            },
            0,
        );
        let outcome = host.on_cluster_frame(&who_has(CLIENT_MAC, CLIENT_IP, CLUSTER_IP), 0);
        let (eth, arp) = parse_arp(&outcome.transmit[0]);
        assert_eq!(eth.src_addr, NIC);
        assert_eq!(arp.source_hardware_addr, UNICAST_MAC);
    }

    #[test]
    fn multicast_modes_answer_with_their_cluster_mac_from_the_port_mac() {
        for (mode, cluster_mac) in [
            (MacMode::Multicast, MULTICAST_MAC),
            (MacMode::Igmp, IGMP_MAC),
        ] {
            let mut host = neighbour(mode);
            let outcome = host.on_cluster_frame(&who_has(CLIENT_MAC, CLIENT_IP, CLUSTER_IP), 0);
            let (eth, arp) = parse_arp(&outcome.transmit[0]);
            assert_eq!(eth.src_addr, NIC, "{mode}");
            assert!(eth.src_addr.is_unicast());
            assert_eq!(arp.source_hardware_addr, cluster_mac, "{mode}");
        }
    }

    #[test]
    fn multicast_spoof_off_answers_with_the_port_mac() {
        let mut host = Neighbour::new(
            NeighbourConfig {
                multicast_spoof: false,
                ..config(MacMode::Multicast)
            },
            0,
        );
        assert_eq!(host.cluster_mac(), MULTICAST_MAC);
        let outcome = host.on_cluster_frame(&who_has(CLIENT_MAC, CLIENT_IP, CLUSTER_IP), 0);
        let (eth, arp) = parse_arp(&outcome.transmit[0]);
        assert_eq!(arp.source_hardware_addr, NIC);
        assert_eq!(eth.src_addr, NIC);
    }

    #[test]
    fn explicit_cluster_mac_is_advertised() {
        let explicit = EthernetAddress([0x02, 0xbf, 0x0a, 0x0b, 0x0c, 0x0d]);
        let mut host = Neighbour::new(
            NeighbourConfig {
                cluster_mac: Some(explicit),
                ..config(MacMode::Unicast)
            },
            0,
        );
        let outcome = host.on_cluster_frame(&who_has(CLIENT_MAC, CLIENT_IP, CLUSTER_IP), 0);
        assert_eq!(
            parse_arp(&outcome.transmit[0]).1.source_hardware_addr,
            explicit
        );
    }

    #[test]
    fn arp_for_other_addresses_is_left_to_the_host() {
        let mut host = neighbour(MacMode::Unicast);
        for target in [DEDICATED, Ipv4Addr::new(192, 0, 2, 99)] {
            let outcome = host.on_cluster_frame(&who_has(CLIENT_MAC, CLIENT_IP, target), 0);
            assert_eq!(outcome, Outcome::pass(), "{target}");
        }
        // A client's own gratuitous ARP, and an ARP reply between two others.
        let outcome = host.on_cluster_frame(&who_has(CLIENT_MAC, CLIENT_IP, CLIENT_IP), 0);
        assert_eq!(outcome, Outcome::pass());
        let outcome = host.on_cluster_frame(&is_at(STRANGER, STRANGER, CLIENT_IP), 0);
        assert_eq!(outcome, Outcome::pass());
    }

    #[test]
    fn a_peers_announcement_of_the_vip_is_not_answered_nor_passed() {
        let mut host = neighbour(MacMode::Unicast);
        let peer = EthernetAddress([0x02, 7, 0xc0, 0x00, 0x02, 0x0a]);
        let announcement = arp_frame(
            EthernetAddress::BROADCAST,
            peer,
            &arp(arp::Operation::REQUEST, UNICAST_MAC, CLUSTER_IP, CLUSTER_IP),
        );
        let outcome = host.on_cluster_frame(&announcement, 0);
        assert!(outcome.transmit.is_empty());
        assert!(!outcome.pass_to_host);
        assert!(outcome.diagnostics.is_empty(), "{outcome:?}");
    }

    #[test]
    fn a_probe_for_the_vip_is_answered_to_the_prober() {
        let mut host = neighbour(MacMode::Unicast);
        let outcome =
            host.on_cluster_frame(&who_has(STRANGER, Ipv4Addr::UNSPECIFIED, CLUSTER_IP), 0);
        assert!(outcome.diagnostics.is_empty());
        let (eth, arp) = parse_arp(&outcome.transmit[0]);
        assert_eq!(eth.dst_addr, STRANGER);
        assert_eq!(arp.source_protocol_addr, CLUSTER_IP);
        assert_eq!(arp.target_protocol_addr, Ipv4Addr::UNSPECIFIED);
    }

    // IPv6 neighbour discovery.

    #[test]
    fn solicitation_for_an_ipv6_vip_gets_a_solicited_override_advert() {
        let mut host = neighbour(MacMode::Unicast);
        let outcome = host.on_cluster_frame(&solicit(CLIENT_MAC, CLIENT6, VIP6), 0);
        assert!(!outcome.pass_to_host);
        assert!(outcome.diagnostics.is_empty());
        let (eth, ip, message) = parse_icmpv6(&outcome.transmit[0]);
        assert_eq!(eth.src_addr, MASKED);
        assert_eq!(eth.dst_addr, CLIENT_MAC);
        assert_eq!(ip.src_addr, VIP6);
        assert_eq!(ip.dst_addr, CLIENT6);
        assert_eq!(ip.hop_limit, 255);
        assert_eq!(
            message,
            icmpv6::Repr::NeighborAdvert {
                router_flag: false,
                solicited_flag: true,
                override_flag: true,
                target_addr: VIP6,
                target_lladdr: Some(UNICAST_MAC),
            }
        );
    }

    #[test]
    fn duplicate_address_detection_for_a_vip_is_answered_to_all_nodes() {
        let mut host = neighbour(MacMode::Multicast);
        let outcome = host.on_cluster_frame(&solicit(STRANGER, Ipv6Addr::UNSPECIFIED, VIP6), 0);
        let (eth, ip, message) = parse_icmpv6(&outcome.transmit[0]);
        assert_eq!(eth.dst_addr, EthernetAddress([0x33, 0x33, 0, 0, 0, 1]));
        assert_eq!(eth.src_addr, NIC);
        assert_eq!(ip.dst_addr, ALL_NODES);
        let icmpv6::Repr::NeighborAdvert {
            solicited_flag,
            target_lladdr,
            ..
        } = message
        else {
            panic!("not an advert: {message:?}");
        };
        assert!(!solicited_flag);
        assert_eq!(target_lladdr, Some(MULTICAST_MAC));
    }

    #[test]
    fn routed_or_foreign_solicitations_are_ignored() {
        let mut host = neighbour(MacMode::Unicast);
        let mut routed = solicit(CLIENT_MAC, CLIENT6, VIP6);
        // Hop limit is not covered by the checksum: only RFC 4861's 255 rule rejects this.
        routed[ethernet::HEADER_LEN + 7] = 64;
        assert_eq!(host.on_cluster_frame(&routed, 0), Outcome::pass());
        let other = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99);
        assert_eq!(
            host.on_cluster_frame(&solicit(CLIENT_MAC, CLIENT6, other), 0),
            Outcome::pass()
        );
    }

    // The host side.

    #[test]
    fn host_arp_replies_and_announcements_for_a_vip_are_dropped() {
        let host = neighbour(MacMode::Unicast);
        let host_mac = EthernetAddress([0x52, 0x54, 0, 0, 0, 1]);
        assert_eq!(
            host.on_host_frame(&is_at(host_mac, host_mac, CLUSTER_IP)),
            HostFrame::Drop
        );
        assert_eq!(
            host.on_host_frame(&who_has(host_mac, VIP2, VIP2)),
            HostFrame::Drop
        );
        let gratuitous_reply = arp_frame(
            EthernetAddress::BROADCAST,
            host_mac,
            &arp(arp::Operation::REPLY, host_mac, CLUSTER_IP, CLUSTER_IP),
        );
        assert_eq!(host.on_host_frame(&gratuitous_reply), HostFrame::Drop);
        assert_eq!(
            host.on_host_frame(&who_has(host_mac, Ipv4Addr::UNSPECIFIED, CLUSTER_IP)),
            HostFrame::Drop
        );
    }

    #[test]
    fn host_arp_for_its_dedicated_ip_and_other_traffic_passes() {
        let host = neighbour(MacMode::Unicast);
        let host_mac = EthernetAddress([0x52, 0x54, 0, 0, 0, 1]);
        assert_eq!(
            host.on_host_frame(&is_at(host_mac, host_mac, DEDICATED)),
            HostFrame::Pass
        );
        assert_eq!(
            host.on_host_frame(&who_has(host_mac, DEDICATED, CLIENT_IP)),
            HostFrame::Pass
        );
        assert_eq!(
            host.on_host_frame(&who_has(host_mac, Ipv4Addr::UNSPECIFIED, DEDICATED)),
            HostFrame::Pass
        );
        assert_eq!(host.on_host_frame(&query(100, GROUP)), HostFrame::Pass);
        assert_eq!(host.on_host_frame(&[0u8; 10]), HostFrame::Pass);
    }

    #[test]
    fn host_request_from_a_vip_is_rewritten_to_the_cluster_mac() {
        let host = neighbour(MacMode::Unicast);
        let host_mac = EthernetAddress([0x52, 0x54, 0, 0, 0, 1]);
        let request = who_has(host_mac, CLUSTER_IP, CLIENT_IP);
        let HostFrame::Rewrite(rewritten) = host.on_host_frame(&request) else {
            panic!("expected a rewrite");
        };
        let (eth, arp) = parse_arp(&rewritten);
        assert_eq!(arp.source_hardware_addr, UNICAST_MAC);
        assert_eq!(arp.source_protocol_addr, CLUSTER_IP);
        assert_eq!(arp.target_protocol_addr, CLIENT_IP);
        // The Ethernet source is the appliance's to mask, like any frame's.
        assert_eq!(eth.src_addr, host_mac);
        // Already right: nothing to do.
        assert_eq!(host.on_host_frame(&rewritten), HostFrame::Pass);
    }

    #[test]
    fn host_neighbour_discovery_for_a_vip_is_dropped_or_rewritten() {
        let host = neighbour(MacMode::Igmp);
        let host_mac = EthernetAddress([0x52, 0x54, 0, 0, 0, 1]);
        assert_eq!(
            host.on_host_frame(&advert(host_mac, VIP6, host_mac)),
            HostFrame::Drop
        );
        assert_eq!(
            host.on_host_frame(&solicit(host_mac, Ipv6Addr::UNSPECIFIED, VIP6)),
            HostFrame::Drop
        );
        let HostFrame::Rewrite(rewritten) = host.on_host_frame(&solicit(host_mac, VIP6, CLIENT6))
        else {
            panic!("expected a rewrite");
        };
        let (_, ip, message) = parse_icmpv6(&rewritten);
        assert_eq!(ip.src_addr, VIP6);
        assert_eq!(
            message,
            icmpv6::Repr::NeighborSolicit {
                target_addr: CLIENT6,
                source_lladdr: Some(IGMP_MAC),
            }
        );
        // From another address, or about another target: not ours.
        assert_eq!(
            host.on_host_frame(&solicit(host_mac, CLIENT6, VIP6)),
            HostFrame::Pass
        );
        assert_eq!(
            host.on_host_frame(&advert(host_mac, CLIENT6, host_mac)),
            HostFrame::Pass
        );
    }

    // Start, stop, and IGMP timing.

    #[test]
    fn start_announces_every_vip() {
        let host = neighbour(MacMode::Unicast);
        let frames = host.start_frames();
        assert_eq!(frames.len(), 3);
        for (frame, vip) in frames.iter().zip([CLUSTER_IP, VIP2]) {
            let (eth, arp) = parse_arp(frame);
            assert_eq!(eth.dst_addr, EthernetAddress::BROADCAST);
            assert_eq!(eth.src_addr, MASKED);
            assert_eq!(arp.operation, arp::Operation::REQUEST);
            assert!(arp.is_gratuitous());
            assert_eq!(arp.source_protocol_addr, vip);
            assert_eq!(arp.source_hardware_addr, UNICAST_MAC);
        }
        let (eth, ip, message) = parse_icmpv6(&frames[2]);
        assert_eq!(eth.dst_addr, EthernetAddress([0x33, 0x33, 0, 0, 0, 1]));
        assert_eq!((ip.src_addr, ip.dst_addr), (VIP6, ALL_NODES));
        assert_eq!(
            message,
            icmpv6::Repr::NeighborAdvert {
                router_flag: false,
                solicited_flag: false,
                override_flag: true,
                target_addr: VIP6,
                target_lladdr: Some(UNICAST_MAC),
            }
        );
        assert!(host.stop_frames().is_empty());
        assert_eq!(host.poll_timeout(), None);
    }

    #[test]
    fn igmp_mode_joins_the_cluster_group_with_a_v2_report() {
        let host = neighbour(MacMode::Igmp);
        let frames = host.start_frames();
        assert_eq!(frames.len(), 4);
        let report = parse_igmp(&frames[3]);
        assert_eq!(report.eth.dst_addr, IGMP_MAC);
        assert_eq!(report.eth.src_addr, NIC);
        assert_eq!(report.ip.src_addr, DEDICATED);
        assert_eq!(report.ip.dst_addr, GROUP);
        assert_eq!(report.ip.ttl, 1);
        assert_eq!(report.options, ROUTER_ALERT);
        assert_eq!(report.message, igmp::Repr::ReportV2 { group_addr: GROUP });
        // Type 0x16, right after the 24-byte header.
        assert_eq!(frames[3][ethernet::HEADER_LEN + 24], 0x16);
    }

    #[test]
    fn igmp_v1_reports_carry_no_router_alert_and_never_leave() {
        let host = Neighbour::new(
            NeighbourConfig {
                igmp_version: IgmpVersion::V1,
                dedicated_ip: None,
                ..config(MacMode::Igmp)
            },
            0,
        );
        let report = parse_igmp(host.start_frames().last().unwrap());
        assert_eq!(report.message, igmp::Repr::ReportV1 { group_addr: GROUP });
        assert!(report.options.is_empty());
        assert_eq!(report.ip.src_addr, CLUSTER_IP);
        assert_eq!(report.ip.ttl, 1);
        assert!(host.stop_frames().is_empty());
    }

    #[test]
    fn igmp_v2_leaves_to_all_routers_on_stop() {
        let host = neighbour(MacMode::Igmp);
        let [leave] = &host.stop_frames()[..] else {
            panic!("one leave expected");
        };
        let leave = parse_igmp(leave);
        assert_eq!(
            leave.eth.dst_addr,
            EthernetAddress([0x01, 0x00, 0x5e, 0, 0, 2])
        );
        assert_eq!(leave.ip.dst_addr, ALL_ROUTERS);
        assert_eq!(leave.ip.ttl, 1);
        assert_eq!(leave.options, ROUTER_ALERT);
        assert_eq!(leave.message, igmp::Repr::LeaveGroup { group_addr: GROUP });
    }

    #[test]
    fn igmp_reports_repeat_every_interval() {
        let mut host = Neighbour::new(config(MacMode::Igmp), 5_000);
        assert_eq!(host.poll_timeout(), Some(5_000 + IGMP_REPORT_INTERVAL_MS));
        assert!(host
            .handle_timeout(5_000 + IGMP_REPORT_INTERVAL_MS - 1)
            .is_empty());
        let frames = host.handle_timeout(5_000 + IGMP_REPORT_INTERVAL_MS);
        assert_eq!(frames.len(), 1);
        assert_eq!(
            parse_igmp(&frames[0]).message,
            igmp::Repr::ReportV2 { group_addr: GROUP }
        );
        assert_eq!(
            host.poll_timeout(),
            Some(5_000 + 2 * IGMP_REPORT_INTERVAL_MS)
        );
        // A stall: one report, then the period restarts.
        let late = 5_000 + 10 * IGMP_REPORT_INTERVAL_MS;
        assert_eq!(host.handle_timeout(late).len(), 1);
        assert!(host.handle_timeout(late).is_empty());
        assert_eq!(host.poll_timeout(), Some(late + IGMP_REPORT_INTERVAL_MS));
    }

    #[test]
    fn queries_are_answered_after_a_delay_set_by_priority() {
        let mut host = neighbour(MacMode::Igmp);
        // Max response 10 s; priority 3 takes slot 2 of 32: 625 ms.
        let outcome = host.on_cluster_frame(&query(100, Ipv4Addr::UNSPECIFIED), 1_000);
        assert_eq!(outcome, Outcome::pass());
        assert_eq!(host.poll_timeout(), Some(1_625));
        assert!(host.handle_timeout(1_624).is_empty());
        let frames = host.handle_timeout(1_625);
        assert_eq!(
            parse_igmp(&frames[0]).message,
            igmp::Repr::ReportV2 { group_addr: GROUP }
        );
        assert_eq!(host.poll_timeout(), Some(IGMP_REPORT_INTERVAL_MS));

        // A group-specific query for our group; a sooner one keeps the earlier deadline.
        host.on_cluster_frame(&query(100, GROUP), 2_000);
        host.on_cluster_frame(&query(200, GROUP), 2_100);
        assert_eq!(host.poll_timeout(), Some(2_625));
        // The priority 1 host answers at once.
        let mut first = Neighbour::new(
            NeighbourConfig {
                priority: 1,
                ..config(MacMode::Igmp)
            },
            0,
        );
        first.on_cluster_frame(&query(100, GROUP), 2_000);
        assert_eq!(first.poll_timeout(), Some(2_000));
        assert_eq!(first.handle_timeout(2_000).len(), 1);
    }

    #[test]
    fn queries_for_other_groups_or_in_other_modes_are_ignored() {
        let mut host = neighbour(MacMode::Igmp);
        host.on_cluster_frame(&query(100, Ipv4Addr::new(239, 1, 1, 1)), 1_000);
        assert_eq!(host.poll_timeout(), Some(IGMP_REPORT_INTERVAL_MS));
        let mut multicast = neighbour(MacMode::Multicast);
        multicast.on_cluster_frame(&query(100, Ipv4Addr::UNSPECIFIED), 1_000);
        assert_eq!(multicast.poll_timeout(), None);
        assert!(multicast.handle_timeout(u64::MAX).is_empty());
        // A query with a broken IGMP checksum.
        let mut broken = query(100, Ipv4Addr::UNSPECIFIED);
        broken[ethernet::HEADER_LEN + 24 + 2] ^= 0xff;
        host.on_cluster_frame(&broken, 1_000);
        assert_eq!(host.poll_timeout(), Some(IGMP_REPORT_INTERVAL_MS));
    }

    #[test]
    fn an_igmp_v1_querier_makes_a_v2_host_report_in_v1_without_leave() {
        let mut host = neighbour(MacMode::Igmp);
        host.on_cluster_frame(&query(0, Ipv4Addr::UNSPECIFIED), 1_000);
        // IGMPv1 queries allow 10 s.
        assert_eq!(host.poll_timeout(), Some(1_625));
        let frames = host.handle_timeout(1_625);
        assert_eq!(
            parse_igmp(&frames[0]).message,
            igmp::Repr::ReportV1 { group_addr: GROUP }
        );
        assert!(host.stop_frames().is_empty());
        // 400 s without a v1 query: back to v2.
        let frames = host.handle_timeout(1_000 + V1_ROUTER_PRESENT_MS);
        assert_eq!(
            parse_igmp(&frames[0]).message,
            igmp::Repr::ReportV2 { group_addr: GROUP }
        );
        assert_eq!(host.stop_frames().len(), 1);
    }

    // Diagnostics.

    fn diagnose(host: &mut Neighbour, frame: &[u8]) -> Vec<Diagnostic> {
        host.on_cluster_frame(frame, 0).diagnostics
    }

    #[test]
    fn peers_in_the_same_mode_raise_nothing() {
        let peer_masked = EthernetAddress([0x02, 7, 0xc0, 0x00, 0x02, 0x0a]);
        let mut unicast = neighbour(MacMode::Unicast);
        assert!(diagnose(&mut unicast, &is_at(peer_masked, UNICAST_MAC, VIP2)).is_empty());

        let peer_nic = EthernetAddress([0x00, 0x15, 0x5d, 0x00, 0x00, 0x07]);
        let mut multicast = neighbour(MacMode::Multicast);
        assert!(diagnose(&mut multicast, &is_at(peer_nic, MULTICAST_MAC, VIP2)).is_empty());
        // With spoofing off the peers answer with their own MACs.
        let mut no_spoof = Neighbour::new(
            NeighbourConfig {
                multicast_spoof: false,
                ..config(MacMode::Multicast)
            },
            0,
        );
        assert!(diagnose(&mut no_spoof, &is_at(peer_nic, peer_nic, CLUSTER_IP)).is_empty());
        // A peer's dedicated IP at the cluster MAC, once the peer is known.
        let peer_ip = Ipv4Addr::new(192, 0, 2, 27);
        unicast.set_peer_dedicated_ips(&[peer_ip]);
        assert!(diagnose(&mut unicast, &is_at(peer_masked, UNICAST_MAC, peer_ip)).is_empty());
    }

    #[test]
    fn another_ip_on_our_cluster_mac_is_a_cluster_ip_mismatch() {
        let mut host = neighbour(MacMode::Unicast);
        let other_ip = Ipv4Addr::new(192, 0, 2, 50);
        // The peer masks with its own (different) cluster IP: priority 9.
        let peer = EthernetAddress([0x02, 9, 0xc0, 0x00, 0x02, 0x32]);
        let announcement = arp_frame(
            EthernetAddress::BROADCAST,
            peer,
            &arp(arp::Operation::REQUEST, UNICAST_MAC, other_ip, other_ip),
        );
        let diagnostics = diagnose(&mut host, &announcement);
        assert_eq!(
            diagnostics,
            [Diagnostic::ClusterIpMismatch {
                cause: MismatchCause::DifferentClusterIp,
                ip: IpAddr::V4(other_ip),
                mac: UNICAST_MAC,
                cluster_mac: UNICAST_MAC,
                source: peer,
                priority: Some(9),
            }]
        );
        let text = diagnostics[0].to_string();
        assert!(text.contains("KB Q193598, cause 1"), "{text}");
        assert!(
            text.contains("192.0.2.50") && text.contains("priority 9"),
            "{text}"
        );
        assert_eq!(diagnostics[0].kind(), "cluster_ip_mismatch");
    }

    #[test]
    fn our_vip_on_another_clusters_mac_is_a_cluster_ip_mismatch() {
        let mut host = neighbour(MacMode::Unicast);
        let other_cluster = EthernetAddress([0x02, 0xbf, 0xc0, 0x00, 0x02, 0x63]);
        let peer = EthernetAddress([0x02, 4, 0xc0, 0x00, 0x02, 0x0a]);
        let diagnostics = diagnose(&mut host, &is_at(peer, other_cluster, CLUSTER_IP));
        assert_eq!(
            diagnostics,
            [Diagnostic::ClusterIpMismatch {
                cause: MismatchCause::DifferentClusterMac,
                ip: IpAddr::V4(CLUSTER_IP),
                mac: other_cluster,
                cluster_mac: UNICAST_MAC,
                source: peer,
                priority: Some(4),
            }]
        );
        let text = diagnostics[0].to_string();
        assert!(text.contains("KB Q193598, cause 2"), "{text}");
        assert!(text.contains("02:bf:c0:00:02:63"), "{text}");

        // A host given an explicit MAC sees a peer that kept "auto".
        let explicit = EthernetAddress([0x02, 0xbf, 0x0a, 0x0b, 0x0c, 0x0d]);
        let mut explicit_host = Neighbour::new(
            NeighbourConfig {
                cluster_mac: Some(explicit),
                ..config(MacMode::Unicast)
            },
            0,
        );
        let diagnostics = diagnose(&mut explicit_host, &is_at(peer, UNICAST_MAC, CLUSTER_IP));
        assert!(matches!(
            diagnostics[..],
            [Diagnostic::ClusterIpMismatch {
                cause: MismatchCause::DifferentClusterMac,
                ..
            }]
        ));
    }

    #[test]
    fn a_stranger_claiming_a_vip_or_our_dedicated_ip_is_an_ip_address_conflict() {
        let mut host = neighbour(MacMode::Unicast);
        let diagnostics = diagnose(&mut host, &is_at(STRANGER, STRANGER, VIP2));
        assert_eq!(
            diagnostics,
            [Diagnostic::IpAddressConflict {
                ip: IpAddr::V4(VIP2),
                mac: STRANGER,
                source: STRANGER,
                dedicated: false,
            }]
        );
        assert_eq!(diagnostics[0].kind(), "ip_address_conflict");
        assert!(diagnostics[0].to_string().contains("KB Q193598"));
        // Relayed: the frame's sender is named too.
        let relayed = diagnose(&mut host, &is_at(CLIENT_MAC, STRANGER, VIP2));
        let text = relayed[0].to_string();
        assert!(
            text.contains("claimed by 00:0c:29:aa:bb:cc (in a frame from 00:15:5d:01:02:03)"),
            "{text}"
        );

        // A request carries the sender's claim too.
        let diagnostics = diagnose(&mut host, &who_has(STRANGER, DEDICATED, CLIENT_IP));
        assert_eq!(
            diagnostics,
            [Diagnostic::IpAddressConflict {
                ip: IpAddr::V4(DEDICATED),
                mac: STRANGER,
                source: STRANGER,
                dedicated: true,
            }]
        );
        assert_eq!(
            diagnostics[0].to_string(),
            "IP address conflict: our dedicated IP 192.0.2.23 is claimed by 00:0c:29:aa:bb:cc, \
             which is neither this cluster's MAC nor a cluster host's: a machine outside the \
             cluster uses the address (the conflict of KB Q193598, from outside). Fix: take \
             192.0.2.23 off the machine with MAC 00:0c:29:aa:bb:cc, or give this host another \
             address"
        );

        // Over IPv6.
        let diagnostics = diagnose(&mut host, &advert(STRANGER, VIP6, STRANGER));
        assert_eq!(
            diagnostics,
            [Diagnostic::IpAddressConflict {
                ip: IpAddr::V6(VIP6),
                mac: STRANGER,
                source: STRANGER,
                dedicated: false,
            }]
        );
    }

    #[test]
    fn a_peer_answering_with_the_other_modes_mac_is_a_mode_mismatch() {
        let peer_nic = EthernetAddress([0x00, 0x15, 0x5d, 0x00, 0x00, 0x07]);
        let mut unicast = neighbour(MacMode::Unicast);
        let outcome = unicast.on_cluster_frame(&is_at(peer_nic, MULTICAST_MAC, CLUSTER_IP), 0);
        assert!(!outcome.pass_to_host);
        assert_eq!(
            outcome.diagnostics,
            [Diagnostic::ModeMismatch {
                ip: IpAddr::V4(CLUSTER_IP),
                mac: MULTICAST_MAC,
                peer_mode: MacMode::Multicast,
                our_mode: MacMode::Unicast,
                source: peer_nic,
                priority: None,
            }]
        );
        let text = outcome.diagnostics[0].to_string();
        assert!(
            text.contains("multicast MAC") && text.contains("unicast mode"),
            "{text}"
        );
        assert_eq!(outcome.diagnostics[0].kind(), "mode_mismatch");

        let peer_masked = EthernetAddress([0x02, 7, 0xc0, 0x00, 0x02, 0x0a]);
        let mut igmp = neighbour(MacMode::Igmp);
        assert_eq!(
            diagnose(&mut igmp, &is_at(peer_masked, UNICAST_MAC, VIP2)),
            [Diagnostic::ModeMismatch {
                ip: IpAddr::V4(VIP2),
                mac: UNICAST_MAC,
                peer_mode: MacMode::Unicast,
                our_mode: MacMode::Igmp,
                source: peer_masked,
                priority: Some(7),
            }]
        );
        // Over IPv6, multicast against igmp.
        let mut multicast = neighbour(MacMode::Multicast);
        assert!(matches!(
            diagnose(&mut multicast, &advert(peer_nic, VIP6, IGMP_MAC))[..],
            [Diagnostic::ModeMismatch {
                peer_mode: MacMode::Igmp,
                our_mode: MacMode::Multicast,
                ..
            }]
        ));
    }

    #[test]
    fn a_frame_from_the_cluster_mac_is_a_leak() {
        let mut host = neighbour(MacMode::Unicast);
        assert_eq!(
            host.check_source(UNICAST_MAC),
            Some(Diagnostic::ClusterMacLeaked {
                mac: UNICAST_MAC,
                sender_ip: None,
            })
        );
        assert_eq!(host.check_source(MASKED), None);
        assert_eq!(host.check_source(NIC), None);
        // A multicast address as a source is never learned.
        assert_eq!(
            neighbour(MacMode::Multicast).check_source(MULTICAST_MAC),
            None
        );
        assert_eq!(
            neighbour(MacMode::Multicast).check_source(UNICAST_MAC),
            None
        );
        // Masking turned off on purpose: the cluster MAC as a source is expected.
        let unmasked_cluster = Neighbour::new(
            NeighbourConfig {
                mask_source_mac: false,
                ..config(MacMode::Unicast)
            },
            0,
        );
        assert_eq!(unmasked_cluster.check_source(UNICAST_MAC), None);

        // An unmasked peer's gratuitous ARP: the only fault is the source.
        let unmasked = arp_frame(
            EthernetAddress::BROADCAST,
            UNICAST_MAC,
            &arp(arp::Operation::REQUEST, UNICAST_MAC, CLUSTER_IP, CLUSTER_IP),
        );
        let diagnostics = diagnose(&mut host, &unmasked);
        assert_eq!(
            diagnostics,
            [Diagnostic::ClusterMacLeaked {
                mac: UNICAST_MAC,
                sender_ip: Some(IpAddr::V4(CLUSTER_IP)),
            }]
        );
        let text = diagnostics[0].to_string();
        assert!(
            text.contains("KB Q258609") && text.contains("mask_source_mac"),
            "{text}"
        );
        assert_eq!(diagnostics[0].kind(), "cluster_mac_leaked");

        // Any frame, not only ARP: here a bare IPv4 header from the dedicated IP of a peer.
        let peer_ip = Ipv4Addr::new(192, 0, 2, 27);
        let leaked = build_frame(CLIENT_MAC, UNICAST_MAC, EtherType::IPV4, 20, |buf| {
            ipv4::Repr {
                src_addr: peer_ip,
                dst_addr: CLIENT_IP,
                protocol: IpProtocol::TCP,
                payload_len: 0,
                ttl: 64,
                dscp: 0,
                ecn: 0,
                ident: 1,
                dont_frag: true,
                more_frags: false,
                frag_offset: 0,
            }
            .emit(&mut ipv4::Packet::new_unchecked(buf));
        });
        let outcome = host.on_cluster_frame(&leaked, 0);
        assert!(outcome.pass_to_host);
        assert_eq!(
            outcome.diagnostics,
            [Diagnostic::ClusterMacLeaked {
                mac: UNICAST_MAC,
                sender_ip: Some(IpAddr::V4(peer_ip)),
            }]
        );
    }

    #[test]
    fn mac_not_programmable_names_the_fallback_and_the_advice() {
        let diagnostic = Diagnostic::MacNotProgrammable {
            fallback: "promiscuous mode".into(),
        };
        assert_eq!(diagnostic.kind(), "mac_not_programmable");
        assert_eq!(
            diagnostic.to_string(),
            "cluster MAC not programmable: the cluster port cannot take the unicast cluster \
             MAC as its address, running with promiscuous mode instead (KB Q193598, cause 3: a \
             NIC that cannot change its MAC). If that fallback misses the cluster's traffic or \
             costs too much: use a NIC whose driver can take another MAC, or run the cluster \
             in multicast mode ([cluster] mode = \"multicast\")"
        );
    }

    // Malformed input.

    #[test]
    fn truncated_frames_pass_untouched() {
        // Each frame with the length of its message (the rest is padding).
        let frames = [
            (
                who_has(CLIENT_MAC, CLIENT_IP, CLUSTER_IP),
                ethernet::HEADER_LEN + arp::PACKET_LEN,
            ),
            (
                solicit(CLIENT_MAC, CLIENT6, VIP6),
                ethernet::HEADER_LEN + 40 + 32,
            ),
            (
                solicit(CLIENT_MAC, VIP6, CLIENT6),
                ethernet::HEADER_LEN + 40 + 32,
            ),
            (
                query(100, Ipv4Addr::UNSPECIFIED),
                ethernet::HEADER_LEN + 24 + 8,
            ),
        ];
        for mode in MacMode::ALL {
            let mut host = neighbour(mode);
            for (frame, message_end) in &frames {
                for len in 0..*message_end {
                    let outcome = host.on_cluster_frame(&frame[..len], 0);
                    assert_eq!(outcome, Outcome::pass(), "{mode}, {len} bytes");
                    assert_eq!(host.on_host_frame(&frame[..len]), HostFrame::Pass);
                }
            }
            // No truncated query was taken for one.
            let periodic = host.igmp_group().map(|_| IGMP_REPORT_INTERVAL_MS);
            assert_eq!(host.poll_timeout(), periodic);
        }
    }

    mod prop {
        use proptest::prelude::*;

        use super::*;

        fn hosts() -> Vec<Neighbour> {
            let mut hosts: Vec<Neighbour> = MacMode::ALL.into_iter().map(neighbour).collect();
            hosts.push(Neighbour::new(
                NeighbourConfig {
                    multicast_spoof: false,
                    igmp_version: IgmpVersion::V1,
                    ..config(MacMode::Igmp)
                },
                0,
            ));
            hosts
        }

        fn valid_frames() -> Vec<Vec<u8>> {
            vec![
                who_has(CLIENT_MAC, CLIENT_IP, CLUSTER_IP),
                is_at(STRANGER, UNICAST_MAC, VIP2),
                solicit(CLIENT_MAC, CLIENT6, VIP6),
                solicit(CLIENT_MAC, VIP6, CLIENT6),
                advert(STRANGER, VIP6, MULTICAST_MAC),
                query(100, GROUP),
            ]
        }

        /// Whatever goes in, what comes out is a well-formed frame.
        fn check(hosts: &mut [Neighbour], frame: &[u8]) {
            for host in hosts {
                let outcome = host.on_cluster_frame(frame, 1_000);
                for sent in &outcome.transmit {
                    assert!(sent.len() >= MIN_FRAME_LEN);
                    assert!(ethernet::Frame::new_checked(&sent[..])
                        .unwrap()
                        .src_addr()
                        .is_unicast());
                }
                for diagnostic in &outcome.diagnostics {
                    assert!(!diagnostic.to_string().is_empty());
                }
                if let HostFrame::Rewrite(rewritten) = host.on_host_frame(frame) {
                    assert_eq!(rewritten.len(), frame.len());
                }
                host.handle_timeout(2_000_000);
                host.handle_timeout(u64::MAX);
            }
        }

        proptest! {
            #[test]
            fn random_bytes_never_panic(
                mut frame in proptest::collection::vec(any::<u8>(), 0..200),
                ethertype in prop_oneof![Just(0x0806u16), Just(0x0800), Just(0x86dd), any::<u16>()],
            ) {
                if frame.len() >= ethernet::HEADER_LEN {
                    frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
                }
                check(&mut hosts(), &frame);
            }

            #[test]
            fn mutated_control_frames_never_panic(
                which in 0..6usize,
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
                cut in any::<usize>(),
            ) {
                let mut frame = valid_frames().swap_remove(which);
                for (at, value) in flips {
                    let at = at % frame.len();
                    frame[at] = value;
                }
                let len = cut % (frame.len() + 1);
                check(&mut hosts(), &frame[..len]);
                check(&mut hosts(), &frame);
            }
        }
    }
}
