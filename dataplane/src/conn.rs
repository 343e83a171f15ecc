//! Connection descriptors: the per-worker table of connections this host accepted.
//!
//! Every host sees every packet to the cluster's VIPs and keeps those whose bucket it owns.
//! When a bucket moves to another host, this host must keep serving the connections it already
//! holds in that bucket while the new owner takes the new ones (WLBS.md section 4). A
//! descriptor is this host saying "I hold this flow": created when a connection is accepted
//! (TCP SYN, first UDP datagram), freed on RST, after the close-wait that follows a FIN, or
//! after an idle timeout.
//!
//! This module owns:
//! - [`ConnectionTable`]: one per worker core, touched only by that worker's thread, so it
//!   needs no locks. Fixed capacity, all memory allocated (and touched) in
//!   [`ConnectionTable::new`]; lookup, insert, close, remove and the incremental expiry sweep
//!   never allocate.
//! - [`ConnectionCounts`]: live descriptors per (rule, bucket) plus totals, written by the
//!   worker and read concurrently by the control thread, which sums all workers
//!   ([`sum_buckets`]) to tell when a bucket it handed away has gone idle.
//!
//! Time is whatever the caller says it is (`now_ms`, wrapping milliseconds); nothing in here
//! reads a clock.
//!
//! Layout: open addressing with linear probing over a power-of-two array of 48-byte slots,
//! at most 3/4 full when the table holds `max_connections` descriptors. Deletion shifts the
//! rest of the probe cluster back (no tombstones), so lookups stay as short after millions of
//! connections have come and gone as on a fresh table.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Buckets per port rule, and the port rules a descriptor's rule index may name (traffic no
/// rule covers goes to the default host without descriptors).
pub use crate::filter::{BUCKETS, MAX_RULES};

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;

/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Largest `max_connections` a table accepts; larger requests are clamped. At this size the
/// slot array is 6 GiB, far beyond any sane per-worker share, and slot positions still fit
/// the 32 bits of hash each slot keeps.
pub const MAX_DESCRIPTORS: usize = 1 << 26;

/// The smallest slot array, so that even a zero-capacity table has empty slots that end every
/// probe.
const MIN_SLOTS: usize = 8;

/// Identity of a connection as the filter sees it: both addresses, both ports, the protocol.
///
/// Addresses are 128 bits; IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`) so one
/// key type serves both families and an IPv4 flow never equals an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Client (remote) address.
    pub client: u128,
    /// Virtual (cluster) address the client talks to.
    pub vip: u128,
    pub client_port: u16,
    pub server_port: u16,
    /// IP protocol number: [`PROTO_TCP`] or [`PROTO_UDP`].
    pub protocol: u8,
}

impl FlowKey {
    /// Key of an IPv4 flow.
    pub const fn v4(
        client: Ipv4Addr,
        client_port: u16,
        vip: Ipv4Addr,
        server_port: u16,
        protocol: u8,
    ) -> Self {
        FlowKey {
            client: ipv4_mapped(client),
            vip: ipv4_mapped(vip),
            client_port,
            server_port,
            protocol,
        }
    }

    /// Key of an IPv6 flow.
    pub const fn v6(
        client: Ipv6Addr,
        client_port: u16,
        vip: Ipv6Addr,
        server_port: u16,
        protocol: u8,
    ) -> Self {
        FlowKey {
            client: client.to_bits(),
            vip: vip.to_bits(),
            client_port,
            server_port,
            protocol,
        }
    }
}

/// A flow key with its slot hash, made by [`ConnectionTable::hashed`]: a worker hashes every
/// key of a burst and prefetches its slot ([`ConnectionTable::prefetch`]) before the first
/// lookup, so the lookups of a burst wait for memory together rather than one after another.
/// Only meaningful for the table that made it (each table has its own hash keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HashedKey {
    key: FlowKey,
    hash: u32,
}

/// `addr` as the 128-bit IPv4-mapped IPv6 address `::ffff:a.b.c.d`, the form [`FlowKey`]
/// stores.
pub const fn ipv4_mapped(addr: Ipv4Addr) -> u128 {
    (0xffff_u128 << 32) | addr.to_bits() as u128
}

/// What kind of connection a new descriptor is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnKind {
    Tcp,
    Udp,
}

/// Where a connection is in its life; decides which timeout applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// TCP, no FIN seen yet: expires after [`Timeouts::tcp_idle_ms`] without packets.
    TcpOpen,
    /// TCP after a FIN: expires after [`Timeouts::tcp_close_wait_ms`] without packets, so the
    /// rest of the close handshake still reaches this host.
    TcpClosing,
    /// UDP has no handshake: expires after [`Timeouts::udp_idle_ms`] without packets.
    Udp,
}

impl ConnKind {
    const fn initial_state(self) -> ConnState {
        match self {
            ConnKind::Tcp => ConnState::TcpOpen,
            ConnKind::Udp => ConnState::Udp,
        }
    }
}

/// A descriptor found for a packet: which rule and bucket it was accepted under, and its
/// state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hit {
    pub rule: u8,
    pub bucket: u8,
    pub state: ConnState,
}

/// What [`ConnectionTable::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InsertOutcome {
    /// A new descriptor was created.
    Created,
    /// The key already had a live descriptor (a retransmitted SYN, a reused 4-tuple after a
    /// FIN); it now carries the new rule, bucket and state. `previous` is what it carried.
    Renewed { previous: Hit },
}

/// Why [`ConnectionTable::insert`] created no descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum InsertError {
    /// The table holds `max_connections` descriptors (counted in [`ConnectionCounts::full`]).
    /// The filter falls back to plain bucket ownership for this connection.
    #[error("connection table full")]
    Full,
    /// A rule index of [`MAX_RULES`] or more: a bug in the caller, refused rather than
    /// counted under a rule that does not exist.
    #[error("rule index {0} out of range (at most {max})", max = MAX_RULES - 1)]
    RuleOutOfRange(u8),
    /// A bucket of [`BUCKETS`] or more: a bug in the caller.
    #[error("bucket {0} out of range (at most {max})", max = BUCKETS - 1)]
    BucketOutOfRange(u8),
}

/// How long a descriptor survives without packets, per state, in milliseconds.
///
/// Ages are measured on a wrapping 32-bit millisecond clock and an age is never taken to be
/// more than `i32::MAX` ms (24.8 days): a timeout at or above that never expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// Idle TCP connection, no FIN seen.
    pub tcp_idle_ms: u32,
    /// TCP connection after a FIN, measured from its last packet.
    pub tcp_close_wait_ms: u32,
    /// UDP flow.
    pub udp_idle_ms: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_idle_ms: 3_600_000,
            tcp_close_wait_ms: 10_000,
            udp_idle_ms: 30_000,
        }
    }
}

impl Timeouts {
    const fn for_state(&self, state: ConnState) -> u32 {
        match state {
            ConnState::TcpOpen => self.tcp_idle_ms,
            ConnState::TcpClosing => self.tcp_close_wait_ms,
            ConnState::Udp => self.udp_idle_ms,
        }
    }
}

/// Milliseconds from `then` to `now` on the wrapping clock. A `then` slightly in the future
/// (a caller whose timestamps are not perfectly monotonic) reads as age 0 instead of as
/// 49 days, so a clock hiccup never expires live connections.
#[inline]
const fn age_ms(now_ms: u32, then_ms: u32) -> u32 {
    let age = now_ms.wrapping_sub(then_ms);
    if age > i32::MAX as u32 {
        0
    } else {
        age
    }
}

/// Live descriptor counts of one worker, per (rule, bucket) and in total, with lifetime
/// totals. The worker is the only writer (plain relaxed load + store, no locked
/// read-modify-write on the packet path); any thread may read.
///
/// Each value is individually exact, but a reader is not guaranteed a consistent snapshot
/// across values: the sum of the bucket counts may briefly differ from [`live`](Self::live).
/// A descriptor past its timeout stays counted until the expiry sweep reaches it (one sweep
/// pass takes `slot_count / budget` worker loop iterations), or until a packet of its flow
/// finds it stale.
#[repr(align(64))] // Own cache lines: no false sharing with a neighbouring allocation.
pub struct ConnectionCounts {
    live: AtomicU64,
    created: AtomicU64,
    closed: AtomicU64,
    expired: AtomicU64,
    full: AtomicU64,
    /// Indexed `rule * BUCKETS + bucket`.
    per_bucket: [AtomicU32; MAX_RULES * BUCKETS],
}

impl Default for ConnectionCounts {
    fn default() -> Self {
        ConnectionCounts {
            live: AtomicU64::new(0),
            created: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            full: AtomicU64::new(0),
            per_bucket: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

impl ConnectionCounts {
    /// All zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Live descriptors accepted under `rule` in `bucket`; 0 for indexes out of range.
    pub fn bucket(&self, rule: u8, bucket: u8) -> u32 {
        self.bucket_counter(rule, bucket)
            .map_or(0, |count| count.load(Relaxed))
    }

    /// Live descriptors of `rule`, per bucket; all zero for a rule out of range.
    pub fn rule_buckets(&self, rule: u8) -> [u32; BUCKETS] {
        let mut out = [0; BUCKETS];
        if let Some(row) = self.rule_row(rule) {
            for (out, count) in out.iter_mut().zip(row) {
                *out = count.load(Relaxed);
            }
        }
        out
    }

    /// Descriptors currently held.
    pub fn live(&self) -> u64 {
        self.live.load(Relaxed)
    }

    /// Descriptors ever created.
    pub fn created(&self) -> u64 {
        self.created.load(Relaxed)
    }

    /// Connections ended by the client or server: a first FIN (the descriptor then lingers in
    /// close-wait and is later counted in `expired` too), or an RST on a descriptor that had
    /// seen no FIN. A 4-tuple reused after a FIN renews its descriptor, so over a long run this
    /// may exceed `created`.
    pub fn closed(&self) -> u64 {
        self.closed.load(Relaxed)
    }

    /// Descriptors freed because they outlived their timeout (idle, or close-wait after FIN).
    pub fn expired(&self) -> u64 {
        self.expired.load(Relaxed)
    }

    /// Connections that found the table full and got no descriptor.
    pub fn full(&self) -> u64 {
        self.full.load(Relaxed)
    }

    fn bucket_counter(&self, rule: u8, bucket: u8) -> Option<&AtomicU32> {
        if usize::from(bucket) >= BUCKETS {
            return None;
        }
        self.per_bucket
            .get(usize::from(rule) * BUCKETS + usize::from(bucket))
    }

    fn rule_row(&self, rule: u8) -> Option<&[AtomicU32]> {
        let start = usize::from(rule) * BUCKETS;
        self.per_bucket.get(start..start + BUCKETS)
    }

    // Writers: only the owning table calls these, from its one thread.

    fn descriptor_added(&self, rule: u8, bucket: u8) {
        if let Some(count) = self.bucket_counter(rule, bucket) {
            store_u32(count, count.load(Relaxed).wrapping_add(1));
        }
        bump(&self.live, 1);
    }

    fn descriptor_freed(&self, rule: u8, bucket: u8) {
        if let Some(count) = self.bucket_counter(rule, bucket) {
            store_u32(count, count.load(Relaxed).wrapping_sub(1));
        }
        bump(&self.live, u64::MAX); // wrapping add of -1
    }

    fn descriptor_moved(&self, from: (u8, u8), to: (u8, u8)) {
        if from != to {
            if let Some(count) = self.bucket_counter(from.0, from.1) {
                store_u32(count, count.load(Relaxed).wrapping_sub(1));
            }
            if let Some(count) = self.bucket_counter(to.0, to.1) {
                store_u32(count, count.load(Relaxed).wrapping_add(1));
            }
        }
    }

    fn reset_live(&self) {
        for count in &self.per_bucket {
            count.store(0, Relaxed);
        }
        self.live.store(0, Relaxed);
    }
}

impl fmt::Debug for ConnectionCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionCounts")
            .field("live", &self.live())
            .field("created", &self.created())
            .field("closed", &self.closed())
            .field("expired", &self.expired())
            .field("full", &self.full())
            .finish_non_exhaustive()
    }
}

/// Adds to a counter only this thread writes: a plain load and store, no locked add.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

#[inline]
fn store_u32(counter: &AtomicU32, value: u32) {
    counter.store(value, Relaxed);
}

/// Live descriptors of `rule` per bucket, summed over several workers' counts: what the
/// control thread needs to tell whether a bucket it handed away still has connections here.
/// Saturates instead of wrapping.
pub fn sum_buckets(counts: &[Arc<ConnectionCounts>], rule: u8) -> [u32; BUCKETS] {
    let mut sum = [0u32; BUCKETS];
    for worker in counts {
        for (sum, n) in sum.iter_mut().zip(worker.rule_buckets(rule)) {
            *sum = sum.saturating_add(n);
        }
    }
    sum
}

/// One slot of the table: a whole descriptor, key and value, in 48 bytes, so a probe reads
/// one or two cache lines. The stored 32 bits of hash give the home slot (needed when
/// backward-shifting) without rehashing, and reject most non-matching slots before the key
/// compare.
#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    client: u128,
    vip: u128,
    hash: u32,
    last_seen_ms: u32,
    client_port: u16,
    server_port: u16,
    protocol: u8,
    rule: u8,
    bucket: u8,
    /// `None`: the slot is empty.
    state: Option<ConnState>,
}

impl Slot {
    const EMPTY: Slot = Slot {
        client: 0,
        vip: 0,
        hash: 0,
        last_seen_ms: 0,
        client_port: 0,
        server_port: 0,
        protocol: 0,
        rule: 0,
        bucket: 0,
        state: None,
    };

    #[inline]
    fn holds(&self, key: &FlowKey, hash: u32) -> bool {
        self.state.is_some()
            && self.hash == hash
            && self.client == key.client
            && self.vip == key.vip
            && self.client_port == key.client_port
            && self.server_port == key.server_port
            && self.protocol == key.protocol
    }

    #[cfg(test)]
    fn key(&self) -> FlowKey {
        FlowKey {
            client: self.client,
            vip: self.vip,
            client_port: self.client_port,
            server_port: self.server_port,
            protocol: self.protocol,
        }
    }
}

/// Where a probe for a key ended.
enum Probe {
    /// The key's descriptor is in this slot.
    Found(usize),
    /// The key is absent; this is the empty slot that ends its probe sequence.
    Vacant(usize),
}

/// Keys of the slot hash, derived from the caller's seed.
///
/// The hash is built from folded multiplies (the 128-bit product of two 64-bit words, high
/// half xor low half, as in wyhash and foldhash): one per address, one joining them with the
/// ports and protocol, and a final one, four multiplies for a whole key, far cheaper than
/// SipHash. The final round matters: without it, keys differing only in their client port
/// (the attacker's choice) formed visibly longer probe clusters than random for some seeds;
/// with it, their displacement statistics match SipHash's. It is not cryptographic, but
/// every input word is xored with a secret key first, so a client choosing its ports cannot
/// predict which slots its connections land in and pile them into one long probe cluster.
/// The seed is per table (not the cluster-wide bucket hash seed, which is public by design).
#[derive(Clone, Copy)]
struct SlotHasher {
    keys: [u64; 7],
}

impl SlotHasher {
    fn new(seed: u64) -> Self {
        // splitmix64: turns any seed, even 0, into well-spread independent keys.
        let mut state = seed;
        let mut keys = [0; 7];
        for key in &mut keys {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            *key = z ^ (z >> 31);
        }
        // For IPv4 (upper address word 0) the second operand of an address multiply is the
        // key alone, and k[5] is also the final multiplier: odd keys keep those products
        // from ever being 0.
        keys[1] |= 1;
        keys[3] |= 1;
        keys[5] |= 1;
        SlotHasher { keys }
    }

    #[inline]
    fn hash(&self, key: &FlowKey) -> u32 {
        let k = &self.keys;
        let ports = (u64::from(key.client_port) << 32)
            | (u64::from(key.server_port) << 16)
            | u64::from(key.protocol);
        let client = folded_multiply(key.client as u64 ^ k[0], (key.client >> 64) as u64 ^ k[1]);
        let vip = folded_multiply(key.vip as u64 ^ k[2], (key.vip >> 64) as u64 ^ k[3]);
        let joined = folded_multiply(client ^ ports ^ k[4], vip ^ k[5]);
        (folded_multiply(joined ^ k[6], k[5]) >> 32) as u32
    }
}

/// A prefetch hint for the line holding `p` (nothing on targets without one).
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.cast(), std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// Number of slots for `capacity` descriptors: a power of two at least 4/3 of it, so the
/// table is at most 3/4 full and always has an empty slot to end a probe.
fn slot_count_for(capacity: usize) -> usize {
    (capacity + capacity.div_ceil(3))
        .max(MIN_SLOTS)
        .next_power_of_two()
}

/// The connection descriptors of one worker. See the [module docs](self).
pub struct ConnectionTable {
    slots: dpdk::HugeSlice<Slot>,
    /// `slots.len() - 1`; the length is a power of two.
    mask: usize,
    capacity: usize,
    live: usize,
    /// Next slot the expiry sweep looks at.
    cursor: usize,
    timeouts: Timeouts,
    hasher: SlotHasher,
    counts: Arc<ConnectionCounts>,
}

impl ConnectionTable {
    /// A table for up to `max_connections` descriptors (clamped to [`MAX_DESCRIPTORS`]),
    /// allocating and touching all its memory now so the packet path never page-faults or
    /// allocates. `seed` keys the slot hash: pass something unpredictable and different per
    /// table (e.g. from the OS random source mixed with the worker index).
    pub fn new(max_connections: usize, timeouts: Timeouts, seed: u64) -> Self {
        let capacity = max_connections.min(MAX_DESCRIPTORS);
        let slot_count = slot_count_for(capacity);
        ConnectionTable {
            slots: dpdk::HugeSlice::new(slot_count, Slot::EMPTY),
            mask: slot_count - 1,
            capacity,
            live: 0,
            cursor: 0,
            timeouts,
            hasher: SlotHasher::new(seed),
            counts: Arc::new(ConnectionCounts::new()),
        }
    }

    /// Most descriptors this table holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Size of the slot array (a power of two, above `capacity`): one full expiry sweep looks
    /// at this many slots.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Bytes of the slot array, the table's memory apart from a few fixed-size fields and the
    /// [`ConnectionCounts`].
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val::<[Slot]>(&self.slots)
    }

    /// Descriptors held, including any past their timeout that the sweep has not reached.
    pub fn live(&self) -> usize {
        self.live
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The counts this table keeps, for the control thread.
    pub fn counts(&self) -> Arc<ConnectionCounts> {
        Arc::clone(&self.counts)
    }

    /// The descriptor of `key`, if this host holds the connection; a packet of it was seen at
    /// `now_ms`, which restarts its timeout. A descriptor already past its timeout is freed
    /// here (counted as expired) and not returned, so whether a flow is held never depends
    /// on how far the sweep has got.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, now_ms: u32) -> Option<Hit> {
        self.lookup_hashed(&self.hashed(*key), now_ms)
    }

    /// `key` with its slot hash, for the `_hashed` calls and [`prefetch`](Self::prefetch).
    #[inline]
    pub fn hashed(&self, key: FlowKey) -> HashedKey {
        HashedKey {
            hash: self.hasher.hash(&key),
            key,
        }
    }

    /// Asks the CPU to start loading the slot where `key`'s probe begins (both cache lines
    /// of a slot that straddles two), so a later lookup finds it in cache. A hint only.
    #[inline]
    pub fn prefetch(&self, key: &HashedKey) {
        let index = key.hash as usize & self.mask;
        let slot: *const Slot = &self.slots[index];
        prefetch(slot.cast());
        // SAFETY: one past the slot's first byte, within the same slot (48 bytes): only used
        // as a prefetch address, never dereferenced.
        prefetch(unsafe { slot.cast::<u8>().add(std::mem::size_of::<Slot>() - 1) });
    }

    /// [`lookup`](Self::lookup) with the hash already computed.
    #[inline]
    pub fn lookup_hashed(&mut self, key: &HashedKey, now_ms: u32) -> Option<Hit> {
        let index = self.find_live(key, now_ms)?;
        let slot = &mut self.slots[index];
        slot.last_seen_ms = now_ms;
        slot.state.map(|state| Hit {
            rule: slot.rule,
            bucket: slot.bucket,
            state,
        })
    }

    /// Like [`lookup`](Self::lookup) but changes nothing: no refresh, no freeing of a
    /// descriptor past its timeout (it is reported absent).
    pub fn peek(&self, key: &FlowKey, now_ms: u32) -> Option<Hit> {
        let hash = self.hasher.hash(key);
        match self.probe(key, hash) {
            Probe::Found(index) => {
                let slot = &self.slots[index];
                let state = slot.state?;
                (!self.is_stale(slot, now_ms)).then_some(Hit {
                    rule: slot.rule,
                    bucket: slot.bucket,
                    state,
                })
            }
            Probe::Vacant(_) => None,
        }
    }

    /// Records that this host accepted the connection `key` under `rule` and `bucket`.
    ///
    /// If `key` already has a live descriptor it is renewed: it takes the new rule, bucket
    /// and state (a SYN on a closing 4-tuple makes it open again) and its timeout restarts.
    /// A full table refuses new keys with [`InsertError::Full`] (counted); renewing an
    /// existing descriptor always succeeds.
    pub fn insert(
        &mut self,
        key: &FlowKey,
        rule: u8,
        bucket: u8,
        kind: ConnKind,
        now_ms: u32,
    ) -> Result<InsertOutcome, InsertError> {
        self.insert_hashed(&self.hashed(*key), rule, bucket, kind, now_ms)
    }

    /// [`insert`](Self::insert) with the hash already computed.
    pub fn insert_hashed(
        &mut self,
        hashed: &HashedKey,
        rule: u8,
        bucket: u8,
        kind: ConnKind,
        now_ms: u32,
    ) -> Result<InsertOutcome, InsertError> {
        let HashedKey { ref key, hash } = *hashed;
        if usize::from(rule) >= MAX_RULES {
            return Err(InsertError::RuleOutOfRange(rule));
        }
        if usize::from(bucket) >= BUCKETS {
            return Err(InsertError::BucketOutOfRange(bucket));
        }
        let state = kind.initial_state();
        let vacant = match self.probe(key, hash) {
            Probe::Found(index) => {
                let slot = &self.slots[index];
                match slot.state {
                    Some(previous_state) if !self.is_stale(slot, now_ms) => {
                        let previous = Hit {
                            rule: slot.rule,
                            bucket: slot.bucket,
                            state: previous_state,
                        };
                        self.counts
                            .descriptor_moved((previous.rule, previous.bucket), (rule, bucket));
                        let slot = &mut self.slots[index];
                        slot.rule = rule;
                        slot.bucket = bucket;
                        slot.state = Some(state);
                        slot.last_seen_ms = now_ms;
                        return Ok(InsertOutcome::Renewed { previous });
                    }
                    _ => {
                        // The old connection is dead: free its descriptor, then create a new
                        // one where the (shifted) probe sequence now ends.
                        self.free_expired(index);
                        match self.probe(key, hash) {
                            Probe::Vacant(vacant) => vacant,
                            // Unreachable: the key was just removed.
                            Probe::Found(_) => return Err(InsertError::Full),
                        }
                    }
                }
            }
            Probe::Vacant(vacant) => vacant,
        };
        if self.live >= self.capacity {
            bump(&self.counts.full, 1);
            return Err(InsertError::Full);
        }
        self.slots[vacant] = Slot {
            client: key.client,
            vip: key.vip,
            hash,
            last_seen_ms: now_ms,
            client_port: key.client_port,
            server_port: key.server_port,
            protocol: key.protocol,
            rule,
            bucket,
            state: Some(state),
        };
        self.live += 1;
        self.counts.descriptor_added(rule, bucket);
        bump(&self.counts.created, 1);
        Ok(InsertOutcome::Created)
    }

    /// A FIN of connection `key` was seen at `now_ms`: a TCP descriptor moves to closing and
    /// will expire after the close-wait timeout unless more packets come (they refresh it like
    /// any other). Returns the descriptor after the change, or `None` if none is held. A UDP
    /// descriptor is only refreshed.
    pub fn close(&mut self, key: &FlowKey, now_ms: u32) -> Option<Hit> {
        self.close_hashed(&self.hashed(*key), now_ms)
    }

    /// [`close`](Self::close) with the hash already computed.
    pub fn close_hashed(&mut self, key: &HashedKey, now_ms: u32) -> Option<Hit> {
        let index = self.find_live(key, now_ms)?;
        let slot = &mut self.slots[index];
        slot.last_seen_ms = now_ms;
        if slot.state == Some(ConnState::TcpOpen) {
            slot.state = Some(ConnState::TcpClosing);
            bump(&self.counts.closed, 1);
        }
        slot.state.map(|state| Hit {
            rule: slot.rule,
            bucket: slot.bucket,
            state,
        })
    }

    /// Frees the descriptor of `key` at once (TCP RST) and returns what it was, or `None` if
    /// none was held.
    pub fn remove(&mut self, key: &FlowKey) -> Option<Hit> {
        self.remove_hashed(&self.hashed(*key))
    }

    /// [`remove`](Self::remove) with the hash already computed.
    pub fn remove_hashed(&mut self, key: &HashedKey) -> Option<Hit> {
        let Probe::Found(index) = self.probe(&key.key, key.hash) else {
            return None;
        };
        let slot = &self.slots[index];
        let hit = Hit {
            rule: slot.rule,
            bucket: slot.bucket,
            state: slot.state?,
        };
        if hit.state != ConnState::TcpClosing {
            bump(&self.counts.closed, 1);
        }
        self.free(index);
        Some(hit)
    }

    /// One step of the expiry sweep: looks at up to `budget_slots` slots (never more than one
    /// full pass), starting where the previous call stopped, and frees the descriptors idle
    /// longer than their timeout. Returns how many it freed.
    ///
    /// Call it once per loop iteration with a small budget (e.g. 64) so the work is spread
    /// thin; one full pass then takes [`slot_count`](Self::slot_count) divided by the budget
    /// calls.
    pub fn expire(&mut self, now_ms: u32, budget_slots: usize) -> usize {
        if self.live == 0 {
            return 0;
        }
        let steps = budget_slots.min(self.slots.len());
        let mut freed = 0;
        let mut looked = 0;
        while looked < steps {
            let index = self.cursor & self.mask;
            let slot = &self.slots[index];
            if slot.state.is_some() && self.is_stale(slot, now_ms) {
                self.free_expired(index);
                freed += 1;
                if self.live == 0 {
                    break;
                }
                // The backward shift may have moved a later descriptor of the cluster into
                // this slot: look at it again (freeing is bounded by `live`, so this ends).
                continue;
            }
            self.cursor = (index + 1) & self.mask;
            looked += 1;
        }
        freed
    }

    /// Frees every descriptor (e.g. when the worker's rules are replaced wholesale). Lifetime
    /// totals (`created`, `closed`, ...) are kept; live counts drop to zero. Touches the whole
    /// slot array: not for the packet path.
    pub fn clear(&mut self) {
        self.slots.fill(Slot::EMPTY);
        self.live = 0;
        self.cursor = 0;
        self.counts.reset_live();
    }

    #[inline]
    fn is_stale(&self, slot: &Slot, now_ms: u32) -> bool {
        match slot.state {
            Some(state) => age_ms(now_ms, slot.last_seen_ms) > self.timeouts.for_state(state),
            None => false,
        }
    }

    /// Index of `key`'s descriptor if it is live at `now_ms`; a stale one is freed.
    #[inline]
    fn find_live(&mut self, key: &HashedKey, now_ms: u32) -> Option<usize> {
        debug_assert_eq!(
            key.hash,
            self.hasher.hash(&key.key),
            "key hashed by another table"
        );
        let Probe::Found(index) = self.probe(&key.key, key.hash) else {
            return None;
        };
        if self.is_stale(&self.slots[index], now_ms) {
            self.free_expired(index);
            return None;
        }
        Some(index)
    }

    /// Walks `key`'s probe sequence from its home slot. The table is never full (`capacity`
    /// is below the slot count), so an empty slot always ends the walk.
    #[inline]
    fn probe(&self, key: &FlowKey, hash: u32) -> Probe {
        let mut index = hash as usize & self.mask;
        // Bounded anyway, so a broken invariant could never loop forever.
        for _ in 0..self.slots.len() {
            let slot = &self.slots[index];
            if slot.state.is_none() {
                return Probe::Vacant(index);
            }
            if slot.holds(key, hash) {
                return Probe::Found(index);
            }
            index = (index + 1) & self.mask;
        }
        Probe::Vacant(index)
    }

    fn free_expired(&mut self, index: usize) {
        bump(&self.counts.expired, 1);
        self.free(index);
    }

    /// Frees the descriptor in slot `index` and closes the gap by backward shift: each later
    /// descriptor of the probe cluster whose home slot is not between the gap and itself moves
    /// back into the gap, so every descriptor stays reachable from its home slot without
    /// passing an empty slot, and no tombstones are ever needed.
    fn free(&mut self, index: usize) {
        let Some(freed) = self.slots.get(index) else {
            return;
        };
        if freed.state.is_none() {
            return;
        }
        self.counts.descriptor_freed(freed.rule, freed.bucket);
        self.live = self.live.saturating_sub(1);

        let mask = self.mask;
        let mut gap = index;
        let mut next = index;
        for _ in 0..self.slots.len() {
            next = (next + 1) & mask;
            let slot = self.slots[next];
            if slot.state.is_none() {
                break;
            }
            let home = slot.hash as usize & mask;
            // Distances walked forward (wrapping) to reach `next`: from its home, and from
            // the gap. It may move back into the gap iff the gap is not before its home.
            let from_home = next.wrapping_sub(home) & mask;
            let from_gap = next.wrapping_sub(gap) & mask;
            if from_home >= from_gap {
                self.slots[gap] = slot;
                gap = next;
            }
        }
        self.slots[gap] = Slot::EMPTY;
    }

    /// Whether `key` physically occupies a slot, stale or not.
    #[cfg(test)]
    fn is_present(&self, key: &FlowKey) -> bool {
        matches!(self.probe(key, self.hasher.hash(key)), Probe::Found(_))
    }

    /// Mean and longest distance of the descriptors from their home slots.
    #[cfg(test)]
    fn displacement(&self) -> (f64, usize) {
        let mut total = 0;
        let mut longest = 0;
        for (index, slot) in self.slots.iter().enumerate() {
            if slot.state.is_some() {
                let distance = index.wrapping_sub(slot.hash as usize) & self.mask;
                total += distance;
                longest = longest.max(distance);
            }
        }
        (total as f64 / self.live.max(1) as f64, longest)
    }

    /// Checks the linear-probing invariant and the stored hashes; returns the number of
    /// occupied slots.
    #[cfg(test)]
    fn check_invariants(&self) -> usize {
        let mut occupied = 0;
        for (index, slot) in self.slots.iter().enumerate() {
            if slot.state.is_none() {
                continue;
            }
            occupied += 1;
            let key = slot.key();
            assert_eq!(slot.hash, self.hasher.hash(&key), "stored hash");
            // Every slot from home up to this one must be occupied.
            let mut at = slot.hash as usize & self.mask;
            while at != index {
                assert!(self.slots[at].state.is_some(), "gap in a probe sequence");
                at = (at + 1) & self.mask;
            }
        }
        assert_eq!(occupied, self.live);
        occupied
    }
}

impl fmt::Debug for ConnectionTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionTable")
            .field("capacity", &self.capacity)
            .field("slot_count", &self.slots.len())
            .field("live", &self.live)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn tcp(client_port: u16) -> FlowKey {
        FlowKey::v4(
            Ipv4Addr::new(198, 51, 100, 7),
            client_port,
            Ipv4Addr::new(192, 0, 2, 1),
            80,
            PROTO_TCP,
        )
    }

    fn udp(client_port: u16) -> FlowKey {
        FlowKey {
            protocol: PROTO_UDP,
            server_port: 53,
            ..tcp(client_port)
        }
    }

    fn table(capacity: usize) -> ConnectionTable {
        ConnectionTable::new(capacity, Timeouts::default(), 0x5eed)
    }

    #[test]
    fn slot_is_at_most_64_bytes() {
        assert!(std::mem::size_of::<Slot>() <= 64);
        assert_eq!(std::mem::size_of::<Slot>(), 48);
    }

    #[test]
    fn ipv4_keys_are_mapped() {
        let key = tcp(1000);
        assert_eq!(
            key.client,
            u128::from(Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped())
        );
        let v6 = FlowKey::v6(
            "2001:db8::7".parse().unwrap(),
            1000,
            "2001:db8::1".parse().unwrap(),
            80,
            PROTO_TCP,
        );
        assert_eq!(v6.client, 0x2001_0db8_0000_0000_0000_0000_0000_0007);
        assert_ne!(v6, key);
    }

    #[test]
    fn insert_lookup_remove() {
        let mut t = table(16);
        let key = tcp(40000);
        assert_eq!(t.lookup(&key, 0), None);
        assert_eq!(
            t.insert(&key, 3, 17, ConnKind::Tcp, 0),
            Ok(InsertOutcome::Created)
        );
        let hit = Hit {
            rule: 3,
            bucket: 17,
            state: ConnState::TcpOpen,
        };
        assert_eq!(t.lookup(&key, 1), Some(hit));
        assert_eq!(t.lookup(&tcp(40001), 1), None);
        assert_eq!(
            t.lookup(&udp(40000), 1),
            None,
            "protocol is part of the key"
        );
        assert_eq!(t.live(), 1);
        assert_eq!(t.remove(&key), Some(hit));
        assert_eq!(t.remove(&key), None);
        assert_eq!(t.lookup(&key, 2), None);
        assert_eq!(t.live(), 0);
        let counts = t.counts();
        assert_eq!(
            (counts.created(), counts.closed(), counts.live()),
            (1, 1, 0)
        );
    }

    #[test]
    fn insert_rejects_out_of_range_rule_and_bucket() {
        let mut t = table(4);
        assert_eq!(
            t.insert(&tcp(1), 33, 0, ConnKind::Tcp, 0),
            Err(InsertError::RuleOutOfRange(33))
        );
        assert_eq!(
            t.insert(&tcp(1), 0, 60, ConnKind::Tcp, 0),
            Err(InsertError::BucketOutOfRange(60))
        );
        assert_eq!(t.live(), 0);
        assert_eq!(t.counts().full(), 0);
        assert_eq!(t.counts().bucket(200, 200), 0);
        assert_eq!(t.counts().rule_buckets(255), [0; BUCKETS]);
    }

    #[test]
    fn full_table_refuses_counts_and_makes_room_after_removal() {
        let mut t = table(100);
        for port in 0..100 {
            assert_eq!(
                t.insert(&tcp(port), 0, (port % 60) as u8, ConnKind::Tcp, 0),
                Ok(InsertOutcome::Created)
            );
        }
        assert_eq!(t.live(), 100);
        assert!(t.slot_count() >= 100 * 4 / 3);
        assert_eq!(
            t.insert(&tcp(100), 0, 0, ConnKind::Tcp, 0),
            Err(InsertError::Full)
        );
        assert_eq!(
            t.insert(&tcp(101), 0, 0, ConnKind::Tcp, 0),
            Err(InsertError::Full)
        );
        assert_eq!(t.counts().full(), 2);
        // Renewing a held connection still works when full.
        assert!(matches!(
            t.insert(&tcp(5), 1, 5, ConnKind::Tcp, 1),
            Ok(InsertOutcome::Renewed { .. })
        ));
        assert!(t.remove(&tcp(7)).is_some());
        assert_eq!(
            t.insert(&tcp(100), 0, 0, ConnKind::Tcp, 2),
            Ok(InsertOutcome::Created)
        );
        assert_eq!(
            t.insert(&tcp(101), 0, 0, ConnKind::Tcp, 2),
            Err(InsertError::Full)
        );
        assert_eq!(t.counts().full(), 3);
        for port in (0..=100).filter(|&p| p != 7) {
            assert!(t.lookup(&tcp(port), 3).is_some(), "port {port}");
        }
        t.check_invariants();
    }

    #[test]
    fn zero_capacity_table_is_always_full() {
        let mut t = table(0);
        assert_eq!(
            t.insert(&tcp(1), 0, 0, ConnKind::Udp, 0),
            Err(InsertError::Full)
        );
        assert_eq!(t.lookup(&tcp(1), 0), None);
        assert_eq!(t.expire(0, usize::MAX), 0);
        assert_eq!(t.counts().full(), 1);
    }

    #[test]
    fn udp_expires_after_idle_timeout_not_before() {
        let mut t = table(16);
        let key = udp(5353);
        t.insert(&key, 0, 1, ConnKind::Udp, 1_000).unwrap();
        let idle = Timeouts::default().udp_idle_ms;
        assert_eq!(t.expire(1_000 + idle, usize::MAX), 0);
        assert_eq!(t.live(), 1);
        assert_eq!(t.expire(1_000 + idle + 1, usize::MAX), 1);
        assert_eq!(t.live(), 0);
        assert_eq!(t.lookup(&key, 1_000 + idle + 1), None);
        let counts = t.counts();
        assert_eq!(
            (counts.expired(), counts.bucket(0, 1), counts.live()),
            (1, 0, 0)
        );
    }

    #[test]
    fn packets_refresh_the_idle_timeout() {
        let mut t = table(16);
        let key = udp(5353);
        let idle = Timeouts::default().udp_idle_ms;
        t.insert(&key, 0, 1, ConnKind::Udp, 0).unwrap();
        assert!(t.lookup(&key, idle).is_some());
        assert_eq!(t.expire(idle + idle, usize::MAX), 0);
        assert_eq!(t.expire(idle + idle + 1, usize::MAX), 1);
    }

    #[test]
    fn stale_descriptor_is_gone_before_the_sweep_reaches_it() {
        let mut t = table(16);
        let key = udp(5353);
        let idle = Timeouts::default().udp_idle_ms;
        t.insert(&key, 0, 1, ConnKind::Udp, 0).unwrap();
        assert_eq!(t.peek(&key, idle + 1), None);
        assert_eq!(t.live(), 1, "peek frees nothing");
        assert_eq!(t.lookup(&key, idle + 1), None);
        assert_eq!(t.live(), 0);
        assert_eq!(t.counts().expired(), 1);
        // And a new connection on the same 4-tuple is a new descriptor.
        t.insert(&key, 0, 1, ConnKind::Udp, 0).unwrap();
        assert_eq!(
            t.insert(&key, 2, 2, ConnKind::Udp, idle + 1),
            Ok(InsertOutcome::Created)
        );
        assert_eq!(t.counts().bucket(0, 1), 0);
        assert_eq!(t.counts().bucket(2, 2), 1);
    }

    #[test]
    fn fin_starts_close_wait_and_packets_keep_refreshing_it() {
        let mut t = table(16);
        let key = tcp(40000);
        let wait = Timeouts::default().tcp_close_wait_ms;
        t.insert(&key, 1, 2, ConnKind::Tcp, 0).unwrap();
        let closing = Hit {
            rule: 1,
            bucket: 2,
            state: ConnState::TcpClosing,
        };
        assert_eq!(t.close(&key, 100), Some(closing));
        assert_eq!(t.close(&key, 200), Some(closing), "second FIN");
        assert_eq!(t.counts().closed(), 1, "one connection, one close");
        // The last ACK arrives later and refreshes the close-wait.
        assert_eq!(t.lookup(&key, 5_000), Some(closing));
        assert_eq!(t.expire(5_000 + wait, usize::MAX), 0);
        assert_eq!(t.expire(5_000 + wait + 1, usize::MAX), 1);
        assert_eq!(t.lookup(&key, 5_000 + wait + 1), None);
        assert_eq!(t.counts().bucket(1, 2), 0);
        // Close-wait is much shorter than the idle timeout of an open connection.
        t.insert(&key, 1, 2, ConnKind::Tcp, 0).unwrap();
        assert_eq!(t.expire(wait + 1, usize::MAX), 0);
        // A SYN on a closing 4-tuple reopens it.
        t.close(&key, 10).unwrap();
        assert_eq!(
            t.insert(&key, 1, 2, ConnKind::Tcp, 20),
            Ok(InsertOutcome::Renewed { previous: closing })
        );
        assert_eq!(t.lookup(&key, 30).unwrap().state, ConnState::TcpOpen);
        // RST after FIN is not a second close.
        t.close(&key, 40).unwrap();
        let closed = t.counts().closed();
        assert_eq!(t.remove(&key), Some(closing));
        assert_eq!(t.counts().closed(), closed);
    }

    #[test]
    fn close_on_udp_only_refreshes() {
        let mut t = table(4);
        t.insert(&udp(1), 0, 0, ConnKind::Udp, 0).unwrap();
        assert_eq!(t.close(&udp(1), 10).unwrap().state, ConnState::Udp);
        assert_eq!(t.close(&udp(2), 10), None);
        assert_eq!(t.counts().closed(), 0);
    }

    #[test]
    fn timestamps_across_u32_wrap() {
        let mut t = table(16);
        let idle = Timeouts::default().udp_idle_ms;
        let start = u32::MAX - 10_000;
        t.insert(&udp(1), 0, 0, ConnKind::Udp, start).unwrap();
        let just_in_time = start.wrapping_add(idle);
        assert!(just_in_time < start, "wrapped");
        assert!(t.lookup(&udp(1), just_in_time).is_some());
        assert_eq!(t.expire(just_in_time.wrapping_add(idle), usize::MAX), 0);
        assert_eq!(t.expire(just_in_time.wrapping_add(idle + 1), usize::MAX), 1);
        // A timestamp slightly behind the last packet reads as age 0, not 49 days.
        t.insert(&udp(2), 0, 0, ConnKind::Udp, 5).unwrap();
        assert_eq!(t.expire(0, usize::MAX), 0);
        assert!(t.lookup(&udp(2), 0).is_some());
        assert_eq!(age_ms(5, u32::MAX), 6);
        assert_eq!(age_ms(0, 5), 0);
    }

    #[test]
    fn sweep_is_incremental_and_bounded_by_its_budget() {
        let mut t = table(1000);
        for port in 0..1000 {
            t.insert(&udp(port), 0, 0, ConnKind::Udp, 0).unwrap();
        }
        let late = Timeouts::default().udp_idle_ms + 1;
        let slots = t.slot_count();
        let mut freed = 0;
        let mut calls = 0;
        while freed < 1000 {
            let n = t.expire(late, 64);
            freed += n;
            calls += 1;
            t.check_invariants();
            assert!(calls <= slots.div_ceil(64), "one pass frees everything");
        }
        assert_eq!(t.live(), 0);
        assert_eq!(t.counts().bucket(0, 0), 0);
        assert_eq!(t.expire(late, 0), 0);
    }

    #[test]
    fn per_bucket_counts_are_exact() {
        let mut t = table(64);
        let counts = t.counts();
        t.insert(&tcp(1), 0, 10, ConnKind::Tcp, 0).unwrap();
        t.insert(&tcp(2), 0, 10, ConnKind::Tcp, 0).unwrap();
        t.insert(&tcp(3), 31, 59, ConnKind::Tcp, 0).unwrap();
        t.insert(&udp(4), 5, 10, ConnKind::Udp, 0).unwrap();
        assert_eq!(counts.bucket(0, 10), 2);
        assert_eq!(counts.bucket(31, 59), 1);
        assert_eq!(counts.bucket(5, 10), 1);
        assert_eq!(counts.live(), 4);
        // Re-insert under another rule and bucket moves the count.
        t.insert(&tcp(2), 31, 59, ConnKind::Tcp, 1).unwrap();
        assert_eq!((counts.bucket(0, 10), counts.bucket(31, 59)), (1, 2));
        assert_eq!(counts.live(), 4);
        t.remove(&tcp(3));
        assert_eq!(counts.bucket(31, 59), 1);
        t.close(&tcp(1), 2);
        assert_eq!(counts.bucket(0, 10), 1, "closing is still held");
        t.expire(2 + Timeouts::default().tcp_close_wait_ms + 1, usize::MAX);
        assert_eq!(counts.bucket(0, 10), 0);
        assert_eq!(counts.live(), 2);

        // Two workers, summed.
        let mut other = ConnectionTable::new(8, Timeouts::default(), 99);
        other.insert(&tcp(9), 31, 59, ConnKind::Tcp, 0).unwrap();
        other.insert(&tcp(8), 31, 0, ConnKind::Tcp, 0).unwrap();
        let sum = sum_buckets(&[t.counts(), other.counts()], 31);
        let mut want = [0; BUCKETS];
        want[59] = 2;
        want[0] = 1;
        assert_eq!(sum, want);
        assert_eq!(sum_buckets(&[], 0), [0; BUCKETS]);

        t.clear();
        assert_eq!(counts.live(), 0);
        assert_eq!(counts.rule_buckets(5), [0; BUCKETS]);
        assert_eq!(counts.rule_buckets(31), [0; BUCKETS]);
        assert_eq!(counts.created(), 4, "lifetime totals survive clear");
        assert_eq!(t.lookup(&udp(4), 3), None);
        t.insert(&udp(4), 5, 10, ConnKind::Udp, 3).unwrap();
        assert_eq!(counts.bucket(5, 10), 1);
    }

    #[test]
    fn fills_to_capacity_with_ipv4_and_ipv6() {
        let capacity = 4096;
        let mut t = ConnectionTable::new(capacity, Timeouts::default(), 7);
        assert_eq!(t.slot_count(), 8192);
        assert_eq!(t.memory_bytes(), 8192 * std::mem::size_of::<Slot>());
        let key = |i: usize| {
            let port = i as u16;
            // Alternate families (written without `is_multiple_of`: MSRV 1.80).
            if i % 2 == 1 {
                FlowKey::v6(
                    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7),
                    port,
                    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
                    443,
                    PROTO_TCP,
                )
            } else {
                tcp(port)
            }
        };
        for i in 0..capacity {
            assert_eq!(
                t.insert(
                    &key(i),
                    (i % MAX_RULES) as u8,
                    (i % BUCKETS) as u8,
                    ConnKind::Tcp,
                    0
                ),
                Ok(InsertOutcome::Created)
            );
        }
        assert_eq!(t.check_invariants(), capacity);
        assert_eq!(
            t.insert(&key(capacity), 0, 0, ConnKind::Tcp, 0),
            Err(InsertError::Full)
        );
        for i in 0..capacity {
            let hit = t.lookup(&key(i), 1).unwrap();
            assert_eq!(
                (hit.rule, hit.bucket),
                ((i % MAX_RULES) as u8, (i % BUCKETS) as u8)
            );
        }
        // Churn: remove every third, check all others still reachable.
        for i in (0..capacity).step_by(3) {
            assert!(t.remove(&key(i)).is_some());
        }
        t.check_invariants();
        for i in 0..capacity {
            assert_eq!(t.lookup(&key(i), 2).is_some(), i % 3 != 0);
        }
        let total: u64 = (0..MAX_RULES as u8)
            .flat_map(|r| t.counts().rule_buckets(r))
            .map(u64::from)
            .sum();
        assert_eq!(total, t.live() as u64);
    }

    #[test]
    fn every_port_of_one_client_spreads_evenly() {
        // The hostile case: one client, one VIP and port, all 65,536 source ports, at the
        // full-capacity load factor. Linear probing at load 1/2 averages 0.5 slots of
        // displacement; a weak hash mixing would show clusters here.
        for seed in [0, 1, 0xdead_beef] {
            let mut t = ConnectionTable::new(1 << 16, Timeouts::default(), seed);
            for port in 0..=u16::MAX {
                t.insert(&tcp(port), 0, 0, ConnKind::Tcp, 0).unwrap();
            }
            let (mean, longest) = t.displacement();
            assert!(mean < 1.0, "mean displacement {mean}");
            assert!(longest < 100, "longest displacement {longest}");
        }
    }

    #[test]
    fn oversized_request_is_clamped() {
        assert_eq!(slot_count_for(MAX_DESCRIPTORS), 1 << 27);
        assert_eq!(slot_count_for(262_144), 524_288);
        assert_eq!(slot_count_for(1_000_000), 2_097_152);
        assert_eq!(slot_count_for(0), MIN_SLOTS);
        assert_eq!(slot_count_for(6), 8);
        assert_eq!(slot_count_for(7), 16);
    }

    // ---- Model-based property test -------------------------------------------------------

    #[derive(Debug, Clone)]
    enum Op {
        Insert {
            key: usize,
            rule: u8,
            bucket: u8,
            udp: bool,
        },
        Lookup(usize),
        Peek(usize),
        Close(usize),
        Remove(usize),
        Expire(usize),
        ExpireAll,
        Advance(u32),
        Clear,
    }

    const KEYS: usize = 48;

    /// A small pool of keys, both families and protocols, so operations collide often.
    fn pool_key(i: usize) -> FlowKey {
        let port = 1000 + (i % 12) as u16;
        let protocol = match i % 5 {
            0 => PROTO_UDP,
            _ => PROTO_TCP,
        };
        if i % 4 == 3 {
            FlowKey::v6(
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, (i / 12) as u16),
                port,
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100),
                443,
                protocol,
            )
        } else {
            FlowKey::v4(
                Ipv4Addr::new(203, 0, 113, (i / 12) as u8),
                port,
                Ipv4Addr::new(192, 0, 2, 1),
                80,
                protocol,
            )
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = 0..KEYS;
        let rule = prop_oneof![8 => 0u8..3, 1 => 30u8..36];
        let bucket = prop_oneof![8 => 0u8..3, 1 => 57u8..64];
        prop_oneof![
            6 => (key.clone(), rule, bucket, any::<bool>())
                .prop_map(|(key, rule, bucket, udp)| Op::Insert { key, rule, bucket, udp }),
            4 => key.clone().prop_map(Op::Lookup),
            1 => key.clone().prop_map(Op::Peek),
            2 => key.clone().prop_map(Op::Close),
            3 => key.prop_map(Op::Remove),
            2 => (0usize..24).prop_map(Op::Expire),
            1 => Just(Op::ExpireAll),
            3 => prop_oneof![0u32..150, 0u32..1500].prop_map(Op::Advance),
            1 => Just(Op::Clear),
        ]
    }

    #[derive(Clone, Copy, Debug)]
    struct ModelEntry {
        rule: u8,
        bucket: u8,
        state: ConnState,
        last_seen_ms: u32,
    }

    impl ModelEntry {
        fn hit(&self) -> Hit {
            Hit {
                rule: self.rule,
                bucket: self.bucket,
                state: self.state,
            }
        }
    }

    /// The table's specification, on a `HashMap`. It holds what the table physically holds,
    /// stale or not.
    struct Model {
        capacity: usize,
        timeouts: Timeouts,
        entries: HashMap<FlowKey, ModelEntry>,
        created: u64,
        closed: u64,
        expired: u64,
        full: u64,
    }

    impl Model {
        fn stale(&self, entry: &ModelEntry, now: u32) -> bool {
            let age = now.wrapping_sub(entry.last_seen_ms);
            let age = if age > i32::MAX as u32 { 0 } else { age };
            age > self.timeouts.for_state(entry.state)
        }

        /// The live entry of `key`, freeing a stale one.
        fn live(&mut self, key: &FlowKey, now: u32) -> Option<&mut ModelEntry> {
            let entry = *self.entries.get(key)?;
            if self.stale(&entry, now) {
                self.entries.remove(key);
                self.expired += 1;
                return None;
            }
            self.entries.get_mut(key)
        }

        fn lookup(&mut self, key: &FlowKey, now: u32) -> Option<Hit> {
            let entry = self.live(key, now)?;
            entry.last_seen_ms = now;
            Some(entry.hit())
        }

        fn peek(&self, key: &FlowKey, now: u32) -> Option<Hit> {
            let entry = self.entries.get(key)?;
            (!self.stale(entry, now)).then(|| entry.hit())
        }

        fn insert(
            &mut self,
            key: &FlowKey,
            rule: u8,
            bucket: u8,
            kind: ConnKind,
            now: u32,
        ) -> Result<InsertOutcome, InsertError> {
            if usize::from(rule) >= MAX_RULES {
                return Err(InsertError::RuleOutOfRange(rule));
            }
            if usize::from(bucket) >= BUCKETS {
                return Err(InsertError::BucketOutOfRange(bucket));
            }
            let new = ModelEntry {
                rule,
                bucket,
                state: kind.initial_state(),
                last_seen_ms: now,
            };
            if let Some(entry) = self.live(key, now) {
                let previous = entry.hit();
                *entry = new;
                return Ok(InsertOutcome::Renewed { previous });
            }
            if self.entries.len() >= self.capacity {
                self.full += 1;
                return Err(InsertError::Full);
            }
            self.entries.insert(*key, new);
            self.created += 1;
            Ok(InsertOutcome::Created)
        }

        fn close(&mut self, key: &FlowKey, now: u32) -> Option<Hit> {
            let entry = self.live(key, now)?;
            entry.last_seen_ms = now;
            let mut closed = false;
            if entry.state == ConnState::TcpOpen {
                entry.state = ConnState::TcpClosing;
                closed = true;
            }
            let hit = entry.hit();
            self.closed += u64::from(closed);
            Some(hit)
        }

        fn remove(&mut self, key: &FlowKey) -> Option<Hit> {
            let entry = self.entries.remove(key)?;
            if entry.state != ConnState::TcpClosing {
                self.closed += 1;
            }
            Some(entry.hit())
        }
    }

    fn check(t: &ConnectionTable, m: &Model) {
        assert_eq!(t.check_invariants(), m.entries.len());
        assert_eq!(t.live(), m.entries.len());
        for key in m.entries.keys() {
            assert!(
                t.is_present(key),
                "model entry {key:?} missing from the table"
            );
        }
        let counts = t.counts();
        assert_eq!(counts.live(), m.entries.len() as u64);
        assert_eq!(counts.created(), m.created);
        assert_eq!(counts.closed(), m.closed);
        assert_eq!(counts.expired(), m.expired);
        assert_eq!(counts.full(), m.full);
        let mut want = vec![0u32; MAX_RULES * BUCKETS];
        for entry in m.entries.values() {
            want[usize::from(entry.rule) * BUCKETS + usize::from(entry.bucket)] += 1;
        }
        for rule in 0..MAX_RULES {
            let got = counts.rule_buckets(rule as u8);
            assert_eq!(
                &got[..],
                &want[rule * BUCKETS..(rule + 1) * BUCKETS],
                "rule {rule}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn behaves_like_a_hash_map(
            capacity in 0usize..24,
            seed in any::<u64>(),
            start in prop_oneof![Just(u32::MAX - 3_000), any::<u32>()],
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let timeouts = Timeouts { tcp_idle_ms: 1_000, tcp_close_wait_ms: 100, udp_idle_ms: 300 };
            let mut t = ConnectionTable::new(capacity, timeouts, seed);
            let mut m = Model {
                capacity,
                timeouts,
                entries: HashMap::new(),
                created: 0,
                closed: 0,
                expired: 0,
                full: 0,
            };
            let mut now = start;
            for op in ops {
                match op {
                    Op::Insert { key, rule, bucket, udp } => {
                        let key = pool_key(key);
                        let kind = if udp { ConnKind::Udp } else { ConnKind::Tcp };
                        prop_assert_eq!(
                            t.insert(&key, rule, bucket, kind, now),
                            m.insert(&key, rule, bucket, kind, now)
                        );
                    }
                    Op::Lookup(key) => {
                        let key = pool_key(key);
                        prop_assert_eq!(t.lookup(&key, now), m.lookup(&key, now));
                    }
                    Op::Peek(key) => {
                        let key = pool_key(key);
                        prop_assert_eq!(t.peek(&key, now), m.peek(&key, now));
                    }
                    Op::Close(key) => {
                        let key = pool_key(key);
                        prop_assert_eq!(t.close(&key, now), m.close(&key, now));
                    }
                    Op::Remove(key) => {
                        let key = pool_key(key);
                        prop_assert_eq!(t.remove(&key), m.remove(&key));
                    }
                    Op::Expire(budget) => {
                        // Which stale descriptors a partial sweep reaches depends on the slot
                        // layout; the table is the oracle for which, the model checks that
                        // each was stale and that the count adds up.
                        let freed = t.expire(now, budget);
                        let gone: Vec<FlowKey> =
                            m.entries.keys().filter(|k| !t.is_present(k)).copied().collect();
                        prop_assert_eq!(freed, gone.len());
                        for key in gone {
                            let entry = m.entries.remove(&key).unwrap();
                            prop_assert!(m.stale(&entry, now), "swept a live descriptor");
                            m.expired += 1;
                        }
                    }
                    Op::ExpireAll => {
                        let before = m.entries.len();
                        let mut stale_keys = Vec::new();
                        for (key, entry) in &m.entries {
                            if m.stale(entry, now) {
                                stale_keys.push(*key);
                            }
                        }
                        for key in &stale_keys {
                            m.entries.remove(key);
                        }
                        m.expired += stale_keys.len() as u64;
                        prop_assert_eq!(t.expire(now, usize::MAX), before - m.entries.len());
                    }
                    Op::Advance(ms) => now = now.wrapping_add(ms),
                    Op::Clear => {
                        t.clear();
                        m.entries.clear();
                    }
                }
                check(&t, &m);
            }
        }
    }
}
