//! The IPv4 header (RFC 791): addressing, the fragmentation fields the filter must honour
//! (a later fragment carries no ports to hash), options, and the header checksum.

use std::net::Ipv4Addr;

use super::{checksum, read_ipv4, read_u16, write_u16, Error, IpProtocol, PseudoHeader, Result};

mod field {
    use crate::wire::Field;

    /// Version (4 bits), IHL (4 bits, header length in 32-bit words).
    pub const VER_IHL: usize = 0;
    /// DSCP (6 bits), ECN (2 bits).
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    /// Reserved, DF, MF (1 bit each), fragment offset (13 bits, 8-byte units).
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;
/// Longest header: IHL 15.
pub const MAX_HEADER_LEN: usize = 60;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking the version, that the header and the total length
    /// fit, and that the total length covers the header.
    ///
    /// The buffer may be longer than the total length (Ethernet pads short frames);
    /// [`payload`](Packet::payload) excludes that padding.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Like [`new_checked`](Self::new_checked), but accepts a buffer that ends before the
    /// total length: for the header quoted inside an ICMP error, which keeps only the
    /// first eight bytes of the original payload. [`payload`](Packet::payload) then
    /// returns what is present.
    pub fn new_checked_truncated(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_header_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<()> {
        self.check_header_len()?;
        if self.buffer.as_ref().len() < usize::from(self.total_len()) {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    fn check_header_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 {
            return Err(Error::Malformed);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len < header_len {
            return Err(Error::Truncated);
        }
        if usize::from(self.total_len()) < header_len {
            return Err(Error::Malformed);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// Length of header plus payload, as the packet declares it.
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Identification: with the addresses and protocol, names the datagram a fragment
    /// belongs to.
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    pub fn dont_frag(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }

    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// Offset of this fragment's data in the original datagram, in bytes.
    pub fn frag_offset(&self) -> u16 {
        (read_u16(self.buffer.as_ref(), field::FLG_OFF) & OFFSET_MASK) * 8
    }

    /// Part of a fragmented datagram. Only the fragment at offset 0 carries the
    /// transport header.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::PROTOCOL])
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::SRC_ADDR)
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::DST_ADDR)
    }

    /// The addresses a TCP or UDP checksum inside this packet covers.
    pub fn pseudo_header(&self) -> PseudoHeader {
        PseudoHeader::V4 {
            src: self.src_addr(),
            dst: self.dst_addr(),
        }
    }

    /// Whether the header checksum is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(&self.buffer.as_ref()[..self.header_len()]) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Raw option bytes between the fixed header and the payload.
    pub fn options(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The payload as far as the total length declares and the buffer holds.
    pub fn payload(&self) -> &'a [u8] {
        let data = self.buffer.as_ref();
        let end = usize::from(self.total_len()).min(data.len());
        &data[self.header_len()..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (version << 4);
    }

    /// Sets the header length in bytes; must be a multiple of four from 20 to 60.
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ((len / 4) as u8 & 0x0f);
    }

    pub fn set_dscp(&mut self, dscp: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0x03) | (dscp << 2);
    }

    pub fn set_ecn(&mut self, ecn: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0xfc) | (ecn & 0x03);
    }

    pub fn set_total_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    pub fn set_ident(&mut self, ident: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, ident);
    }

    pub fn set_dont_frag(&mut self, value: bool) {
        self.set_flag(FLAG_DF, value);
    }

    pub fn set_more_frags(&mut self, value: bool) {
        self.set_flag(FLAG_MF, value);
    }

    /// Sets the fragment offset in bytes; must be a multiple of eight.
    pub fn set_frag_offset(&mut self, offset: u16) {
        let old = read_u16(self.buffer.as_ref(), field::FLG_OFF);
        let new = (old & !OFFSET_MASK) | ((offset / 8) & OFFSET_MASK);
        write_u16(self.buffer.as_mut(), field::FLG_OFF, new);
    }

    fn set_flag(&mut self, flag: u16, value: bool) {
        let old = read_u16(self.buffer.as_ref(), field::FLG_OFF);
        let new = if value { old | flag } else { old & !flag };
        write_u16(self.buffer.as_mut(), field::FLG_OFF, new);
    }

    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    pub fn set_protocol(&mut self, protocol: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol.0;
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// Recomputes the header checksum; call after changing any header field.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::data(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(!sum);
    }

    pub fn options_mut(&mut self) -> &mut [u8] {
        let header_len = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..header_len]
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let header_len = self.header_len();
        let data = self.buffer.as_mut();
        let end = usize::from(read_u16(data, field::LENGTH)).min(data.len());
        &mut data[header_len..end]
    }
}

/// An IPv4 header as plain values.
///
/// Options are not represented: `parse` accepts and skips them, `emit` writes a 20-byte
/// header. Nothing the load balancer originates carries options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub protocol: IpProtocol,
    pub payload_len: usize,
    pub ttl: u8,
    pub dscp: u8,
    pub ecn: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub more_frags: bool,
    /// In bytes; a multiple of eight.
    pub frag_offset: u16,
}

impl Repr {
    /// Parses a complete packet, verifying the header checksum.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        Ok(Self {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()) - packet.header_len(),
            ttl: packet.ttl(),
            dscp: packet.dscp(),
            ecn: packet.ecn(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            more_frags: packet.more_frags(),
            frag_offset: packet.frag_offset(),
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Header plus payload: the total length `emit` writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    pub fn pseudo_header(&self) -> PseudoHeader {
        PseudoHeader::V4 {
            src: self.src_addr,
            dst: self.dst_addr,
        }
    }

    /// Writes the header with a fresh checksum; the payload is left untouched.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`], or the payload does not fit the
    /// 16-bit total length.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let total_len =
            u16::try_from(self.buffer_len()).expect("IPv4 payload longer than 65515 bytes");
        packet.buffer.as_mut()[field::VER_IHL] = 0x45;
        packet.buffer.as_mut()[field::DSCP_ECN] = (self.dscp << 2) | (self.ecn & 0x03);
        packet.set_total_len(total_len);
        packet.set_ident(self.ident);
        let mut flg_off = (self.frag_offset / 8) & OFFSET_MASK;
        if self.dont_frag {
            flg_off |= FLAG_DF;
        }
        if self.more_frags {
            flg_off |= FLAG_MF;
        }
        write_u16(packet.buffer.as_mut(), field::FLG_OFF, flg_off);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header of a 60-byte TCP SYN from 172.16.10.99 to 172.16.10.12 (checksum 0xb1e6).
    const SYN_HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0xb1, 0xe6, 0xac, 0x10, 0x0a,
        0x63, 0xac, 0x10, 0x0a, 0x0c,
    ];

    fn syn_packet() -> [u8; 60] {
        let mut bytes = [0u8; 60];
        bytes[..20].copy_from_slice(&SYN_HEADER);
        bytes
    }

    fn syn_repr() -> Repr {
        Repr {
            src_addr: Ipv4Addr::new(172, 16, 10, 99),
            dst_addr: Ipv4Addr::new(172, 16, 10, 12),
            protocol: IpProtocol::TCP,
            payload_len: 40,
            ttl: 64,
            dscp: 0,
            ecn: 0,
            ident: 0x1c46,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
    }

    #[test]
    fn header_round_trips() {
        let bytes = syn_packet();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(packet.verify_checksum());
        assert!(!packet.is_fragment());
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(repr, syn_repr());
        assert_eq!(packet.payload().len(), 40);

        let mut out = [0u8; 60];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
    }

    #[test]
    fn checksum_matches_known_header() {
        // A UDP header whose published checksum is 0xb861.
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let mut packet = Packet::new_unchecked(&mut header[..]);
        assert!(!packet.verify_checksum());
        packet.fill_checksum();
        assert_eq!(packet.checksum(), 0xb861);
        assert!(packet.verify_checksum());
    }

    #[test]
    fn corrupted_header_fails_checksum() {
        let mut bytes = syn_packet();
        bytes[8] = 63; // a router decremented TTL without updating the checksum
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(!packet.verify_checksum());
        assert_eq!(Repr::parse(&packet).unwrap_err(), Error::Checksum);
    }

    #[test]
    fn fragment_fields_are_read_and_written() {
        // Second fragment of a UDP datagram: MF set, offset 185 * 8 = 1480.
        let mut bytes = [0u8; 28];
        let repr = Repr {
            protocol: IpProtocol::UDP,
            payload_len: 8,
            dont_frag: false,
            more_frags: true,
            frag_offset: 1480,
            ident: 0xabcd,
            ..syn_repr()
        };
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(&bytes[4..8], &[0xab, 0xcd, 0x20, 0xb9]);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(packet.is_fragment() && packet.more_frags() && !packet.dont_frag());
        assert_eq!((packet.ident(), packet.frag_offset()), (0xabcd, 1480));
        assert_eq!(Repr::parse(&packet).unwrap(), repr);

        let mut last = Packet::new_checked(&mut bytes[..]).unwrap();
        last.set_more_frags(false);
        last.set_frag_offset(2960);
        last.fill_checksum();
        assert!(last.is_fragment() && !last.more_frags());
        assert_eq!(last.frag_offset(), 2960);
    }

    #[test]
    fn options_are_exposed_and_skipped_by_repr() {
        // IGMPv2 report header with the Router Alert option (RFC 2113), TTL 1.
        let mut bytes = [
            0x46, 0xc0, 0x00, 0x20, 0x00, 0x00, 0x40, 0x00, 0x01, 0x02, 0x00, 0x00, 0xc0, 0x00,
            0x02, 0x0b, 0xef, 0xff, 0x00, 0x01, 0x94, 0x04, 0x00, 0x00, // options
            0x16, 0x00, 0xf9, 0xfe, 0xef, 0xff, 0x00, 0x01, // IGMP
        ];
        Packet::new_unchecked(&mut bytes[..]).fill_checksum();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.header_len(), 24);
        assert_eq!(packet.options(), &[0x94, 0x04, 0x00, 0x00]);
        assert_eq!(packet.payload()[0], 0x16);
        assert_eq!(packet.dscp(), 48); // CS6, network control
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(
            (repr.protocol, repr.payload_len, repr.ttl),
            (IpProtocol::IGMP, 8, 1)
        );
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let mut padded = [0u8; 46];
        padded[..20].copy_from_slice(&SYN_HEADER);
        padded[3] = 24; // total length 24: four bytes of payload, 22 of padding
        let packet = Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(packet.payload().len(), 4);
    }

    #[test]
    fn bad_lengths_and_versions_are_rejected() {
        let bytes = syn_packet();
        assert_eq!(
            Packet::new_checked(&bytes[..19]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Packet::new_checked(&bytes[..59]).unwrap_err(),
            Error::Truncated
        );

        let mut v6 = bytes;
        v6[0] = 0x65;
        assert_eq!(Packet::new_checked(&v6[..]).unwrap_err(), Error::Malformed);
        let mut short_ihl = bytes;
        short_ihl[0] = 0x44;
        assert_eq!(
            Packet::new_checked(&short_ihl[..]).unwrap_err(),
            Error::Malformed
        );
        let mut long_ihl = bytes;
        long_ihl[0] = 0x4f;
        assert_eq!(
            Packet::new_checked(&long_ihl[..40]).unwrap_err(),
            Error::Truncated
        );
        let mut total_below_header = bytes;
        total_below_header[3] = 19;
        assert_eq!(
            Packet::new_checked(&total_below_header[..]).unwrap_err(),
            Error::Malformed
        );
    }

    #[test]
    fn quoted_header_in_icmp_error_is_read_truncated() {
        // Header claims 60 bytes, but an ICMP error quotes only 8 bytes of its payload.
        let bytes = syn_packet();
        let quoted = &bytes[..28];
        assert_eq!(Packet::new_checked(quoted).unwrap_err(), Error::Truncated);
        let packet = Packet::new_checked_truncated(quoted).unwrap();
        assert_eq!(packet.payload().len(), 8);
        assert_eq!(packet.protocol(), IpProtocol::TCP);
        assert_eq!(Repr::parse(&packet).unwrap_err(), Error::Truncated);
    }

    #[test]
    fn setters_change_only_their_field() {
        let mut bytes = syn_packet();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_dscp(46);
        packet.set_ecn(1);
        packet.set_dont_frag(false);
        packet.set_ttl(1);
        packet.fill_checksum();
        assert_eq!((packet.dscp(), packet.ecn(), packet.ttl()), (46, 1, 1));
        assert!(!packet.dont_frag() && packet.verify_checksum());
        assert_eq!(packet.total_len(), 60);
        assert_eq!(packet.payload_mut().len(), 40);
    }
}
