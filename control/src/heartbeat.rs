//! The NLB heartbeat codec: the frames cluster hosts broadcast to each other under EtherType
//! `0x886F`, as typed views over the bytes and as plain `Repr` values.
//!
//! Microsoft registered `0x886F` for several protocols, so a 4-byte code at the start of the
//! payload says which one a frame carries. This module knows two codes and reports any other
//! as [`Error::UnknownCode`] for the caller to count and drop:
//!
//! - [`CODE_HEARTBEAT`] (`0xC0DE01BF`), the membership "ping": a fixed 1496-byte payload
//!   (1510-byte frame without FCS) in the layout of WLBS.md section 2, so Wireshark's and
//!   tcpdump's MS NLB dissectors decode our heartbeats. Integers are little-endian, IPv4
//!   addresses network order. The 132-byte reserved tail ([`Packet::auth_area`]) is where
//!   the authentication tag goes: a signer runs after [`HeartbeatRepr::emit`], which zeroes it.
//! - [`CODE_IDENTITY`] (`0xC0DE01C0`), the identity heartbeat. Its first 20 bytes are the
//!   heartbeat's (code, version, host priority, cluster IP, dedicated IP): tcpdump prints
//!   those five fields for every `0x886F` frame whatever its code, and Wireshark decodes
//!   them for every code, so keeping them in place keeps both tools truthful. TLVs follow
//!   (our own layout; see [`IdentityPacket`]).
//!
//! The codec is policy-free: it carries rule codes, bucket maps and the convergence state as
//! numbers and never interprets them. Frames are plain Ethernet II; a VLAN tag must be
//! removed before [`parse_frame`] and added after [`emit_frame`].

use std::net::Ipv4Addr;

use wlbs_dataplane::wire::{ethernet, EtherType, EthernetAddress};

/// EtherType of NLB heartbeats (shared with other Microsoft protocols: check the code).
pub const ETHERTYPE: EtherType = EtherType::NLB_HEARTBEAT;
/// Code of the membership heartbeat; on the wire `BF 01 DE C0`.
pub const CODE_HEARTBEAT: u32 = 0xC0DE_01BF;
/// Code of the identity heartbeat (host name; sent about every 10 s).
pub const CODE_IDENTITY: u32 = 0xC0DE_01C0;
/// Length of a heartbeat payload: everything after the EtherType.
pub const PAYLOAD_LEN: usize = 1496;
/// Per-rule slots in a heartbeat: up to 32 port rules plus the implicit default rule.
pub const MAX_RULE_SLOTS: usize = 33;
/// Length of the authentication area at the end of a heartbeat.
pub const AUTH_LEN: usize = 132;
/// Host priorities a heartbeat may carry.
pub const HOST_PRIORITIES: core::ops::RangeInclusive<u32> = 1..=32;
/// Length of the header an identity heartbeat shares with the heartbeat.
pub const IDENTITY_HEADER_LEN: usize = field::TLVS;
/// Longest host name an identity heartbeat carries (the TLV length is one byte).
pub const MAX_HOST_NAME_LEN: usize = u8::MAX as usize;
/// Identity TLV type: end of the list; the rest of the frame is padding.
pub const TLV_END: u8 = 0;
/// Identity TLV type: the host name, UTF-8.
pub const TLV_HOST_NAME: u8 = 0x81;

/// Shortest Ethernet frame without FCS; shorter identity frames are padded with zeros.
const MIN_FRAME_LEN: usize = 60;

/// Byte offsets from the first byte after the EtherType, as WLBS.md section 2 lists them.
mod field {
    pub type Field = core::ops::Range<usize>;

    pub const CODE: Field = 0..4;
    pub const VERSION: Field = 4..8;
    pub const HOST_PRIORITY: Field = 8..12;
    pub const CLUSTER_IP: Field = 12..16;
    pub const DEDICATED_IP: Field = 16..20;
    pub const HOST_ID: Field = 20..22;
    pub const DEFAULT_HOST_ID: Field = 22..24;
    pub const CONVERGENCE_STATE: Field = 24..26;
    pub const RULE_COUNT: Field = 26..28;
    pub const UNIQUE_HOST_CODE: Field = 28..32;
    pub const PACKETS_HANDLED: Field = 32..36;
    pub const TEAMING: Field = 36..40;
    pub const RESERVED: Field = 40..44;
    /// 33 x u32.
    pub const RULE_CODES: Field = 44..176;
    /// 33 x u64 each.
    pub const CURRENT_MAPS: Field = 176..440;
    pub const NEW_MAPS: Field = 440..704;
    pub const IDLE_MAPS: Field = 704..968;
    pub const READY_MAPS: Field = 968..1232;
    /// 33 x u32.
    pub const LOAD_WEIGHTS: Field = 1232..1364;
    /// 33 x 4 reserved bytes: the authentication tag.
    pub const AUTH: Field = 1364..1496;

    /// Identity heartbeat: TLVs start after the shared header.
    pub const TLVS: usize = 20;
}

// The table above must tile the payload exactly, slot arrays included.
const _: () = {
    assert!(field::RESERVED.end == field::RULE_CODES.start);
    assert!(field::RULE_CODES.end - field::RULE_CODES.start == MAX_RULE_SLOTS * 4);
    assert!(field::CURRENT_MAPS.start == field::RULE_CODES.end);
    assert!(field::CURRENT_MAPS.end - field::CURRENT_MAPS.start == MAX_RULE_SLOTS * 8);
    assert!(field::NEW_MAPS.start == field::CURRENT_MAPS.end);
    assert!(field::NEW_MAPS.end - field::NEW_MAPS.start == MAX_RULE_SLOTS * 8);
    assert!(field::IDLE_MAPS.start == field::NEW_MAPS.end);
    assert!(field::IDLE_MAPS.end - field::IDLE_MAPS.start == MAX_RULE_SLOTS * 8);
    assert!(field::READY_MAPS.start == field::IDLE_MAPS.end);
    assert!(field::READY_MAPS.end - field::READY_MAPS.start == MAX_RULE_SLOTS * 8);
    assert!(field::LOAD_WEIGHTS.start == field::READY_MAPS.end);
    assert!(field::LOAD_WEIGHTS.end - field::LOAD_WEIGHTS.start == MAX_RULE_SLOTS * 4);
    assert!(field::AUTH.start == field::LOAD_WEIGHTS.end);
    assert!(field::AUTH.end - field::AUTH.start == AUTH_LEN);
    assert!(field::AUTH.end == PAYLOAD_LEN);
};

/// Why bytes are not a heartbeat this codec accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Error {
    /// The buffer ends before the fixed layout, or a TLV runs past the end.
    #[error("NLB frame truncated: shorter than its layout requires")]
    Truncated,
    /// The Ethernet frame is not EtherType `0x886F`.
    #[error("not an NLB frame: EtherType {0}, expected 0x886f")]
    NotNlb(EtherType),
    /// `0x886F` with a code this codec does not know (another Microsoft protocol).
    #[error("NLB frame with unknown code {0:#010x}")]
    UnknownCode(u32),
    /// More port rules than a heartbeat has slots for.
    #[error("heartbeat claims {0} port rules; it has slots for at most {MAX_RULE_SLOTS}")]
    TooManyRules(u16),
    /// A host priority outside 1..=32.
    #[error("host priority {0} is outside 1..=32")]
    BadHostPriority(u32),
    /// The identity heartbeat's host name is not UTF-8.
    #[error("identity heartbeat host name is not valid UTF-8")]
    HostNameNotUtf8,
    /// The identity heartbeat carries no host name TLV.
    #[error("identity heartbeat carries no host name")]
    MissingHostName,
    /// The identity heartbeat carries two host name TLVs.
    #[error("identity heartbeat carries more than one host name")]
    DuplicateHostName,
    /// A host name too long for its one-byte TLV length.
    #[error(
        "host name is {0} bytes long; an identity heartbeat carries at most {MAX_HOST_NAME_LEN}"
    )]
    HostNameTooLong(usize),
    /// A TLV that cannot be written: a value over 255 bytes, or type 0 (end) or the host
    /// name's type among the other TLVs.
    #[error("identity TLV {kind:#04x} of {len} bytes cannot be written (at most 255 bytes; types 0x00 and 0x81 are reserved)")]
    BadTlv { kind: u8, len: usize },
    /// An identity heartbeat longer than a heartbeat's payload.
    #[error("identity heartbeat of {0} bytes; at most {PAYLOAD_LEN} fit in a frame")]
    IdentityTooLong(usize),
}

/// Result of heartbeat parsing.
pub type Result<T> = core::result::Result<T, Error>;

// Little-endian field access; the views call these only for fields their length check covers.

fn read_u16(data: &[u8], at: field::Field) -> u16 {
    let b = &data[at];
    u16::from_le_bytes([b[0], b[1]])
}

fn read_u32(data: &[u8], at: field::Field) -> u32 {
    let b = &data[at];
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn read_u64(data: &[u8], at: field::Field) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&data[at]);
    u64::from_le_bytes(b)
}

fn read_ipv4(data: &[u8], at: field::Field) -> Ipv4Addr {
    let b = &data[at];
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// The byte range of slot `i` in a per-rule array of `width`-byte entries.
///
/// # Panics
/// If `i >= MAX_RULE_SLOTS`.
fn slot(array: field::Field, width: usize, i: usize) -> field::Field {
    assert!(
        i < MAX_RULE_SLOTS,
        "rule slot {i} out of range (a heartbeat has {MAX_RULE_SLOTS})"
    );
    let start = array.start + i * width;
    start..start + width
}

/// Reads the code of any `0x886F` payload, `None` if it is shorter than the code.
fn payload_code(payload: &[u8]) -> Option<u32> {
    payload
        .get(field::CODE)
        .map(|_| read_u32(payload, field::CODE))
}

/// A view of a heartbeat payload (the bytes after the EtherType).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds a whole heartbeat. Trailing bytes are ignored.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the length, then the code.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < PAYLOAD_LEN {
            return Err(Error::Truncated);
        }
        match self.code() {
            CODE_HEARTBEAT => Ok(()),
            code => Err(Error::UnknownCode(code)),
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn code(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::CODE)
    }

    /// Protocol version, major in bits 8..16 and minor in bits 0..8 (a Windows capture: 0x0206).
    pub fn version(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VERSION)
    }

    /// Host priority, 1..32 in a valid heartbeat (the "unique host id").
    pub fn host_priority(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::HOST_PRIORITY)
    }

    pub fn cluster_ip(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::CLUSTER_IP)
    }

    pub fn dedicated_ip(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::DEDICATED_IP)
    }

    /// The sender's host id, 0-based (host priority - 1 in Windows heartbeats).
    pub fn host_id(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HOST_ID)
    }

    /// The default host's id as the sender sees it, 0-based.
    pub fn default_host_id(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DEFAULT_HOST_ID)
    }

    pub fn convergence_state(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CONVERGENCE_STATE)
    }

    /// Number of port rules, the implicit default rule included.
    pub fn rule_count(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::RULE_COUNT)
    }

    pub fn unique_host_code(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::UNIQUE_HOST_CODE)
    }

    pub fn packets_handled(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::PACKETS_HANDLED)
    }

    /// Teaming (bidirectional affinity) bitfield; 0 when unused.
    pub fn teaming(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::TEAMING)
    }

    /// Configuration code of rule slot `i`. Panics if `i >= MAX_RULE_SLOTS`.
    pub fn rule_code(&self, i: usize) -> u32 {
        read_u32(self.buffer.as_ref(), slot(field::RULE_CODES, 4, i))
    }

    /// Buckets rule slot `i` owns now. Panics if `i >= MAX_RULE_SLOTS`.
    pub fn current_map(&self, i: usize) -> u64 {
        read_u64(self.buffer.as_ref(), slot(field::CURRENT_MAPS, 8, i))
    }

    /// Buckets rule slot `i` is to own. Panics if `i >= MAX_RULE_SLOTS`.
    pub fn new_map(&self, i: usize) -> u64 {
        read_u64(self.buffer.as_ref(), slot(field::NEW_MAPS, 8, i))
    }

    /// Buckets of rule slot `i` without connections. Panics if `i >= MAX_RULE_SLOTS`.
    pub fn idle_map(&self, i: usize) -> u64 {
        read_u64(self.buffer.as_ref(), slot(field::IDLE_MAPS, 8, i))
    }

    /// Buckets of rule slot `i` ready to hand over. Panics if `i >= MAX_RULE_SLOTS`.
    pub fn ready_map(&self, i: usize) -> u64 {
        read_u64(self.buffer.as_ref(), slot(field::READY_MAPS, 8, i))
    }

    /// Load weight of rule slot `i`. Panics if `i >= MAX_RULE_SLOTS`.
    pub fn load_weight(&self, i: usize) -> u32 {
        read_u32(self.buffer.as_ref(), slot(field::LOAD_WEIGHTS, 4, i))
    }

    /// The 132 reserved bytes at the end, where the authentication tag goes.
    pub fn auth_area(&self) -> &[u8] {
        &self.buffer.as_ref()[field::AUTH]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn write(&mut self, at: field::Field, bytes: &[u8]) {
        self.buffer.as_mut()[at].copy_from_slice(bytes);
    }

    pub fn set_code(&mut self, value: u32) {
        self.write(field::CODE, &value.to_le_bytes());
    }

    pub fn set_version(&mut self, value: u32) {
        self.write(field::VERSION, &value.to_le_bytes());
    }

    pub fn set_host_priority(&mut self, value: u32) {
        self.write(field::HOST_PRIORITY, &value.to_le_bytes());
    }

    pub fn set_cluster_ip(&mut self, addr: Ipv4Addr) {
        self.write(field::CLUSTER_IP, &addr.octets());
    }

    pub fn set_dedicated_ip(&mut self, addr: Ipv4Addr) {
        self.write(field::DEDICATED_IP, &addr.octets());
    }

    pub fn set_host_id(&mut self, value: u16) {
        self.write(field::HOST_ID, &value.to_le_bytes());
    }

    pub fn set_default_host_id(&mut self, value: u16) {
        self.write(field::DEFAULT_HOST_ID, &value.to_le_bytes());
    }

    pub fn set_convergence_state(&mut self, value: u16) {
        self.write(field::CONVERGENCE_STATE, &value.to_le_bytes());
    }

    pub fn set_rule_count(&mut self, value: u16) {
        self.write(field::RULE_COUNT, &value.to_le_bytes());
    }

    pub fn set_unique_host_code(&mut self, value: u32) {
        self.write(field::UNIQUE_HOST_CODE, &value.to_le_bytes());
    }

    pub fn set_packets_handled(&mut self, value: u32) {
        self.write(field::PACKETS_HANDLED, &value.to_le_bytes());
    }

    pub fn set_teaming(&mut self, value: u32) {
        self.write(field::TEAMING, &value.to_le_bytes());
    }

    /// Zeroes the reserved word after the teaming field.
    pub fn clear_reserved(&mut self) {
        self.buffer.as_mut()[field::RESERVED].fill(0);
    }

    /// Panics if `i >= MAX_RULE_SLOTS`.
    pub fn set_rule_code(&mut self, i: usize, value: u32) {
        self.write(slot(field::RULE_CODES, 4, i), &value.to_le_bytes());
    }

    /// Panics if `i >= MAX_RULE_SLOTS`.
    pub fn set_current_map(&mut self, i: usize, value: u64) {
        self.write(slot(field::CURRENT_MAPS, 8, i), &value.to_le_bytes());
    }

    /// Panics if `i >= MAX_RULE_SLOTS`.
    pub fn set_new_map(&mut self, i: usize, value: u64) {
        self.write(slot(field::NEW_MAPS, 8, i), &value.to_le_bytes());
    }

    /// Panics if `i >= MAX_RULE_SLOTS`.
    pub fn set_idle_map(&mut self, i: usize, value: u64) {
        self.write(slot(field::IDLE_MAPS, 8, i), &value.to_le_bytes());
    }

    /// Panics if `i >= MAX_RULE_SLOTS`.
    pub fn set_ready_map(&mut self, i: usize, value: u64) {
        self.write(slot(field::READY_MAPS, 8, i), &value.to_le_bytes());
    }

    /// Panics if `i >= MAX_RULE_SLOTS`.
    pub fn set_load_weight(&mut self, i: usize, value: u32) {
        self.write(slot(field::LOAD_WEIGHTS, 4, i), &value.to_le_bytes());
    }

    /// The authentication area, for the signer to fill after [`HeartbeatRepr::emit`].
    pub fn auth_area_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::AUTH]
    }
}

/// One port rule's slot of a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RuleState {
    /// Configuration fingerprint peers compare for equality.
    pub code: u32,
    /// Bucket bitmaps of the two-step hand-off.
    pub current: u64,
    pub new: u64,
    pub idle: u64,
    pub ready: u64,
    pub load_weight: u32,
}

/// A heartbeat as plain values.
///
/// `rules` holds the first `rule_count` slots, so its length is the rule count (at most
/// [`MAX_RULE_SLOTS`]). [`emit`](Self::emit) zeroes the unused slots, the reserved word and
/// the authentication area; [`parse`](Self::parse) ignores them. Round trips are therefore
/// exact for every heartbeat this codec emits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeartbeatRepr {
    pub version: u32,
    /// 1..=32.
    pub host_priority: u8,
    pub cluster_ip: Ipv4Addr,
    pub dedicated_ip: Ipv4Addr,
    pub host_id: u16,
    pub default_host_id: u16,
    pub convergence_state: u16,
    pub unique_host_code: u32,
    pub packets_handled: u32,
    pub teaming: u32,
    pub rules: Vec<RuleState>,
}

impl HeartbeatRepr {
    /// Reads a heartbeat, refusing a host priority outside 1..=32 or more than 33 rules.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        let priority = packet.host_priority();
        if !HOST_PRIORITIES.contains(&priority) {
            return Err(Error::BadHostPriority(priority));
        }
        let rule_count = packet.rule_count();
        if usize::from(rule_count) > MAX_RULE_SLOTS {
            return Err(Error::TooManyRules(rule_count));
        }
        let rules = (0..usize::from(rule_count))
            .map(|i| RuleState {
                code: packet.rule_code(i),
                current: packet.current_map(i),
                new: packet.new_map(i),
                idle: packet.idle_map(i),
                ready: packet.ready_map(i),
                load_weight: packet.load_weight(i),
            })
            .collect();
        Ok(Self {
            version: packet.version(),
            host_priority: priority as u8,
            cluster_ip: packet.cluster_ip(),
            dedicated_ip: packet.dedicated_ip(),
            host_id: packet.host_id(),
            default_host_id: packet.default_host_id(),
            convergence_state: packet.convergence_state(),
            unique_host_code: packet.unique_host_code(),
            packets_handled: packet.packets_handled(),
            teaming: packet.teaming(),
            rules,
        })
    }

    /// Bytes [`emit`](Self::emit) writes: always [`PAYLOAD_LEN`].
    pub const fn buffer_len(&self) -> usize {
        PAYLOAD_LEN
    }

    /// Writes all [`PAYLOAD_LEN`] bytes, the authentication area as zeros.
    ///
    /// # Panics
    /// If the buffer is shorter than [`PAYLOAD_LEN`] or `rules` has more than
    /// [`MAX_RULE_SLOTS`] entries (the configuration allows at most 32 port rules).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        assert!(
            self.rules.len() <= MAX_RULE_SLOTS,
            "{} port rules do not fit the {MAX_RULE_SLOTS} heartbeat slots",
            self.rules.len()
        );
        packet.set_code(CODE_HEARTBEAT);
        packet.set_version(self.version);
        packet.set_host_priority(self.host_priority.into());
        packet.set_cluster_ip(self.cluster_ip);
        packet.set_dedicated_ip(self.dedicated_ip);
        packet.set_host_id(self.host_id);
        packet.set_default_host_id(self.default_host_id);
        packet.set_convergence_state(self.convergence_state);
        packet.set_rule_count(self.rules.len() as u16);
        packet.set_unique_host_code(self.unique_host_code);
        packet.set_packets_handled(self.packets_handled);
        packet.set_teaming(self.teaming);
        packet.clear_reserved();
        let unused = RuleState::default();
        for i in 0..MAX_RULE_SLOTS {
            let rule = self.rules.get(i).unwrap_or(&unused);
            packet.set_rule_code(i, rule.code);
            packet.set_current_map(i, rule.current);
            packet.set_new_map(i, rule.new);
            packet.set_idle_map(i, rule.idle);
            packet.set_ready_map(i, rule.ready);
            packet.set_load_weight(i, rule.load_weight);
        }
        packet.auth_area_mut().fill(0);
    }
}

/// A view of an identity heartbeat payload.
///
/// Layout: the 20-byte header shared with the heartbeat (code [`CODE_IDENTITY`], version,
/// host priority, cluster IP, dedicated IP; `0.0.0.0` for none), then TLVs, each one byte of
/// type, one byte of value length, and the value. Type [`TLV_END`] (or the end of the
/// buffer) ends the list, so Ethernet's zero padding reads as the end. Type
/// [`TLV_HOST_NAME`] is the host name in UTF-8; other types are skipped, leaving room for
/// more later. Our type numbers avoid 1 and 2, to which Wireshark's dissector gives
/// Windows' own (different, undocumented) meanings; it shows ours as "Unknown".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPacket<T: AsRef<[u8]>> {
    buffer: T,
}

/// One TLV of an identity heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub kind: u8,
    pub value: &'a [u8],
}

/// The TLVs of an identity heartbeat in order. Yields [`Error::Truncated`] once and stops if
/// a TLV runs past the end of the buffer.
#[derive(Debug, Clone)]
pub struct Tlvs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = Result<Tlv<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&kind, after_kind) = self.rest.split_first()?;
        if kind == TLV_END {
            self.rest = &[];
            return None;
        }
        let parsed = after_kind.split_first().and_then(|(&len, after_len)| {
            let len = usize::from(len);
            (after_len.len() >= len).then(|| after_len.split_at(len))
        });
        match parsed {
            Some((value, rest)) => {
                self.rest = rest;
                Some(Ok(Tlv { kind, value }))
            }
            None => {
                self.rest = &[];
                Some(Err(Error::Truncated))
            }
        }
    }
}

impl<T: AsRef<[u8]>> IdentityPacket<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds the header and the identity code.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the header's length, then the code. TLVs are checked as they are read.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < IDENTITY_HEADER_LEN {
            return Err(Error::Truncated);
        }
        match self.code() {
            CODE_IDENTITY => Ok(()),
            code => Err(Error::UnknownCode(code)),
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn code(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::CODE)
    }

    pub fn version(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VERSION)
    }

    pub fn host_priority(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::HOST_PRIORITY)
    }

    pub fn cluster_ip(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::CLUSTER_IP)
    }

    pub fn dedicated_ip(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::DEDICATED_IP)
    }

    pub fn tlvs(&self) -> Tlvs<'_> {
        Tlvs {
            rest: &self.buffer.as_ref()[field::TLVS..],
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IdentityPacket<T> {
    pub fn set_code(&mut self, value: u32) {
        self.buffer.as_mut()[field::CODE].copy_from_slice(&value.to_le_bytes());
    }

    pub fn set_version(&mut self, value: u32) {
        self.buffer.as_mut()[field::VERSION].copy_from_slice(&value.to_le_bytes());
    }

    pub fn set_host_priority(&mut self, value: u32) {
        self.buffer.as_mut()[field::HOST_PRIORITY].copy_from_slice(&value.to_le_bytes());
    }

    pub fn set_cluster_ip(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::CLUSTER_IP].copy_from_slice(&addr.octets());
    }

    pub fn set_dedicated_ip(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DEDICATED_IP].copy_from_slice(&addr.octets());
    }

    /// Everything after the header, for writing TLVs.
    pub fn tlvs_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::TLVS..]
    }
}

/// An identity heartbeat as plain values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdentityRepr {
    pub version: u32,
    /// 1..=32.
    pub host_priority: u8,
    pub cluster_ip: Ipv4Addr,
    /// `None` is sent as `0.0.0.0`.
    pub dedicated_ip: Option<Ipv4Addr>,
    /// At most [`MAX_HOST_NAME_LEN`] bytes of UTF-8.
    pub host_name: String,
    /// The TLVs other than the host name, in order (type, value of at most 255 bytes).
    pub others: Vec<(u8, Vec<u8>)>,
}

impl IdentityRepr {
    /// Reads an identity heartbeat: a host priority in 1..=32 and exactly one host name.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &IdentityPacket<&T>) -> Result<Self> {
        packet.check_len()?;
        let priority = packet.host_priority();
        if !HOST_PRIORITIES.contains(&priority) {
            return Err(Error::BadHostPriority(priority));
        }
        let mut host_name = None;
        let mut others = Vec::new();
        for tlv in packet.tlvs() {
            let tlv = tlv?;
            if tlv.kind == TLV_HOST_NAME {
                if host_name.is_some() {
                    return Err(Error::DuplicateHostName);
                }
                let name = core::str::from_utf8(tlv.value).map_err(|_| Error::HostNameNotUtf8)?;
                host_name = Some(name.to_owned());
            } else {
                others.push((tlv.kind, tlv.value.to_vec()));
            }
        }
        let dedicated_ip = Some(packet.dedicated_ip()).filter(|ip| !ip.is_unspecified());
        Ok(Self {
            version: packet.version(),
            host_priority: priority as u8,
            cluster_ip: packet.cluster_ip(),
            dedicated_ip,
            host_name: host_name.ok_or(Error::MissingHostName)?,
            others,
        })
    }

    /// Bytes [`emit`](Self::emit) writes: the header, the host name TLV and the others.
    pub fn buffer_len(&self) -> usize {
        IDENTITY_HEADER_LEN
            + 2
            + self.host_name.len()
            + self.others.iter().map(|(_, v)| 2 + v.len()).sum::<usize>()
    }

    /// Writes the header, the host name TLV and the other TLVs; bytes past
    /// [`buffer_len`](Self::buffer_len) are left alone (zero them, or end the buffer there).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut IdentityPacket<T>) -> Result<()> {
        let name = self.host_name.as_bytes();
        let name_len = u8::try_from(name.len()).map_err(|_| Error::HostNameTooLong(name.len()))?;
        for (kind, value) in &self.others {
            if value.len() > u8::MAX as usize || *kind == TLV_END || *kind == TLV_HOST_NAME {
                return Err(Error::BadTlv {
                    kind: *kind,
                    len: value.len(),
                });
            }
        }
        if self.buffer_len() > PAYLOAD_LEN {
            return Err(Error::IdentityTooLong(self.buffer_len()));
        }
        if packet.buffer.as_ref().len() < self.buffer_len() {
            return Err(Error::Truncated);
        }
        packet.set_code(CODE_IDENTITY);
        packet.set_version(self.version);
        packet.set_host_priority(self.host_priority.into());
        packet.set_cluster_ip(self.cluster_ip);
        packet.set_dedicated_ip(self.dedicated_ip.unwrap_or(Ipv4Addr::UNSPECIFIED));
        let tlvs = packet.tlvs_mut();
        tlvs[0] = TLV_HOST_NAME;
        tlvs[1] = name_len;
        tlvs[2..2 + name.len()].copy_from_slice(name);
        let mut at = 2 + name.len();
        for (kind, value) in &self.others {
            tlvs[at] = *kind;
            tlvs[at + 1] = value.len() as u8;
            tlvs[at + 2..at + 2 + value.len()].copy_from_slice(value);
            at += 2 + value.len();
        }
        Ok(())
    }
}

/// What a `0x886F` frame this codec knows carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Heartbeat(HeartbeatRepr),
    Identity(IdentityRepr),
}

/// A parsed NLB frame: the Ethernet addresses and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub src_addr: EthernetAddress,
    pub dst_addr: EthernetAddress,
    pub message: Message,
}

/// Parses a whole Ethernet frame: EtherType `0x886F`, then a heartbeat or identity
/// heartbeat by its code. Any other code is [`Error::UnknownCode`]: count it and drop it.
pub fn parse_frame(frame: &[u8]) -> Result<Frame> {
    let eth = ethernet::Frame::new_checked(frame).map_err(|_| Error::Truncated)?;
    if eth.ethertype() != ETHERTYPE {
        return Err(Error::NotNlb(eth.ethertype()));
    }
    let payload = eth.payload();
    let message = match payload_code(payload).ok_or(Error::Truncated)? {
        CODE_HEARTBEAT => Message::Heartbeat(HeartbeatRepr::parse(&Packet::new_checked(payload)?)?),
        CODE_IDENTITY => {
            Message::Identity(IdentityRepr::parse(&IdentityPacket::new_checked(payload)?)?)
        }
        code => return Err(Error::UnknownCode(code)),
    };
    Ok(Frame {
        src_addr: eth.src_addr(),
        dst_addr: eth.dst_addr(),
        message,
    })
}

fn ethernet_header(frame: &mut [u8], src_addr: EthernetAddress, dst_addr: EthernetAddress) {
    let header = ethernet::Repr {
        src_addr,
        dst_addr,
        ethertype: ETHERTYPE,
    };
    header.emit(&mut ethernet::Frame::new_unchecked(frame));
}

/// Builds a whole heartbeat frame (14 + 1496 bytes, no FCS). Sign it afterwards through
/// [`Packet::auth_area_mut`] on `frame[14..]`.
///
/// # Panics
/// If `repr.rules` has more than [`MAX_RULE_SLOTS`] entries.
pub fn emit_frame(
    repr: &HeartbeatRepr,
    src_addr: EthernetAddress,
    dst_addr: EthernetAddress,
) -> Vec<u8> {
    let mut frame = vec![0u8; ethernet::HEADER_LEN + PAYLOAD_LEN];
    ethernet_header(&mut frame, src_addr, dst_addr);
    repr.emit(&mut Packet::new_unchecked(
        &mut frame[ethernet::HEADER_LEN..],
    ));
    frame
}

/// Builds a whole identity heartbeat frame, zero-padded to Ethernet's 60-byte minimum.
pub fn emit_identity_frame(
    repr: &IdentityRepr,
    src_addr: EthernetAddress,
    dst_addr: EthernetAddress,
) -> Result<Vec<u8>> {
    let len = (ethernet::HEADER_LEN + repr.buffer_len()).max(MIN_FRAME_LEN);
    let mut frame = vec![0u8; len];
    ethernet_header(&mut frame, src_addr, dst_addr);
    repr.emit(&mut IdentityPacket::new_unchecked(
        &mut frame[ethernet::HEADER_LEN..],
    ))?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 80);
    const DEDICATED_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 82);
    /// Masked source MAC of host priority 2 of cluster 192.168.100.80.
    const SRC_MAC: EthernetAddress = EthernetAddress([0x02, 0x02, 0xc0, 0xa8, 0x64, 0x50]);

    /// Host 2 of a converged two-host cluster with two port rules plus the default rule,
    /// owning 30 of 60 buckets of each.
    fn host_two() -> HeartbeatRepr {
        let odd_buckets = 0x0aaa_aaaa_aaaa_aaaa_u64;
        let rule = |code| RuleState {
            code,
            current: odd_buckets,
            new: odd_buckets,
            idle: odd_buckets,
            ready: odd_buckets,
            load_weight: 50,
        };
        HeartbeatRepr {
            version: 0x0206,
            host_priority: 2,
            cluster_ip: CLUSTER_IP,
            dedicated_ip: DEDICATED_IP,
            host_id: 1,
            default_host_id: 0,
            convergence_state: 5,
            unique_host_code: 0x5f3c_8a21,
            packets_handled: 123_456,
            teaming: 0,
            rules: vec![
                rule(80 + (80 << 12) + (1 << 24)),
                rule(443 + (443 << 12) + (1 << 24)),
                RuleState {
                    code: 0xffff_ffff,
                    load_weight: 0,
                    ..rule(0)
                },
            ],
        }
    }

    fn host_two_identity() -> IdentityRepr {
        IdentityRepr {
            version: 0x0206,
            host_priority: 2,
            cluster_ip: CLUSTER_IP,
            dedicated_ip: Some(DEDICATED_IP),
            host_name: "web-02.cluster.example.net".to_owned(),
            others: Vec::new(),
        }
    }

    /// Frame 1 of tcpdump's `tests/msnlb.pcap` as its `tests/msnlb.out` prints it ("host
    /// priority: 2, cluster IP: 192.168.100.80, host IP: 192.168.100.82"), built by hand at
    /// the offsets of WLBS.md section 2: the capture's bytes are not in any public text.
    fn tcpdump_vector() -> Vec<u8> {
        let mut f = vec![0u8; 14 + 1496];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&SRC_MAC.0);
        f[12..14].copy_from_slice(&[0x88, 0x6f]);
        let p = &mut f[14..];
        p[0..4].copy_from_slice(&[0xbf, 0x01, 0xde, 0xc0]);
        p[4..8].copy_from_slice(&[0x06, 0x02, 0x00, 0x00]);
        p[8..12].copy_from_slice(&[0x02, 0x00, 0x00, 0x00]);
        p[12..16].copy_from_slice(&[192, 168, 100, 80]);
        p[16..20].copy_from_slice(&[192, 168, 100, 82]);
        p[20..22].copy_from_slice(&[0x01, 0x00]);
        p[26..28].copy_from_slice(&[0x01, 0x00]);
        p[44..48].copy_from_slice(&0x00ff_f000_u32.to_le_bytes());
        p[176..184].copy_from_slice(&[0xff; 8]);
        p[1232..1236].copy_from_slice(&[50, 0, 0, 0]);
        f
    }

    #[test]
    fn tcpdump_test_capture_values_parse() {
        let frame = parse_frame(&tcpdump_vector()).unwrap();
        assert_eq!(frame.src_addr, SRC_MAC);
        assert!(frame.dst_addr.is_broadcast());
        let Message::Heartbeat(hb) = frame.message else {
            panic!("not a heartbeat: {:?}", frame.message)
        };
        assert_eq!(hb.host_priority, 2);
        assert_eq!(hb.cluster_ip, CLUSTER_IP);
        assert_eq!(hb.dedicated_ip, DEDICATED_IP);
        assert_eq!(hb.version, 0x0206);
        assert_eq!(hb.host_id, 1);
        assert_eq!(
            hb.rules,
            vec![RuleState {
                code: 0x00ff_f000,
                current: u64::MAX,
                load_weight: 50,
                ..RuleState::default()
            }]
        );
        assert_eq!(
            emit_frame(&hb, frame.src_addr, frame.dst_addr),
            tcpdump_vector()
        );
    }

    #[test]
    fn heartbeat_round_trips_byte_for_byte() {
        let repr = host_two();
        let bytes = emit_frame(&repr, SRC_MAC, EthernetAddress::BROADCAST);
        assert_eq!(bytes.len(), 1510);
        assert_eq!(&bytes[12..18], &[0x88, 0x6f, 0xbf, 0x01, 0xde, 0xc0]);
        let frame = parse_frame(&bytes).unwrap();
        assert_eq!(frame.message, Message::Heartbeat(repr.clone()));

        let packet = Packet::new_checked(&bytes[14..]).unwrap();
        let reparsed = HeartbeatRepr::parse(&packet).unwrap();
        assert_eq!(reparsed, repr);
        let mut again = vec![0x5a; PAYLOAD_LEN];
        reparsed.emit(&mut Packet::new_unchecked(&mut again[..]));
        assert_eq!(again, bytes[14..]);
    }

    #[test]
    fn emit_overwrites_stale_bytes_in_a_reused_buffer() {
        let mut buffer = vec![0xee; PAYLOAD_LEN + 4];
        host_two().emit(&mut Packet::new_unchecked(&mut buffer[..]));
        let packet = Packet::new_checked(&buffer[..]).unwrap();
        assert!(packet.auth_area().iter().all(|&b| b == 0));
        assert_eq!(packet.rule_code(3), 0);
        assert_eq!(packet.current_map(32), 0);
        assert_eq!(&buffer[40..44], &[0; 4]);
        assert_eq!(&buffer[PAYLOAD_LEN..], &[0xee; 4]);
    }

    /// Starts from zeros, lets `write` set one field, and checks that exactly `expected`
    /// appeared at `offset` and nothing else changed.
    fn assert_written(
        name: &str,
        write: impl FnOnce(&mut Packet<&mut [u8]>),
        offset: usize,
        expected: &[u8],
    ) {
        let mut buffer = vec![0u8; PAYLOAD_LEN];
        write(&mut Packet::new_unchecked(&mut buffer[..]));
        let mut want = vec![0u8; PAYLOAD_LEN];
        want[offset..offset + expected.len()].copy_from_slice(expected);
        assert!(
            buffer == want,
            "{name}: not at offset {offset} as {expected:02x?}"
        );
    }

    #[test]
    fn every_field_sits_at_its_documented_offset_and_byte_order() {
        let ip = Ipv4Addr::new(10, 1, 2, 3);
        assert_written(
            "code",
            |p| p.set_code(CODE_HEARTBEAT),
            0,
            &[0xbf, 0x01, 0xde, 0xc0],
        );
        assert_written("version", |p| p.set_version(0x0206), 4, &[0x06, 0x02, 0, 0]);
        assert_written(
            "priority",
            |p| p.set_host_priority(0x0102_0304),
            8,
            &[4, 3, 2, 1],
        );
        assert_written("cluster ip", |p| p.set_cluster_ip(ip), 12, &[10, 1, 2, 3]);
        assert_written(
            "dedicated ip",
            |p| p.set_dedicated_ip(ip),
            16,
            &[10, 1, 2, 3],
        );
        assert_written("host id", |p| p.set_host_id(0x0102), 20, &[2, 1]);
        assert_written("default", |p| p.set_default_host_id(0x0102), 22, &[2, 1]);
        assert_written("state", |p| p.set_convergence_state(0x0102), 24, &[2, 1]);
        assert_written("rule count", |p| p.set_rule_count(0x0102), 26, &[2, 1]);
        let le32 = [4, 3, 2, 1];
        assert_written(
            "host code",
            |p| p.set_unique_host_code(0x0102_0304),
            28,
            &le32,
        );
        assert_written("handled", |p| p.set_packets_handled(0x0102_0304), 32, &le32);
        assert_written("teaming", |p| p.set_teaming(0x0102_0304), 36, &le32);
        let le64 = [8, 7, 6, 5, 4, 3, 2, 1];
        let v64 = 0x0102_0304_0506_0708;
        for i in [0, 1, 32] {
            assert_written(
                "rule code",
                |p| p.set_rule_code(i, 0x0102_0304),
                44 + 4 * i,
                &le32,
            );
            assert_written("current", |p| p.set_current_map(i, v64), 176 + 8 * i, &le64);
            assert_written("new", |p| p.set_new_map(i, v64), 440 + 8 * i, &le64);
            assert_written("idle", |p| p.set_idle_map(i, v64), 704 + 8 * i, &le64);
            assert_written("ready", |p| p.set_ready_map(i, v64), 968 + 8 * i, &le64);
            let at = 1232 + 4 * i;
            assert_written("weight", |p| p.set_load_weight(i, 0x0102_0304), at, &le32);
        }
        assert_written("auth", |p| p.auth_area_mut().fill(0xa5), 1364, &[0xa5; 132]);
    }

    #[test]
    fn accessors_read_what_setters_wrote() {
        let mut buffer = vec![0u8; PAYLOAD_LEN];
        let mut p = Packet::new_unchecked(&mut buffer[..]);
        p.set_code(CODE_HEARTBEAT);
        p.set_version(0x0206);
        p.set_host_priority(7);
        p.set_cluster_ip(CLUSTER_IP);
        p.set_dedicated_ip(DEDICATED_IP);
        p.set_host_id(6);
        p.set_default_host_id(0);
        p.set_convergence_state(3);
        p.set_rule_count(33);
        p.set_unique_host_code(99);
        p.set_packets_handled(1000);
        p.set_teaming(0x0100_0001);
        p.set_rule_code(32, 0xabcd);
        p.set_current_map(32, 1 << 59);
        p.set_new_map(32, 1 << 58);
        p.set_idle_map(32, 1 << 57);
        p.set_ready_map(32, 1 << 56);
        p.set_load_weight(32, 100);
        let p = Packet::new_checked(&buffer[..]).unwrap();
        assert_eq!(p.code(), CODE_HEARTBEAT);
        assert_eq!(p.version(), 0x0206);
        assert_eq!(p.host_priority(), 7);
        assert_eq!(p.cluster_ip(), CLUSTER_IP);
        assert_eq!(p.dedicated_ip(), DEDICATED_IP);
        assert_eq!(p.host_id(), 6);
        assert_eq!(p.default_host_id(), 0);
        assert_eq!(p.convergence_state(), 3);
        assert_eq!(p.rule_count(), 33);
        assert_eq!(p.unique_host_code(), 99);
        assert_eq!(p.packets_handled(), 1000);
        assert_eq!(p.teaming(), 0x0100_0001);
        assert_eq!(p.rule_code(32), 0xabcd);
        assert_eq!(p.current_map(32), 1 << 59);
        assert_eq!(p.new_map(32), 1 << 58);
        assert_eq!(p.idle_map(32), 1 << 57);
        assert_eq!(p.ready_map(32), 1 << 56);
        assert_eq!(p.load_weight(32), 100);
        let repr = HeartbeatRepr::parse(&p).unwrap();
        assert_eq!(repr.rules.len(), MAX_RULE_SLOTS);
    }

    #[test]
    #[should_panic(expected = "rule slot 33 out of range")]
    fn rule_slot_past_the_last_panics_with_a_clear_message() {
        let buffer = vec![0u8; PAYLOAD_LEN];
        Packet::new_unchecked(&buffer[..]).rule_code(MAX_RULE_SLOTS);
    }

    fn payload_of(repr: &HeartbeatRepr) -> Vec<u8> {
        let mut buffer = vec![0u8; PAYLOAD_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut buffer[..]));
        buffer
    }

    #[test]
    fn short_or_foreign_payloads_are_refused_with_their_reason() {
        let payload = payload_of(&host_two());
        assert_eq!(
            Packet::new_checked(&payload[..PAYLOAD_LEN - 1]).unwrap_err(),
            Error::Truncated
        );
        let mut lqsr = payload.clone();
        lqsr[0..4].copy_from_slice(&0xC0DE_8AF7_u32.to_le_bytes());
        assert_eq!(
            Packet::new_checked(&lqsr[..]).unwrap_err(),
            Error::UnknownCode(0xC0DE_8AF7)
        );
        // A view made without checks is still checked by parse.
        let short = &payload[..100];
        assert_eq!(
            HeartbeatRepr::parse(&Packet::new_unchecked(short)).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn host_priority_outside_1_to_32_is_refused() {
        for (priority, ok) in [(0, false), (1, true), (32, true), (33, false), (255, false)] {
            let repr = HeartbeatRepr {
                host_priority: priority,
                ..host_two()
            };
            let payload = payload_of(&repr);
            let parsed = HeartbeatRepr::parse(&Packet::new_checked(&payload[..]).unwrap());
            match ok {
                true => assert_eq!(parsed.unwrap().host_priority, priority),
                false => assert_eq!(parsed.unwrap_err(), Error::BadHostPriority(priority.into())),
            }
        }
    }

    #[test]
    fn more_rules_than_slots_is_refused() {
        let mut payload = payload_of(&host_two());
        let mut packet = Packet::new_unchecked(&mut payload[..]);
        packet.set_rule_count(33);
        assert!(HeartbeatRepr::parse(&Packet::new_checked(&payload[..]).unwrap()).is_ok());
        Packet::new_unchecked(&mut payload[..]).set_rule_count(34);
        assert_eq!(
            HeartbeatRepr::parse(&Packet::new_checked(&payload[..]).unwrap()).unwrap_err(),
            Error::TooManyRules(34)
        );
    }

    #[test]
    fn parse_frame_sorts_frames_by_ethertype_and_code() {
        let mut frame = emit_frame(&host_two(), SRC_MAC, EthernetAddress::BROADCAST);
        frame[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            parse_frame(&frame).unwrap_err(),
            Error::NotNlb(EtherType::ARP)
        );
        frame[12..14].copy_from_slice(&[0x88, 0x6f]);
        frame[14..18].copy_from_slice(&0xC0DE_01DE_u32.to_le_bytes());
        assert_eq!(
            parse_frame(&frame).unwrap_err(),
            Error::UnknownCode(0xC0DE_01DE)
        );
        assert_eq!(parse_frame(&frame[..16]).unwrap_err(), Error::Truncated);
        assert_eq!(parse_frame(&frame[..13]).unwrap_err(), Error::Truncated);
        let heartbeat = emit_frame(&host_two(), SRC_MAC, EthernetAddress::BROADCAST);
        assert_eq!(
            parse_frame(&heartbeat[..1509]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn identity_heartbeat_round_trips_with_the_heartbeat_header() {
        let repr = host_two_identity();
        let frame = emit_identity_frame(&repr, SRC_MAC, EthernetAddress::BROADCAST).unwrap();
        assert_eq!(frame.len(), 14 + 20 + 2 + 26);
        // The shared header: what tcpdump prints for any 0x886F frame.
        assert_eq!(&frame[14..18], &[0xc0, 0x01, 0xde, 0xc0]);
        assert_eq!(&frame[22..26], &[2, 0, 0, 0]);
        assert_eq!(&frame[26..30], &[192, 168, 100, 80]);
        assert_eq!(&frame[30..34], &[192, 168, 100, 82]);
        assert_eq!(&frame[34..36], &[TLV_HOST_NAME, 26]);
        assert_eq!(&frame[36..], b"web-02.cluster.example.net");
        let parsed = parse_frame(&frame).unwrap();
        assert_eq!(parsed.message, Message::Identity(repr));
    }

    #[test]
    fn short_identity_frame_is_padded_and_still_parses() {
        let repr = IdentityRepr {
            host_name: "a".to_owned(),
            others: Vec::new(),
            dedicated_ip: None,
            ..host_two_identity()
        };
        let frame = emit_identity_frame(&repr, SRC_MAC, EthernetAddress::BROADCAST).unwrap();
        assert_eq!(frame.len(), 60);
        assert_eq!(&frame[30..34], &[0; 4]);
        assert_eq!(
            parse_frame(&frame).unwrap().message,
            Message::Identity(repr)
        );
    }

    fn identity_with_tlvs(tlvs: &[u8]) -> Vec<u8> {
        let mut payload = vec![0u8; IDENTITY_HEADER_LEN];
        let mut p = IdentityPacket::new_unchecked(&mut payload[..]);
        p.set_code(CODE_IDENTITY);
        p.set_host_priority(3);
        payload.extend_from_slice(tlvs);
        payload
    }

    fn parse_identity(payload: &[u8]) -> Result<IdentityRepr> {
        IdentityRepr::parse(&IdentityPacket::new_checked(payload)?)
    }

    #[test]
    fn identity_skips_unknown_tlvs_and_stops_at_the_end_marker() {
        let payload = identity_with_tlvs(&[
            1,
            4,
            0xde,
            0xad,
            0xbe,
            0xef, // Windows' "host name" type: not ours, skipped
            0x99,
            0, // empty unknown TLV
            TLV_HOST_NAME,
            3,
            b'w',
            b'e',
            b'b', // the name
            TLV_END,
            0xff,
            0xff, // padding after the end marker is never read
        ]);
        let repr = parse_identity(&payload).unwrap();
        assert_eq!(repr.host_name, "web");
        assert_eq!(repr.host_priority, 3);
        assert_eq!(repr.dedicated_ip, None);
        // TLVs this codec does not interpret are kept for the layers above.
        assert_eq!(
            repr.others,
            vec![(1, vec![0xde, 0xad, 0xbe, 0xef]), (0x99, vec![])]
        );
    }

    #[test]
    fn hostile_identity_tlvs_are_errors_not_panics() {
        let overrun = identity_with_tlvs(&[TLV_HOST_NAME, 200, b'x']);
        assert_eq!(parse_identity(&overrun).unwrap_err(), Error::Truncated);
        let no_length = identity_with_tlvs(&[TLV_HOST_NAME]);
        assert_eq!(parse_identity(&no_length).unwrap_err(), Error::Truncated);
        let latin1 = identity_with_tlvs(&[TLV_HOST_NAME, 3, b'w', 0xe9, b'b']);
        assert_eq!(parse_identity(&latin1).unwrap_err(), Error::HostNameNotUtf8);
        let twice = identity_with_tlvs(&[TLV_HOST_NAME, 1, b'a', TLV_HOST_NAME, 1, b'b']);
        assert_eq!(
            parse_identity(&twice).unwrap_err(),
            Error::DuplicateHostName
        );
        let nameless = identity_with_tlvs(&[0x99, 1, 0]);
        assert_eq!(
            parse_identity(&nameless).unwrap_err(),
            Error::MissingHostName
        );
        let mut unprioritised = identity_with_tlvs(&[TLV_HOST_NAME, 1, b'a']);
        unprioritised[8] = 0;
        assert_eq!(
            parse_identity(&unprioritised).unwrap_err(),
            Error::BadHostPriority(0)
        );
        assert_eq!(
            parse_identity(&overrun[..19]).unwrap_err(),
            Error::Truncated
        );
        let heartbeat = payload_of(&host_two());
        assert_eq!(
            parse_identity(&heartbeat).unwrap_err(),
            Error::UnknownCode(CODE_HEARTBEAT)
        );
    }

    #[test]
    fn identity_emit_refuses_what_does_not_fit() {
        let long = IdentityRepr {
            host_name: "x".repeat(256),
            ..host_two_identity()
        };
        assert_eq!(
            emit_identity_frame(&long, SRC_MAC, EthernetAddress::BROADCAST).unwrap_err(),
            Error::HostNameTooLong(256)
        );
        let longest = IdentityRepr {
            host_name: "x".repeat(255),
            ..host_two_identity()
        };
        let frame = emit_identity_frame(&longest, SRC_MAC, EthernetAddress::BROADCAST).unwrap();
        assert_eq!(
            parse_frame(&frame).unwrap().message,
            Message::Identity(longest)
        );
        let too_many = IdentityRepr {
            others: vec![(0x84, vec![7; 255]); 6],
            ..host_two_identity()
        };
        assert!(matches!(
            emit_identity_frame(&too_many, SRC_MAC, EthernetAddress::BROADCAST),
            Err(Error::IdentityTooLong(_))
        ));
        for (kind, len) in [(0x84, 256), (TLV_END, 1), (TLV_HOST_NAME, 1)] {
            let bad = IdentityRepr {
                others: vec![(kind, vec![1; len])],
                ..host_two_identity()
            };
            assert_eq!(
                emit_identity_frame(&bad, SRC_MAC, EthernetAddress::BROADCAST).unwrap_err(),
                Error::BadTlv { kind, len }
            );
        }
        let mut small = [0u8; 30];
        assert_eq!(
            host_two_identity()
                .emit(&mut IdentityPacket::new_unchecked(&mut small[..]))
                .unwrap_err(),
            Error::Truncated
        );
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        fn rule_state() -> impl Strategy<Value = RuleState> {
            (any::<u32>(), any::<[u64; 4]>(), any::<u32>()).prop_map(|(code, maps, w)| RuleState {
                code,
                current: maps[0],
                new: maps[1],
                idle: maps[2],
                ready: maps[3],
                load_weight: w,
            })
        }

        fn heartbeat() -> impl Strategy<Value = HeartbeatRepr> {
            (
                (any::<u32>(), 1u8..=32, any::<[u8; 4]>(), any::<[u8; 4]>()),
                any::<[u16; 3]>(),
                any::<[u32; 3]>(),
                prop::collection::vec(rule_state(), 0..=MAX_RULE_SLOTS),
            )
                .prop_map(|((version, prio, cip, dip), ids, counters, rules)| {
                    HeartbeatRepr {
                        version,
                        host_priority: prio,
                        cluster_ip: cip.into(),
                        dedicated_ip: dip.into(),
                        host_id: ids[0],
                        default_host_id: ids[1],
                        convergence_state: ids[2],
                        unique_host_code: counters[0],
                        packets_handled: counters[1],
                        teaming: counters[2],
                        rules,
                    }
                })
        }

        fn identity() -> impl Strategy<Value = IdentityRepr> {
            (
                any::<u32>(),
                1u8..=32,
                any::<[u8; 4]>(),
                any::<Option<[u8; 4]>>(),
                "\\PC{0,60}",
                prop::collection::vec(
                    (0x82u8..=0xff, prop::collection::vec(any::<u8>(), 0..40)),
                    0..8,
                ),
            )
                .prop_map(|(version, prio, cip, dip, name, others)| IdentityRepr {
                    version,
                    host_priority: prio,
                    cluster_ip: cip.into(),
                    dedicated_ip: dip.map(Ipv4Addr::from).filter(|ip| !ip.is_unspecified()),
                    host_name: name,
                    others,
                })
        }

        /// Bytes that get past the EtherType check, and half the time past the code check.
        fn nlb_shaped() -> impl Strategy<Value = Vec<u8>> {
            (
                prop::collection::vec(any::<u8>(), 0..2000),
                prop_oneof![Just(CODE_HEARTBEAT), Just(CODE_IDENTITY), any::<u32>()],
            )
                .prop_map(|(mut bytes, code)| {
                    if bytes.len() >= 18 {
                        bytes[12..14].copy_from_slice(&[0x88, 0x6f]);
                        bytes[14..18].copy_from_slice(&code.to_le_bytes());
                    }
                    bytes
                })
        }

        fn exercise(bytes: &[u8]) {
            let _ = parse_frame(bytes);
            let _ = HeartbeatRepr::parse(&Packet::new_unchecked(bytes));
            let _ = IdentityRepr::parse(&IdentityPacket::new_unchecked(bytes));
            if let Ok(p) = IdentityPacket::new_checked(bytes) {
                p.tlvs().for_each(drop);
            }
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
                exercise(&bytes);
                if bytes.len() > 14 {
                    exercise(&bytes[14..]);
                }
            }

            #[test]
            fn nlb_shaped_bytes_never_panic(bytes in nlb_shaped()) {
                exercise(&bytes);
                if bytes.len() > 14 {
                    exercise(&bytes[14..]);
                }
            }

            #[test]
            fn hostile_identity_tlvs_never_panic(
                tlvs in prop::collection::vec(any::<u8>(), 0..300),
            ) {
                let _ = parse_identity(&identity_with_tlvs(&tlvs));
            }

            #[test]
            fn every_heartbeat_survives_emit_then_parse(repr in heartbeat()) {
                let frame = emit_frame(&repr, SRC_MAC, EthernetAddress::BROADCAST);
                prop_assert_eq!(parse_frame(&frame).unwrap().message, Message::Heartbeat(repr));
            }

            #[test]
            fn every_identity_survives_emit_then_parse(repr in identity()) {
                let frame = emit_identity_frame(&repr, SRC_MAC, EthernetAddress::BROADCAST)
                    .unwrap();
                prop_assert_eq!(parse_frame(&frame).unwrap().message, Message::Identity(repr));
            }
        }
    }
}
