//! ICMP for IPv4 (RFC 792): echo, and the error messages whose quoted IP header tells the
//! load balancer which connection, and so which host, an error belongs to.

use std::net::Ipv4Addr;

use super::{checksum, ipv4, read_ipv4, read_u16, write_u16, Error, Result};

/// ICMP message type; open-ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Message(pub u8);

impl Message {
    pub const ECHO_REPLY: Self = Self(0);
    pub const DST_UNREACHABLE: Self = Self(3);
    pub const SOURCE_QUENCH: Self = Self(4);
    pub const REDIRECT: Self = Self(5);
    pub const ECHO_REQUEST: Self = Self(8);
    pub const ROUTER_ADVERT: Self = Self(9);
    pub const ROUTER_SOLICIT: Self = Self(10);
    pub const TIME_EXCEEDED: Self = Self(11);
    pub const PARAM_PROBLEM: Self = Self(12);
    pub const TIMESTAMP: Self = Self(13);
    pub const TIMESTAMP_REPLY: Self = Self(14);

    /// Error messages quote the IP header and first eight payload bytes of the datagram
    /// that caused them.
    pub const fn is_error(self) -> bool {
        matches!(self.0, 3 | 4 | 5 | 11 | 12)
    }
}

/// Codes of [`Message::DST_UNREACHABLE`] that the load balancer treats specially.
pub mod unreachable {
    pub const NET: u8 = 0;
    pub const HOST: u8 = 1;
    pub const PROTOCOL: u8 = 2;
    pub const PORT: u8 = 3;
    /// Path MTU discovery (RFC 1191): must reach the host that owns the connection.
    pub const FRAG_NEEDED: u8 = 4;
}

mod field {
    use crate::wire::{Field, Rest};

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    // The four type-specific bytes after the checksum, under their per-type names.
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQ_NO: Field = 6..8;
    pub const REDIRECT_GATEWAY: Field = 4..8;
    pub const PARAM_POINTER: usize = 4;
    pub const NEXT_HOP_MTU: Field = 6..8;
    pub const DATA: Rest = 8..;
}

/// Length of the ICMP header, type-specific word included.
pub const HEADER_LEN: usize = field::DATA.start;

/// A view of an ICMP message. The buffer is the whole message (the IP payload), which
/// the checksum covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds the eight-byte header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
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

    /// Gateway to use instead (redirect).
    pub fn gateway(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::REDIRECT_GATEWAY)
    }

    /// Offset of the offending byte in the quoted header (parameter problem).
    pub fn pointer(&self) -> u8 {
        self.buffer.as_ref()[field::PARAM_POINTER]
    }

    /// MTU of the next hop (destination unreachable, fragmentation needed; RFC 1191).
    pub fn next_hop_mtu(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::NEXT_HOP_MTU)
    }

    pub fn verify_checksum(&self) -> bool {
        checksum::data(self.buffer.as_ref()) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Everything after the header: echo data, or the quoted datagram of an error.
    pub fn data(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::DATA]
    }

    /// The IP header quoted by an error message, with as much of its payload as was
    /// quoted (usually eight bytes: ports and, for TCP, the sequence number).
    ///
    /// `Unsupported` if this is not an error message; otherwise the errors of
    /// [`ipv4::Packet::new_checked_truncated`].
    pub fn embedded_ipv4(&self) -> Result<ipv4::Packet<&'a [u8]>> {
        if !self.msg_type().is_error() {
            return Err(Error::Unsupported);
        }
        ipv4::Packet::new_checked_truncated(self.data())
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

    pub fn set_gateway(&mut self, gateway: Ipv4Addr) {
        self.buffer.as_mut()[field::REDIRECT_GATEWAY].copy_from_slice(&gateway.octets());
    }

    pub fn set_pointer(&mut self, pointer: u8) {
        self.buffer.as_mut()[field::PARAM_POINTER] = pointer;
    }

    pub fn set_next_hop_mtu(&mut self, mtu: u16) {
        write_u16(self.buffer.as_mut(), field::NEXT_HOP_MTU, mtu);
    }

    /// Recomputes the checksum over the whole buffer; call after any change.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::data(self.buffer.as_ref());
        self.set_checksum(!sum);
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }
}

/// An ICMP message as plain values, borrowing its data.
///
/// For the error variants, `original` is the quoted datagram (IP header and the start of
/// its payload); `parse` guarantees it holds a plausible IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Repr<'a> {
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
    DstUnreachable {
        code: u8,
        next_hop_mtu: u16,
        original: &'a [u8],
    },
    SourceQuench {
        original: &'a [u8],
    },
    Redirect {
        code: u8,
        gateway: Ipv4Addr,
        original: &'a [u8],
    },
    TimeExceeded {
        code: u8,
        original: &'a [u8],
    },
    ParamProblem {
        code: u8,
        pointer: u8,
        original: &'a [u8],
    },
}

impl<'a> Repr<'a> {
    /// Parses echo and error messages, verifying the checksum; other types are
    /// `Unsupported`.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Self> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        let msg_type = packet.msg_type();
        if msg_type.is_error() {
            packet.embedded_ipv4()?;
        }
        let code = packet.msg_code();
        let data = packet.data();
        Ok(match msg_type {
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
            Message::DST_UNREACHABLE => Repr::DstUnreachable {
                code,
                next_hop_mtu: packet.next_hop_mtu(),
                original: data,
            },
            Message::SOURCE_QUENCH => Repr::SourceQuench { original: data },
            Message::REDIRECT => Repr::Redirect {
                code,
                gateway: packet.gateway(),
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
            _ => return Err(Error::Unsupported),
        })
    }

    fn data(&self) -> &'a [u8] {
        match *self {
            Repr::EchoRequest { data, .. } | Repr::EchoReply { data, .. } => data,
            Repr::DstUnreachable { original, .. }
            | Repr::SourceQuench { original }
            | Repr::Redirect { original, .. }
            | Repr::TimeExceeded { original, .. }
            | Repr::ParamProblem { original, .. } => original,
        }
    }

    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.data().len()
    }

    /// Writes the message and its checksum. The buffer is the message, so size it to
    /// [`buffer_len`](Self::buffer_len).
    ///
    /// # Panics
    /// If the buffer is shorter than `buffer_len`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let (msg_type, code, rest): (Message, u8, [u8; 4]) = match *self {
            Repr::EchoRequest { ident, seq_no, .. } => {
                (Message::ECHO_REQUEST, 0, echo_word(ident, seq_no))
            }
            Repr::EchoReply { ident, seq_no, .. } => {
                (Message::ECHO_REPLY, 0, echo_word(ident, seq_no))
            }
            Repr::DstUnreachable {
                code, next_hop_mtu, ..
            } => {
                let [hi, lo] = next_hop_mtu.to_be_bytes();
                (Message::DST_UNREACHABLE, code, [0, 0, hi, lo])
            }
            Repr::SourceQuench { .. } => (Message::SOURCE_QUENCH, 0, [0; 4]),
            Repr::Redirect { code, gateway, .. } => (Message::REDIRECT, code, gateway.octets()),
            Repr::TimeExceeded { code, .. } => (Message::TIME_EXCEEDED, code, [0; 4]),
            Repr::ParamProblem { code, pointer, .. } => {
                (Message::PARAM_PROBLEM, code, [pointer, 0, 0, 0])
            }
        };
        packet.set_msg_type(msg_type);
        packet.set_msg_code(code);
        packet.buffer.as_mut()[4..HEADER_LEN].copy_from_slice(&rest);
        let data = self.data();
        packet.data_mut()[..data.len()].copy_from_slice(data);
        packet.fill_checksum();
    }
}

fn echo_word(ident: u16, seq_no: u16) -> [u8; 4] {
    let [i0, i1] = ident.to_be_bytes();
    let [s0, s1] = seq_no.to_be_bytes();
    [i0, i1, s0, s1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ip, udp, IpProtocol};

    /// Port unreachable from 198.51.100.53 for a DNS query 192.0.2.1:40000 -> :53,
    /// quoting the query's IP header and its UDP header.
    const PORT_UNREACHABLE: [u8; 36] = [
        0x03, 0x03, 0x64, 0xd9, 0x00, 0x00, 0x00, 0x00, // type 3 code 3
        0x45, 0x00, 0x00, 0x39, 0xbe, 0xef, 0x40, 0x00, 0x40, 0x11, 0x8f, 0x5a, 0xc0, 0x00, 0x02,
        0x01, 0xc6, 0x33, 0x64, 0x35, // quoted IPv4 header, total length 57
        0x9c, 0x40, 0x00, 0x35, 0x00, 0x25, 0xfb, 0x88, // quoted UDP header
    ];

    /// Echo request id 0x1234 seq 1 with sixteen bytes of data.
    const ECHO_REQUEST: [u8; 24] = [
        0x08, 0x00, 0xb6, 0x93, 0x12, 0x34, 0x00, 0x01, b'0', b'1', b'2', b'3', b'4', b'5', b'6',
        b'7', b'8', b'9', b'a', b'b', b'c', b'd', b'e', b'f',
    ];

    #[test]
    fn port_unreachable_leads_back_to_the_udp_flow() {
        let packet = Packet::new_checked(&PORT_UNREACHABLE[..]).unwrap();
        assert!(packet.verify_checksum());
        assert_eq!(
            (packet.msg_type(), packet.msg_code()),
            (Message::DST_UNREACHABLE, unreachable::PORT)
        );
        let quoted = packet.embedded_ipv4().unwrap();
        assert!(quoted.verify_checksum());
        assert_eq!(quoted.src_addr(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(quoted.dst_addr(), Ipv4Addr::new(198, 51, 100, 53));
        assert_eq!(quoted.protocol(), IpProtocol::UDP);
        assert_eq!(quoted.payload().len(), 8);
        assert_eq!(
            ip::ports(quoted.protocol(), quoted.payload()),
            Some((40000, 53))
        );
        // The quoted UDP header claims 37 bytes, so it is not a checkable datagram.
        assert_eq!(
            udp::Packet::new_checked(quoted.payload()).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn port_unreachable_round_trips() {
        let packet = Packet::new_checked(&PORT_UNREACHABLE[..]).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(
            repr,
            Repr::DstUnreachable {
                code: 3,
                next_hop_mtu: 0,
                original: &PORT_UNREACHABLE[8..]
            }
        );
        let mut out = [0u8; 36];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, PORT_UNREACHABLE);
    }

    #[test]
    fn echo_request_round_trips() {
        let packet = Packet::new_checked(&ECHO_REQUEST[..]).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(
            repr,
            Repr::EchoRequest {
                ident: 0x1234,
                seq_no: 1,
                data: b"0123456789abcdef"
            }
        );
        assert_eq!(packet.embedded_ipv4().unwrap_err(), Error::Unsupported);
        let mut out = [0u8; 24];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, ECHO_REQUEST);
    }

    #[test]
    fn error_variants_round_trip() {
        let original = &PORT_UNREACHABLE[8..];
        for repr in [
            Repr::EchoReply {
                ident: 7,
                seq_no: 9,
                data: b"",
            },
            Repr::DstUnreachable {
                code: unreachable::FRAG_NEEDED,
                next_hop_mtu: 1400,
                original,
            },
            Repr::SourceQuench { original },
            Repr::Redirect {
                code: 1,
                gateway: Ipv4Addr::new(192, 0, 2, 254),
                original,
            },
            Repr::TimeExceeded { code: 0, original },
            Repr::ParamProblem {
                code: 0,
                pointer: 9,
                original,
            },
        ] {
            let mut out = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut out[..]));
            let packet = Packet::new_checked(&out[..]).unwrap();
            assert_eq!(Repr::parse(&packet), Ok(repr));
        }
    }

    #[test]
    fn frag_needed_carries_the_next_hop_mtu() {
        let mut bytes = PORT_UNREACHABLE;
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_msg_code(unreachable::FRAG_NEEDED);
        packet.set_next_hop_mtu(1400);
        packet.fill_checksum();
        assert_eq!(packet.next_hop_mtu(), 1400);
        assert!(packet.verify_checksum());
    }

    #[test]
    fn bad_messages_are_rejected() {
        assert_eq!(
            Packet::new_checked(&ECHO_REQUEST[..7]).unwrap_err(),
            Error::Truncated
        );

        let mut corrupted = ECHO_REQUEST;
        corrupted[10] = b'X';
        assert_eq!(
            Repr::parse(&Packet::new_checked(&corrupted[..]).unwrap()),
            Err(Error::Checksum)
        );

        // An error quoting less than an IP header.
        let mut short_quote: [u8; 20] = PORT_UNREACHABLE[..20].try_into().unwrap();
        Packet::new_unchecked(&mut short_quote[..]).fill_checksum();
        assert_eq!(
            Repr::parse(&Packet::new_checked(&short_quote[..]).unwrap()),
            Err(Error::Truncated)
        );

        let mut timestamp = ECHO_REQUEST;
        let mut packet = Packet::new_checked(&mut timestamp[..]).unwrap();
        packet.set_msg_type(Message::TIMESTAMP);
        packet.fill_checksum();
        assert_eq!(
            Repr::parse(&Packet::new_checked(&timestamp[..]).unwrap()),
            Err(Error::Unsupported)
        );
    }
}
