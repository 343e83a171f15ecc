//! The TCP header (RFC 9293): the ports and flags connection tracking keys on, sequence
//! numbers, options as raw bytes, and the checksum over the IPv4 or IPv6 pseudo-header.

use core::fmt;
use core::ops::BitOr;

use super::{
    checksum, read_u16, read_u32, write_u16, write_u32, Error, IpProtocol, PseudoHeader, Result,
};

mod field {
    use crate::wire::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ_NUM: Field = 4..8;
    pub const ACK_NUM: Field = 8..12;
    /// Data offset (4 bits, header length in 32-bit words), reserved (3 bits), flags (9 bits).
    pub const FLAGS: Field = 12..14;
    pub const WIN_SIZE: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = field::URGENT.end;
/// Longest header: data offset 15.
pub const MAX_HEADER_LEN: usize = 60;

const FLAGS_MASK: u16 = 0x01ff;

/// The TCP control bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u16);

impl Flags {
    pub const FIN: Self = Self(0x001);
    pub const SYN: Self = Self(0x002);
    pub const RST: Self = Self(0x004);
    pub const PSH: Self = Self(0x008);
    pub const ACK: Self = Self(0x010);
    pub const URG: Self = Self(0x020);
    pub const ECE: Self = Self(0x040);
    pub const CWR: Self = Self(0x080);
    /// Accurate ECN (RFC 9768), formerly the ECN nonce bit.
    pub const AE: Self = Self(0x100);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Flags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 9] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "AE"];
        if self.0 == 0 {
            return f.write_str("(none)");
        }
        let mut first = true;
        for (bit, name) in NAMES.iter().enumerate() {
            if self.0 & (1 << bit) != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// A view of a TCP segment. The buffer is the whole segment (the IP payload): its
/// length is the segment length the checksum covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking that the header, options included, fits.
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
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len < header_len {
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

    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ_NUM)
    }

    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK_NUM)
    }

    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::FLAGS.start] >> 4) * 4
    }

    pub fn flags(&self) -> Flags {
        Flags(read_u16(self.buffer.as_ref(), field::FLAGS) & FLAGS_MASK)
    }

    pub fn syn(&self) -> bool {
        self.flags().contains(Flags::SYN)
    }

    pub fn ack(&self) -> bool {
        self.flags().contains(Flags::ACK)
    }

    pub fn fin(&self) -> bool {
        self.flags().contains(Flags::FIN)
    }

    pub fn rst(&self) -> bool {
        self.flags().contains(Flags::RST)
    }

    pub fn window_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WIN_SIZE)
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn urgent_ptr(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT)
    }

    /// Whether the checksum over the segment and the pseudo-header is correct.
    pub fn verify_checksum(&self, pseudo: &PseudoHeader) -> bool {
        let data = self.buffer.as_ref();
        checksum::combine(&[
            pseudo.sum(IpProtocol::TCP, data.len() as u32),
            checksum::data(data),
        ]) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Raw option bytes, padding included.
    pub fn options(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    pub fn set_seq_number(&mut self, seq: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ_NUM, seq);
    }

    pub fn set_ack_number(&mut self, ack: u32) {
        write_u32(self.buffer.as_mut(), field::ACK_NUM, ack);
    }

    /// Sets the header length in bytes; must be a multiple of four from 20 to 60.
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::FLAGS.start];
        *b = (*b & 0x0f) | (((len / 4) as u8) << 4);
    }

    pub fn set_flags(&mut self, flags: Flags) {
        let old = read_u16(self.buffer.as_ref(), field::FLAGS);
        let new = (old & !FLAGS_MASK) | (flags.0 & FLAGS_MASK);
        write_u16(self.buffer.as_mut(), field::FLAGS, new);
    }

    pub fn set_window_len(&mut self, window: u16) {
        write_u16(self.buffer.as_mut(), field::WIN_SIZE, window);
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    pub fn set_urgent_ptr(&mut self, ptr: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT, ptr);
    }

    /// Recomputes the checksum over the whole buffer; call after any change.
    pub fn fill_checksum(&mut self, pseudo: &PseudoHeader) {
        self.set_checksum(0);
        let data = self.buffer.as_ref();
        let sum = checksum::combine(&[
            pseudo.sum(IpProtocol::TCP, data.len() as u32),
            checksum::data(data),
        ]);
        self.set_checksum(!sum);
    }

    pub fn options_mut(&mut self) -> &mut [u8] {
        let header_len = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..header_len]
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let header_len = self.header_len();
        &mut self.buffer.as_mut()[header_len..]
    }
}

/// A TCP segment as plain values, borrowing its options and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    /// Carried as is, meaningful only with [`Flags::ACK`].
    pub ack_number: u32,
    pub flags: Flags,
    pub window_len: u16,
    pub urgent_ptr: u16,
    /// Raw options, at most 40 bytes; `emit` pads them to a multiple of four with zeros
    /// (end-of-option-list).
    pub options: &'a [u8],
    pub payload: &'a [u8],
}

impl<'a> Repr<'a> {
    /// Parses a segment, verifying its checksum against `pseudo`.
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
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
            urgent_ptr: packet.urgent_ptr(),
            options: packet.options(),
            payload: packet.payload(),
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN + self.options.len().div_ceil(4) * 4
    }

    pub const fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Writes the segment and its checksum. The buffer is the segment, so size it to
    /// [`buffer_len`](Self::buffer_len).
    ///
    /// # Panics
    /// If the options exceed 40 bytes or the buffer is shorter than `buffer_len`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        pseudo: &PseudoHeader,
    ) {
        assert!(
            self.options.len() <= MAX_HEADER_LEN - HEADER_LEN,
            "TCP options exceed 40 bytes"
        );
        let header_len = self.header_len();
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        let offset_flags = (((header_len / 4) as u16) << 12) | (self.flags.0 & FLAGS_MASK);
        write_u16(packet.buffer.as_mut(), field::FLAGS, offset_flags);
        packet.set_window_len(self.window_len);
        packet.set_urgent_ptr(self.urgent_ptr);
        let data = packet.buffer.as_mut();
        let (options, padding) = data[HEADER_LEN..header_len].split_at_mut(self.options.len());
        options.copy_from_slice(self.options);
        padding.fill(0);
        data[header_len..header_len + self.payload.len()].copy_from_slice(self.payload);
        packet.fill_checksum(pseudo);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4() -> PseudoHeader {
        PseudoHeader::V4 {
            src: Ipv4Addr::new(172, 16, 10, 99),
            dst: Ipv4Addr::new(172, 16, 10, 12),
        }
    }

    /// A Linux SYN to port 80 with its usual options: MSS 1460, SACK permitted,
    /// timestamps, NOP, window scale 7.
    const SYN: [u8; 40] = [
        0xe7, 0xa0, 0x00, 0x50, 0x2f, 0x1b, 0x6a, 0x0c, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa,
        0xf0, 0x00, 0xac, 0x00, 0x00, // header, checksum 0x00ac
        0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x9c, 0x5e, 0x1f, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x03, 0x03, 0x07, // options
    ];

    #[test]
    fn syn_round_trips() {
        let packet = Packet::new_checked(&SYN[..]).unwrap();
        assert!(packet.syn() && !packet.ack() && !packet.fin() && !packet.rst());
        assert_eq!(packet.header_len(), 40);
        assert!(packet.verify_checksum(&v4()));
        let repr = Repr::parse(&packet, &v4()).unwrap();
        assert_eq!(
            repr,
            Repr {
                src_port: 59296,
                dst_port: 80,
                seq_number: 0x2f1b_6a0c,
                ack_number: 0,
                flags: Flags::SYN,
                window_len: 64240,
                urgent_ptr: 0,
                options: &SYN[20..],
                payload: &[],
            }
        );

        let mut out = [0u8; 40];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]), &v4());
        assert_eq!(out, SYN);
    }

    #[test]
    fn data_segment_round_trips_with_payload() {
        let bytes: Vec<u8> = [
            0xe7, 0xa0, 0x00, 0x50, 0x2f, 0x1b, 0x6a, 0x0d, 0x9d, 0x8c, 0x00, 0x02, 0x50, 0x18,
            0xfa, 0xf0, 0x4a, 0xf2, 0x00, 0x00,
        ]
        .iter()
        .chain(b"GET / HTTP/1.0\r\n\r\n")
        .copied()
        .collect();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        let repr = Repr::parse(&packet, &v4()).unwrap();
        assert_eq!(repr.flags, Flags::PSH | Flags::ACK);
        assert_eq!(repr.payload, b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(repr.buffer_len(), bytes.len());
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]), &v4());
        assert_eq!(out, bytes);
    }

    #[test]
    fn checksum_covers_ipv6_pseudo_header() {
        let syn_ack = [
            0x00, 0x50, 0xe7, 0xa0, 0x9d, 0x8c, 0x00, 0x01, 0x2f, 0x1b, 0x6a, 0x0d, 0x50, 0x12,
            0xff, 0xf0, 0x35, 0xc6, 0x00, 0x00,
        ];
        let v6 = PseudoHeader::V6 {
            src: "2001:db8::1".parse::<Ipv6Addr>().unwrap(),
            dst: "2001:db8::2".parse::<Ipv6Addr>().unwrap(),
        };
        let packet = Packet::new_checked(&syn_ack[..]).unwrap();
        assert!(packet.syn() && packet.ack());
        assert!(packet.verify_checksum(&v6));
        // The same bytes under the wrong addresses must not verify.
        assert_eq!(Repr::parse(&packet, &v4()).unwrap_err(), Error::Checksum);
    }

    #[test]
    fn corrupted_segment_fails_checksum() {
        let mut bytes = SYN;
        bytes[3] = 0x51; // port 81
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet, &v4()).unwrap_err(), Error::Checksum);
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.fill_checksum(&v4());
        assert!(packet.verify_checksum(&v4()));
    }

    #[test]
    fn bad_lengths_are_rejected() {
        assert_eq!(
            Packet::new_checked(&SYN[..19]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Packet::new_checked(&SYN[..39]).unwrap_err(),
            Error::Truncated
        );
        let mut short_offset = SYN;
        short_offset[12] = 0x40;
        assert_eq!(
            Packet::new_checked(&short_offset[..]).unwrap_err(),
            Error::Malformed
        );
    }

    #[test]
    fn options_are_padded_on_emit() {
        let repr = Repr {
            src_port: 1,
            dst_port: 2,
            seq_number: 3,
            ack_number: 0,
            flags: Flags::RST,
            window_len: 0,
            urgent_ptr: 0,
            options: &[0x02, 0x04, 0x05, 0xb4, 0x01, 0x01],
            payload: &[],
        };
        assert_eq!(repr.header_len(), 28);
        let mut out = [0xffu8; 28];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]), &v4());
        let packet = Packet::new_checked(&out[..]).unwrap();
        assert_eq!(
            packet.options(),
            &[0x02, 0x04, 0x05, 0xb4, 0x01, 0x01, 0x00, 0x00]
        );
        assert!(packet.rst());
        assert!(packet.payload().is_empty());
    }

    #[test]
    fn setters_write_their_fields() {
        let mut bytes = SYN;
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_flags(Flags::FIN | Flags::ACK);
        packet.set_ack_number(7);
        assert_eq!(
            packet.header_len(),
            40,
            "flags setter keeps the data offset"
        );
        assert!(packet.fin() && packet.ack() && !packet.syn());
        assert_eq!(packet.ack_number(), 7);
        assert_eq!(format!("{:?}", packet.flags()), "FIN|ACK");
        assert_eq!(format!("{:?}", Flags::default()), "(none)");
    }
}
