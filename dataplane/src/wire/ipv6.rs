//! The IPv6 header (RFC 8200) and the walk over its extension headers to the
//! upper-layer protocol, which is where the filter finds ports to hash, or learns that
//! a fragment has none.

use std::net::Ipv6Addr;

use super::{
    read_ipv6, read_u16, read_u32, write_u16, write_u32, Error, IpProtocol, PseudoHeader, Result,
};

mod field {
    use crate::wire::Field;

    /// Version (4 bits), traffic class (8 bits), flow label (20 bits).
    pub const VER_TC_FLOW: Field = 0..4;
    pub const LENGTH: Field = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// Extension headers [`Packet::upper_layer`] walks before giving up with
/// [`Error::Unsupported`]. Real traffic carries at most three or four; the bound caps the
/// per-packet cost of a crafted chain.
pub const MAX_EXT_HEADERS: usize = 8;

/// A view of an IPv6 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

/// Where the upper-layer header sits, found by walking the extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpperLayer {
    /// The first next-header value that is not an extension header this walk knows
    /// (hop-by-hop, routing, fragment, destination options, AH).
    pub protocol: IpProtocol,
    /// Offset of the upper-layer header from the start of the IPv6 header, i.e. the
    /// length of the fixed header plus all extension headers.
    pub offset: usize,
    /// The fragment header, if the packet carries one. When its offset is not zero the
    /// bytes at `offset` are the middle of a datagram: `protocol` names what the
    /// datagram's first fragment carries, and there is no header here to read.
    pub fragment: Option<Fragment>,
}

/// The fields of a fragment header that identify and place a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fragment {
    pub ident: u32,
    /// Offset of this fragment's data in the original datagram, in bytes.
    pub offset: u16,
    pub more_frags: bool,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking the version and that the fixed header and the
    /// declared payload fit. The buffer may extend past the payload (Ethernet padding).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Like [`new_checked`](Self::new_checked), but accepts a buffer that ends before the
    /// declared payload: for the packet quoted inside an ICMPv6 error.
    pub fn new_checked_truncated(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_header_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<()> {
        self.check_header_len()?;
        if self.buffer.as_ref().len() < HEADER_LEN + usize::from(self.payload_len()) {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    fn check_header_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 6 {
            return Err(Error::Malformed);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    pub fn traffic_class(&self) -> u8 {
        (read_u32(self.buffer.as_ref(), field::VER_TC_FLOW) >> 20) as u8
    }

    pub fn flow_label(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VER_TC_FLOW) & 0x000f_ffff
    }

    /// Bytes after the fixed header, extension headers included.
    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The header following the fixed header: an extension header or the upper layer.
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::NEXT_HEADER])
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        read_ipv6(self.buffer.as_ref(), field::SRC_ADDR)
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        read_ipv6(self.buffer.as_ref(), field::DST_ADDR)
    }

    /// The addresses a TCP, UDP or ICMPv6 checksum inside this packet covers.
    pub fn pseudo_header(&self) -> PseudoHeader {
        PseudoHeader::V6 {
            src: self.src_addr(),
            dst: self.dst_addr(),
        }
    }

    /// End of the packet within the buffer: the declared length, or less if truncated.
    fn end(&self) -> usize {
        (HEADER_LEN + usize::from(self.payload_len())).min(self.buffer.as_ref().len())
    }

    /// Walks the extension headers to the upper-layer header.
    ///
    /// Fails with `Truncated` if a header runs past the packet, `Malformed` for a
    /// hop-by-hop header that is not first or a second fragment header, and
    /// `Unsupported` after [`MAX_EXT_HEADERS`].
    pub fn upper_layer(&self) -> Result<UpperLayer> {
        let data = self.buffer.as_ref();
        let end = self.end();
        let mut protocol = self.next_header();
        let mut offset = HEADER_LEN;
        let mut fragment = None;
        let mut walked = 0;
        loop {
            let header = data.get(offset..end).unwrap_or_default();
            let len = match protocol {
                IpProtocol::HOP_BY_HOP if walked > 0 => return Err(Error::Malformed),
                IpProtocol::HOP_BY_HOP | IpProtocol::IPV6_ROUTING | IpProtocol::IPV6_DEST_OPTS => {
                    // Length in 8-octet units, not counting the first eight octets.
                    let units = header.get(1).ok_or(Error::Truncated)?;
                    (usize::from(*units) + 1) * 8
                }
                IpProtocol::AH => {
                    // RFC 4302: length in 4-octet units, minus two.
                    let units = header.get(1).ok_or(Error::Truncated)?;
                    (usize::from(*units) + 2) * 4
                }
                IpProtocol::IPV6_FRAGMENT => {
                    if fragment.is_some() {
                        return Err(Error::Malformed);
                    }
                    let frag = FragmentHeader::new_checked(header)?;
                    fragment = Some(Fragment {
                        ident: frag.ident(),
                        offset: frag.frag_offset(),
                        more_frags: frag.more_frags(),
                    });
                    FRAGMENT_HEADER_LEN
                }
                _ => {
                    return Ok(UpperLayer {
                        protocol,
                        offset,
                        fragment,
                    })
                }
            };
            if header.len() < len {
                return Err(Error::Truncated);
            }
            if walked == MAX_EXT_HEADERS {
                return Err(Error::Unsupported);
            }
            walked += 1;
            protocol = IpProtocol(header[0]);
            offset += len;
            if matches!(fragment, Some(Fragment { offset: 1.., .. })) {
                // The rest is datagram data from the middle: nothing more to walk.
                return Ok(UpperLayer {
                    protocol,
                    offset,
                    fragment,
                });
            }
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Everything after the fixed header, as far as the payload length declares and the
    /// buffer holds.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.end()]
    }

    /// The upper-layer header and its payload, located by [`Packet::upper_layer`].
    pub fn upper_layer_payload(&self, upper: &UpperLayer) -> &'a [u8] {
        self.buffer
            .as_ref()
            .get(upper.offset..self.end())
            .unwrap_or_default()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[0];
        *b = (*b & 0x0f) | (version << 4);
    }

    pub fn set_traffic_class(&mut self, tc: u8) {
        let old = read_u32(self.buffer.as_ref(), field::VER_TC_FLOW);
        let new = (old & 0xf00f_ffff) | (u32::from(tc) << 20);
        write_u32(self.buffer.as_mut(), field::VER_TC_FLOW, new);
    }

    /// Sets the flow label; only the low twenty bits are used.
    pub fn set_flow_label(&mut self, label: u32) {
        let old = read_u32(self.buffer.as_ref(), field::VER_TC_FLOW);
        let new = (old & 0xfff0_0000) | (label & 0x000f_ffff);
        write_u32(self.buffer.as_mut(), field::VER_TC_FLOW, new);
    }

    pub fn set_payload_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    pub fn set_next_header(&mut self, protocol: IpProtocol) {
        self.buffer.as_mut()[field::NEXT_HEADER] = protocol.0;
    }

    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.end();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// The fixed IPv6 header as plain values; extension headers are part of the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub next_header: IpProtocol,
    pub payload_len: usize,
    pub hop_limit: u8,
    pub traffic_class: u8,
    /// Twenty bits; higher bits are dropped on emit.
    pub flow_label: u32,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        Ok(Self {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Fixed header plus payload.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    pub fn pseudo_header(&self) -> PseudoHeader {
        PseudoHeader::V6 {
            src: self.src_addr,
            dst: self.dst_addr,
        }
    }

    /// Writes the fixed header; the payload is left untouched.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`], or the payload is longer than 65535
    /// bytes (jumbograms are not supported).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let payload_len =
            u16::try_from(self.payload_len).expect("IPv6 payload longer than 65535 bytes");
        let ver_tc_flow =
            (6 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & 0x000f_ffff);
        write_u32(packet.buffer.as_mut(), field::VER_TC_FLOW, ver_tc_flow);
        packet.set_payload_len(payload_len);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

mod frag_field {
    use crate::wire::Field;

    pub const NEXT_HEADER: usize = 0;
    /// Fragment offset (13 bits, 8-octet units), reserved (2 bits), M flag (1 bit).
    pub const FRAG_OFF: Field = 2..4;
    pub const IDENT: Field = 4..8;
}

/// Length of the fragment extension header.
pub const FRAGMENT_HEADER_LEN: usize = frag_field::IDENT.end;

/// A view of an IPv6 fragment extension header (RFC 8200 section 4.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> FragmentHeader<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let header = Self::new_unchecked(buffer);
        header.check_len()?;
        Ok(header)
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < FRAGMENT_HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn next_header(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[frag_field::NEXT_HEADER])
    }

    /// Offset of this fragment's data in the original datagram, in bytes.
    pub fn frag_offset(&self) -> u16 {
        read_u16(self.buffer.as_ref(), frag_field::FRAG_OFF) & 0xfff8
    }

    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), frag_field::FRAG_OFF) & 0x0001 != 0
    }

    pub fn ident(&self) -> u32 {
        read_u32(self.buffer.as_ref(), frag_field::IDENT)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> FragmentHeader<T> {
    pub fn set_next_header(&mut self, protocol: IpProtocol) {
        self.buffer.as_mut()[frag_field::NEXT_HEADER] = protocol.0;
    }

    /// Sets the offset in bytes; must be a multiple of eight.
    pub fn set_frag_offset(&mut self, offset: u16) {
        let old = read_u16(self.buffer.as_ref(), frag_field::FRAG_OFF);
        write_u16(
            self.buffer.as_mut(),
            frag_field::FRAG_OFF,
            (old & 0x0007) | (offset & 0xfff8),
        );
    }

    pub fn set_more_frags(&mut self, value: bool) {
        let old = read_u16(self.buffer.as_ref(), frag_field::FRAG_OFF);
        let new = if value { old | 0x0001 } else { old & !0x0001 };
        write_u16(self.buffer.as_mut(), frag_field::FRAG_OFF, new);
    }

    pub fn set_ident(&mut self, ident: u32) {
        write_u32(self.buffer.as_mut(), frag_field::IDENT, ident);
    }
}

/// A fragment header as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragmentRepr {
    pub next_header: IpProtocol,
    /// In bytes; a multiple of eight.
    pub frag_offset: u16,
    pub more_frags: bool,
    pub ident: u32,
}

impl FragmentRepr {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(header: &FragmentHeader<&T>) -> Result<Self> {
        header.check_len()?;
        Ok(Self {
            next_header: header.next_header(),
            frag_offset: header.frag_offset(),
            more_frags: header.more_frags(),
            ident: header.ident(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        FRAGMENT_HEADER_LEN
    }

    /// # Panics
    /// If the buffer is shorter than [`FRAGMENT_HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, header: &mut FragmentHeader<T>) {
        let data = header.buffer.as_mut();
        data[frag_field::NEXT_HEADER] = self.next_header.0;
        data[1] = 0;
        let flag = u16::from(self.more_frags);
        write_u16(
            data,
            frag_field::FRAG_OFF,
            (self.frag_offset & 0xfff8) | flag,
        );
        write_u32(data, frag_field::IDENT, self.ident);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip;

    const SRC: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
    ];
    const DST: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02,
    ];

    /// First fragment of a UDP datagram 2001:db8::1 port 8080 -> 2001:db8::2 port 53:
    /// fixed header, fragment header (offset 0, M set, id 0x12345678), the UDP header
    /// and eight bytes of data.
    fn first_fragment() -> Vec<u8> {
        let mut bytes = vec![
            0x60, 0x0a, 0xbc, 0xde, 0x00, 0x18, 0x2c,
            0x40, // tc 0, flow 0xabcde, len 24, frag, hl 64
        ];
        bytes.extend_from_slice(&SRC);
        bytes.extend_from_slice(&DST);
        bytes.extend_from_slice(&[0x11, 0x00, 0x00, 0x01, 0x12, 0x34, 0x56, 0x78]);
        bytes.extend_from_slice(&[0x1f, 0x90, 0x00, 0x35, 0x05, 0xc0, 0x12, 0x34]);
        bytes.extend_from_slice(b"wlbs-nlb");
        bytes
    }

    #[test]
    fn first_fragment_exposes_ports_and_fragment_id() {
        let bytes = first_fragment();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.next_header(), IpProtocol::IPV6_FRAGMENT);
        let upper = packet.upper_layer().unwrap();
        assert_eq!(
            upper,
            UpperLayer {
                protocol: IpProtocol::UDP,
                offset: 48,
                fragment: Some(Fragment {
                    ident: 0x1234_5678,
                    offset: 0,
                    more_frags: true
                }),
            }
        );
        let l4 = packet.upper_layer_payload(&upper);
        assert_eq!(l4.len(), 16);
        assert_eq!(ip::ports(upper.protocol, l4), Some((8080, 53)));
    }

    #[test]
    fn fixed_and_fragment_headers_round_trip() {
        let bytes = first_fragment();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(
            repr,
            Repr {
                src_addr: Ipv6Addr::from(SRC),
                dst_addr: Ipv6Addr::from(DST),
                next_header: IpProtocol::IPV6_FRAGMENT,
                payload_len: 24,
                hop_limit: 64,
                traffic_class: 0,
                flow_label: 0xabcde,
            }
        );
        let frag = FragmentHeader::new_checked(packet.payload()).unwrap();
        let frag_repr = FragmentRepr::parse(&frag).unwrap();
        assert_eq!(
            frag_repr,
            FragmentRepr {
                next_header: IpProtocol::UDP,
                frag_offset: 0,
                more_frags: true,
                ident: 0x1234_5678
            }
        );

        let mut out = vec![0xeeu8; bytes.len()];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        frag_repr.emit(&mut FragmentHeader::new_unchecked(&mut out[HEADER_LEN..]));
        out[48..].copy_from_slice(&bytes[48..]);
        assert_eq!(out, bytes);
    }

    #[test]
    fn later_fragment_stops_the_walk_at_its_data() {
        let mut bytes = first_fragment();
        // Offset 1448 (181 units), M clear: the last fragment, no UDP header in it.
        let mut frag = FragmentHeader::new_checked(&mut bytes[HEADER_LEN..]).unwrap();
        frag.set_frag_offset(1448);
        frag.set_more_frags(false);
        assert_eq!(&bytes[42..44], &[0x05, 0xa8]);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        let upper = packet.upper_layer().unwrap();
        assert_eq!(upper.offset, 48);
        assert_eq!(
            upper.fragment,
            Some(Fragment {
                ident: 0x1234_5678,
                offset: 1448,
                more_frags: false
            })
        );
    }

    /// Fixed header followed by `ext` (extension headers) and `upper` bytes.
    fn with_ext_headers(first: IpProtocol, ext: &[u8], upper: &[u8]) -> Vec<u8> {
        let repr = Repr {
            src_addr: Ipv6Addr::from(SRC),
            dst_addr: Ipv6Addr::from(DST),
            next_header: first,
            payload_len: ext.len() + upper.len(),
            hop_limit: 255,
            traffic_class: 0,
            flow_label: 0,
        };
        let mut bytes = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        bytes[HEADER_LEN..HEADER_LEN + ext.len()].copy_from_slice(ext);
        bytes[HEADER_LEN + ext.len()..].copy_from_slice(upper);
        bytes
    }

    #[test]
    fn hop_by_hop_routing_and_destination_options_are_skipped() {
        let ext = [
            0x2b, 0x00, 0x05, 0x02, 0x00, 0x00, 0x01, 0x00, // hop-by-hop: router alert, PadN
            0x3c, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // routing, 24 bytes, to dest opts
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
            0x06, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00,
            0x00, // destination options, PadN, to TCP
        ];
        let tcp_ports = [0xc0, 0x01, 0x00, 0x50];
        let bytes = with_ext_headers(IpProtocol::HOP_BY_HOP, &ext, &tcp_ports);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        let upper = packet.upper_layer().unwrap();
        assert_eq!(upper.protocol, IpProtocol::TCP);
        assert_eq!(upper.offset, HEADER_LEN + 40);
        assert_eq!(upper.fragment, None);
        assert_eq!(
            ip::ports(upper.protocol, packet.upper_layer_payload(&upper)),
            Some((49153, 80))
        );
    }

    #[test]
    fn authentication_header_is_skipped() {
        // AH with a 12-byte ICV: payload length (24 / 4) - 2 = 4.
        let mut ah = [0u8; 24];
        ah[0] = IpProtocol::UDP.0;
        ah[1] = 4;
        let bytes = with_ext_headers(IpProtocol::AH, &ah, &[0x00, 0x35, 0x00, 0x35]);
        let upper = Packet::new_checked(&bytes[..])
            .unwrap()
            .upper_layer()
            .unwrap();
        assert_eq!(
            (upper.protocol, upper.offset),
            (IpProtocol::UDP, HEADER_LEN + 24)
        );
    }

    #[test]
    fn no_extension_headers_means_upper_layer_follows_fixed_header() {
        let bytes = with_ext_headers(IpProtocol::ICMPV6, &[], &[0x80, 0x00]);
        let upper = Packet::new_checked(&bytes[..])
            .unwrap()
            .upper_layer()
            .unwrap();
        assert_eq!(
            upper,
            UpperLayer {
                protocol: IpProtocol::ICMPV6,
                offset: HEADER_LEN,
                fragment: None
            }
        );
    }

    #[test]
    fn hostile_extension_chains_are_rejected() {
        let dest_opts = |next: u8| [next, 0, 1, 4, 0, 0, 0, 0];

        let mut chain = Vec::new();
        for _ in 0..MAX_EXT_HEADERS {
            chain.extend_from_slice(&dest_opts(IpProtocol::IPV6_DEST_OPTS.0));
        }
        let at_limit = {
            let mut c = chain.clone();
            let last = c.len() - 8;
            c[last] = IpProtocol::UDP.0;
            c
        };
        let bytes = with_ext_headers(IpProtocol::IPV6_DEST_OPTS, &at_limit, &[]);
        assert!(Packet::new_checked(&bytes[..])
            .unwrap()
            .upper_layer()
            .is_ok());
        chain.extend_from_slice(&dest_opts(IpProtocol::UDP.0));
        let bytes = with_ext_headers(IpProtocol::IPV6_DEST_OPTS, &chain, &[]);
        assert_eq!(
            Packet::new_checked(&bytes[..]).unwrap().upper_layer(),
            Err(Error::Unsupported)
        );

        let late_hop_by_hop = dest_opts(IpProtocol::HOP_BY_HOP.0);
        let bytes = with_ext_headers(IpProtocol::IPV6_DEST_OPTS, &late_hop_by_hop, &[0; 8]);
        assert_eq!(
            Packet::new_checked(&bytes[..]).unwrap().upper_layer(),
            Err(Error::Malformed)
        );

        let two_fragments = [0x2c, 0, 0, 1, 0, 0, 0, 1, 0x11, 0, 0, 1, 0, 0, 0, 1];
        let bytes = with_ext_headers(IpProtocol::IPV6_FRAGMENT, &two_fragments, &[]);
        assert_eq!(
            Packet::new_checked(&bytes[..]).unwrap().upper_layer(),
            Err(Error::Malformed)
        );

        // A routing header claiming 24 bytes with only 8 present.
        let bytes = with_ext_headers(IpProtocol::IPV6_ROUTING, &[0x11, 2, 0, 0, 0, 0, 0, 0], &[]);
        assert_eq!(
            Packet::new_checked(&bytes[..]).unwrap().upper_layer(),
            Err(Error::Truncated)
        );
        // An extension header cut before its length byte.
        let bytes = with_ext_headers(IpProtocol::IPV6_DEST_OPTS, &[0x11], &[]);
        assert_eq!(
            Packet::new_checked(&bytes[..]).unwrap().upper_layer(),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn bad_lengths_and_versions_are_rejected() {
        let bytes = first_fragment();
        assert_eq!(
            Packet::new_checked(&bytes[..39]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Packet::new_checked(&bytes[..63]).unwrap_err(),
            Error::Truncated
        );
        let quoted = Packet::new_checked_truncated(&bytes[..56]).unwrap();
        assert_eq!(quoted.payload().len(), 16);
        assert_eq!(quoted.upper_layer().unwrap().protocol, IpProtocol::UDP);
        let mut v4 = bytes.clone();
        v4[0] = 0x45;
        assert_eq!(Packet::new_checked(&v4[..]).unwrap_err(), Error::Malformed);
        assert_eq!(
            FragmentHeader::new_checked(&[0u8; 7][..]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn setters_keep_neighbouring_bits() {
        let mut bytes = first_fragment();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_traffic_class(0xb8);
        assert_eq!(
            (
                packet.version(),
                packet.traffic_class(),
                packet.flow_label()
            ),
            (6, 0xb8, 0xabcde)
        );
        packet.set_flow_label(0xfff12345);
        assert_eq!(
            (
                packet.version(),
                packet.traffic_class(),
                packet.flow_label()
            ),
            (6, 0xb8, 0x12345)
        );
        packet.set_hop_limit(1);
        assert_eq!(packet.hop_limit(), 1);
        assert_eq!(packet.payload_mut().len(), 24);
    }
}
