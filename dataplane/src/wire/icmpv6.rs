//! ICMPv6 (RFC 4443) and the Neighbor Discovery messages (RFC 4861) a cluster host
//! answers: errors quoting the packet that caused them, echo, and neighbour
//! solicitation and advertisement with their link-layer address option.

use std::net::Ipv6Addr;

use super::{
    checksum, ipv6, read_ipv6, read_u16, read_u32, write_u16, write_u32, Error, EthernetAddress,
    IpProtocol, PseudoHeader, Result,
};

/// ICMPv6 message type; open-ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Message(pub u8);

impl Message {
    pub const DST_UNREACHABLE: Self = Self(1);
    pub const PKT_TOO_BIG: Self = Self(2);
    pub const TIME_EXCEEDED: Self = Self(3);
    pub const PARAM_PROBLEM: Self = Self(4);
    pub const ECHO_REQUEST: Self = Self(128);
    pub const ECHO_REPLY: Self = Self(129);
    pub const MLD_QUERY: Self = Self(130);
    pub const MLD_REPORT: Self = Self(131);
    pub const MLD_DONE: Self = Self(132);
    pub const ROUTER_SOLICIT: Self = Self(133);
    pub const ROUTER_ADVERT: Self = Self(134);
    pub const NEIGHBOR_SOLICIT: Self = Self(135);
    pub const NEIGHBOR_ADVERT: Self = Self(136);
    pub const REDIRECT: Self = Self(137);
    pub const MLDV2_REPORT: Self = Self(143);

    /// Types below 128 are errors, which quote as much of the invoking packet as fits.
    pub const fn is_error(self) -> bool {
        self.0 < 128
    }

    const fn is_neighbor_discovery(self) -> bool {
        self.0 == Self::NEIGHBOR_SOLICIT.0 || self.0 == Self::NEIGHBOR_ADVERT.0
    }
}

/// Neighbor Discovery option types (RFC 4861 section 4.6).
mod nd_option {
    pub const SOURCE_LLADDR: u8 = 1;
    pub const TARGET_LLADDR: u8 = 2;
    /// An Ethernet link-layer address option: type, length 1 (eight bytes), MAC.
    pub const LLADDR_LEN: usize = 8;
}

mod field {
    use crate::wire::{Field, Rest};

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    // The four type-specific bytes after the checksum, under their per-type names.
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQ_NO: Field = 6..8;
    pub const MTU: Field = 4..8;
    pub const POINTER: Field = 4..8;
    /// Router, solicited, override (neighbour advertisement).
    pub const ND_FLAGS: usize = 4;
    pub const DATA: Rest = 8..;
    pub const TARGET: Field = 8..24;
    pub const ND_OPTIONS: Rest = 24..;
}

pub const HEADER_LEN: usize = field::DATA.start;
/// Length of a neighbour solicitation or advertisement without options.
pub const ND_HEADER_LEN: usize = field::ND_OPTIONS.start;

const FLAG_ROUTER: u8 = 0x80;
const FLAG_SOLICITED: u8 = 0x40;
const FLAG_OVERRIDE: u8 = 0x20;

/// A view of an ICMPv6 message. The buffer is the whole message (the upper-layer
/// payload), which the checksum covers along with the IPv6 pseudo-header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds the header, and for neighbour solicitation
    /// and advertisement the target address too.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || (self.msg_type().is_neighbor_discovery() && len < ND_HEADER_LEN) {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn msg_type(&self) -> Message {
        Message(self.buffer.as_ref()[field::TYPE])
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Echo identifier (echo request and reply).
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// Echo sequence number (echo request and reply).
    pub fn echo_seq_no(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_SEQ_NO)
    }

    /// MTU of the next-hop link (packet too big).
    pub fn mtu(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::MTU)
    }

    /// Offset of the offending byte in the quoted packet (parameter problem).
    pub fn pointer(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::POINTER)
    }

    /// Neighbour advertisement: sent by a router.
    pub fn router_flag(&self) -> bool {
        self.buffer.as_ref()[field::ND_FLAGS] & FLAG_ROUTER != 0
    }

    /// Neighbour advertisement: in response to a solicitation.
    pub fn solicited_flag(&self) -> bool {
        self.buffer.as_ref()[field::ND_FLAGS] & FLAG_SOLICITED != 0
    }

    /// Neighbour advertisement: replaces a cached link-layer address.
    pub fn override_flag(&self) -> bool {
        self.buffer.as_ref()[field::ND_FLAGS] & FLAG_OVERRIDE != 0
    }

    /// The address being resolved (solicitation) or announced (advertisement); `None`
    /// for other messages.
    pub fn target_addr(&self) -> Option<Ipv6Addr> {
        if !self.msg_type().is_neighbor_discovery() {
            return None;
        }
        let target = self.buffer.as_ref().get(field::TARGET)?;
        Some(read_ipv6(target, 0..16))
    }

    /// The Ethernet address in a solicitation's source link-layer option or an
    /// advertisement's target link-layer option; `Ok(None)` when absent or for other
    /// messages.
    ///
    /// `Malformed` for a zero-length option (RFC 4861 section 4.6 requires dropping the
    /// packet), `Truncated` for an option running past the message, `Unsupported` for a
    /// link-layer address that is not six bytes.
    pub fn link_layer_addr(&self) -> Result<Option<EthernetAddress>> {
        let wanted = match self.msg_type() {
            Message::NEIGHBOR_SOLICIT => nd_option::SOURCE_LLADDR,
            Message::NEIGHBOR_ADVERT => nd_option::TARGET_LLADDR,
            _ => return Ok(None),
        };
        let mut options = self
            .buffer
            .as_ref()
            .get(field::ND_OPTIONS)
            .unwrap_or_default();
        // Each round consumes at least eight bytes, so this ends within len / 8 rounds.
        while let [kind, units, ..] = *options {
            let len = usize::from(units) * 8;
            if len == 0 {
                return Err(Error::Malformed);
            }
            let option = options.get(..len).ok_or(Error::Truncated)?;
            if kind == wanted {
                if len != nd_option::LLADDR_LEN {
                    return Err(Error::Unsupported);
                }
                return Ok(EthernetAddress::from_bytes(&option[2..]));
            }
            options = &options[len..];
        }
        if options.is_empty() {
            Ok(None)
        } else {
            Err(Error::Truncated)
        }
    }

    /// Whether the checksum over the message and the pseudo-header is correct.
    pub fn verify_checksum(&self, pseudo: &PseudoHeader) -> bool {
        self.sum(pseudo) == 0xffff
    }

    fn sum(&self, pseudo: &PseudoHeader) -> u16 {
        let data = self.buffer.as_ref();
        checksum::combine(&[
            pseudo.sum(IpProtocol::ICMPV6, data.len() as u32),
            checksum::data(data),
        ])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Everything after the four-byte type-specific word: echo data, the quoted packet
    /// of an error, or a neighbour message's target and options.
    pub fn data(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::DATA]
    }

    /// The IPv6 packet quoted by an error message, as much of it as was quoted.
    ///
    /// `Unsupported` if this is not an error message; otherwise the errors of
    /// [`ipv6::Packet::new_checked_truncated`].
    pub fn embedded_ipv6(&self) -> Result<ipv6::Packet<&'a [u8]>> {
        if !self.msg_type().is_error() {
            return Err(Error::Unsupported);
        }
        ipv6::Packet::new_checked_truncated(self.data())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_msg_type(&mut self, msg_type: Message) {
        self.buffer.as_mut()[field::TYPE] = msg_type.0;
    }

    pub fn set_msg_code(&mut self, code: u8) {
        self.buffer.as_mut()[field::CODE] = code;
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    pub fn set_echo_ident(&mut self, ident: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_IDENT, ident);
    }

    pub fn set_echo_seq_no(&mut self, seq_no: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_SEQ_NO, seq_no);
    }

    pub fn set_mtu(&mut self, mtu: u32) {
        write_u32(self.buffer.as_mut(), field::MTU, mtu);
    }

    pub fn set_pointer(&mut self, pointer: u32) {
        write_u32(self.buffer.as_mut(), field::POINTER, pointer);
    }

    /// Sets the advertisement flags and clears the reserved bits after them.
    pub fn set_nd_flags(&mut self, router: bool, solicited: bool, override_flag: bool) {
        let mut flags = 0;
        if router {
            flags |= FLAG_ROUTER;
        }
        if solicited {
            flags |= FLAG_SOLICITED;
        }
        if override_flag {
            flags |= FLAG_OVERRIDE;
        }
        write_u32(self.buffer.as_mut(), 4..8, u32::from(flags) << 24);
    }

    /// # Panics
    /// If the buffer is shorter than [`ND_HEADER_LEN`].
    pub fn set_target_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::TARGET].copy_from_slice(&addr.octets());
    }

    /// Recomputes the checksum over the whole buffer; call after any change.
    pub fn fill_checksum(&mut self, pseudo: &PseudoHeader) {
        self.set_checksum(0);
        let sum = self.sum(pseudo);
        self.set_checksum(!sum);
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }
}

/// An ICMPv6 message as plain values, borrowing its data.
///
/// For the error variants, `original` is the quoted packet; `parse` guarantees it starts
/// with an IPv6 header. Neighbour messages carry only the link-layer address option;
/// `parse` skips any other option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Repr<'a> {
    DstUnreachable {
        code: u8,
        original: &'a [u8],
    },
    PktTooBig {
        mtu: u32,
        original: &'a [u8],
    },
    TimeExceeded {
        code: u8,
        original: &'a [u8],
    },
    ParamProblem {
        code: u8,
        pointer: u32,
        original: &'a [u8],
    },
    EchoRequest {
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
    EchoReply {
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
    NeighborSolicit {
        target_addr: Ipv6Addr,
        source_lladdr: Option<EthernetAddress>,
    },
    NeighborAdvert {
        router_flag: bool,
        solicited_flag: bool,
        override_flag: bool,
        target_addr: Ipv6Addr,
        target_lladdr: Option<EthernetAddress>,
    },
}

impl<'a> Repr<'a> {
    /// Parses errors 1 to 4, echo and neighbour messages, verifying the checksum; other
    /// types are `Unsupported`. Hop limit 255, which Neighbor Discovery also requires,
    /// is the IPv6 layer's to check.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &Packet<&'a T>,
        pseudo: &PseudoHeader,
    ) -> Result<Self> {
        packet.check_len()?;
        if !packet.verify_checksum(pseudo) {
            return Err(Error::Checksum);
        }
        let msg_type = packet.msg_type();
        let code = packet.msg_code();
        let data = packet.data();
        if msg_type.is_error() {
            packet.embedded_ipv6()?;
        }
        if msg_type.is_neighbor_discovery() {
            if code != 0 {
                return Err(Error::Malformed);
            }
            // Checked by `check_len` for these two types.
            let target_addr = packet.target_addr().ok_or(Error::Truncated)?;
            if target_addr.is_multicast() {
                return Err(Error::Malformed);
            }
            let lladdr = packet.link_layer_addr()?;
            return Ok(if msg_type == Message::NEIGHBOR_SOLICIT {
                Repr::NeighborSolicit {
                    target_addr,
                    source_lladdr: lladdr,
                }
            } else {
                Repr::NeighborAdvert {
                    router_flag: packet.router_flag(),
                    solicited_flag: packet.solicited_flag(),
                    override_flag: packet.override_flag(),
                    target_addr,
                    target_lladdr: lladdr,
                }
            });
        }
        Ok(match msg_type {
            Message::DST_UNREACHABLE => Repr::DstUnreachable {
                code,
                original: data,
            },
            Message::PKT_TOO_BIG => Repr::PktTooBig {
                mtu: packet.mtu(),
                original: data,
            },
            Message::TIME_EXCEEDED => Repr::TimeExceeded {
                code,
                original: data,
            },
            Message::PARAM_PROBLEM => Repr::ParamProblem {
                code,
                pointer: packet.pointer(),
                original: data,
            },
            Message::ECHO_REQUEST => Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            },
            Message::ECHO_REPLY => Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            },
            _ => return Err(Error::Unsupported),
        })
    }

    pub fn buffer_len(&self) -> usize {
        match *self {
            Repr::DstUnreachable { original, .. }
            | Repr::PktTooBig { original, .. }
            | Repr::TimeExceeded { original, .. }
            | Repr::ParamProblem { original, .. } => HEADER_LEN + original.len(),
            Repr::EchoRequest { data, .. } | Repr::EchoReply { data, .. } => {
                HEADER_LEN + data.len()
            }
            Repr::NeighborSolicit {
                source_lladdr: lladdr,
                ..
            }
            | Repr::NeighborAdvert {
                target_lladdr: lladdr,
                ..
            } => {
                ND_HEADER_LEN
                    + if lladdr.is_some() {
                        nd_option::LLADDR_LEN
                    } else {
                        0
                    }
            }
        }
    }

    /// Writes the message and its checksum. The buffer is the message, so size it to
    /// [`buffer_len`](Self::buffer_len).
    ///
    /// # Panics
    /// If the buffer is shorter than `buffer_len`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        pseudo: &PseudoHeader,
    ) {
        let (msg_type, code, word, data): (Message, u8, u32, &[u8]) = match *self {
            Repr::DstUnreachable { code, original } => {
                (Message::DST_UNREACHABLE, code, 0, original)
            }
            Repr::PktTooBig { mtu, original } => (Message::PKT_TOO_BIG, 0, mtu, original),
            Repr::TimeExceeded { code, original } => (Message::TIME_EXCEEDED, code, 0, original),
            Repr::ParamProblem {
                code,
                pointer,
                original,
            } => (Message::PARAM_PROBLEM, code, pointer, original),
            Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } => (
                Message::ECHO_REQUEST,
                0,
                (u32::from(ident) << 16) | u32::from(seq_no),
                data,
            ),
            Repr::EchoReply {
                ident,
                seq_no,
                data,
            } => (
                Message::ECHO_REPLY,
                0,
                (u32::from(ident) << 16) | u32::from(seq_no),
                data,
            ),
            Repr::NeighborSolicit {
                target_addr,
                source_lladdr,
            } => {
                emit_neighbor(
                    packet,
                    Message::NEIGHBOR_SOLICIT,
                    0,
                    target_addr,
                    source_lladdr,
                );
                packet.fill_checksum(pseudo);
                return;
            }
            Repr::NeighborAdvert {
                router_flag,
                solicited_flag,
                override_flag,
                target_addr,
                target_lladdr,
            } => {
                let flags = (u32::from(router_flag) << 31)
                    | (u32::from(solicited_flag) << 30)
                    | (u32::from(override_flag) << 29);
                emit_neighbor(
                    packet,
                    Message::NEIGHBOR_ADVERT,
                    flags,
                    target_addr,
                    target_lladdr,
                );
                packet.fill_checksum(pseudo);
                return;
            }
        };
        packet.set_msg_type(msg_type);
        packet.set_msg_code(code);
        write_u32(packet.buffer.as_mut(), 4..8, word);
        packet.data_mut()[..data.len()].copy_from_slice(data);
        packet.fill_checksum(pseudo);
    }
}

fn emit_neighbor<T: AsRef<[u8]> + AsMut<[u8]>>(
    packet: &mut Packet<T>,
    msg_type: Message,
    word: u32,
    target_addr: Ipv6Addr,
    lladdr: Option<EthernetAddress>,
) {
    packet.set_msg_type(msg_type);
    packet.set_msg_code(0);
    write_u32(packet.buffer.as_mut(), 4..8, word);
    packet.set_target_addr(target_addr);
    if let Some(mac) = lladdr {
        let kind = if msg_type == Message::NEIGHBOR_SOLICIT {
            nd_option::SOURCE_LLADDR
        } else {
            nd_option::TARGET_LLADDR
        };
        let option =
            &mut packet.buffer.as_mut()[ND_HEADER_LEN..ND_HEADER_LEN + nd_option::LLADDR_LEN];
        option[0] = kind;
        option[1] = 1;
        option[2..].copy_from_slice(&mac.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip;

    fn addr(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn host_mac() -> EthernetAddress {
        EthernetAddress([0x00, 0x15, 0x5d, 0x01, 0x02, 0x03])
    }

    fn cluster_mac() -> EthernetAddress {
        EthernetAddress([0x02, 0xbf, 0xc0, 0x00, 0x02, 0x0a])
    }

    /// 2001:db8::1 asks the solicited-node group ff02::1:ff00:2 who has 2001:db8::2.
    const SOLICIT: [u8; 32] = [
        0x87, 0x00, 0xbf, 0x0e, 0x00, 0x00, 0x00, 0x00, // type 135, checksum 0xbf0e
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // target
        0x01, 0x01, 0x00, 0x15, 0x5d, 0x01, 0x02, 0x03, // source link-layer address
    ];

    fn solicit_pseudo() -> PseudoHeader {
        PseudoHeader::V6 {
            src: addr("2001:db8::1"),
            dst: addr("ff02::1:ff00:2"),
        }
    }

    /// The cluster answers: solicited, override, 2001:db8::2 is at 02:bf:c0:00:02:0a.
    const ADVERT: [u8; 32] = [
        0x88, 0x00, 0xc7, 0xa9, 0x60, 0x00, 0x00, 0x00, // type 136, S and O
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // target
        0x02, 0x01, 0x02, 0xbf, 0xc0, 0x00, 0x02, 0x0a, // target link-layer address
    ];

    fn advert_pseudo() -> PseudoHeader {
        PseudoHeader::V6 {
            src: addr("2001:db8::2"),
            dst: addr("2001:db8::1"),
        }
    }

    #[test]
    fn neighbor_solicitation_round_trips() {
        let packet = Packet::new_checked(&SOLICIT[..]).unwrap();
        assert_eq!(packet.target_addr(), Some(addr("2001:db8::2")));
        assert_eq!(packet.link_layer_addr(), Ok(Some(host_mac())));
        let repr = Repr::parse(&packet, &solicit_pseudo()).unwrap();
        assert_eq!(
            repr,
            Repr::NeighborSolicit {
                target_addr: addr("2001:db8::2"),
                source_lladdr: Some(host_mac())
            }
        );
        let mut out = [0u8; 32];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]), &solicit_pseudo());
        assert_eq!(out, SOLICIT);
    }

    #[test]
    fn neighbor_advertisement_round_trips() {
        let packet = Packet::new_checked(&ADVERT[..]).unwrap();
        assert!(packet.solicited_flag() && packet.override_flag() && !packet.router_flag());
        let repr = Repr::parse(&packet, &advert_pseudo()).unwrap();
        assert_eq!(
            repr,
            Repr::NeighborAdvert {
                router_flag: false,
                solicited_flag: true,
                override_flag: true,
                target_addr: addr("2001:db8::2"),
                target_lladdr: Some(cluster_mac()),
            }
        );
        let mut out = [0u8; 32];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]), &advert_pseudo());
        assert_eq!(out, ADVERT);
    }

    #[test]
    fn echo_request_round_trips() {
        let bytes = [
            0x80, 0x00, 0x38, 0x2f, 0x12, 0x34, 0x00, 0x01, b'w', b'l', b'b', b's',
        ];
        let pseudo = PseudoHeader::V6 {
            src: addr("2001:db8::1"),
            dst: addr("2001:db8::2"),
        };
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.target_addr(), None);
        assert_eq!(packet.link_layer_addr(), Ok(None));
        let repr = Repr::parse(&packet, &pseudo).unwrap();
        assert_eq!(
            repr,
            Repr::EchoRequest {
                ident: 0x1234,
                seq_no: 1,
                data: b"wlbs"
            }
        );
        let mut out = [0u8; 12];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]), &pseudo);
        assert_eq!(out, bytes);
    }

    #[test]
    fn packet_too_big_leads_back_to_the_tcp_flow() {
        // The first 48 bytes of a TCP segment 2001:db8::1 port 49153 -> 2001:db8::2 port 443.
        let mut quoted = vec![0x60, 0, 0, 0, 0x05, 0xb4, 0x06, 0x40];
        quoted.extend_from_slice(&addr("2001:db8::1").octets());
        quoted.extend_from_slice(&addr("2001:db8::2").octets());
        quoted.extend_from_slice(&[0xc0, 0x01, 0x01, 0xbb, 0, 0, 0, 1]);
        let repr = Repr::PktTooBig {
            mtu: 1280,
            original: &quoted,
        };
        let pseudo = PseudoHeader::V6 {
            src: addr("2001:db8::fe"),
            dst: addr("2001:db8::1"),
        };
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]), &pseudo);

        let packet = Packet::new_checked(&out[..]).unwrap();
        assert_eq!(
            (packet.msg_type(), packet.mtu()),
            (Message::PKT_TOO_BIG, 1280)
        );
        assert_eq!(Repr::parse(&packet, &pseudo), Ok(repr));
        let inner = packet.embedded_ipv6().unwrap();
        let upper = inner.upper_layer().unwrap();
        assert_eq!(upper.protocol, IpProtocol::TCP);
        assert_eq!(
            ip::ports(upper.protocol, inner.upper_layer_payload(&upper)),
            Some((49153, 443))
        );
    }

    #[test]
    fn error_variants_round_trip() {
        let mut quoted = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        quoted.extend_from_slice(&[0u8; 32]);
        quoted.extend_from_slice(&[0x00, 0x35, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00]);
        let pseudo = PseudoHeader::V6 {
            src: addr("2001:db8::fe"),
            dst: addr("2001:db8::1"),
        };
        for repr in [
            Repr::DstUnreachable {
                code: 4,
                original: &quoted,
            },
            Repr::TimeExceeded {
                code: 0,
                original: &quoted,
            },
            Repr::ParamProblem {
                code: 1,
                pointer: 40,
                original: &quoted,
            },
            Repr::EchoReply {
                ident: 1,
                seq_no: 2,
                data: &[],
            },
            Repr::NeighborSolicit {
                target_addr: addr("2001:db8::2"),
                source_lladdr: None,
            },
        ] {
            let mut out = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut out[..]), &pseudo);
            assert_eq!(
                Repr::parse(&Packet::new_checked(&out[..]).unwrap(), &pseudo),
                Ok(repr)
            );
        }
    }

    #[test]
    fn bad_neighbor_messages_are_rejected() {
        assert_eq!(
            Packet::new_checked(&SOLICIT[..7]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Packet::new_checked(&SOLICIT[..23]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Repr::parse(
                &Packet::new_checked(&SOLICIT[..]).unwrap(),
                &advert_pseudo()
            ),
            Err(Error::Checksum)
        );

        let resign = |bytes: &mut [u8]| {
            Packet::new_unchecked(&mut bytes[..]).fill_checksum(&solicit_pseudo());
        };
        let mut zero_len_option = SOLICIT;
        zero_len_option[25] = 0;
        resign(&mut zero_len_option);
        let packet = Packet::new_checked(&zero_len_option[..]).unwrap();
        assert_eq!(packet.link_layer_addr(), Err(Error::Malformed));
        assert_eq!(
            Repr::parse(&packet, &solicit_pseudo()),
            Err(Error::Malformed)
        );

        let mut long_option = SOLICIT;
        long_option[25] = 2;
        resign(&mut long_option);
        let packet = Packet::new_checked(&long_option[..]).unwrap();
        assert_eq!(packet.link_layer_addr(), Err(Error::Truncated));

        let mut multicast_target = SOLICIT;
        multicast_target[8] = 0xff;
        resign(&mut multicast_target);
        let packet = Packet::new_checked(&multicast_target[..]).unwrap();
        assert_eq!(
            Repr::parse(&packet, &solicit_pseudo()),
            Err(Error::Malformed)
        );

        let mut router_solicit = SOLICIT;
        router_solicit[0] = Message::ROUTER_SOLICIT.0;
        resign(&mut router_solicit);
        let packet = Packet::new_checked(&router_solicit[..]).unwrap();
        assert_eq!(
            Repr::parse(&packet, &solicit_pseudo()),
            Err(Error::Unsupported)
        );
    }

    #[test]
    fn unknown_options_are_skipped_to_the_link_layer_address() {
        // A nonce option (type 14, RFC 3971) before the source link-layer address.
        let mut bytes = SOLICIT[..24].to_vec();
        bytes.extend_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]);
        bytes.extend_from_slice(&SOLICIT[24..]);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.link_layer_addr(), Ok(Some(host_mac())));
    }
}
