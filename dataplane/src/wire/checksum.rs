//! The Internet checksum (RFC 1071): ones-complement sums over byte strings, combining
//! partial sums, and the IPv4/IPv6 pseudo-headers that TCP, UDP and ICMPv6 cover.
//!
//! Functions return the folded sum, not its complement: a header's checksum field holds
//! `!combine(..)`, and a received header verifies when the sum over it, checksum field
//! included, is `0xffff`.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::IpProtocol;

/// Ones-complement sum of `bytes` as big-endian 16-bit words, folded to 16 bits; an odd
/// final byte is padded with a zero byte on the right.
pub fn data(bytes: &[u8]) -> u16 {
    // Summing 32-bit words into a 64-bit accumulator halves the loop count and cannot
    // overflow for any buffer below 2^32 words; folding afterwards yields exactly the
    // 16-bit ones-complement sum, because both halves of each word land in the fold.
    let mut acc: u64 = 0;
    let mut words = bytes.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut i = 0;
    while i + 2 <= rest.len() {
        acc += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        acc += u64::from(rest[i]) << 8;
    }
    fold(acc)
}

/// Ones-complement sum of several partial sums (each from [`data`] or a header field).
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// Sum of the IPv4 pseudo-header (RFC 793 section 3.1): addresses, protocol and the
/// transport length.
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: IpProtocol, length: u32) -> u16 {
    let (s, d) = (src.octets(), dst.octets());
    fold(
        u64::from(u16::from_be_bytes([s[0], s[1]]))
            + u64::from(u16::from_be_bytes([s[2], s[3]]))
            + u64::from(u16::from_be_bytes([d[0], d[1]]))
            + u64::from(u16::from_be_bytes([d[2], d[3]]))
            + u64::from(protocol.0)
            + u64::from(length),
    )
}

/// Sum of the IPv6 pseudo-header (RFC 8200 section 8.1): addresses, the 32-bit
/// upper-layer length and the next-header value.
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, protocol: IpProtocol, length: u32) -> u16 {
    combine(&[
        data(&src.octets()),
        data(&dst.octets()),
        protocol.0 as u16,
        (length >> 16) as u16,
        length as u16,
    ])
}

/// The IP source and destination a transport checksum covers through its pseudo-header.
///
/// The transport module supplies the protocol number and length; the caller supplies
/// this from the enclosing IP header (`ipv4::Packet::pseudo_header` and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PseudoHeader {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

impl PseudoHeader {
    /// Sum of the complete pseudo-header for a transport message of `length` bytes.
    pub fn sum(&self, protocol: IpProtocol, length: u32) -> u16 {
        match *self {
            PseudoHeader::V4 { src, dst } => pseudo_header_v4(src, dst, protocol, length),
            PseudoHeader::V6 { src, dst } => pseudo_header_v6(src, dst, protocol, length),
        }
    }
}

fn fold(mut acc: u64) -> u16 {
    // At most four rounds: each one shrinks a 64-bit value to at most 48 + 1 bits.
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook 16-bit-at-a-time sum the fast version must agree with.
    fn reference(bytes: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u32::from(b));
            acc += hi | lo;
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn rfc1071_example_sums_to_ddf2() {
        // RFC 1071 section 3: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2.
        assert_eq!(
            data(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
    }

    #[test]
    fn odd_length_pads_last_byte_on_the_right() {
        assert_eq!(data(&[0x12]), 0x1200);
        assert_eq!(data(&[0x00, 0x01, 0x02]), 0x0201);
        assert_eq!(data(&[0x00, 0x01, 0x02, 0x03, 0x04]), 0x0604);
    }

    #[test]
    fn word_sum_agrees_with_reference_for_every_remainder() {
        let bytes: Vec<u8> = (0..=255u8)
            .cycle()
            .take(1503)
            .map(|b| b.wrapping_mul(37))
            .collect();
        for len in 0..bytes.len() {
            assert_eq!(data(&bytes[..len]), reference(&bytes[..len]), "len {len}");
        }
    }

    #[test]
    fn all_ones_sums_carry_around() {
        assert_eq!(data(&[0xff; 4000]), 0xffff);
        assert_eq!(combine(&[0xffff, 0x0001]), 0x0001);
    }

    #[test]
    fn combine_of_parts_split_at_even_offsets_equals_sum_of_whole() {
        let whole = [0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40];
        assert_eq!(
            combine(&[data(&whole[..4]), data(&whole[4..])]),
            data(&whole)
        );
        assert_eq!(
            combine(&[data(&whole[..8]), data(&whole[8..])]),
            data(&whole)
        );
    }

    #[test]
    fn pseudo_headers_match_their_byte_layouts() {
        let (s4, d4) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(198, 51, 100, 7));
        let mut v4 = Vec::new();
        v4.extend_from_slice(&s4.octets());
        v4.extend_from_slice(&d4.octets());
        v4.extend_from_slice(&[0, 6, 0x05, 0xdc]);
        assert_eq!(pseudo_header_v4(s4, d4, IpProtocol::TCP, 1500), data(&v4));

        let s6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let d6: Ipv6Addr = "fe80::2aa:ff:fe28:9c5a".parse().unwrap();
        let mut v6 = Vec::new();
        v6.extend_from_slice(&s6.octets());
        v6.extend_from_slice(&d6.octets());
        v6.extend_from_slice(&70000u32.to_be_bytes());
        v6.extend_from_slice(&[0, 0, 0, 58]);
        assert_eq!(
            pseudo_header_v6(s6, d6, IpProtocol::ICMPV6, 70000),
            data(&v6)
        );
        assert_eq!(
            PseudoHeader::V6 { src: s6, dst: d6 }.sum(IpProtocol::ICMPV6, 70000),
            data(&v6)
        );
    }
}
