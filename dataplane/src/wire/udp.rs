//! The UDP header (RFC 768): ports, the datagram length, and the checksum over the IPv4
//! or IPv6 pseudo-header, including the zero checksum IPv4 allows and IPv6 forbids.

use super::{checksum, read_u16, write_u16, Error, IpProtocol, PseudoHeader, Result};

mod field {
    use crate::wire::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    /// Header plus payload.
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

pub const HEADER_LEN: usize = field::CHECKSUM.end;

/// A view of a UDP datagram. The length field, not the buffer, bounds the datagram, so
/// trailing bytes in the buffer are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking the header fits and the length field is between
    /// the header length and the buffer length.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let declared = usize::from(self.len());
        if declared < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len < declared {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: header plus payload.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Whether the checksum is correct. A zero checksum over IPv4 means the sender did
    /// not compute one (RFC 768) and passes; over IPv6 it is invalid (RFC 8200 section 8.1).
    pub fn verify_checksum(&self, pseudo: &PseudoHeader) -> bool {
        if self.checksum() == 0 {
            return matches!(pseudo, PseudoHeader::V4 { .. });
        }
        self.sum(pseudo) == 0xffff
    }

    fn sum(&self, pseudo: &PseudoHeader) -> u16 {
        let len = self.len();
        let datagram = &self.buffer.as_ref()[..usize::from(len)];
        checksum::combine(&[
            pseudo.sum(IpProtocol::UDP, u32::from(len)),
            checksum::data(datagram),
        ])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    pub fn set_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    /// Recomputes the checksum over the datagram the length field bounds.
    pub fn fill_checksum(&mut self, pseudo: &PseudoHeader) {
        self.set_checksum(0);
        // A computed zero is sent as all ones: zero on the wire means "no checksum".
        let checksum = match !self.sum(pseudo) {
            0 => 0xffff,
            c => c,
        };
        self.set_checksum(checksum);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..len]
    }
}

/// A UDP datagram as plain values, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

impl<'a> Repr<'a> {
    /// Parses a datagram, verifying its checksum against `pseudo`.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &Packet<&'a T>,
        pseudo: &PseudoHeader,
    ) -> Result<Self> {
        packet.check_len()?;
        if !packet.verify_checksum(pseudo) {
            return Err(Error::Checksum);
        }
        Ok(Self {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload: packet.payload(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Writes the datagram and its checksum.
    ///
    /// # Panics
    /// If the buffer is shorter than [`buffer_len`](Self::buffer_len) or the datagram
    /// does not fit the 16-bit length field.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        pseudo: &PseudoHeader,
    ) {
        let len = u16::try_from(self.buffer_len()).expect("UDP payload longer than 65527 bytes");
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(len);
        packet.payload_mut().copy_from_slice(self.payload);
        packet.fill_checksum(pseudo);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4() -> PseudoHeader {
        PseudoHeader::V4 {
            src: Ipv4Addr::new(192, 0, 2, 1),
            dst: Ipv4Addr::new(198, 51, 100, 53),
        }
    }

    fn v6() -> PseudoHeader {
        PseudoHeader::V6 {
            src: "2001:db8::1".parse::<Ipv6Addr>().unwrap(),
            dst: "2001:db8::2".parse::<Ipv6Addr>().unwrap(),
        }
    }

    /// A DNS query for example.com A from port 40000, checksum 0xfb88.
    const DNS_QUERY: [u8; 37] = [
        0x9c, 0x40, 0x00, 0x35, 0x00, 0x25, 0xfb, 0x88, // header
        0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, b'e', b'x',
        b'a', b'm', b'p', b'l', b'e', 0x03, b'c', b'o', b'm', 0x00, 0x00, 0x01, 0x00, 0x01,
    ];

    #[test]
    fn dns_query_round_trips() {
        let packet = Packet::new_checked(&DNS_QUERY[..]).unwrap();
        let repr = Repr::parse(&packet, &v4()).unwrap();
        assert_eq!(
            repr,
            Repr {
                src_port: 40000,
                dst_port: 53,
                payload: &DNS_QUERY[8..]
            }
        );
        let mut out = [0u8; 37];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]), &v4());
        assert_eq!(out, DNS_QUERY);
    }

    #[test]
    fn ipv6_checksum_matches_reference() {
        let repr = Repr {
            src_port: 8080,
            dst_port: 53,
            payload: b"wlbs-nlb",
        };
        let mut out = [0u8; 16];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]), &v6());
        assert_eq!(&out[6..8], &[0x10, 0xe4]);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&out[..]).unwrap(), &v6()),
            Ok(repr)
        );
    }

    #[test]
    fn zero_checksum_is_accepted_over_ipv4_only() {
        let mut bytes = DNS_QUERY;
        bytes[6] = 0;
        bytes[7] = 0;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(Repr::parse(&packet, &v4()).is_ok());
        assert_eq!(Repr::parse(&packet, &v6()).unwrap_err(), Error::Checksum);
    }

    #[test]
    fn corrupted_datagram_fails_checksum() {
        let mut bytes = DNS_QUERY;
        bytes[20] ^= 0x01;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(!packet.verify_checksum(&v4()));
        assert_eq!(Repr::parse(&packet, &v4()).unwrap_err(), Error::Checksum);
    }

    #[test]
    fn length_field_bounds_the_payload() {
        let mut padded = [0u8; 46];
        padded[..37].copy_from_slice(&DNS_QUERY);
        let packet = Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(packet.payload().len(), 29);
        assert!(packet.verify_checksum(&v4()));

        assert_eq!(
            Packet::new_checked(&DNS_QUERY[..7]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Packet::new_checked(&DNS_QUERY[..36]).unwrap_err(),
            Error::Truncated
        );
        let mut short_len = DNS_QUERY;
        short_len[5] = 7;
        assert_eq!(
            Packet::new_checked(&short_len[..]).unwrap_err(),
            Error::Malformed
        );
    }
}
