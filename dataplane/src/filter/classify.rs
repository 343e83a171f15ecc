//! The verdict for one frame: parse just enough, find the rule, hash the bucket, and decide
//! from the table and this worker's connection descriptors. Pure code over bytes (no DPDK), so
//! the appliance's workers and `wlbs filter` run exactly the same decisions.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::frag::{DatagramKey, FragmentTable};
use super::hash;
use super::table::{FilterTable, RuleEntry, Transport, VipSlot};
use super::{Mode, Reason, Verdict, BUCKETS, MAX_RULES};
use crate::conn::{ConnKind, ConnectionCounts, ConnectionTable, FlowKey, HashedKey, Timeouts};
use crate::wire::{ethernet, icmp, icmpv6, ipv4, ipv6, EtherType, IpProtocol};

/// The verdict and, for `--explain`, where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// Index of the port rule that decided, if one did.
    pub rule: Option<u8>,
    /// The bucket, for multiple-host rules.
    pub bucket: Option<u8>,
}

impl Decision {
    pub fn of(verdict: Verdict) -> Decision {
        Decision {
            verdict,
            rule: None,
            bucket: None,
        }
    }
}

/// Verdict counters of one worker, by reason, and accepted packets per rule and bucket.
/// Single writer (the worker); readers sum them whenever they like.
pub struct FilterCounters {
    verdicts: [AtomicU64; Reason::COUNT],
    accepted: Box<[AtomicU64]>,
    held: AtomicU64,
    /// Final verdicts by kind: accepted, passed, dropped.
    kinds: [AtomicU64; 3],
}

impl Default for FilterCounters {
    fn default() -> Self {
        FilterCounters {
            verdicts: std::array::from_fn(|_| AtomicU64::new(0)),
            accepted: (0..MAX_RULES * BUCKETS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            held: AtomicU64::new(0),
            kinds: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

#[inline]
fn bump(c: &AtomicU64) {
    c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
}

impl FilterCounters {
    pub fn verdicts(&self, reason: Reason) -> u64 {
        self.verdicts[reason as usize].load(Relaxed)
    }

    /// Packets accepted under `rule` in `bucket`.
    pub fn accepted(&self, rule: u8, bucket: u8) -> u64 {
        self.accepted
            .get(rule as usize * BUCKETS + bucket as usize)
            .map_or(0, |c| c.load(Relaxed))
    }

    /// Final verdicts so far: accepted, passed, dropped.
    pub fn totals(&self) -> [u64; 3] {
        std::array::from_fn(|i| self.kinds[i].load(Relaxed))
    }

    /// Fragments that had to wait for their first fragment.
    pub fn held(&self) -> u64 {
        self.held.load(Relaxed)
    }

    /// Adds what a burst's [`Tally`] gathered, and empties it.
    #[inline]
    pub fn flush(&self, tally: &mut Tally) {
        for (counter, n) in self.verdicts.iter().zip(tally.reasons.iter_mut()) {
            if *n > 0 {
                counter.store(counter.load(Relaxed).wrapping_add(*n as u64), Relaxed);
                *n = 0;
            }
        }
        for (counter, n) in self.kinds.iter().zip(tally.kinds.iter_mut()) {
            counter.store(counter.load(Relaxed).wrapping_add(*n as u64), Relaxed);
            *n = 0;
        }
        if tally.held > 0 {
            self.held.store(
                self.held.load(Relaxed).wrapping_add(tally.held as u64),
                Relaxed,
            );
            tally.held = 0;
        }
    }

    /// Counts a final verdict (the worker calls this once per frame, held ones when released).
    #[inline]
    pub fn count(&self, d: &Decision) {
        match d.verdict {
            Verdict::Hold => bump(&self.held),
            v => {
                let kind = match v {
                    Verdict::Accept(_) => 0,
                    Verdict::Pass(_) => 1,
                    _ => 2,
                };
                bump(&self.kinds[kind]);
                if let Some(r) = v.reason() {
                    bump(&self.verdicts[r as usize]);
                }
                if let (Verdict::Accept(_), Some(rule), Some(bucket)) = (v, d.rule, d.bucket) {
                    if let Some(c) = self.accepted.get(rule as usize * BUCKETS + bucket as usize) {
                        bump(c);
                    }
                }
            }
        }
    }
}

/// Verdicts counted in registers and on the stack during a burst, added to the shared
/// [`FilterCounters`] once per burst: a shared counter bumped per packet is a chain of
/// dependent read-modify-writes.
#[derive(Default)]
pub struct Tally {
    reasons: [u32; Reason::COUNT],
    kinds: [u32; 3],
    held: u32,
}

impl Tally {
    /// Counts one decision; accepted packets per bucket go straight to `counters` (they
    /// spread over many counters, so they form no chain).
    #[inline]
    pub fn add(&mut self, counters: &FilterCounters, d: &Decision) {
        let kind = match d.verdict {
            Verdict::Hold => {
                self.held += 1;
                return;
            }
            Verdict::Accept(r) => {
                if let (Some(rule), Some(bucket)) = (d.rule, d.bucket) {
                    if let Some(c) = counters
                        .accepted
                        .get(rule as usize * BUCKETS + bucket as usize)
                    {
                        bump(c);
                    }
                }
                self.reasons[r as usize] += 1;
                0
            }
            Verdict::Pass(r) => {
                self.reasons[r as usize] += 1;
                1
            }
            Verdict::Drop(r) => {
                self.reasons[r as usize] += 1;
                2
            }
        };
        self.kinds[kind] += 1;
    }
}

/// One worker's filter state: its connection descriptors and first-fragment verdicts.
pub struct Filter {
    conns: ConnectionTable,
    frags: FragmentTable,
    counters: Arc<FilterCounters>,
    /// The datagram of the last [`Verdict::Hold`]. (Kept here rather than in [`Decision`],
    /// so a decision stays a few bytes, returned in registers on the per-packet path.)
    held_datagram: DatagramKey,
}

/// The client side of a flow, as the bucket hash and the descriptors see it.
#[derive(Clone, Copy)]
enum Client {
    V4(u32),
    V6(u128),
}

/// A flow as the rule lookup, the bucket hash and the descriptors see it.
#[derive(Clone, Copy)]
struct Flow {
    vip: VipSlot,
    /// The VIP's address (an IPv4 address in the low 32 bits).
    vip_addr: u128,
    client: Client,
    client_port: u16,
    server_port: u16,
}

impl Filter {
    /// `max_connections` descriptors for this worker; `seed` randomises descriptor slots.
    pub fn new(max_connections: usize, timeouts: Timeouts, seed: u64) -> Filter {
        Filter {
            conns: ConnectionTable::new(max_connections, timeouts, seed),
            frags: FragmentTable::default(),
            counters: Arc::new(FilterCounters::default()),
            held_datagram: DatagramKey::default(),
        }
    }

    /// The datagram whose first fragment the last [`Verdict::Hold`] waits for.
    pub fn held_datagram(&self) -> DatagramKey {
        self.held_datagram
    }

    pub fn counters(&self) -> Arc<FilterCounters> {
        Arc::clone(&self.counters)
    }

    pub fn connection_counts(&self) -> Arc<ConnectionCounts> {
        self.conns.counts()
    }

    pub fn connections(&mut self) -> &mut ConnectionTable {
        &mut self.conns
    }

    pub fn fragments(&self) -> &FragmentTable {
        &self.frags
    }

    /// Frees descriptors idle past their timeout, looking at `budget` slots.
    #[inline]
    pub fn expire(&mut self, now_ms: u32, budget: usize) -> usize {
        self.conns.expire(now_ms, budget)
    }

    /// Decides what happens to `frame` (an Ethernet frame from the cluster port): the two
    /// steps a worker takes over a whole burst ([`triage`](Self::triage) every frame, then
    /// [`finish`](Self::finish) every frame), for one frame.
    #[inline]
    pub fn classify(&mut self, t: &FilterTable, frame: &[u8], now_ms: u32) -> Decision {
        let mut triaged = Triaged::default();
        self.triage(t, frame, &mut triaged);
        self.finish(t, frame, &triaged, now_ms)
    }

    /// The first step, which changes nothing: the common case (an untagged IPv4 packet
    /// without options, not a fragment, TCP or UDP) is parsed byte by byte and decided here
    /// unless its bucket is ours in some way; then its descriptor is hashed and its slot
    /// prefetched, for [`finish`](Self::finish) to consult. Anything else (or anything odd)
    /// is left to the general way, which decides the same.
    #[inline(always)]
    pub fn triage(&self, t: &FilterTable, frame: &[u8], out: &mut Triaged) {
        out.triage = self.triage_common(t, frame, &mut out.key);
    }

    #[inline(always)]
    fn triage_common(&self, t: &FilterTable, frame: &[u8], key: &mut HashedKey) -> Triage {
        const L3: usize = ethernet::HEADER_LEN;
        const L4: usize = L3 + 20;
        // Ethernet, a 20-byte IPv4 header, and the first 14 bytes of TCP (8 of UDP).
        let Some(h) = frame.first_chunk::<{ L4 + 14 }>() else {
            return Triage::General;
        };
        let be16 = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        let be32 = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        // EtherType IPv4, version 4 with a 20-byte header, not a fragment (neither MF nor an
        // offset: fragments take the fragment-aware way).
        if be32(12) >> 8 != 0x08_00_45 || be16(L3 + 6) & 0x3fff != 0 || !t.running {
            return Triage::General;
        }
        // The datagram within the frame, and (below) the transport header within the datagram.
        let total = be16(L3 + 2) as usize;
        if total < 20 || L3 + total > frame.len() {
            return Triage::General;
        }
        let dst = be32(L3 + 16);
        let Some(vip) = t.vip4(dst) else {
            return Triage::Decided(not_vip(t.is_dedicated4(dst)));
        };
        let (transport, transport_len) = match h[L3 + 9] {
            6 => (Transport::Tcp, 14),
            17 => (Transport::Udp, 8),
            _ => return Triage::General,
        };
        if total < 20 + transport_len {
            return Triage::General;
        }
        // What flow_step does for any flow, written out for IPv4 (measured: the shared
        // version costs the drop path about 6%).
        let (src, cport, sport) = (be32(L3 + 12), be16(L4), be16(L4 + 2));
        let Some(rule_index) = t.rule_for(vip, transport, sport) else {
            return Triage::Decided(default_host(t));
        };
        let rule = t.rule(rule_index);
        let bucket = hash::bucket_v4_after(rule.v4_prefix, rule.affinity, src, cport, sport);
        if rule.mode != Mode::Multiple || rule.ownership.reach() & 1u64 << bucket == 0 {
            return Triage::Decided(rule_verdict(rule_index, rule, bucket));
        }
        *key = self.conns.hashed(FlowKey::v4(
            src.into(),
            cport,
            dst.into(),
            sport,
            transport.protocol(),
        ));
        self.conns.prefetch(key);
        Triage::Flow {
            rule: rule_index,
            bucket,
            segment: match transport {
                Transport::Tcp => Segment::tcp(h[L4 + 13]),
                Transport::Udp => Segment::Udp,
            },
        }
    }

    /// The second step: what [`triage`](Self::triage) left open, decided in frame order
    /// (descriptors are created, refreshed and freed here).
    #[inline(always)]
    pub fn finish(
        &mut self,
        t: &FilterTable,
        frame: &[u8],
        triaged: &Triaged,
        now_ms: u32,
    ) -> Decision {
        match triaged.triage {
            Triage::Decided(d) => d,
            Triage::Flow {
                rule,
                bucket,
                segment,
            } => self.decide_flow(t, &triaged.key, rule, bucket, segment, now_ms),
            Triage::General => self.classify_any(t, frame, now_ms),
        }
    }

    /// Any frame: VLAN tags, IPv6, fragments, ICMP, malformed input.
    fn classify_any(&mut self, t: &FilterTable, frame: &[u8], now_ms: u32) -> Decision {
        let Ok(eth) = ethernet::Frame::new_checked(frame) else {
            return Decision::of(Verdict::Drop(Reason::Malformed));
        };
        let mut ethertype = eth.ethertype();
        let mut payload = eth.payload();
        // Up to two VLAN tags (802.1Q, 802.1ad): classified like untagged frames. A third tag
        // is refused rather than passed: passing would hand a VIP frame inside to every host.
        for _ in 0..2 {
            if !ethertype.is_vlan_tag() {
                break;
            }
            if payload.len() < 4 {
                return Decision::of(Verdict::Drop(Reason::Malformed));
            }
            ethertype = EtherType(u16::from_be_bytes([payload[2], payload[3]]));
            payload = &payload[4..];
        }
        if ethertype.is_vlan_tag() {
            return Decision::of(Verdict::Drop(Reason::Malformed));
        }
        match ethertype {
            EtherType::IPV4 => self.classify_ipv4(t, payload, now_ms),
            EtherType::IPV6 => self.classify_ipv6(t, payload, now_ms),
            _ => Decision::of(Verdict::Pass(Reason::NotIp)),
        }
    }

    fn classify_ipv4(&mut self, t: &FilterTable, packet: &[u8], now_ms: u32) -> Decision {
        let Ok(ip) = ipv4::Packet::new_checked(packet) else {
            return Decision::of(Verdict::Drop(Reason::Malformed));
        };
        let dst = u32::from(ip.dst_addr());
        let Some(vip) = t.vip4(dst) else {
            return not_vip(t.is_dedicated4(dst));
        };
        if !t.running {
            return Decision::of(Verdict::Drop(Reason::HostStopped));
        }
        let src = u32::from(ip.src_addr());
        let protocol = ip.protocol();
        let l4 = ip.payload();
        let datagram = ip.is_fragment().then(|| DatagramKey {
            src: src as u128,
            dst: dst as u128,
            id: ip.ident() as u32,
            protocol: protocol.0,
        });
        self.fragment_aware(datagram, ip.frag_offset() != 0, now_ms, |f| {
            f.classify_transport(t, vip, Client::V4(src), dst as u128, protocol, l4, now_ms)
        })
    }

    fn classify_ipv6(&mut self, t: &FilterTable, packet: &[u8], now_ms: u32) -> Decision {
        let Ok(ip) = ipv6::Packet::new_checked(packet) else {
            return Decision::of(Verdict::Drop(Reason::Malformed));
        };
        let dst = u128::from(ip.dst_addr());
        let Some(vip) = t.vip6(dst) else {
            return not_vip(t.is_dedicated6(dst));
        };
        if !t.running {
            return Decision::of(Verdict::Drop(Reason::HostStopped));
        }
        let Ok(upper) = ip.upper_layer() else {
            return Decision::of(Verdict::Drop(Reason::Malformed));
        };
        let src = u128::from(ip.src_addr());
        let l4 = ip.upper_layer_payload(&upper);
        // RFC 8200 reassembles by (source, destination, identification): no protocol, since
        // later fragments do not show the first one's upper-layer protocol.
        let datagram = upper.fragment.map(|f| DatagramKey {
            src,
            dst,
            id: f.ident,
            protocol: 0,
        });
        let later = upper.fragment.is_some_and(|f| f.offset != 0);
        self.fragment_aware(datagram, later, now_ms, |f| {
            f.classify_transport(t, vip, Client::V6(src), dst, upper.protocol, l4, now_ms)
        })
    }

    /// Fragments: the first decides and is remembered; later ones follow, or wait.
    #[inline]
    fn fragment_aware(
        &mut self,
        datagram: Option<DatagramKey>,
        later_fragment: bool,
        now_ms: u32,
        decide: impl FnOnce(&mut Filter) -> Decision,
    ) -> Decision {
        match datagram {
            None => decide(self),
            Some(key) if later_fragment => match self.frags.lookup(&key, now_ms) {
                Some(v) => Decision::of(follow(v)),
                None => {
                    self.held_datagram = key;
                    Decision::of(Verdict::Hold)
                }
            },
            Some(key) => {
                let d = decide(self);
                self.frags.record(key, d.verdict, now_ms);
                d
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn classify_transport(
        &mut self,
        t: &FilterTable,
        vip: VipSlot,
        client: Client,
        vip_addr: u128,
        protocol: IpProtocol,
        l4: &[u8],
        now_ms: u32,
    ) -> Decision {
        // Ports and flags: the first 14 bytes of a TCP header; ports: 8 bytes of UDP.
        let segment = match protocol {
            IpProtocol::TCP if l4.len() >= 14 => Segment::tcp(l4[13]),
            IpProtocol::UDP if l4.len() >= 8 => Segment::Udp,
            IpProtocol::TCP | IpProtocol::UDP => {
                return Decision::of(Verdict::Drop(Reason::Malformed))
            }
            IpProtocol::ICMP | IpProtocol::ICMPV6 => {
                return self.classify_icmp(t, vip, client, vip_addr, protocol, l4, now_ms)
            }
            _ => return default_host(t),
        };
        let (client_port, server_port) = ports(l4);
        let flow = Flow {
            vip,
            vip_addr,
            client,
            client_port,
            server_port,
        };
        self.classify_flow(t, &flow, segment, now_ms)
    }

    /// ICMP errors about a flow go where the flow goes: hash the quoted header. Echo and
    /// everything else go to the default host, so exactly one host answers.
    #[allow(clippy::too_many_arguments)]
    fn classify_icmp(
        &mut self,
        t: &FilterTable,
        vip: VipSlot,
        client: Client,
        vip_addr: u128,
        protocol: IpProtocol,
        l4: &[u8],
        now_ms: u32,
    ) -> Decision {
        if l4.len() < 8 {
            return Decision::of(Verdict::Drop(Reason::Malformed));
        }
        let is_error = if protocol == IpProtocol::ICMP {
            icmp::Message(l4[0]).is_error()
        } else {
            icmpv6::Message(l4[0]).is_error()
        };
        if !is_error {
            return default_host(t);
        }
        // The quoted packet is one the cluster sent: source = VIP, destination = the client.
        let quoted = &l4[8..];
        let (q_src, q_dst, q_proto, q_l4) = match client {
            Client::V4(_) => {
                let Ok(q) = ipv4::Packet::new_checked_truncated(quoted) else {
                    return Decision::of(Verdict::Drop(Reason::Malformed));
                };
                if q.frag_offset() != 0 {
                    return default_host(t);
                }
                let header_len = q.header_len();
                (
                    u32::from(q.src_addr()) as u128,
                    Client::V4(u32::from(q.dst_addr())),
                    q.protocol(),
                    quoted.get(header_len..).unwrap_or_default(),
                )
            }
            Client::V6(_) => {
                let Ok(q) = ipv6::Packet::new_checked_truncated(quoted) else {
                    return Decision::of(Verdict::Drop(Reason::Malformed));
                };
                let Ok(upper) = q.upper_layer() else {
                    return default_host(t);
                };
                if upper.fragment.is_some_and(|f| f.offset != 0) {
                    return default_host(t);
                }
                (
                    u128::from(q.src_addr()),
                    Client::V6(u128::from(q.dst_addr())),
                    upper.protocol,
                    quoted.get(upper.offset..).unwrap_or_default(),
                )
            }
        };
        if q_src != vip_addr || q_l4.len() < 4 {
            return default_host(t);
        }
        // Quoted from the server's side: its source port is the server port.
        let (sport, cport) = ports(q_l4);
        let segment = match q_proto {
            IpProtocol::TCP => Segment::QuotedTcp,
            IpProtocol::UDP => Segment::QuotedUdp,
            _ => return default_host(t),
        };
        let flow = Flow {
            vip,
            vip_addr,
            client: q_dst,
            client_port: cport,
            server_port: sport,
        };
        self.classify_flow(t, &flow, segment, now_ms)
    }

    /// A TCP/UDP packet (or an ICMP error about one) to a VIP, the general way.
    fn classify_flow(
        &mut self,
        t: &FilterTable,
        flow: &Flow,
        segment: Segment,
        now_ms: u32,
    ) -> Decision {
        let mut key = HashedKey::default();
        match self.flow_step(t, flow, segment.transport(), &mut key) {
            Ok((rule, bucket)) => self.decide_flow(t, &key, rule, bucket, segment, now_ms),
            Err(decided) => decided,
        }
    }

    /// The rule and bucket of a flow's packet (both ways share this). `Err`: decided without
    /// the descriptors (no rule, a disabled or single-host rule, or a bucket not ours in any
    /// way: the common case on every host but one). `Ok((rule, bucket))`: the bucket is ours
    /// in some way and the descriptors decide ([`decide_flow`](Self::decide_flow)), with the
    /// descriptor key hashed into `key`.
    #[inline(always)]
    fn flow_step(
        &self,
        t: &FilterTable,
        flow: &Flow,
        transport: Transport,
        key: &mut HashedKey,
    ) -> Result<(u8, u8), Decision> {
        let Some(rule_index) = t.rule_for(flow.vip, transport, flow.server_port) else {
            return Err(default_host(t));
        };
        let rule: &RuleEntry = t.rule(rule_index);
        let (cport, sport) = (flow.client_port, flow.server_port);
        let bucket = match (rule.mode, flow.client) {
            (Mode::Multiple, Client::V4(a)) => {
                hash::bucket_v4_after(rule.v4_prefix, rule.affinity, a, cport, sport)
            }
            (Mode::Multiple, Client::V6(a)) => {
                hash::bucket_v6(t.seed, rule.affinity, a, cport, sport)
            }
            _ => 0,
        };
        // (A descriptor left from a completed hand-off is stale; the idle sweep frees it.)
        if rule.mode != Mode::Multiple || rule.ownership.reach() & 1u64 << bucket == 0 {
            return Err(rule_verdict(rule_index, rule, bucket));
        }
        let (client, vip) = match flow.client {
            Client::V4(a) => (
                crate::conn::ipv4_mapped(a.into()),
                crate::conn::ipv4_mapped((flow.vip_addr as u32).into()),
            ),
            Client::V6(a) => (a, flow.vip_addr),
        };
        *key = self.conns.hashed(FlowKey {
            client,
            vip,
            client_port: cport,
            server_port: sport,
            protocol: transport.protocol(),
        });
        Ok((rule_index, bucket))
    }

    /// A packet in a bucket that is ours in some way: owned, moving to us or moving away.
    #[inline]
    fn decide_flow(
        &mut self,
        t: &FilterTable,
        key: &HashedKey,
        rule_index: u8,
        bucket: u8,
        segment: Segment,
        now_ms: u32,
    ) -> Decision {
        let own = t.rule(rule_index).ownership;
        let bit = 1u64 << bucket;
        let decided = |verdict| Decision {
            verdict,
            rule: Some(rule_index),
            bucket: Some(bucket),
        };
        // A connection we hold a descriptor for stays ours while the bucket is ours in any way,
        // except that a SYN in a bucket moving away is a new connection (a retransmitted SYN,
        // or a 4-tuple reused after a close): the new owner takes those, so we let go.
        if self.conns.lookup_hashed(key, now_ms).is_some() {
            let moving_away = own.outgoing & bit != 0 && (own.owned | own.incoming) & bit == 0;
            if moving_away && matches!(segment, Segment::Tcp { syn: true, .. }) {
                self.conns.remove_hashed(key);
                return decided(Verdict::Drop(Reason::HandedOff));
            }
            match segment {
                Segment::Tcp { rst: true, .. } => {
                    self.conns.remove_hashed(key);
                }
                Segment::Tcp { fin: true, .. } => {
                    self.conns.close_hashed(key, now_ms);
                }
                _ => {}
            }
            return decided(Verdict::Accept(Reason::Descriptor));
        }

        let verdict = if own.owned & bit != 0 {
            if segment.opens() {
                let kind = match segment.transport() {
                    Transport::Tcp => ConnKind::Tcp,
                    Transport::Udp => ConnKind::Udp,
                };
                // A full table is counted by the table; the connection still gets the
                // bucket's verdict.
                let _ = self
                    .conns
                    .insert_hashed(key, rule_index, bucket, kind, now_ms);
            }
            Verdict::Accept(Reason::BucketOwned)
        } else if own.incoming & bit != 0 {
            if let Segment::Tcp { syn: true, .. } = segment {
                let _ = self
                    .conns
                    .insert_hashed(key, rule_index, bucket, ConnKind::Tcp, now_ms);
                Verdict::Accept(Reason::NewConnection)
            } else {
                Verdict::Drop(Reason::OldOwnerKeeps)
            }
        } else {
            // Moving away (the only way left for a bucket that is ours).
            match segment {
                Segment::Udp | Segment::QuotedUdp => Verdict::Accept(Reason::HandOffUdp),
                _ => Verdict::Drop(Reason::HandedOff),
            }
        };
        decided(verdict)
    }
}

/// What the first step over a frame found ([`Filter::triage`]).
#[derive(Clone, Copy)]
pub enum Triage {
    /// Decided without the descriptors.
    Decided(Decision),
    /// A packet of a flow in a bucket that is ours in some way: the descriptors decide.
    Flow {
        rule: u8,
        bucket: u8,
        segment: Segment,
    },
    /// Not the common case: the general way decides.
    General,
}

/// Where the first step leaves its finding for the second: the triage, and for a flow the
/// descriptor key it hashed. (Kept apart so that the usual finding, a few bytes, is all
/// that is written per frame.)
#[derive(Clone, Copy)]
pub struct Triaged {
    triage: Triage,
    key: HashedKey,
}

impl Default for Triaged {
    fn default() -> Self {
        Triaged {
            triage: Triage::General,
            key: HashedKey::default(),
        }
    }
}

/// What kind of packet of a flow this is.
#[derive(Clone, Copy)]
pub enum Segment {
    Tcp {
        syn: bool,
        fin: bool,
        rst: bool,
    },
    Udp,
    /// An ICMP error quoting a TCP/UDP packet of the flow: never opens or closes anything.
    QuotedTcp,
    QuotedUdp,
}

impl Segment {
    /// A TCP segment with these flags (byte 13 of the header). A SYN with ACK is no opening.
    #[inline(always)]
    fn tcp(flags: u8) -> Segment {
        Segment::Tcp {
            syn: flags & 0x02 != 0 && flags & 0x10 == 0,
            fin: flags & 0x01 != 0,
            rst: flags & 0x04 != 0,
        }
    }

    fn transport(self) -> Transport {
        match self {
            Segment::Tcp { .. } | Segment::QuotedTcp => Transport::Tcp,
            Segment::Udp | Segment::QuotedUdp => Transport::Udp,
        }
    }

    /// A packet that starts tracking in a bucket we own: a SYN, or any UDP datagram.
    fn opens(self) -> bool {
        matches!(self, Segment::Tcp { syn: true, .. } | Segment::Udp)
    }
}

#[inline]
fn ports(l4: &[u8]) -> (u16, u16) {
    (
        u16::from_be_bytes([l4[0], l4[1]]),
        u16::from_be_bytes([l4[2], l4[3]]),
    )
}

/// The verdict of a rule that decides without descriptors: a disabled rule, a single-host
/// rule, or a multiple-host rule whose `bucket` is not ours in any way.
#[inline(always)]
fn rule_verdict(rule_index: u8, rule: &RuleEntry, bucket: u8) -> Decision {
    let (verdict, bucket) = match rule.mode {
        Mode::Disabled => (Verdict::Drop(Reason::RuleDisabled), None),
        Mode::Single if rule.ownership.handler => (Verdict::Accept(Reason::SingleHost), None),
        Mode::Single => (Verdict::Drop(Reason::NotHandler), None),
        Mode::Multiple => (Verdict::Drop(Reason::NotOwned), Some(bucket)),
    };
    Decision {
        verdict,
        rule: Some(rule_index),
        bucket,
    }
}

/// IP traffic not addressed to a VIP passes: to the dedicated IP, or to anything else.
fn not_vip(dedicated: bool) -> Decision {
    Decision::of(Verdict::Pass(if dedicated {
        Reason::DedicatedIp
    } else {
        Reason::NotVip
    }))
}

fn default_host(t: &FilterTable) -> Decision {
    Decision::of(if t.default_host {
        Verdict::Accept(Reason::DefaultHost)
    } else {
        Verdict::Drop(Reason::NotDefaultHost)
    })
}

/// A later fragment's verdict: its first fragment's, counted as a fragment.
fn follow(first: Verdict) -> Verdict {
    match first {
        Verdict::Accept(_) => Verdict::Accept(Reason::Fragment),
        Verdict::Pass(_) => Verdict::Pass(Reason::Fragment),
        Verdict::Drop(_) | Verdict::Hold => Verdict::Drop(Reason::Fragment),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::table::RuleOwnership;
    use crate::filter::{Affinity, FilterSpec, PortRule, Protocol, RuleVip};
    use std::net::Ipv4Addr;

    const VIP: [u8; 4] = [192, 0, 2, 10];

    fn ipv4_frame(src: [u8; 4], proto: u8, l4: &[u8], ident: u16, frag: u16) -> Vec<u8> {
        let mut f = vec![2, 0xbf, 192, 0, 2, 10, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&ident.to_be_bytes());
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&VIP);
        f.extend_from_slice(&ip);
        f.extend_from_slice(l4);
        f
    }

    fn tcp(src: [u8; 4], sport: u16, flags: u8) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[12] = 0x50;
        t[13] = flags;
        ipv4_frame(src, 6, &t, 1, 0)
    }

    fn udp(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut u = vec![0u8; 16];
        u[0..2].copy_from_slice(&sport.to_be_bytes());
        u[2..4].copy_from_slice(&80u16.to_be_bytes());
        u[4..6].copy_from_slice(&16u16.to_be_bytes());
        ipv4_frame(src, 17, &u, 2, 0)
    }

    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const FIN: u8 = 0x01;
    const RST: u8 = 0x04;

    /// One rule (port 80, both protocols, affinity single) with the given ownership of the
    /// bucket of client 198.51.100.7.
    fn table(own: fn(u64) -> RuleOwnership) -> (FilterTable, u8) {
        let spec = FilterSpec {
            cluster_ip: Ipv4Addr::from(VIP),
            vips: vec![Ipv4Addr::from(VIP).into()],
            dedicated: vec![],
            rules: vec![PortRule {
                vip: RuleVip::All,
                first_port: 80,
                last_port: 80,
                protocol: Protocol::Both,
                mode: Mode::Multiple,
                affinity: Affinity::Single,
            }],
        };
        let seed = hash::seed(Ipv4Addr::from(VIP));
        let bucket = hash::bucket_v4(
            seed,
            Affinity::Single,
            u32::from(Ipv4Addr::new(198, 51, 100, 7)),
            0,
            0,
        );
        (
            FilterTable::new(&spec, &[own(1 << bucket)], false, true, 1),
            bucket,
        )
    }

    fn filter() -> Filter {
        Filter::new(1024, Timeouts::default(), 1)
    }

    const CLIENT: [u8; 4] = [198, 51, 100, 7];

    #[test]
    fn incoming_bucket_takes_new_connections_only() {
        let (t, bucket) = table(|b| RuleOwnership {
            incoming: b,
            ..Default::default()
        });
        let mut f = filter();
        let mid = f.classify(&t, &tcp(CLIENT, 40000, ACK), 0);
        assert_eq!(mid.verdict, Verdict::Drop(Reason::OldOwnerKeeps));
        assert_eq!(mid.bucket, Some(bucket));
        let syn = f.classify(&t, &tcp(CLIENT, 40001, SYN), 0);
        assert_eq!(syn.verdict, Verdict::Accept(Reason::NewConnection));
        // The connection it opened is ours from now on.
        let next = f.classify(&t, &tcp(CLIENT, 40001, ACK), 1);
        assert_eq!(next.verdict, Verdict::Accept(Reason::Descriptor));
        // UDP stays with the old owner until the hand-off completes.
        let u = f.classify(&t, &udp(CLIENT, 5000), 2);
        assert_eq!(u.verdict, Verdict::Drop(Reason::OldOwnerKeeps));
    }

    #[test]
    fn outgoing_bucket_keeps_held_connections_and_refuses_new_ones() {
        let (owned, _) = table(RuleOwnership::owning);
        let (outgoing, _) = table(|b| RuleOwnership {
            outgoing: b,
            ..Default::default()
        });
        let mut f = filter();
        assert_eq!(
            f.classify(&owned, &tcp(CLIENT, 40000, SYN), 0).verdict,
            Verdict::Accept(Reason::BucketOwned)
        );
        let held = f.classify(&outgoing, &tcp(CLIENT, 40000, ACK), 1);
        assert_eq!(held.verdict, Verdict::Accept(Reason::Descriptor));
        let new = f.classify(&outgoing, &tcp(CLIENT, 40002, SYN), 1);
        assert_eq!(new.verdict, Verdict::Drop(Reason::HandedOff));
        let u = f.classify(&outgoing, &udp(CLIENT, 5000), 1);
        assert_eq!(u.verdict, Verdict::Accept(Reason::HandOffUdp));
        assert_eq!(
            f.connection_counts().live(),
            1,
            "UDP during hand-off opens nothing"
        );
    }

    #[test]
    fn rst_frees_and_fin_closes_the_descriptor() {
        let (owned, _) = table(RuleOwnership::owning);
        let (outgoing, _) = table(|b| RuleOwnership {
            outgoing: b,
            ..Default::default()
        });
        let mut f = filter();
        f.classify(&owned, &tcp(CLIENT, 1, SYN), 0);
        f.classify(&owned, &tcp(CLIENT, 2, SYN), 0);
        f.classify(&owned, &tcp(CLIENT, 1, RST | ACK), 1);
        assert_eq!(
            f.classify(&outgoing, &tcp(CLIENT, 1, ACK), 2).verdict,
            Verdict::Drop(Reason::HandedOff),
            "a reset connection is gone"
        );
        f.classify(&owned, &tcp(CLIENT, 2, FIN | ACK), 3);
        assert_eq!(
            f.classify(&outgoing, &tcp(CLIENT, 2, ACK), 4).verdict,
            Verdict::Accept(Reason::Descriptor),
            "the close handshake still reaches us"
        );
        let later = 4 + Timeouts::default().tcp_close_wait_ms + 1;
        f.expire(later, usize::MAX);
        assert_eq!(
            f.classify(&outgoing, &tcp(CLIENT, 2, ACK), later).verdict,
            Verdict::Drop(Reason::HandedOff)
        );
    }

    #[test]
    fn later_fragment_waits_for_and_follows_the_first() {
        let (owned, _) = table(RuleOwnership::owning);
        let mut f = filter();
        let mut u = vec![0u8; 16];
        u[0..2].copy_from_slice(&5000u16.to_be_bytes());
        u[2..4].copy_from_slice(&80u16.to_be_bytes());
        // Second fragment first (offset 16 bytes = 2 units), then the first (MF set).
        let second = ipv4_frame(CLIENT, 17, &[0u8; 8], 77, 2);
        let first = ipv4_frame(CLIENT, 17, &u, 77, 0x2000);
        let d = f.classify(&owned, &second, 0);
        assert_eq!(d.verdict, Verdict::Hold);
        let key = f.held_datagram();
        assert_eq!(
            f.classify(&owned, &first, 1).verdict,
            Verdict::Accept(Reason::BucketOwned)
        );
        assert_eq!(
            f.fragments().lookup(&key, 2),
            Some(Verdict::Accept(Reason::BucketOwned))
        );
        assert_eq!(
            f.classify(&owned, &second, 2).verdict,
            Verdict::Accept(Reason::Fragment)
        );
    }

    #[test]
    fn vlan_tagged_frames_get_the_untagged_verdict() {
        let (owned, _) = table(RuleOwnership::owning);
        let (none, _) = table(|_| RuleOwnership::default());
        for t in [&owned, &none] {
            let plain = tcp(CLIENT, 999, SYN);
            let mut tagged = plain[..12].to_vec();
            tagged.extend_from_slice(&[0x88, 0xa8, 0, 5, 0x81, 0x00, 0, 7]);
            tagged.extend_from_slice(&plain[12..]);
            assert_eq!(
                filter().classify(t, &plain, 0).verdict,
                filter().classify(t, &tagged, 0).verdict
            );
        }
    }

    #[test]
    fn stopped_host_drops_vip_traffic_but_passes_the_rest() {
        let spec = FilterSpec {
            cluster_ip: Ipv4Addr::from(VIP),
            vips: vec![Ipv4Addr::from(VIP).into()],
            dedicated: vec![],
            rules: vec![],
        };
        let t = FilterTable::new(&spec, &[], true, false, 1);
        let mut f = filter();
        assert_eq!(
            f.classify(&t, &tcp(CLIENT, 1, SYN), 0).verdict,
            Verdict::Drop(Reason::HostStopped)
        );
        let mut other = tcp(CLIENT, 1, SYN);
        other[30..34].copy_from_slice(&[203, 0, 113, 1]);
        assert_eq!(
            f.classify(&t, &other, 0).verdict,
            Verdict::Pass(Reason::NotVip)
        );
        assert_eq!(
            f.classify(&t, &[0u8; 10], 0).verdict,
            Verdict::Drop(Reason::Malformed)
        );
    }

    mod fast_path {
        //! The first step decides the common case byte by byte; the general way parses with
        //! the wire module. They must agree on every frame, and leave the descriptors alike.
        use super::*;
        use proptest::prelude::*;

        /// Two rules (TCP 80, then every port of both protocols) and a single-host rule on
        /// UDP 53, with ownership drawn per bucket (owned, incoming, outgoing or none).
        fn table(modes: &[u8], handler: bool, affinity: u8, default_host: bool) -> FilterTable {
            let affinity =
                [Affinity::None, Affinity::Single, Affinity::Network][affinity as usize % 3];
            let rule = |first, last, protocol, mode| PortRule {
                vip: RuleVip::All,
                first_port: first,
                last_port: last,
                protocol,
                mode,
                affinity,
            };
            let spec = FilterSpec {
                cluster_ip: Ipv4Addr::from(VIP),
                vips: vec![Ipv4Addr::from(VIP).into(), "192.0.2.20".parse().unwrap()],
                dedicated: vec!["192.0.2.11".parse().unwrap()],
                rules: vec![
                    rule(80, 80, Protocol::Tcp, Mode::Multiple),
                    rule(53, 53, Protocol::Udp, Mode::Single),
                    rule(1000, 65535, Protocol::Both, Mode::Multiple),
                    rule(25, 25, Protocol::Both, Mode::Disabled),
                ],
            };
            let mut own = RuleOwnership::default();
            for (b, m) in modes.iter().enumerate().take(BUCKETS) {
                let bit = 1u64 << b;
                match m % 4 {
                    0 => own.owned |= bit,
                    1 => own.incoming |= bit,
                    2 => own.outgoing |= bit,
                    _ => {}
                }
            }
            own.handler = handler;
            FilterTable::new(&spec, &[own, own, own, own], default_host, true, 1)
        }

        /// A frame near the common case: TCP or UDP to a VIP (or not) from a few clients, with a few bytes
        /// that steer it off the common case now and then.
        fn frame() -> impl Strategy<Value = Vec<u8>> {
            (
                any::<u8>(),
                0u8..5,
                prop_oneof![
                    4 => Just(80u16),
                    4 => Just(1000u16),
                    1 => Just(53u16),
                    1 => Just(25u16),
                    1 => Just(22u16),
                    1 => 1000u16..=65535
                ],
                // Few clients and ports, so flows come back (SYN, data, FIN, RST of one flow).
                1000u16..1002,
                prop_oneof![
                    Just(SYN),
                    Just(SYN | ACK),
                    Just(ACK),
                    Just(FIN | ACK),
                    Just(RST),
                    Just(0x18u8),
                    any::<u8>()
                ],
                prop_oneof![4 => Just(0u8), 1 => 1u8..4],
                any::<(u8, u8)>(),
                0usize..40,
            )
                .prop_map(
                    |(client, kind, server_port, client_port, flags, dst, odd, cut)| {
                        let mut l4 = vec![0u8; 20];
                        l4[0..2].copy_from_slice(&client_port.to_be_bytes());
                        l4[2..4].copy_from_slice(&server_port.to_be_bytes());
                        l4[13] = flags;
                        let proto = match kind {
                            0 | 1 => 6,
                            2 | 3 => 17,
                            _ => 1,
                        };
                        let mut f = ipv4_frame([198, 51, 100, client % 2], proto, &l4, 7, 0);
                        f[30..34].copy_from_slice(
                            &[
                                [192, 0, 2, 10],
                                [192, 0, 2, 20],
                                [192, 0, 2, 11],
                                [203, 0, 113, 9],
                            ][dst as usize],
                        );
                        // Now and then an odd byte: a fragment, options, another EtherType, a
                        // short or long total length, a truncated frame.
                        match odd.0 % 16 {
                            0 => f[20] = 0x20,
                            1 => f[21] = odd.1,
                            2 => f[14] = 0x46,
                            3 => f[12] = 0x86,
                            4 => f[17] = odd.1,
                            5 => f[16] = odd.1,
                            6 => f.truncate(14 + cut),
                            _ => {}
                        }
                        f
                    },
                )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn first_step_and_general_way_agree(
                modes in proptest::collection::vec(any::<u8>(), BUCKETS),
                handler in any::<bool>(),
                affinity in any::<u8>(),
                default_host in any::<bool>(),
                frames in proptest::collection::vec(frame(), 1..300),
            ) {
                let t = table(&modes, handler, affinity, default_host);
                let mut fast = filter();
                let mut general = filter();
                for (i, f) in frames.iter().enumerate() {
                    let now = i as u32;
                    let a = fast.classify(&t, f, now);
                    let b = general.classify_any(&t, f, now);
                    prop_assert_eq!(a, b, "frame {} {:02x?}", i, f);
                    prop_assert_eq!(fast.conns.live(), general.conns.live());
                }
            }
        }
    }
}
