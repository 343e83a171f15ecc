//! ARP (RFC 826) for Ethernet and IPv4, the only pairing an NLB cluster answers for.
//!
//! The view assumes the 28-byte Ethernet/IPv4 layout, so `new_checked` rejects any other
//! hardware or protocol type rather than letting the fixed offsets misread it.

use std::net::Ipv4Addr;

use super::{read_ipv4, read_u16, write_u16, Error, EtherType, EthernetAddress, Result};

/// ARP opcode; open-ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Operation(pub u16);

impl Operation {
    pub const REQUEST: Self = Self(1);
    pub const REPLY: Self = Self(2);
}

/// ARP hardware type for Ethernet.
pub const HARDWARE_ETHERNET: u16 = 1;

mod field {
    use crate::wire::Field;

    pub const HTYPE: Field = 0..2;
    pub const PTYPE: Field = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Field = 6..8;
    pub const SHA: Field = 8..14;
    pub const SPA: Field = 14..18;
    pub const THA: Field = 18..24;
    pub const TPA: Field = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = field::TPA.end;

/// A view of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it is long enough and Ethernet/IPv4.
    ///
    /// Trailing bytes (Ethernet padding to 60 bytes) are allowed and ignored.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the length and that the address types are Ethernet and IPv4.
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < PACKET_LEN {
            return Err(Error::Truncated);
        }
        if self.hardware_type() != HARDWARE_ETHERNET
            || self.protocol_type() != EtherType::IPV4
            || self.hardware_len() != 6
            || self.protocol_len() != 4
        {
            return Err(Error::Unsupported);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HTYPE)
    }

    pub fn protocol_type(&self) -> EtherType {
        EtherType(read_u16(self.buffer.as_ref(), field::PTYPE))
    }

    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    pub fn operation(&self) -> Operation {
        Operation(read_u16(self.buffer.as_ref(), field::OPER))
    }

    pub fn source_hardware_addr(&self) -> EthernetAddress {
        let mut octets = [0u8; 6];
        octets.copy_from_slice(&self.buffer.as_ref()[field::SHA]);
        EthernetAddress(octets)
    }

    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::SPA)
    }

    pub fn target_hardware_addr(&self) -> EthernetAddress {
        let mut octets = [0u8; 6];
        octets.copy_from_slice(&self.buffer.as_ref()[field::THA]);
        EthernetAddress(octets)
    }

    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::TPA)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_hardware_type(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::HTYPE, value);
    }

    pub fn set_protocol_type(&mut self, value: EtherType) {
        write_u16(self.buffer.as_mut(), field::PTYPE, value.0);
    }

    pub fn set_hardware_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::HLEN] = value;
    }

    pub fn set_protocol_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::PLEN] = value;
    }

    pub fn set_operation(&mut self, value: Operation) {
        write_u16(self.buffer.as_mut(), field::OPER, value.0);
    }

    pub fn set_source_hardware_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&addr.0);
    }

    pub fn set_source_protocol_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&addr.octets());
    }

    pub fn set_target_hardware_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&addr.0);
    }

    pub fn set_target_protocol_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&addr.octets());
    }
}

/// An Ethernet/IPv4 ARP message as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    pub operation: Operation,
    pub source_hardware_addr: EthernetAddress,
    pub source_protocol_addr: Ipv4Addr,
    pub target_hardware_addr: EthernetAddress,
    pub target_protocol_addr: Ipv4Addr,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        Ok(Self {
            operation: packet.operation(),
            source_hardware_addr: packet.source_hardware_addr(),
            source_protocol_addr: packet.source_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }

    /// A sender announcing (or probing for) its own address, RFC 5227: source and target
    /// protocol addresses are equal. This is how another host's claim on a cluster IP
    /// shows up.
    pub fn is_gratuitous(&self) -> bool {
        self.source_protocol_addr == self.target_protocol_addr
    }

    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// # Panics
    /// If the buffer is shorter than [`PACKET_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_hardware_type(HARDWARE_ETHERNET);
        packet.set_protocol_type(EtherType::IPV4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(self.source_hardware_addr);
        packet.set_source_protocol_addr(self.source_protocol_addr);
        packet.set_target_hardware_addr(self.target_hardware_addr);
        packet.set_target_protocol_addr(self.target_protocol_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "who-has 192.0.2.10 tell 192.0.2.1" from 00:15:5d:01:02:03, as tcpdump -x shows it.
    const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // Ethernet, IPv4, 6, 4, request
        0x00, 0x15, 0x5d, 0x01, 0x02, 0x03, 0xc0, 0x00, 0x02, 0x01, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0x00, 0x02, 0x0a, // target
    ];

    fn request_repr() -> Repr {
        Repr {
            operation: Operation::REQUEST,
            source_hardware_addr: EthernetAddress([0x00, 0x15, 0x5d, 0x01, 0x02, 0x03]),
            source_protocol_addr: Ipv4Addr::new(192, 0, 2, 1),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: Ipv4Addr::new(192, 0, 2, 10),
        }
    }

    #[test]
    fn request_round_trips() {
        let packet = Packet::new_checked(&REQUEST[..]).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(repr, request_repr());
        assert!(!repr.is_gratuitous());

        let mut out = [0xaau8; PACKET_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, REQUEST);
    }

    #[test]
    fn reply_built_from_request_swaps_sides() {
        let cluster_mac = EthernetAddress([0x02, 0xbf, 0xc0, 0x00, 0x02, 0x0a]);
        let req = request_repr();
        let reply = Repr {
            operation: Operation::REPLY,
            source_hardware_addr: cluster_mac,
            source_protocol_addr: req.target_protocol_addr,
            target_hardware_addr: req.source_hardware_addr,
            target_protocol_addr: req.source_protocol_addr,
        };
        let mut out = [0u8; PACKET_LEN];
        reply.emit(&mut Packet::new_unchecked(&mut out[..]));
        let parsed = Packet::new_checked(&out[..]).unwrap();
        assert_eq!(parsed.operation(), Operation::REPLY);
        assert_eq!(parsed.source_hardware_addr(), cluster_mac);
        assert_eq!(parsed.target_protocol_addr(), Ipv4Addr::new(192, 0, 2, 1));
    }

    #[test]
    fn padded_request_is_accepted() {
        let mut padded = [0u8; 46];
        padded[..PACKET_LEN].copy_from_slice(&REQUEST);
        let repr = Repr::parse(&Packet::new_checked(&padded[..]).unwrap()).unwrap();
        assert_eq!(repr, request_repr());
    }

    #[test]
    fn truncated_or_foreign_arp_is_rejected() {
        assert_eq!(
            Packet::new_checked(&REQUEST[..27]).unwrap_err(),
            Error::Truncated
        );
        let mut token_ring = REQUEST;
        token_ring[1] = 6;
        assert_eq!(
            Packet::new_checked(&token_ring[..]).unwrap_err(),
            Error::Unsupported
        );
        let mut ipv6_sized = REQUEST;
        ipv6_sized[5] = 16;
        assert_eq!(
            Packet::new_checked(&ipv6_sized[..]).unwrap_err(),
            Error::Unsupported
        );
    }

    #[test]
    fn gratuitous_announcement_is_recognised() {
        let mut announce = request_repr();
        announce.target_protocol_addr = announce.source_protocol_addr;
        assert!(announce.is_gratuitous());
    }
}
