//! A [`Ping`] on the wire: the NLB heartbeat layout (so Wireshark and tcpdump decode it as an
//! MS NLB heartbeat) plus a wlbs extension block in the heartbeat's reserved tail, which the
//! public layout leaves free and NLB's dissectors do not interpret.
//!
//! ```text
//! standard fields   priority, cluster IP, dedicated IP, host id (priority - 1), default host id
//!                   (priority - 1, 0xFFFF: none), convergence state (HostState::wire), rule
//!                   count, unique host code, per rule: code, current/new/idle/ready maps,
//!                   load weight
//! tail (offset 1364, 132 bytes)
//!   0..4    b"WLBS"            marks the extension
//!   4       1                  extension version
//!   5       flags              bit 0: draining
//!   8..12   view               members the sender accepts (bit p-1), little-endian
//!   12..16  heard              hosts it heard in its last two periods
//!   16..20  input digest
//!   20..24  target digest      0: none yet
//!   24..28  config fingerprint
//!   28..61  handling priority per rule (33 bytes)
//!   64..72  sequence number (u64, little-endian; with a cluster key)
//!   72..104 HMAC-SHA256 tag (with a cluster key) over the 1496-byte payload, tag zeroed
//!   104..112 heartbeat count of the sender (u64, little-endian): older ones are ignored
//!   112..116 fingerprint of a staged (reloaded, not yet applied) configuration; 0: none
//!   116..132 reserved
//! ```
//!
//! With `[cluster] key_file` every heartbeat is signed; one with a missing or wrong tag, or
//! a sequence number not above the last one seen from that host instance, is refused.
//! Without a key heartbeats are not authenticated, as in NLB.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wlbs_dataplane::wire::EthernetAddress;

use super::{HostState, Ping, RuleMaps};
use crate::consistency::{SharedConfig, TlvError};
use crate::heartbeat::{self, HeartbeatRepr, IdentityRepr, Packet, RuleState, MAX_RULE_SLOTS};

const MAGIC: &[u8; 4] = b"WLBS";
const SEQUENCE: std::ops::Range<usize> = 64..72;
const TAG: std::ops::Range<usize> = 72..104;
/// Offset of the reserved tail in the 1496-byte payload.
const TAIL: usize = 1364;

/// The cluster key heartbeats are signed with (`[cluster] key_file`).
#[derive(Clone)]
pub struct ClusterKey(Vec<u8>);

impl ClusterKey {
    /// At least 16 bytes of key material.
    pub fn new(bytes: Vec<u8>) -> Option<ClusterKey> {
        (bytes.len() >= 16).then_some(ClusterKey(bytes))
    }

    /// The key material (remote control signs with the same key).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// HMAC-SHA256 over `payload` with the 32 bytes at `tag` read as zeros.
    fn tag_at(&self, payload: &[u8], tag: std::ops::Range<usize>) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(&payload[..tag.start]);
        mac.update(&[0u8; 32]);
        mac.update(&payload[tag.end..]);
        mac.finalize().into_bytes().into()
    }

    fn verify_at(&self, payload: &[u8], tag: std::ops::Range<usize>) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(&payload[..tag.start]);
        mac.update(&[0u8; 32]);
        mac.update(&payload[tag.end..]);
        mac.verify_slice(&payload[tag]).is_ok()
    }

    fn tag(&self, payload: &[u8]) -> [u8; 32] {
        self.tag_at(payload, TAIL + TAG.start..TAIL + TAG.end)
    }

    fn verify(&self, payload: &[u8]) -> bool {
        self.verify_at(payload, TAIL + TAG.start..TAIL + TAG.end)
    }
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({} bytes)", self.0.len())
    }
}

/// Refuses replayed heartbeats: per host instance (priority and unique host code), the
/// sequence number must grow.
#[derive(Default)]
pub struct ReplayGuard {
    last: HashMap<(u8, u32), u64>,
}

impl ReplayGuard {
    /// True if `sequence` is new for this sender (and remembers it).
    pub fn accept(&mut self, priority: u8, host_code: u32, sequence: u64) -> bool {
        let last = self.last.entry((priority, host_code)).or_insert(0);
        if sequence > *last {
            *last = sequence;
            true
        } else {
            false
        }
    }
}
const EXTENSION_VERSION: u8 = 1;
/// NLB's heartbeat version field as captures show it (2.6).
const NLB_VERSION: u32 = 0x0206;
const NO_DEFAULT_HOST: u16 = 0xffff;

/// Builds the Ethernet frame of `ping` (1510 bytes). `rule_codes` are the per-rule
/// fingerprints; `cluster_ip` goes in the standard field.
pub fn encode(
    ping: &Ping,
    cluster_ip: Ipv4Addr,
    rule_codes: &[u32],
    src: EthernetAddress,
    dst: EthernetAddress,
    auth: Option<(&ClusterKey, u64)>,
) -> Vec<u8> {
    let rules = ping
        .rules
        .iter()
        .enumerate()
        .take(MAX_RULE_SLOTS)
        .map(|(r, m)| RuleState {
            code: rule_codes.get(r).copied().unwrap_or(0),
            current: m.current,
            new: m.new,
            idle: m.idle,
            ready: m.ready,
            load_weight: ping.load_weights.get(r).copied().unwrap_or(0) as u32,
        })
        .collect();
    let repr = HeartbeatRepr {
        version: NLB_VERSION,
        host_priority: ping.priority,
        cluster_ip,
        dedicated_ip: ping.dedicated_ip,
        host_id: ping.priority.saturating_sub(1) as u16,
        default_host_id: ping
            .default_host
            .map_or(NO_DEFAULT_HOST, |d| d.saturating_sub(1) as u16),
        convergence_state: ping.state.wire(),
        unique_host_code: ping.host_code,
        packets_handled: 0,
        teaming: 0,
        rules,
    };
    let mut frame = heartbeat::emit_frame(&repr, src, dst);
    let mut packet = Packet::new_unchecked(&mut frame[14..]);
    let tail = packet.auth_area_mut();
    tail[0..4].copy_from_slice(MAGIC);
    tail[4] = EXTENSION_VERSION;
    tail[5] = ping.draining as u8;
    tail[8..12].copy_from_slice(&ping.view.to_le_bytes());
    tail[12..16].copy_from_slice(&ping.heard.to_le_bytes());
    tail[16..20].copy_from_slice(&ping.input.to_le_bytes());
    tail[20..24].copy_from_slice(&ping.target.to_le_bytes());
    tail[24..28].copy_from_slice(&ping.config.to_le_bytes());
    tail[104..112].copy_from_slice(&ping.seq.to_le_bytes());
    tail[112..116].copy_from_slice(&ping.next_config.to_le_bytes());
    for (i, h) in ping
        .handling_priorities
        .iter()
        .take(MAX_RULE_SLOTS)
        .enumerate()
    {
        tail[28 + i] = *h;
    }
    if let Some((key, sequence)) = auth {
        tail[SEQUENCE].copy_from_slice(&sequence.to_le_bytes());
        let tag = key.tag(&frame[14..]);
        frame[14 + TAIL + TAG.start..14 + TAIL + TAG.end].copy_from_slice(&tag);
    }
    frame
}

/// Identity TLV type: sequence number (u64 LE) and HMAC-SHA256 tag, with a cluster key;
/// always the last TLV. The tag covers the whole payload with its own 32 bytes zeroed.
pub const TLV_AUTH: u8 = 0x8f;
const AUTH_TLV_LEN: usize = 8 + 32;

/// A decoded identity heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Host name, priority, dedicated IP; `others` holds the raw TLVs.
    pub repr: IdentityRepr,
    /// The sender's shared configuration (`None` from a sender that does not describe it).
    pub shared: Option<SharedConfig>,
    pub src: EthernetAddress,
}

/// Builds an identity heartbeat: host name, the shared configuration, and with a cluster key
/// the authentication TLV last.
pub fn encode_identity(
    repr: &IdentityRepr,
    shared: &SharedConfig,
    src: EthernetAddress,
    dst: EthernetAddress,
    auth: Option<(&ClusterKey, u64)>,
) -> Result<Vec<u8>, heartbeat::Error> {
    let mut repr = repr.clone();
    repr.others = shared.to_tlvs();
    if let Some((_, sequence)) = auth {
        let mut value = sequence.to_le_bytes().to_vec();
        value.extend_from_slice(&[0; 32]);
        repr.others.push((TLV_AUTH, value));
    }
    let mut frame = heartbeat::emit_identity_frame(&repr, src, dst)?;
    if let Some((key, _)) = auth {
        let tag = identity_tag_range(&repr);
        let value = key.tag_at(&frame[14..], tag.clone());
        frame[14 + tag.start..14 + tag.end].copy_from_slice(&value);
    }
    Ok(frame)
}

/// Where the tag of an identity's authentication TLV (its last TLV) sits in the payload, when
/// the TLVs are laid out as [`IdentityRepr::emit`] writes them.
fn identity_tag_range(repr: &IdentityRepr) -> std::ops::Range<usize> {
    let end = repr.buffer_len();
    end - 32..end
}

fn decode_identity(
    frame: &[u8],
    src: EthernetAddress,
    mut repr: IdentityRepr,
    auth: Option<(&ClusterKey, &mut ReplayGuard)>,
) -> DecodeError {
    if let Some((key, guard)) = auth {
        let Some((TLV_AUTH, value)) = repr.others.last() else {
            return DecodeError::Unauthenticated;
        };
        let payload = &frame[14..];
        let tag = identity_tag_range(&repr);
        if value.len() != AUTH_TLV_LEN || tag.end > payload.len() || !key.verify_at(payload, tag) {
            return DecodeError::Unauthenticated;
        }
        let mut sequence = [0u8; 8];
        sequence.copy_from_slice(&value[..8]);
        // Identities have no host code: their own sequence per priority (code 0 is never a
        // heartbeat's, which always has its low bit set).
        if !guard.accept(repr.host_priority, 0, u64::from_le_bytes(sequence)) {
            return DecodeError::Replayed;
        }
        repr.others.pop();
    }
    let shared = match SharedConfig::from_tlvs(repr.others.iter().map(|(k, v)| (*k, v.as_slice())))
    {
        Ok(shared) => shared,
        Err(e) => return DecodeError::BadConfig(e),
    };
    DecodeError::Identity(Box::new(Identity { repr, shared, src }))
}

/// A decoded heartbeat from a wlbs host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub ping: Ping,
    pub cluster_ip: Ipv4Addr,
    pub rule_codes: Vec<u32>,
    pub src: EthernetAddress,
}

/// Why a heartbeat frame is not a usable [`Ping`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error(transparent)]
    Frame(#[from] heartbeat::Error),
    /// An identity heartbeat (host name, dedicated IP, shared configuration), not a
    /// membership heartbeat; authenticated like one when there is a cluster key.
    #[error("an identity heartbeat, not a membership heartbeat")]
    Identity(Box<Identity>),
    /// An identity heartbeat whose configuration TLVs are malformed.
    #[error("identity heartbeat: {0}")]
    BadConfig(#[from] TlvError),
    /// An NLB heartbeat without the wlbs extension (e.g. from a Windows host).
    #[error("an NLB heartbeat without the wlbs extension (a Windows NLB host?)")]
    NotWlbs,
    #[error("unknown convergence state {0}")]
    BadState(u16),
    /// With a cluster key: the tag is missing or wrong.
    #[error("authentication failed (missing or wrong HMAC tag)")]
    Unauthenticated,
    /// With a cluster key: a sequence number already seen from that host.
    #[error("replayed heartbeat (sequence number not above the last one)")]
    Replayed,
}

/// Reads a heartbeat frame (as the workers hand it over). With `auth`, the frame must carry a
/// valid tag and a fresh sequence number.
pub fn decode(
    frame: &[u8],
    auth: Option<(&ClusterKey, &mut ReplayGuard)>,
) -> Result<Decoded, DecodeError> {
    let parsed = heartbeat::parse_frame(frame)?;
    let repr = match parsed.message {
        heartbeat::Message::Heartbeat(h) => h,
        heartbeat::Message::Identity(id) => {
            return Err(decode_identity(frame, parsed.src_addr, id, auth))
        }
    };
    // parse_frame checked the length and code; the view cannot fail.
    let packet = Packet::new_checked(&frame[14..])?;
    let tail = packet.auth_area();
    if &tail[0..4] != MAGIC || tail[4] != EXTENSION_VERSION {
        return Err(DecodeError::NotWlbs);
    }
    if let Some((key, guard)) = auth {
        if !key.verify(&frame[14..]) {
            return Err(DecodeError::Unauthenticated);
        }
        let mut sequence = [0u8; 8];
        sequence.copy_from_slice(&tail[SEQUENCE]);
        if !guard.accept(
            repr.host_priority,
            repr.unique_host_code,
            u64::from_le_bytes(sequence),
        ) {
            return Err(DecodeError::Replayed);
        }
    }
    let u32_at = |i: usize| u32::from_le_bytes([tail[i], tail[i + 1], tail[i + 2], tail[i + 3]]);
    let state = HostState::from_wire(repr.convergence_state)
        .ok_or(DecodeError::BadState(repr.convergence_state))?;
    let rule_count = repr.rules.len();
    Ok(Decoded {
        ping: Ping {
            priority: repr.host_priority,
            host_code: repr.unique_host_code,
            seq: u64::from_le_bytes(tail[104..112].try_into().expect("8 bytes")),
            next_config: u32_at(112),
            dedicated_ip: repr.dedicated_ip,
            config: u32_at(24),
            view: u32_at(8),
            heard: u32_at(12),
            input: u32_at(16),
            target: u32_at(20),
            state,
            default_host: (repr.default_host_id != NO_DEFAULT_HOST && repr.default_host_id < 32)
                .then(|| repr.default_host_id as u8 + 1),
            draining: tail[5] & 1 != 0,
            load_weights: repr
                .rules
                .iter()
                .map(|r| r.load_weight.min(255) as u8)
                .collect(),
            handling_priorities: tail[28..28 + rule_count].to_vec(),
            rules: repr
                .rules
                .iter()
                .map(|r| RuleMaps {
                    current: r.current,
                    new: r.new,
                    idle: r.idle,
                    ready: r.ready,
                })
                .collect(),
        },
        cluster_ip: repr.cluster_ip,
        rule_codes: repr.rules.iter().map(|r| r.code).collect(),
        src: parsed.src_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping() -> Ping {
        Ping {
            seq: 42,
            next_config: 0x1234,
            priority: 3,
            host_code: 0xdead_beef,
            dedicated_ip: Ipv4Addr::new(192, 0, 2, 13),
            config: 0x1234_5678,
            view: 0b111,
            heard: 0b101,
            input: 42,
            target: 77,
            state: HostState::Converged,
            default_host: Some(1),
            draining: true,
            load_weights: vec![50, 0],
            handling_priorities: vec![0, 3],
            rules: vec![
                RuleMaps {
                    current: 0xfffff,
                    new: 0xffff0,
                    idle: 0xf,
                    ready: 1 << 40,
                },
                RuleMaps::default(),
            ],
        }
    }

    #[test]
    fn a_ping_survives_the_wire() {
        let frame = encode(
            &ping(),
            Ipv4Addr::new(192, 0, 2, 10),
            &[0xaa, 0xbb],
            EthernetAddress([0x02, 3, 192, 0, 2, 10]),
            EthernetAddress::BROADCAST,
            None,
        );
        assert_eq!(frame.len(), 1510);
        let d = decode(&frame, None).unwrap();
        assert_eq!(d.ping, ping());
        assert_eq!(d.cluster_ip, Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(d.rule_codes, vec![0xaa, 0xbb]);
    }

    #[test]
    fn an_nlb_heartbeat_without_the_extension_is_named() {
        let mut frame = encode(
            &ping(),
            Ipv4Addr::new(192, 0, 2, 10),
            &[],
            EthernetAddress([0x02, 3, 192, 0, 2, 10]),
            EthernetAddress::BROADCAST,
            None,
        );
        frame[14 + 1364] = 0;
        assert_eq!(decode(&frame, None).unwrap_err(), DecodeError::NotWlbs);
        assert!(decode(&frame[..100], None).is_err());
    }

    fn signed(key: &ClusterKey, sequence: u64) -> Vec<u8> {
        encode(
            &ping(),
            Ipv4Addr::new(192, 0, 2, 10),
            &[1, 2],
            EthernetAddress([0x02, 3, 192, 0, 2, 10]),
            EthernetAddress::BROADCAST,
            Some((key, sequence)),
        )
    }

    #[test]
    fn signed_heartbeats_are_checked_and_replays_refused() {
        let key = ClusterKey::new(b"0123456789abcdef-cluster".to_vec()).unwrap();
        let other = ClusterKey::new(b"another key, 16+ bytes".to_vec()).unwrap();
        let mut guard = ReplayGuard::default();
        let first = signed(&key, 10);
        assert_eq!(
            decode(&first, Some((&key, &mut guard))).unwrap().ping,
            ping()
        );
        // The same frame again: a replay.
        assert_eq!(
            decode(&first, Some((&key, &mut guard))).unwrap_err(),
            DecodeError::Replayed
        );
        assert!(decode(&signed(&key, 11), Some((&key, &mut guard))).is_ok());
        // Another key, a flipped bit, or no tag at all: refused.
        assert_eq!(
            decode(&signed(&other, 12), Some((&key, &mut guard))).unwrap_err(),
            DecodeError::Unauthenticated
        );
        let mut flipped = signed(&key, 13);
        flipped[14 + 100] ^= 1;
        assert_eq!(
            decode(&flipped, Some((&key, &mut guard))).unwrap_err(),
            DecodeError::Unauthenticated
        );
        let unsigned = encode(
            &ping(),
            Ipv4Addr::new(192, 0, 2, 10),
            &[1, 2],
            EthernetAddress([0x02, 3, 192, 0, 2, 10]),
            EthernetAddress::BROADCAST,
            None,
        );
        assert_eq!(
            decode(&unsigned, Some((&key, &mut guard))).unwrap_err(),
            DecodeError::Unauthenticated
        );
        // Without a key configured, a signed heartbeat is still read (NLB behaviour).
        assert!(decode(&signed(&key, 14), None).is_ok());
        assert!(ClusterKey::new(b"short".to_vec()).is_none());
    }

    fn identity_frame(key: Option<(&ClusterKey, u64)>) -> Vec<u8> {
        let shared = SharedConfig {
            cluster_ip: Ipv4Addr::new(192, 0, 2, 10),
            vips: vec![],
            heartbeat_period_ms: 1000,
            mode: crate::macs::MacMode::Unicast,
            cluster_mac: wlbs_dataplane::wire::EthernetAddress([0x02, 0xbf, 192, 0, 2, 10]),
            rules: vec![wlbs_dataplane::filter::PortRule::nlb_default()],
        };
        let repr = IdentityRepr {
            version: NLB_VERSION,
            host_priority: 3,
            cluster_ip: shared.cluster_ip,
            dedicated_ip: Some(Ipv4Addr::new(192, 0, 2, 13)),
            host_name: "h3".into(),
            others: vec![],
        };
        encode_identity(
            &repr,
            &shared,
            EthernetAddress([0x02, 3, 192, 0, 2, 10]),
            EthernetAddress::BROADCAST,
            key,
        )
        .unwrap()
    }

    fn identity_of(e: DecodeError) -> Identity {
        match e {
            DecodeError::Identity(id) => *id,
            e => panic!("not an identity: {e:?}"),
        }
    }

    #[test]
    fn identities_carry_the_configuration_and_are_signed_with_a_key() {
        let key = ClusterKey::new(b"0123456789abcdef-cluster".to_vec()).unwrap();
        let other = ClusterKey::new(b"another key, 16+ bytes".to_vec()).unwrap();
        let mut guard = ReplayGuard::default();
        let plain = identity_of(decode(&identity_frame(None), None).unwrap_err());
        assert_eq!(plain.repr.host_name, "h3");
        assert_eq!(plain.shared.as_ref().unwrap().rules.len(), 1);
        let signed = identity_frame(Some((&key, 7)));
        let id = identity_of(decode(&signed, Some((&key, &mut guard))).unwrap_err());
        // The authentication TLV is checked and removed: the same identity as unsigned.
        assert_eq!(id, plain);
        assert_eq!(
            decode(&signed, Some((&key, &mut guard))).unwrap_err(),
            DecodeError::Replayed
        );
        // Identity and heartbeat sequences are separate: a heartbeat's number does not
        // make an identity's stale.
        assert!(decode(&signed_by(&key, 3, 8), Some((&key, &mut guard))).is_ok());
        for bad in [identity_frame(None), identity_frame(Some((&other, 9))), {
            let mut f = identity_frame(Some((&key, 10)));
            f[40] ^= 1;
            f
        }] {
            assert_eq!(
                decode(&bad, Some((&key, &mut guard))).unwrap_err(),
                DecodeError::Unauthenticated
            );
        }
        // A malformed configuration TLV is refused as a whole, not half-read.
        let mut broken = identity_frame(None);
        let at = broken
            .windows(2)
            .position(|w| w == [crate::consistency::TLV_CLUSTER, 16])
            .unwrap();
        broken[at + 1 + 9] = 0; // the rule count no longer matches
        assert!(matches!(
            decode(&broken, None),
            Err(DecodeError::BadConfig(_))
        ));
    }

    fn signed_by(key: &ClusterKey, priority: u8, sequence: u64) -> Vec<u8> {
        let mut p = ping();
        p.priority = priority;
        encode(
            &p,
            Ipv4Addr::new(192, 0, 2, 10),
            &[1, 2],
            EthernetAddress([0x02, priority, 192, 0, 2, 10]),
            EthernetAddress::BROADCAST,
            Some((key, sequence)),
        )
    }
}
