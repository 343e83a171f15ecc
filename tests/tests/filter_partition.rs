//! The filter's core property, checked without DPDK: every host of a cluster sees every frame
//! and keeps exactly its share.
//!
//! A simulated cluster is N hosts that share one configuration (VIPs, port rules, hash seed)
//! and one assignment (`assignment::assign` over the live members), each with its own
//! `FilterTable` and `Filter` (descriptors, fragment verdicts) and its own held-fragment area,
//! exactly as a worker has. Every frame goes to every host. Then:
//!
//! - a frame to a VIP is accepted by exactly one live member: the one an independent model
//!   of the rules says (bucket owner, single-host handler, default host), or by none for a
//!   disabled rule; stopped hosts never accept;
//! - every packet of a flow (SYN, later segments, FIN/RST, ICMP errors about it) and every
//!   fragment of a datagram, in any order, goes to the member that accepted the first one;
//! - frames not addressed to a VIP pass on every host;
//! - VLAN-tagged frames get the verdicts untagged ones get;
//! - garbage never panics and is never accepted by two hosts;
//! - each member's share of a multiple-host rule's 60 buckets is its load weight's share to
//!   within one bucket;
//! - a worker that swaps tables under traffic judges each burst by one table and gives every
//!   frame exactly one final verdict.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use proptest::prelude::*;
use wlbs_control::assignment::{self, Assignment, Member};
use wlbs_dataplane::conn::Timeouts;
use wlbs_dataplane::filter::classify::Filter;
use wlbs_dataplane::filter::frag::{DatagramKey, FragmentTable, HeldFragments};
use wlbs_dataplane::filter::hash::{self, Affinity};
use wlbs_dataplane::filter::table::{FilterTable, RuleOwnership};
use wlbs_dataplane::filter::{
    FilterSpec, Mode, PortRule, Protocol, Reason, RuleVip, Verdict, BUCKETS,
};
use wlbs_dataplane::wire::tcp::Flags;
use wlbs_dataplane::wire::{EtherType, IpProtocol};
use wlbs_tests::frames::{self, IcmpError, Vlan};

// ---------------------------------------------------------------------------------------------
// A small deterministic random source for traffic (proptest draws the seed).

#[derive(Clone)]
struct Rng(u64);

impl Rng {
    /// SplitMix64.
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next() % (u64::from(hi - lo) + 1)) as u32
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.next() % 100 < u64::from(percent)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster: configuration, live members, stopped hosts, and the model of who takes what.

#[derive(Debug, Clone)]
struct Cluster {
    cluster_ip: Ipv4Addr,
    /// Every VIP, the primary cluster IP first.
    vips: Vec<IpAddr>,
    rules: Vec<PortRule>,
    /// Live members, by priority.
    members: Vec<Member>,
    /// Hosts that see the traffic but are not live members (stopped): they take nothing.
    stopped: Vec<u8>,
    /// Descriptors per host (0 and tiny tables exercise the "table full" fallback).
    max_connections: usize,
    /// Short timeouts expire descriptors in the middle of flows.
    short_timeouts: bool,
}

/// A host's own dedicated IP (never load balanced): IPv4 for odd priorities, IPv6 for even.
fn dedicated_ip(priority: u8) -> IpAddr {
    if priority % 2 == 1 {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100 + priority))
    } else {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            0xdd,
            u16::from(priority),
        ))
    }
}

/// Addresses that are nobody's VIP or dedicated IP.
fn other_addresses() -> [IpAddr; 4] {
    [
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200)),
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xffff)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc000, 0, 0, 0, 0, 1)),
    ]
}

impl Cluster {
    fn modes(&self) -> Vec<Mode> {
        self.rules.iter().map(|r| r.mode).collect()
    }

    fn assignment(&self) -> Assignment {
        assignment::assign(&self.modes(), &self.members, None)
    }

    /// Host `priority`'s view of the configuration: the shared one plus its dedicated IP.
    fn spec_for(&self, priority: u8) -> FilterSpec {
        FilterSpec {
            cluster_ip: self.cluster_ip,
            vips: self.vips.clone(),
            dedicated: vec![dedicated_ip(priority)],
            rules: self.rules.clone(),
        }
    }

    /// Every host's table (live members first, then stopped hosts), as `ClusterView::table`
    /// builds it: a stopped host owns nothing and is not running.
    fn tables(&self, a: &Assignment, generation: u64) -> Vec<(u8, FilterTable)> {
        let live = self.members.iter().map(|m| m.priority);
        live.chain(self.stopped.iter().copied())
            .map(|p| {
                let running = self.members.iter().any(|m| m.priority == p);
                let table = FilterTable::new(
                    &self.spec_for(p),
                    &a.ownership_of(p),
                    a.default_host == Some(p),
                    running,
                    generation,
                );
                (p, table)
            })
            .collect()
    }

    fn default_host(&self) -> u8 {
        self.members
            .iter()
            .map(|m| m.priority)
            .min()
            .expect("a member")
    }

    /// The rule that covers `port` for traffic to `vip`: the VIP's own rule, else an "all"
    /// rule.
    fn rule_for(&self, vip: IpAddr, tcp: bool, port: u16) -> Option<usize> {
        let covers = |r: &PortRule| {
            r.covers_port(port)
                && if tcp {
                    r.protocol.covers_tcp()
                } else {
                    r.protocol.covers_udp()
                }
        };
        let own = self
            .rules
            .iter()
            .position(|r| r.vip == RuleVip::Addr(vip) && covers(r));
        own.or_else(|| {
            self.rules
                .iter()
                .position(|r| r.vip == RuleVip::All && covers(r))
        })
    }

    /// Who takes a TCP/UDP packet of the flow client:cport -> vip:sport (None: nobody).
    fn owner(
        &self,
        a: &Assignment,
        client: IpAddr,
        cport: u16,
        vip: IpAddr,
        sport: u16,
        tcp: bool,
    ) -> Option<u8> {
        let Some(i) = self.rule_for(vip, tcp, sport) else {
            return Some(self.default_host());
        };
        let rule = &self.rules[i];
        match rule.mode {
            Mode::Disabled => None,
            Mode::Single => self
                .members
                .iter()
                .min_by_key(|m| (m.handling_priorities[i], m.priority))
                .map(|m| m.priority),
            Mode::Multiple => {
                let seed = hash::seed(self.cluster_ip);
                let b = hash::bucket(seed, rule.affinity, client, cport, sport);
                Some(a.rules[i].owners[usize::from(b)])
            }
        }
    }

    /// The live members' load weights for rule `i`, by priority.
    fn weights(&self, i: usize) -> Vec<(u8, u8)> {
        self.members
            .iter()
            .map(|m| (m.priority, m.load_weights[i]))
            .collect()
    }
}

/// What proptest draws for one port rule; the port layout comes from a seed.
#[derive(Debug, Clone)]
struct RuleDraw {
    scope: usize,
    protocol: Protocol,
    mode: Mode,
    affinity: Affinity,
    /// 0, 1: weights as drawn; 2: every member 0 (equal split); 3: every member 50.
    weight_style: u8,
}

fn rule_draw() -> impl Strategy<Value = RuleDraw> {
    (
        // Half the rules for every VIP, like most configurations; the rest for one VIP.
        prop_oneof![Just(0usize), 1usize..8],
        prop_oneof![
            Just(Protocol::Tcp),
            Just(Protocol::Udp),
            Just(Protocol::Both)
        ],
        prop_oneof![
            3 => Just(Mode::Multiple),
            1 => Just(Mode::Single),
            1 => Just(Mode::Disabled)
        ],
        prop_oneof![
            Just(Affinity::None),
            Just(Affinity::Single),
            Just(Affinity::Network)
        ],
        0u8..4,
    )
        .prop_map(|(scope, protocol, mode, affinity, weight_style)| RuleDraw {
            scope,
            protocol,
            mode,
            affinity,
            weight_style,
        })
}

/// 0: every VIP; s > 0: VIP s - 1.
fn scope_of(d: &RuleDraw, vips: usize) -> usize {
    match d.scope {
        0 => 0,
        s => 1 + (s - 1) % vips,
    }
}

/// Port ranges that never overlap for one (VIP, protocol): per scope (all, or one VIP), the
/// port space is cut into segments and each rule takes its own, with gaps between; a TCP rule
/// and a UDP rule may share one.
fn layout_rules(vips: &[IpAddr], draws: &[RuleDraw], seed: u64) -> Vec<PortRule> {
    let mut r = Rng(seed);
    let scopes = vips.len() + 1;
    let mut ranges = vec![(0u16, 0u16); draws.len()];
    for scope in 0..scopes {
        let members: Vec<usize> = (0..draws.len())
            .filter(|&i| scope_of(&draws[i], vips.len()) == scope)
            .collect();
        let n = members.len();
        if n == 0 {
            continue;
        }
        if n == 1 && r.chance(30) {
            ranges[members[0]] = (0, 65535);
            continue;
        }
        let mut cuts = BTreeSet::new();
        while cuts.len() < 2 * n {
            // Sometimes near the ends, so that ranges start at 0 or end at 65535.
            let c = match r.below(6) {
                0 => r.range(1, 3),
                1 => r.range(65533, 65535),
                _ => r.range(1, 65535),
            };
            cuts.insert(c);
        }
        let cuts: Vec<u32> = cuts.into_iter().collect();
        let segment = |k: usize| -> (u16, u16) {
            let first = if k == 0 { 0 } else { cuts[k - 1] };
            let last = if k == cuts.len() { 65535 } else { cuts[k] - 1 };
            (first as u16, last as u16)
        };
        let mut next = 0usize;
        let mut shared = false;
        for (j, &i) in members.iter().enumerate() {
            let prev = (j > 0).then(|| members[j - 1]);
            // A TCP rule and a UDP rule may share a segment (two rules at most).
            let share = !shared
                && prev.is_some_and(|p| {
                    !draws[p].protocol.overlaps(draws[i].protocol) && r.chance(50)
                });
            shared = share;
            ranges[i] = match prev {
                Some(p) if share => ranges[p],
                _ => {
                    let (first, last) = segment(next + r.below(2));
                    next += 2;
                    // Like real rules: some wide (a whole segment, such as 1024-65535),
                    // some narrow (one port, such as 80, or a few), some in between.
                    let width = match r.below(10) {
                        0..=3 => u32::MAX,
                        4..=6 => r.range(0, 15),
                        _ => r.range(16, 1023),
                    };
                    let span = u32::from(last - first);
                    if width >= span {
                        (first, last)
                    } else {
                        let start = u32::from(first) + r.range(0, span - width);
                        (start as u16, (start + width) as u16)
                    }
                }
            };
        }
    }
    let rules: Vec<PortRule> = draws
        .iter()
        .zip(ranges)
        .map(|(d, (first, last))| PortRule {
            vip: match scope_of(d, vips.len()) {
                0 => RuleVip::All,
                s => RuleVip::Addr(vips[s - 1]),
            },
            first_port: first,
            last_port: last,
            protocol: d.protocol,
            mode: d.mode,
            affinity: d.affinity,
        })
        .collect();
    // The configuration's own rule: no two rules overlap for the same VIP and protocol.
    for (i, a) in rules.iter().enumerate() {
        for b in &rules[..i] {
            let ports = a.first_port <= b.last_port && b.first_port <= a.last_port;
            assert!(
                !(a.vip == b.vip && ports && a.protocol.overlaps(b.protocol)),
                "generator made overlapping rules {a:?} {b:?}"
            );
        }
    }
    rules
}

prop_compose! {
    fn cluster_strategy()(
        cluster_octet in 1u8..=60,
        extra_v6 in prop::collection::vec(any::<bool>(), 0..=2),
        draws in prop::collection::vec(rule_draw(), 1..=8),
        layout_seed in any::<u64>(),
        // Mostly small clusters (every host builds its own table, which is slow in debug
        // builds), up to the full 32.
        live in prop_oneof![
            3 => prop::collection::btree_set(1u8..=32, 1..=6),
            1 => prop::collection::btree_set(1u8..=32, 7..=32),
        ],
        weights in prop::collection::vec(prop::array::uniform8(0u8..=100), 32),
        handling in prop::collection::vec(Just((1u8..=32).collect::<Vec<u8>>()).prop_shuffle(), 8),
        stopped_count in 0usize..=2,
        max_connections in prop_oneof![Just(0usize), Just(4), Just(1024)],
        short_timeouts in any::<bool>(),
    ) -> Cluster {
        let cluster_ip = Ipv4Addr::new(192, 0, 2, cluster_octet);
        // The primary cluster IP, one IPv6 VIP, then up to two more of either family.
        let mut vips = vec![
            IpAddr::V4(cluster_ip),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10)),
        ];
        for (i, v6) in extra_v6.iter().enumerate() {
            vips.push(if *v6 {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11 + i as u16))
            } else {
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 61 + i as u8))
            });
        }
        let rules = layout_rules(&vips, &draws, layout_seed);
        let members = live
            .iter()
            .map(|&p| Member {
                priority: p,
                load_weights: draws
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match d.weight_style {
                        2 => 0,
                        3 => 50,
                        _ => weights[usize::from(p) - 1][i],
                    })
                    .collect(),
                handling_priorities: (0..draws.len())
                    .map(|i| handling[i][usize::from(p) - 1])
                    .collect(),
            })
            .collect();
        let stopped = (1u8..=32)
            .filter(|p| !live.contains(p))
            .take(stopped_count)
            .collect();
        Cluster {
            cluster_ip,
            vips,
            rules,
            members,
            stopped,
            max_connections,
            short_timeouts,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic.

/// What must happen to a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Addressed to a VIP: accepted by exactly this live member, or dropped by every host
    /// (`None`: a disabled rule).
    Vip(Option<u8>),
    /// Not addressed to a VIP: passed by every host.
    PassAll,
    /// Malformed: any verdicts, but never accepted by two hosts.
    AtMostOne,
}

#[derive(Debug, Clone)]
struct Item {
    /// What follows the Ethernet header (and tags); the whole frame when `raw`.
    bytes: Vec<u8>,
    ethertype: EtherType,
    raw: bool,
    /// The tags this frame carries in tagged runs.
    vlan: Vlan,
    expect: Expect,
    /// Frames that must all go to one host: a flow's packets and the ICMP errors about it,
    /// or one datagram's fragments (in whatever order they come).
    group: Option<usize>,
    what: String,
}

impl Item {
    fn frame(&self, tagged: bool) -> Vec<u8> {
        if self.raw {
            return self.bytes.clone();
        }
        let vlan = if tagged { self.vlan } else { Vlan::Untagged };
        frames::ethernet(vlan, self.ethertype, &self.bytes)
    }
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    client: IpAddr,
    cport: u16,
    vip: IpAddr,
    sport: u16,
    tcp: bool,
    owner: Option<u8>,
}

impl Flow {
    fn describe(&self) -> String {
        format!(
            "{} {}:{} -> {}:{}",
            if self.tcp { "tcp" } else { "udp" },
            self.client,
            self.cport,
            self.vip,
            self.sport
        )
    }
}

struct Traffic<'a> {
    c: &'a Cluster,
    a: &'a Assignment,
    r: Rng,
    groups: usize,
    ident: u32,
    seqs: Vec<VecDeque<Item>>,
    /// The datagrams sent so far, in a fragment table like the filter's: a new datagram gets
    /// an identification whose key shares no slot with theirs. (The filter's table is
    /// direct-mapped and a collision evicts the older datagram by design.)
    datagrams: FragmentTable,
    datagram_keys: Vec<DatagramKey>,
}

impl<'a> Traffic<'a> {
    fn new(c: &'a Cluster, a: &'a Assignment, seed: u64) -> Traffic<'a> {
        Traffic {
            c,
            a,
            r: Rng(seed),
            groups: 0,
            ident: 0x100,
            seqs: Vec::new(),
            datagrams: FragmentTable::default(),
            datagram_keys: Vec::new(),
        }
    }

    fn vlan(&mut self) -> Vlan {
        match self.r.below(10) {
            0..=3 => Vlan::Untagged,
            4..=6 => Vlan::Dot1Q(self.r.range(1, 4094) as u16),
            _ => Vlan::QinQ {
                outer: self.r.range(1, 4094) as u16,
                inner: self.r.range(1, 4094) as u16,
            },
        }
    }

    fn item(&mut self, bytes: Vec<u8>, expect: Expect, group: Option<usize>, what: String) -> Item {
        let ethertype = match bytes.first().map(|b| b >> 4) {
            Some(6) => EtherType::IPV6,
            _ => EtherType::IPV4,
        };
        Item {
            bytes,
            ethertype,
            raw: false,
            vlan: self.vlan(),
            expect,
            group,
            what,
        }
    }

    fn group(&mut self) -> usize {
        self.groups += 1;
        self.groups
    }

    fn client(&mut self, family_of: IpAddr) -> IpAddr {
        match family_of {
            IpAddr::V4(_) => {
                let net = *self.r.pick(&[0xc633_6400u32, 0xcb00_7100, 0x0a00_0000]);
                let host = if net == 0x0a00_0000 {
                    self.r.range(0, 0x00ff_ffff)
                } else {
                    self.r.range(2, 254)
                };
                IpAddr::V4(Ipv4Addr::from(net | host))
            }
            IpAddr::V6(_) => {
                let base = u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0xc000, 0, 0, 0, 0, 0));
                let bits = (u128::from(self.r.next()) << 64 | u128::from(self.r.next()))
                    & ((1u128 << 92) - 1);
                IpAddr::V6(Ipv6Addr::from(base | bits))
            }
        }
    }

    /// A VIP, transport and server port: often inside or just outside a rule's range.
    fn target(&mut self, tcp: Option<bool>) -> (IpAddr, bool, u16) {
        let c = self.c;
        let choice = self.r.below(100);
        if choice < 60 {
            let rule = self.r.pick(&c.rules).clone();
            let tcp = tcp.unwrap_or(match rule.protocol {
                Protocol::Tcp => true,
                Protocol::Udp => false,
                Protocol::Both => self.r.chance(50),
            });
            let vip = match rule.vip {
                RuleVip::Addr(v) => v,
                RuleVip::All => *self.r.pick(&c.vips),
            };
            let port = if choice < 45 {
                match self.r.below(4) {
                    0 => rule.first_port,
                    1 => rule.last_port,
                    _ => self
                        .r
                        .range(u32::from(rule.first_port), u32::from(rule.last_port))
                        as u16,
                }
            } else if self.r.chance(50) {
                rule.first_port.wrapping_sub(1)
            } else {
                rule.last_port.wrapping_add(1)
            };
            (vip, tcp, port)
        } else {
            let vip = *self.r.pick(&c.vips);
            let tcp = tcp.unwrap_or(self.r.chance(50));
            let port = match self.r.below(3) {
                0 => *self.r.pick(&[80, 443, 53, 0, 65535]),
                _ => self.r.next() as u16,
            };
            (vip, tcp, port)
        }
    }

    fn flow(&mut self, tcp: Option<bool>) -> Flow {
        let (vip, tcp, sport) = self.target(tcp);
        let client = self.client(vip);
        let cport = self.r.range(1, 65535) as u16;
        Flow {
            client,
            cport,
            vip,
            sport,
            tcp,
            owner: self.c.owner(self.a, client, cport, vip, sport, tcp),
        }
    }

    /// An IP packet, sometimes with IPv4 options or an IPv6 extension header in front of
    /// the upper layer.
    fn packet(&mut self, src: IpAddr, dst: IpAddr, protocol: IpProtocol, l4: &[u8]) -> Vec<u8> {
        let ident = self.r.next() as u16;
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) if self.r.chance(20) => {
                frames::ipv4_with_options(s, d, protocol, ident, &[1, 1, 1, 0], l4)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) if self.r.chance(20) => {
                let mut p = frames::ipv6_options_header(protocol);
                p.extend_from_slice(l4);
                let first = if self.r.chance(50) {
                    IpProtocol::HOP_BY_HOP
                } else {
                    IpProtocol::IPV6_DEST_OPTS
                };
                frames::ipv6_packet(s, d, first, &p)
            }
            _ => frames::ip(src, dst, protocol, ident, l4),
        }
    }

    fn tcp_packet(&mut self, f: &Flow, flags: Flags, payload: &[u8]) -> Vec<u8> {
        let seq = self.r.next() as u32;
        let l4 = frames::tcp_segment(f.client, f.vip, f.cport, f.sport, flags, seq, payload);
        self.packet(f.client, f.vip, IpProtocol::TCP, &l4)
    }

    fn udp_packet(&mut self, f: &Flow, payload: &[u8]) -> Vec<u8> {
        let l4 = frames::udp_datagram(f.client, f.vip, f.cport, f.sport, payload);
        self.packet(f.client, f.vip, IpProtocol::UDP, &l4)
    }

    /// An ICMP error about `f`: it quotes a packet the VIP sent to the client.
    fn icmp_error_about(&mut self, f: &Flow) -> Vec<u8> {
        let original = if f.tcp {
            frames::tcp(
                f.vip,
                f.client,
                f.sport,
                f.cport,
                Flags::ACK | Flags::PSH,
                9,
                &[5; 40],
            )
        } else {
            frames::udp(f.vip, f.client, f.sport, f.cport, &[5; 40])
        };
        let sender = if self.r.chance(50) {
            f.client
        } else {
            match f.vip {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 254)),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1)),
            }
        };
        let kind = *self.r.pick(&[
            IcmpError::PortUnreachable,
            IcmpError::PacketTooBig,
            IcmpError::TimeExceeded,
        ]);
        frames::icmp_error(sender, f.vip, kind, &original)
    }

    fn tcp_flow(&mut self) {
        let f = self.flow(Some(true));
        let g = self.group();
        let e = Expect::Vip(f.owner);
        let d = f.describe();
        let mut seq = VecDeque::new();
        let syn = self.tcp_packet(&f, Flags::SYN, b"");
        seq.push_back(self.item(syn, e, Some(g), format!("SYN {d}")));
        let mut later = Vec::new();
        for _ in 0..self.r.below(4) {
            let p = self.tcp_packet(&f, Flags::ACK | Flags::PSH, b"GET / HTTP/1.1\r\n\r\n");
            later.push(self.item(p, e, Some(g), format!("data {d}")));
        }
        if self.r.chance(40) {
            let p = self.icmp_error_about(&f);
            let at = self.r.below(later.len() + 1);
            later.insert(
                at,
                self.item(p, e, Some(g), format!("ICMP error about {d}")),
            );
        }
        match self.r.below(3) {
            0 => {
                let p = self.tcp_packet(&f, Flags::FIN | Flags::ACK, b"");
                later.push(self.item(p, e, Some(g), format!("FIN {d}")));
                let p = self.tcp_packet(&f, Flags::ACK, b"");
                later.push(self.item(p, e, Some(g), format!("last ACK {d}")));
            }
            1 => {
                let p = self.tcp_packet(&f, Flags::RST, b"");
                later.push(self.item(p, e, Some(g), format!("RST {d}")));
                if self.r.chance(50) {
                    let p = self.tcp_packet(&f, Flags::ACK, b"");
                    later.push(self.item(p, e, Some(g), format!("ACK after RST {d}")));
                }
            }
            _ => {}
        }
        seq.extend(later);
        self.seqs.push(seq);
    }

    /// Segments of a connection whose SYN this cluster never saw (it began before).
    fn tcp_midstream(&mut self) {
        let f = self.flow(Some(true));
        let g = self.group();
        let d = f.describe();
        let mut seq = VecDeque::new();
        for _ in 0..self.r.range(1, 3) {
            let p = self.tcp_packet(&f, Flags::ACK, b"more");
            seq.push_back(self.item(p, Expect::Vip(f.owner), Some(g), format!("mid-stream {d}")));
        }
        self.seqs.push(seq);
    }

    fn udp_flow(&mut self) {
        let f = self.flow(Some(false));
        let g = self.group();
        let e = Expect::Vip(f.owner);
        let d = f.describe();
        let mut seq = VecDeque::new();
        for _ in 0..self.r.range(1, 3) {
            let p = self.udp_packet(&f, b"query");
            seq.push_back(self.item(p, e, Some(g), format!("datagram {d}")));
        }
        if self.r.chance(40) {
            let p = self.icmp_error_about(&f);
            seq.push_back(self.item(p, e, Some(g), format!("ICMP error about {d}")));
        }
        self.seqs.push(seq);
    }

    /// One datagram in fragments, shuffled.
    fn fragmented(&mut self) {
        let tcp = !self.r.chance(75);
        let f = self.flow(Some(tcp));
        let g = self.group();
        let d = f.describe();
        let payload: Vec<u8> = (0..self.r.range(40, 200)).map(|i| i as u8).collect();
        let l4 = if f.tcp {
            frames::tcp_segment(f.client, f.vip, f.cport, f.sport, Flags::ACK, 1, &payload)
        } else {
            frames::udp_datagram(f.client, f.vip, f.cport, f.sport, &payload)
        };
        let protocol_of = if f.tcp {
            IpProtocol::TCP
        } else {
            IpProtocol::UDP
        };
        loop {
            self.ident += 1;
            let key = datagram_key(f.client, f.vip, self.ident, protocol_of);
            self.datagrams
                .record(key, Verdict::Pass(Reason::Fragment), 0);
            if self
                .datagram_keys
                .iter()
                .all(|k| self.datagrams.lookup(k, 0).is_some())
            {
                self.datagram_keys.push(key);
                break;
            }
            // It evicted one: put that one back and try another identification.
            for k in &self.datagram_keys {
                self.datagrams
                    .record(*k, Verdict::Pass(Reason::Fragment), 0);
            }
        }
        let chunk = self.r.range(16, 64) as usize;
        let mut parts = match (f.client, f.vip) {
            (IpAddr::V6(s), IpAddr::V6(v)) => {
                let hop_by_hop = self.r.chance(30);
                frames::ipv6_fragments(s, v, hop_by_hop, protocol_of, self.ident, &l4, chunk)
            }
            _ => frames::fragments(f.client, f.vip, protocol_of, self.ident, &l4, chunk),
        };
        self.r.shuffle(&mut parts);
        let n = parts.len();
        let seq = parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                self.item(
                    p,
                    Expect::Vip(f.owner),
                    Some(g),
                    format!("fragment {i}/{n} of {d}"),
                )
            })
            .collect();
        self.seqs.push(seq);
    }

    fn single(&mut self, item: Item) {
        self.seqs.push(VecDeque::from([item]));
    }

    /// ICMP echo and other protocols to a VIP: the default host answers.
    fn for_the_default_host(&mut self) {
        let vip = *self.r.pick(&self.c.vips);
        let client = self.client(vip);
        let e = Expect::Vip(Some(self.c.default_host()));
        let (p, what) = match self.r.below(3) {
            0 | 1 => (frames::icmp_echo(client, vip, 7, 1), "echo request"),
            _ => (self.packet(client, vip, IpProtocol::GRE, &[0; 24]), "GRE"),
        };
        let item = self.item(p, e, None, format!("{what} {client} -> {vip}"));
        self.single(item);
    }

    /// ICMP errors that are not about a flow of this VIP: the default host takes them.
    fn unrelated_icmp_error(&mut self) {
        let vip = *self.r.pick(&self.c.vips);
        let client = self.client(vip);
        let original = if self.r.chance(50) {
            // Quotes a packet from another address.
            let from = match vip {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 199)),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x199)),
            };
            frames::udp(from, client, 53, 4000, b"answer")
        } else {
            // Quotes an echo reply.
            frames::icmp_echo(vip, client, 1, 1)
        };
        let p = frames::icmp_error(client, vip, IcmpError::PortUnreachable, &original);
        let e = Expect::Vip(Some(self.c.default_host()));
        let item = self.item(p, e, None, format!("unrelated ICMP error to {vip}"));
        self.single(item);
    }

    /// Frames every host passes: to a dedicated IP, to other addresses, not IP at all.
    fn not_for_a_vip(&mut self) {
        let c = self.c;
        let hosts: Vec<u8> = c
            .members
            .iter()
            .map(|m| m.priority)
            .chain(c.stopped.iter().copied())
            .collect();
        let (dst, what) = match self.r.below(3) {
            0 => {
                let arp = frames::arp_request(Ipv4Addr::new(192, 0, 2, 1), c.cluster_ip);
                let mut item = self.item(arp, Expect::PassAll, None, "ARP".into());
                item.ethertype = EtherType::ARP;
                self.single(item);
                return;
            }
            1 => (dedicated_ip(*self.r.pick(&hosts)), "dedicated IP"),
            _ => (*self.r.pick(&other_addresses()), "other address"),
        };
        let client = self.client(dst);
        let port = self.r.next() as u16;
        let p = if self.r.chance(50) {
            frames::tcp(client, dst, 40000, port, Flags::SYN, 1, b"")
        } else {
            frames::udp(client, dst, 40000, port, b"x")
        };
        let item = self.item(p, Expect::PassAll, None, format!("{what} {dst}"));
        self.single(item);
    }

    fn malformed(&mut self) {
        let f = self.flow(None);
        let d = f.describe();
        let (bytes, what) = match self.r.below(7) {
            0 => {
                let p = if f.tcp {
                    self.tcp_packet(&f, Flags::SYN, b"")
                } else {
                    self.udp_packet(&f, b"query")
                };
                let cut = self.r.below(p.len());
                (p[..cut].to_vec(), format!("truncated to {cut} bytes: {d}"))
            }
            1 => {
                let l4 = frames::tcp_segment(f.client, f.vip, f.cport, f.sport, Flags::SYN, 1, b"");
                (
                    frames::ip(f.client, f.vip, IpProtocol::TCP, 1, &l4[..10]),
                    format!("10-byte TCP header: {d}"),
                )
            }
            2 => {
                let l4 = frames::udp_datagram(f.client, f.vip, f.cport, f.sport, b"");
                (
                    frames::ip(f.client, f.vip, IpProtocol::UDP, 1, &l4[..6]),
                    format!("6-byte UDP header: {d}"),
                )
            }
            3 => {
                let mut p = self.udp_packet(&f, b"query");
                p[0] = if f.vip.is_ipv4() { 0x44 } else { 0x46 };
                (p, format!("bad header length / version: {d}"))
            }
            4 => {
                let msg = [3u8, 3, 0, 0, 0, 0, 0, 0, 0x45, 1, 2, 3, 4];
                (
                    frames::ip(f.client, f.vip, frames::icmp_protocol(f.vip), 1, &msg),
                    format!("ICMP error quoting garbage: {d}"),
                )
            }
            5 => {
                let p = self.udp_packet(&f, b"query");
                let frame = frames::ip_frame(Vlan::Untagged, &p);
                let cut = self.r.below(14);
                let mut item = self.item(
                    frame[..cut].to_vec(),
                    Expect::AtMostOne,
                    None,
                    format!("Ethernet header cut at {cut}"),
                );
                item.raw = true;
                self.single(item);
                return;
            }
            _ => {
                let p = self.udp_packet(&f, b"query");
                let frame = frames::ip_frame(Vlan::QinQ { outer: 5, inner: 6 }, &p);
                let cut = 14 + self.r.below(8);
                let mut item = self.item(
                    frame[..cut].to_vec(),
                    Expect::AtMostOne,
                    None,
                    format!("VLAN tags cut at {cut}"),
                );
                item.raw = true;
                self.single(item);
                return;
            }
        };
        let item = self.item(bytes, Expect::AtMostOne, None, what);
        self.single(item);
    }

    /// About `frames` frames of every kind, flows and datagrams interleaved at random.
    fn generate(mut self, frames: usize) -> Vec<Item> {
        let mut total = 0;
        while total < frames {
            match self.r.below(20) {
                0..=5 => self.tcp_flow(),
                6 => self.tcp_midstream(),
                7..=9 => self.udp_flow(),
                10..=12 => self.fragmented(),
                13 => self.for_the_default_host(),
                14 => self.unrelated_icmp_error(),
                15 | 16 => self.not_for_a_vip(),
                _ => self.malformed(),
            }
            total += self.seqs.last().map_or(0, |s| s.len());
        }
        // Interleave, keeping each sequence's own order.
        let mut out = Vec::with_capacity(total);
        let mut seqs = std::mem::take(&mut self.seqs);
        while !seqs.is_empty() {
            let i = self.r.below(seqs.len());
            out.push(seqs[i].pop_front().expect("non-empty"));
            if seqs[i].is_empty() {
                seqs.swap_remove(i);
            }
        }
        out
    }
}

/// The key the filter files a datagram's fragments under.
fn datagram_key(src: IpAddr, dst: IpAddr, ident: u32, protocol: IpProtocol) -> DatagramKey {
    let addr = |a: IpAddr| match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    DatagramKey {
        src: addr(src),
        dst: addr(dst),
        id: if src.is_ipv4() { ident & 0xffff } else { ident },
        // RFC 8200 reassembly keys carry no protocol.
        protocol: if src.is_ipv4() { protocol.0 } else { 0 },
    }
}

// ---------------------------------------------------------------------------------------------
// Simulation: every frame to every host, held fragments released as the worker does.

/// The final verdict of every frame on every host: `[frame][host]`.
fn simulate(c: &Cluster, tables: &[(u8, FilterTable)], frames: &[Vec<u8>]) -> Vec<Vec<Verdict>> {
    let timeouts = if c.short_timeouts {
        Timeouts {
            tcp_idle_ms: 20,
            tcp_close_wait_ms: 5,
            udp_idle_ms: 10,
        }
    } else {
        Timeouts::default()
    };
    let mut out = vec![vec![Verdict::Hold; tables.len()]; frames.len()];
    for (h, (priority, table)) in tables.iter().enumerate() {
        let mut filter = Filter::new(c.max_connections, timeouts, u64::from(*priority) * 0x9e37);
        let mut held: HeldFragments<usize> = HeldFragments::default();
        let mut now = 1_000_000u32;
        for (i, frame) in frames.iter().enumerate() {
            if i % 4 == 0 {
                now += 1;
                filter.expire(now, 64);
            }
            let d = filter.classify(table, frame, now);
            match d.verdict {
                Verdict::Hold => {
                    let key = filter.held_datagram();
                    if held.hold(key, i, now).is_err() {
                        out[i][h] = Verdict::Drop(Reason::FragmentOverflow);
                    }
                }
                v => out[i][h] = v,
            }
            held.release(filter.fragments(), now, |j, v| {
                out[j][h] = match v {
                    Some(Verdict::Accept(_)) => Verdict::Accept(Reason::Fragment),
                    Some(Verdict::Pass(_)) => Verdict::Pass(Reason::Fragment),
                    Some(other) => other,
                    None => Verdict::Drop(Reason::FragmentTimeout),
                };
            });
        }
        held.drain(|j| out[j][h] = Verdict::Drop(Reason::FragmentTimeout));
    }
    out
}

fn describe_verdicts(hosts: &[u8], verdicts: &[Verdict]) -> String {
    hosts
        .iter()
        .zip(verdicts)
        .filter(|(_, v)| !matches!(v, Verdict::Drop(Reason::NotOwned)))
        .map(|(h, v)| format!("{h}:{v:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks every frame's verdicts against what it must get.
fn check(hosts: &[u8], items: &[Item], verdicts: &[Vec<Verdict>]) -> Result<(), TestCaseError> {
    let mut group_owner: BTreeMap<usize, (Vec<u8>, &str)> = BTreeMap::new();
    for (item, v) in items.iter().zip(verdicts) {
        let accepted: Vec<u8> = hosts
            .iter()
            .zip(v)
            .filter(|(_, v)| matches!(v, Verdict::Accept(_)))
            .map(|(h, _)| *h)
            .collect();
        let all = || describe_verdicts(hosts, v);
        match item.expect {
            Expect::Vip(owner) => {
                let want: Vec<u8> = owner.into_iter().collect();
                prop_assert_eq!(
                    &accepted,
                    &want,
                    "{}: accepted by {:?}, expected {:?}; verdicts {}",
                    item.what,
                    accepted,
                    want,
                    all()
                );
                prop_assert!(
                    v.iter()
                        .all(|v| matches!(v, Verdict::Accept(_) | Verdict::Drop(_))),
                    "{}: a VIP frame was passed or held; verdicts {}",
                    item.what,
                    all()
                );
            }
            Expect::PassAll => prop_assert!(
                v.iter().all(|v| matches!(v, Verdict::Pass(_))),
                "{}: not passed by every host; verdicts {}",
                item.what,
                all()
            ),
            Expect::AtMostOne => prop_assert!(
                accepted.len() <= 1,
                "{}: accepted by {:?}; verdicts {}",
                item.what,
                accepted,
                all()
            ),
        }
        if let Some(g) = item.group {
            match group_owner.get(&g) {
                None => {
                    group_owner.insert(g, (accepted, &item.what));
                }
                Some((first, first_what)) => prop_assert_eq!(
                    &accepted,
                    first,
                    "{} went to {:?}, but {} went to {:?}",
                    item.what,
                    accepted,
                    first_what,
                    first
                ),
            }
        }
    }
    Ok(())
}

fn host_priorities(tables: &[(u8, FilterTable)]) -> Vec<u8> {
    tables.iter().map(|(p, _)| *p).collect()
}

// ---------------------------------------------------------------------------------------------
// The properties.

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// TCP (SYN, data, FIN/RST), UDP, ICMP echo and errors, fragments in shuffled order,
    /// IPv4 and IPv6, tagged and untagged, to VIPs, dedicated IPs and other addresses.
    #[test]
    fn every_vip_packet_is_accepted_by_exactly_one_live_member(
        c in cluster_strategy(),
        traffic_seed in any::<u64>(),
        count in 150usize..=300,
    ) {
        let a = c.assignment();
        let items = Traffic::new(&c, &a, traffic_seed).generate(count);
        let tables = c.tables(&a, 1);
        let frames: Vec<Vec<u8>> = items.iter().map(|i| i.frame(true)).collect();
        let verdicts = simulate(&c, &tables, &frames);
        check(&host_priorities(&tables), &items, &verdicts)?;
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn vlan_tagged_frames_get_the_same_verdicts_as_untagged_ones(
        c in cluster_strategy(),
        traffic_seed in any::<u64>(),
        count in 100usize..=200,
    ) {
        let a = c.assignment();
        // Without malformed frames: a cut packet padded to the minimum frame size is not the
        // same bytes tagged and untagged (the padding may complete it in one and not in the
        // other), so it may leave different state behind.
        let items: Vec<Item> = Traffic::new(&c, &a, traffic_seed)
            .generate(count)
            .into_iter()
            .filter(|i| i.expect != Expect::AtMostOne)
            .collect();
        let tables = c.tables(&a, 1);
        let untagged: Vec<Vec<u8>> = items.iter().map(|i| i.frame(false)).collect();
        let tagged: Vec<Vec<u8>> = items.iter().map(|i| i.frame(true)).collect();
        let plain = simulate(&c, &tables, &untagged);
        let with_tags = simulate(&c, &tables, &tagged);
        check(&host_priorities(&tables), &items, &plain)?;
        for (i, item) in items.iter().enumerate() {
            prop_assert_eq!(&plain[i], &with_tags[i], "{} tagged {:?}", item.what, item.vlan);
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Probes every bucket of every multiple-host rule through the filter.
    #[test]
    fn members_share_multiple_host_buckets_by_load_weight(c in cluster_strategy()) {
        let a = c.assignment();
        let tables = c.tables(&a, 1);
        let hosts = host_priorities(&tables);
        let seed = hash::seed(c.cluster_ip);
        for (i, rule) in c.rules.iter().enumerate() {
            if rule.mode != Mode::Multiple {
                continue;
            }
            let tcp = rule.protocol.covers_tcp();
            // A VIP and port this rule decides (a VIP's own rules may shadow an "all" rule).
            let vips: Vec<IpAddr> = match rule.vip {
                RuleVip::Addr(v) => vec![v],
                RuleVip::All => c.vips.clone(),
            };
            let mid = ((u32::from(rule.first_port) + u32::from(rule.last_port)) / 2) as u16;
            let target = vips.iter().flat_map(|&v| {
                [rule.first_port, mid, rule.last_port].map(move |p| (v, p))
            }).find(|&(v, p)| c.rule_for(v, tcp, p) == Some(i));
            let Some((vip, sport)) = target else { continue };
            // A client in every bucket.
            let mut probes: Vec<Option<(IpAddr, u16)>> = vec![None; BUCKETS];
            for j in 0u32..200_000 {
                let client = match vip {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (j << 8) | (j & 0xff))),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(
                        u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0xc000, 0, 0, 0, 0, 0))
                            | (u128::from(j) << 72) | u128::from(j),
                    )),
                };
                let cport = 1024 + (j % 60_000) as u16;
                let b = usize::from(hash::bucket(seed, rule.affinity, client, cport, sport));
                probes[b].get_or_insert((client, cport));
                if probes.iter().all(Option::is_some) {
                    break;
                }
            }
            let frames: Vec<Vec<u8>> = probes
                .iter()
                .map(|p| {
                    let (client, cport) = p.expect("a client for every bucket");
                    let packet = if tcp {
                        frames::tcp(client, vip, cport, sport, Flags::SYN, 1, b"")
                    } else {
                        frames::udp(client, vip, cport, sport, b"x")
                    };
                    frames::ip_frame(Vlan::Untagged, &packet)
                })
                .collect();
            let verdicts = simulate(&c, &tables, &frames);
            let mut share: BTreeMap<u8, u32> = BTreeMap::new();
            for (b, v) in verdicts.iter().enumerate() {
                let accepted: Vec<u8> = hosts
                    .iter()
                    .zip(v)
                    .filter(|(_, v)| matches!(v, Verdict::Accept(_)))
                    .map(|(h, _)| *h)
                    .collect();
                prop_assert_eq!(accepted.len(), 1, "rule {} bucket {} accepted by {:?}", i, b, accepted);
                prop_assert_eq!(accepted[0], a.rules[i].owners[b]);
                *share.entry(accepted[0]).or_default() += 1;
            }
            let weights = c.weights(i);
            let total: u32 = weights.iter().map(|(_, w)| u32::from(*w)).sum();
            for (p, w) in weights {
                let exact = if total == 0 {
                    BUCKETS as f64 / c.members.len() as f64
                } else {
                    BUCKETS as f64 * f64::from(w) / f64::from(total)
                };
                let got = f64::from(share.get(&p).copied().unwrap_or(0));
                prop_assert!(
                    (got - exact).abs() < 1.0,
                    "rule {} member {} weight {} of {}: {} buckets, expected {:.2}",
                    i, p, w, total, got, exact
                );
            }
            for p in &c.stopped {
                prop_assert!(!share.contains_key(p), "stopped host {} took buckets", p);
            }
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Valid frames with bytes flipped, cut or appended, and random bytes: no panic, and no
    /// frame reaches two hosts.
    #[test]
    fn garbage_frames_never_panic_nor_reach_two_members(
        c in cluster_strategy(),
        traffic_seed in any::<u64>(),
        mutation_seed in any::<u64>(),
    ) {
        let a = c.assignment();
        let items = Traffic::new(&c, &a, traffic_seed).generate(120);
        let mut r = Rng(mutation_seed);
        let frames: Vec<Vec<u8>> = items
            .iter()
            .map(|item| {
                let mut f = item.frame(r.chance(50));
                match r.below(5) {
                    0 => {
                        for _ in 0..r.range(1, 4) {
                            let at = r.below(f.len().max(1));
                            if let Some(b) = f.get_mut(at) {
                                *b ^= 1 << r.below(8);
                            }
                        }
                    }
                    1 => {
                        let at = r.below(f.len().max(1));
                        if let Some(b) = f.get_mut(at) {
                            *b = r.next() as u8;
                        }
                    }
                    2 => f.truncate(r.below(f.len() + 1)),
                    3 => f.extend((0..r.below(40)).map(|_| r.next() as u8)),
                    _ => f = (0..r.below(120)).map(|_| r.next() as u8).collect(),
                }
                f
            })
            .collect();
        let tables = c.tables(&a, 1);
        let hosts = host_priorities(&tables);
        let verdicts = simulate(&c, &tables, &frames);
        for (i, v) in verdicts.iter().enumerate() {
            let accepted = v.iter().filter(|v| matches!(v, Verdict::Accept(_))).count();
            prop_assert!(
                accepted <= 1,
                "frame {} {:02x?} accepted by {} hosts: {}",
                i,
                frames[i],
                accepted,
                describe_verdicts(&hosts, v)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Table swaps under traffic.

/// One worker of host 2 classifies a stream in bursts of 32, loading the published table once
/// per burst as `worker::filter_inbound` does, while the control thread publishes tables for
/// two member sets, alternately, thousands of times. Odd generations are member set A
/// ({1, 2}: host 2 owns half the buckets, is not the default host nor the single-host
/// handler), even ones set B ({2, 3, 4}: a third of the buckets, default host, handler).
#[test]
fn table_swaps_under_traffic_judge_each_burst_by_one_table_and_lose_no_frame() {
    const ME: u8 = 2;
    const BURST: usize = 32;
    const MIN_SWAPS: usize = 2000;
    let v4 = Ipv4Addr::new(192, 0, 2, 10);
    let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
    let rule = |vip, first, last, protocol, mode, affinity| PortRule {
        vip,
        first_port: first,
        last_port: last,
        protocol,
        mode,
        affinity,
    };
    let rules = vec![
        rule(
            RuleVip::All,
            0,
            1023,
            Protocol::Both,
            Mode::Multiple,
            Affinity::None,
        ),
        rule(
            RuleVip::All,
            8000,
            8099,
            Protocol::Tcp,
            Mode::Single,
            Affinity::Single,
        ),
        rule(
            RuleVip::Addr(v6.into()),
            5000,
            5999,
            Protocol::Udp,
            Mode::Multiple,
            Affinity::Single,
        ),
        rule(
            RuleVip::All,
            9000,
            9000,
            Protocol::Both,
            Mode::Disabled,
            Affinity::Single,
        ),
    ];
    let members = |set: &[u8]| -> Vec<Member> {
        set.iter()
            .map(|&p| Member {
                priority: p,
                load_weights: vec![50; rules.len()],
                handling_priorities: vec![p; rules.len()],
            })
            .collect()
    };
    let cluster = |set: &[u8]| Cluster {
        cluster_ip: v4,
        vips: vec![v4.into(), v6.into()],
        rules: rules.clone(),
        members: members(set),
        stopped: vec![],
        max_connections: 4096,
        short_timeouts: false,
    };
    let sets = [cluster(&[1, 2]), cluster(&[2, 3, 4])];
    let assignments = [sets[0].assignment(), sets[1].assignment()];
    let spec = sets[0].spec_for(ME);
    // The tables the control thread publishes, by generation: set A's when odd, B's when
    // even. Prebuilt (a table takes milliseconds to build in a debug build) and stored in
    // turn, so every swap publishes a different table.
    let pool: Vec<Arc<FilterTable>> = (1..=8u64)
        .map(|g| {
            let s = (1 - g % 2) as usize;
            let a = &assignments[s];
            Arc::new(FilterTable::new(
                &spec,
                &a.ownership_of(ME),
                a.default_host == Some(ME),
                true,
                g,
            ))
        })
        .collect();
    let set_of = |generation: u64| (1 - generation % 2) as usize;

    // The stream: flows, echo, non-VIP frames, and shuffled fragments, about 4,000 frames.
    let items = Traffic::new(&sets[0], &assignments[0], 0x5eed).generate(4000);
    // What host 2 does with each frame under set A and set B. Fragments follow their first
    // fragment, whichever table judged it: they are only counted.
    let expected: Vec<Option<[bool; 2]>> = items
        .iter()
        .map(|item| {
            let fragment = item.what.starts_with("fragment");
            match item.expect {
                Expect::Vip(_) if !fragment => {
                    let owner_in = |s: usize| recompute_owner(&sets[s], &assignments[s], item);
                    Some([owner_in(0) == Some(ME), owner_in(1) == Some(ME)])
                }
                _ => None,
            }
        })
        .collect();
    let frames: Vec<Vec<u8>> = items.iter().map(|i| i.frame(true)).collect();

    let published = Arc::new(ArcSwap::new(Arc::clone(&pool[0])));
    let swaps = Arc::new(AtomicUsize::new(0));
    let classifier_done = Arc::new(AtomicBool::new(false));

    let swapper = {
        let published = Arc::clone(&published);
        let swaps = Arc::clone(&swaps);
        let done = Arc::clone(&classifier_done);
        let pool = pool.clone();
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !(done.load(Ordering::Acquire) && n >= MIN_SWAPS) {
                n += 1;
                published.store(Arc::clone(&pool[n % pool.len()]));
                swaps.store(n, Ordering::Release);
                std::thread::yield_now();
            }
            n
        })
    };

    // The worker.
    let mut filter = Filter::new(65536, Timeouts::default(), 7);
    let mut held: HeldFragments<usize> = HeldFragments::default();
    let mut now = 1_000_000u32;
    let mut passes = 0usize;
    let mut processed = 0usize;
    let mut final_verdicts = 0usize;
    let mut generations_seen = BTreeSet::new();
    let mut sets_seen = [false; 2];
    let mut mismatches = Vec::new();
    loop {
        let mut verdicts_this_pass = vec![0u8; frames.len()];
        for (b, burst) in frames.chunks(BURST).enumerate() {
            now += 1;
            let table = published.load();
            let generation = table.generation;
            generations_seen.insert(generation);
            sets_seen[set_of(generation)] = true;
            for (k, frame) in burst.iter().enumerate() {
                let i = b * BURST + k;
                let d = filter.classify(&table, frame, now);
                processed += 1;
                match d.verdict {
                    Verdict::Hold => {
                        let key = filter.held_datagram();
                        held.hold(key, i, now).expect("room to hold");
                    }
                    v => {
                        final_verdicts += 1;
                        verdicts_this_pass[i] += 1;
                        if let Some(want) = expected[i] {
                            let accepted = matches!(v, Verdict::Accept(_));
                            if accepted != want[set_of(generation)] {
                                mismatches.push(format!(
                                    "{} under generation {generation}: {v:?}",
                                    items[i].what
                                ));
                            }
                        }
                    }
                }
            }
            // Held fragments are released after the burst, as the worker does.
            held.release(filter.fragments(), now, |i, v| {
                assert!(v.is_some(), "{} timed out", items[i].what);
                final_verdicts += 1;
                verdicts_this_pass[i] += 1;
            });
        }
        held.drain(|i| panic!("{} still held at the end of a pass", items[i].what));
        passes += 1;
        for (i, n) in verdicts_this_pass.iter().enumerate() {
            assert_eq!(
                *n, 1,
                "{} got {n} final verdicts in pass {passes}",
                items[i].what
            );
        }
        // Let the fragment verdicts of this pass expire before the same datagrams come again.
        now += 10_000;
        if passes >= 2 && swaps.load(Ordering::Acquire) >= MIN_SWAPS && sets_seen == [true, true] {
            break;
        }
    }
    classifier_done.store(true, Ordering::Release);
    let total_swaps = swapper.join().expect("swapper thread");

    assert_eq!(
        final_verdicts, processed,
        "every frame gets exactly one final verdict"
    );
    assert_eq!(processed, passes * frames.len());
    assert!(
        mismatches.is_empty(),
        "{} verdicts from the wrong table: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
    assert!(total_swaps >= MIN_SWAPS);
    assert!(generations_seen.len() >= 2, "{generations_seen:?}");
}

/// The owner, under another member set, of the flow an item belongs to (read back from the
/// frame itself: TCP/UDP to a VIP, or an ICMP error quoting one).
fn recompute_owner(c: &Cluster, a: &Assignment, item: &Item) -> Option<u8> {
    let Some(flow) = parse_flow(&item.bytes) else {
        return Some(c.default_host());
    };
    let (client, cport, vip, sport, tcp, quoted_from) = flow;
    if quoted_from.is_some_and(|from| from != vip) {
        return Some(c.default_host());
    }
    c.owner(a, client, cport, vip, sport, tcp)
}

type ParsedFlow = (IpAddr, u16, IpAddr, u16, bool, Option<IpAddr>);

/// client, client port, VIP, server port, TCP?, and for ICMP errors the quoted source.
fn parse_flow(packet: &[u8]) -> Option<ParsedFlow> {
    use wlbs_dataplane::wire::{ipv4, ipv6};
    let (src, dst, protocol, l4) = match packet.first()? >> 4 {
        4 => {
            let p = ipv4::Packet::new_checked(packet).ok()?;
            (
                IpAddr::V4(p.src_addr()),
                IpAddr::V4(p.dst_addr()),
                p.protocol(),
                p.payload(),
            )
        }
        6 => {
            let p = ipv6::Packet::new_checked(packet).ok()?;
            let upper = p.upper_layer().ok()?;
            (
                IpAddr::V6(p.src_addr()),
                IpAddr::V6(p.dst_addr()),
                upper.protocol,
                p.upper_layer_payload(&upper),
            )
        }
        _ => return None,
    };
    let ports = |l4: &[u8]| {
        Some((
            u16::from_be_bytes([*l4.first()?, *l4.get(1)?]),
            u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]),
        ))
    };
    match protocol {
        IpProtocol::TCP | IpProtocol::UDP => {
            let (cport, sport) = ports(l4)?;
            Some((src, cport, dst, sport, protocol == IpProtocol::TCP, None))
        }
        IpProtocol::ICMP | IpProtocol::ICMPV6 => {
            let error = if protocol == IpProtocol::ICMP {
                matches!(*l4.first()?, 3 | 11)
            } else {
                matches!(*l4.first()?, 1..=3)
            };
            if !error {
                return None;
            }
            let quoted = l4.get(8..)?;
            let (q_src, q_dst, q_proto, q_l4) = match quoted.first()? >> 4 {
                4 => {
                    let q = ipv4::Packet::new_checked_truncated(quoted).ok()?;
                    (
                        IpAddr::V4(q.src_addr()),
                        IpAddr::V4(q.dst_addr()),
                        q.protocol(),
                        quoted.get(q.header_len()..)?,
                    )
                }
                _ => {
                    let q = ipv6::Packet::new_checked_truncated(quoted).ok()?;
                    let upper = q.upper_layer().ok()?;
                    (
                        IpAddr::V6(q.src_addr()),
                        IpAddr::V6(q.dst_addr()),
                        upper.protocol,
                        quoted.get(upper.offset..)?,
                    )
                }
            };
            if !matches!(q_proto, IpProtocol::TCP | IpProtocol::UDP) {
                return None;
            }
            let (sport, cport) = ports(q_l4)?;
            Some((
                q_dst,
                cport,
                dst,
                sport,
                q_proto == IpProtocol::TCP,
                Some(q_src),
            ))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Regression tests for bugs this suite found.

/// RFC 8200 section 4.5: the Fragment header's Next Header is the first header of the
/// fragmentable part, which may be an extension header (Destination Options, AH) rather than
/// the upper layer. Every fragment of one datagram must still get the same verdict.
#[test]
fn ipv6_fragments_after_a_destination_options_header_follow_the_first_fragment() {
    let v4 = Ipv4Addr::new(192, 0, 2, 10);
    let vip = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
    let client = Ipv6Addr::new(0x2001, 0xdb8, 0xc000, 0, 0, 0, 0, 7);
    let c = Cluster {
        cluster_ip: v4,
        vips: vec![v4.into(), vip.into()],
        rules: vec![PortRule::nlb_default()],
        members: (1..=3)
            .map(|p| Member {
                priority: p,
                load_weights: vec![50],
                handling_priorities: vec![p],
            })
            .collect(),
        stopped: vec![],
        max_connections: 1024,
        short_timeouts: false,
    };
    let a = c.assignment();
    let tables = c.tables(&a, 1);
    let udp = frames::udp_datagram(client.into(), vip.into(), 5000, 53, &[7; 64]);
    let mut fragmentable = frames::ipv6_options_header(IpProtocol::UDP);
    fragmentable.extend_from_slice(&udp);
    let parts = frames::ipv6_fragments(
        client,
        vip,
        false,
        IpProtocol::IPV6_DEST_OPTS,
        9,
        &fragmentable,
        32,
    );
    assert_eq!(parts.len(), 3);
    let owner = c
        .owner(&a, client.into(), 5000, vip.into(), 53, false)
        .expect("an owner");
    // In order and reversed: either way every fragment goes to the owner.
    for order in [vec![0, 1, 2], vec![2, 1, 0]] {
        let frames: Vec<Vec<u8>> = order
            .iter()
            .map(|&i| frames::ip_frame(Vlan::Untagged, &parts[i]))
            .collect();
        let verdicts = simulate(&c, &tables, &frames);
        for (k, v) in order.iter().zip(&verdicts) {
            let accepted: Vec<u8> = tables
                .iter()
                .zip(v)
                .filter(|(_, v)| matches!(v, Verdict::Accept(_)))
                .map(|((p, _), _)| *p)
                .collect();
            assert_eq!(
                accepted,
                vec![owner],
                "fragment {k} (order {order:?}): {v:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bucket hand-off (WLBS.md section 4): while a bucket moves from host 1 to host 2, host 1
// keeps the connections it holds and host 2 takes new ones. The assignment does not produce
// hand-off states yet; these tests build them from `RuleOwnership` the way the membership
// protocol will.

#[derive(Clone, Copy)]
enum Phase {
    Before,
    During,
    After,
}

struct HandOff {
    cluster: Cluster,
    /// Host 1's and host 2's tables before, during and after the move.
    before: [FilterTable; 2],
    during: [FilterTable; 2],
    after: [FilterTable; 2],
    filters: [Filter; 2],
    client: IpAddr,
    vip: IpAddr,
}

impl HandOff {
    /// One "all ports, both protocols, affinity none" rule; members 1 and 2; one bucket of
    /// host 1's moves to host 2. `client` hashes (with port 40000 to port 80) into it.
    fn new() -> HandOff {
        let v4 = Ipv4Addr::new(192, 0, 2, 10);
        let cluster = Cluster {
            cluster_ip: v4,
            vips: vec![v4.into()],
            rules: vec![PortRule {
                vip: RuleVip::All,
                first_port: 0,
                last_port: 65535,
                protocol: Protocol::Both,
                mode: Mode::Multiple,
                affinity: Affinity::None,
            }],
            members: [1, 2]
                .map(|p| Member {
                    priority: p,
                    load_weights: vec![50],
                    handling_priorities: vec![p],
                })
                .to_vec(),
            stopped: vec![],
            max_connections: 1024,
            short_timeouts: false,
        };
        let a = cluster.assignment();
        let seed = hash::seed(v4);
        let (client, bucket) = (1u32..)
            .map(|i| {
                let c = IpAddr::V4(Ipv4Addr::from(0xc633_6400 | i));
                (c, hash::bucket(seed, Affinity::None, c, 40000, 80))
            })
            .find(|(_, b)| a.rules[0].owners[usize::from(*b)] == 1)
            .expect("a client in one of host 1's buckets");
        let bit = 1u64 << bucket;
        let own = |p: u8| a.ownership_of(p)[0];
        let table =
            |p: u8, o: RuleOwnership| FilterTable::new(&cluster.spec_for(p), &[o], p == 1, true, 1);
        let (one, two) = (own(1), own(2));
        let moving_one = RuleOwnership {
            owned: one.owned & !bit,
            outgoing: bit,
            ..one
        };
        let moving_two = RuleOwnership {
            incoming: bit,
            ..two
        };
        let moved_one = RuleOwnership {
            owned: one.owned & !bit,
            ..one
        };
        let moved_two = RuleOwnership {
            owned: two.owned | bit,
            ..two
        };
        HandOff {
            before: [table(1, one), table(2, two)],
            during: [table(1, moving_one), table(2, moving_two)],
            after: [table(1, moved_one), table(2, moved_two)],
            filters: [1, 2].map(|p| Filter::new(1024, Timeouts::default(), p)),
            cluster,
            client,
            vip: v4.into(),
        }
    }

    /// Which of hosts 1 and 2 accept `packet` with the tables of `phase`.
    fn send(&mut self, phase: Phase, packet: &[u8]) -> Vec<u8> {
        let frame = frames::ip_frame(Vlan::Untagged, packet);
        let tables = match phase {
            Phase::Before => &self.before,
            Phase::During => &self.during,
            Phase::After => &self.after,
        };
        let mut accepted = Vec::new();
        for (i, (filter, table)) in self.filters.iter_mut().zip(tables).enumerate() {
            if let Verdict::Accept(_) = filter.classify(table, &frame, 1_000).verdict {
                accepted.push(i as u8 + 1);
            }
        }
        accepted
    }

    /// A segment of the connection client:40000 -> VIP:80.
    fn tcp(&self, flags: Flags) -> Vec<u8> {
        frames::tcp(self.client, self.vip, 40000, 80, flags, 1, b"")
    }
}

#[test]
fn during_a_bucket_hand_off_old_connections_stay_and_new_ones_go_to_the_new_owner() {
    let mut h = HandOff::new();
    assert_eq!(h.cluster.default_host(), 1);
    // A connection opened before the move.
    assert_eq!(h.send(Phase::Before, &h.tcp(Flags::SYN)), [1]);
    assert_eq!(h.send(Phase::During, &h.tcp(Flags::ACK)), [1]);
    // A new connection in the moving bucket: the same 4-tuple on a fresh pair of hosts
    // (affinity none hashes the ports, so another port could land in another bucket).
    let mut fresh = HandOff::new();
    assert_eq!(fresh.send(Phase::During, &fresh.tcp(Flags::SYN)), [2]);
    assert_eq!(fresh.send(Phase::During, &fresh.tcp(Flags::ACK)), [2]);
    assert_eq!(fresh.send(Phase::After, &fresh.tcp(Flags::ACK)), [2]);
    // UDP stays with the old owner until the move completes.
    let udp = frames::udp(h.client, h.vip, 40000, 80, b"q");
    assert_eq!(h.send(Phase::During, &udp), [1]);
    assert_eq!(h.send(Phase::After, &udp), [2]);
    // The old connection after the move: the new owner.
    assert_eq!(h.send(Phase::After, &h.tcp(Flags::ACK)), [2]);
}

#[test]
fn a_syn_retransmitted_during_a_bucket_hand_off_reaches_only_one_member() {
    let mut h = HandOff::new();
    // The client's SYN reaches host 1, which owns the bucket; its SYN-ACK is lost.
    assert_eq!(h.send(Phase::Before, &h.tcp(Flags::SYN)), [1]);
    // The bucket starts moving to host 2; the client retransmits its SYN.
    let accepted = h.send(Phase::During, &h.tcp(Flags::SYN));
    assert_eq!(
        accepted.len(),
        1,
        "retransmitted SYN accepted by hosts {accepted:?}"
    );
    // Every later segment of the connection, too.
    let accepted = h.send(Phase::During, &h.tcp(Flags::ACK));
    assert_eq!(
        accepted.len(),
        1,
        "next segment accepted by hosts {accepted:?}"
    );
}
