//! Frame builders for the filter tests: Ethernet (untagged, 802.1Q, or 802.1ad + 802.1Q),
//! IPv4 (with or without options) and IPv6 (with or without extension headers), TCP, UDP,
//! ICMP and ICMPv6 echo and errors, and IP fragments. Every header is written with the
//! `wlbs_dataplane::wire` Reprs' `emit`, so checksums and lengths are right unless a test
//! breaks them on purpose.
//!
//! The IP-level builders return the IP packet (what follows the Ethernet header); wrap it with
//! [`ip_frame`] or [`ethernet`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use wlbs_dataplane::wire::ethernet::{self, EtherType, EthernetAddress};
use wlbs_dataplane::wire::tcp::{self, Flags};
use wlbs_dataplane::wire::{icmp, icmpv6, ipv4, ipv6, udp, vlan, IpProtocol, PseudoHeader};

/// The router (the frames' source) in every test frame.
pub const ROUTER_MAC: EthernetAddress = EthernetAddress([0x02, 0x00, 0x5e, 0x00, 0x00, 0x01]);
/// The cluster MAC (unicast mode, `02-bf-` + cluster IP) the test frames go to.
pub const CLUSTER_MAC: EthernetAddress = EthernetAddress([0x02, 0xbf, 0xc0, 0x00, 0x02, 0x0a]);

/// How a frame is tagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vlan {
    Untagged,
    /// One 802.1Q (0x8100) tag.
    Dot1Q(u16),
    /// An 802.1ad service tag (0x88a8) outside an 802.1Q customer tag.
    QinQ {
        outer: u16,
        inner: u16,
    },
}

/// Shortest Ethernet frame without its FCS.
pub const MIN_FRAME_LEN: usize = 60;

/// An Ethernet frame from [`ROUTER_MAC`] to [`CLUSTER_MAC`] carrying `payload`, padded with
/// zeros to [`MIN_FRAME_LEN`] like frames on the wire.
pub fn ethernet(vlan: Vlan, ethertype: EtherType, payload: &[u8]) -> Vec<u8> {
    let tags: Vec<(EtherType, u16)> = match vlan {
        Vlan::Untagged => vec![],
        Vlan::Dot1Q(id) => vec![(EtherType::VLAN, id)],
        Vlan::QinQ { outer, inner } => {
            vec![(EtherType::QINQ, outer), (EtherType::VLAN, inner)]
        }
    };
    let header = ethernet::HEADER_LEN + tags.len() * vlan::HEADER_LEN;
    let mut f = vec![0u8; header + payload.len()];
    let first = tags.first().map_or(ethertype, |t| t.0);
    ethernet::Repr {
        src_addr: ROUTER_MAC,
        dst_addr: CLUSTER_MAC,
        ethertype: first,
    }
    .emit(&mut ethernet::Frame::new_unchecked(&mut f[..]));
    for (i, (_, id)) in tags.iter().enumerate() {
        let next = tags.get(i + 1).map_or(ethertype, |t| t.0);
        let at = ethernet::HEADER_LEN + i * vlan::HEADER_LEN;
        vlan::Repr {
            pcp: (i as u8 + 1) & 7,
            dei: false,
            vlan_id: *id,
            ethertype: next,
        }
        .emit(&mut vlan::Tag::new_unchecked(&mut f[at..]));
    }
    f[header..].copy_from_slice(payload);
    // Ethernet's minimum frame (60 bytes without the FCS): short frames arrive padded.
    if f.len() < MIN_FRAME_LEN {
        f.resize(MIN_FRAME_LEN, 0);
    }
    f
}

/// An Ethernet frame carrying an IP packet; the EtherType follows the packet's version
/// nibble (IPv6 for 6, IPv4 otherwise).
pub fn ip_frame(vlan: Vlan, packet: &[u8]) -> Vec<u8> {
    let ethertype = match packet.first().map(|b| b >> 4) {
        Some(6) => EtherType::IPV6,
        _ => EtherType::IPV4,
    };
    ethernet(vlan, ethertype, packet)
}

fn pseudo(src: IpAddr, dst: IpAddr) -> PseudoHeader {
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => PseudoHeader::V4 { src, dst },
        (IpAddr::V6(src), IpAddr::V6(dst)) => PseudoHeader::V6 { src, dst },
        _ => panic!("mixed address families: {src} -> {dst}"),
    }
}

/// An IPv4 header (no options) for `payload_len` bytes, fragment fields included.
pub fn ipv4_repr(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: IpProtocol,
    ident: u16,
    payload_len: usize,
) -> ipv4::Repr {
    ipv4::Repr {
        src_addr: src,
        dst_addr: dst,
        protocol,
        payload_len,
        ttl: 64,
        dscp: 0,
        ecn: 0,
        ident,
        dont_frag: false,
        more_frags: false,
        frag_offset: 0,
    }
}

/// An IPv4 packet from a header Repr and its payload.
pub fn ipv4_packet(repr: &ipv4::Repr, payload: &[u8]) -> Vec<u8> {
    assert_eq!(repr.payload_len, payload.len());
    let mut p = vec![0u8; repr.buffer_len()];
    repr.emit(&mut ipv4::Packet::new_unchecked(&mut p[..]));
    p[ipv4::HEADER_LEN..].copy_from_slice(payload);
    p
}

/// An IPv4 packet whose header carries `options` (padded to a multiple of four with
/// end-of-option-list bytes; at most 40 bytes).
pub fn ipv4_with_options(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: IpProtocol,
    ident: u16,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let opt_len = options.len().div_ceil(4) * 4;
    assert!(opt_len <= 40, "IPv4 options exceed 40 bytes");
    let header_len = ipv4::HEADER_LEN + opt_len;
    let mut p = vec![0u8; header_len + payload.len()];
    ipv4_repr(src, dst, protocol, ident, payload.len())
        .emit(&mut ipv4::Packet::new_unchecked(&mut p[..]));
    p[ipv4::HEADER_LEN..ipv4::HEADER_LEN + options.len()].copy_from_slice(options);
    p[header_len..].copy_from_slice(payload);
    let mut packet = ipv4::Packet::new_unchecked(&mut p[..]);
    packet.set_header_len(header_len);
    packet.set_total_len((header_len + payload.len()) as u16);
    packet.fill_checksum();
    p
}

/// An IPv6 packet: fixed header, then `payload` (extension headers included) whose first
/// header is `next_header`.
pub fn ipv6_packet(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: IpProtocol,
    payload: &[u8],
) -> Vec<u8> {
    let repr = ipv6::Repr {
        src_addr: src,
        dst_addr: dst,
        next_header,
        payload_len: payload.len(),
        hop_limit: 64,
        traffic_class: 0,
        flow_label: 0,
    };
    let mut p = vec![0u8; repr.buffer_len()];
    repr.emit(&mut ipv6::Packet::new_unchecked(&mut p[..]));
    p[ipv6::HEADER_LEN..].copy_from_slice(payload);
    p
}

/// An 8-byte IPv6 Destination Options (or Hop-by-Hop) header: `next`, length 0, one PadN
/// option filling the rest.
pub fn ipv6_options_header(next: IpProtocol) -> Vec<u8> {
    vec![next.0, 0, 1, 4, 0, 0, 0, 0]
}

/// An IP packet carrying `l4` as `protocol`: IPv4 (identification `ident`) or IPv6 by the
/// addresses' family.
pub fn ip(src: IpAddr, dst: IpAddr, protocol: IpProtocol, ident: u16, l4: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ipv4_packet(&ipv4_repr(s, d, protocol, ident, l4.len()), l4)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6_packet(s, d, protocol, l4),
        _ => panic!("mixed address families: {src} -> {dst}"),
    }
}

/// A TCP segment (header and payload, checksum over `src`/`dst`).
pub fn tcp_segment(
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
    flags: Flags,
    seq: u32,
    payload: &[u8],
) -> Vec<u8> {
    let repr = tcp::Repr {
        src_port,
        dst_port,
        seq_number: seq,
        ack_number: if flags.contains(Flags::ACK) { 1 } else { 0 },
        flags,
        window_len: 65535,
        urgent_ptr: 0,
        options: &[],
        payload,
    };
    let mut s = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut tcp::Packet::new_unchecked(&mut s[..]),
        &pseudo(src, dst),
    );
    s
}

/// A UDP datagram (header and payload, checksum over `src`/`dst`).
pub fn udp_datagram(
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let repr = udp::Repr {
        src_port,
        dst_port,
        payload,
    };
    let mut d = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut udp::Packet::new_unchecked(&mut d[..]),
        &pseudo(src, dst),
    );
    d
}

/// An IP packet carrying a TCP segment.
pub fn tcp(
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
    flags: Flags,
    seq: u32,
    payload: &[u8],
) -> Vec<u8> {
    let l4 = tcp_segment(src, dst, src_port, dst_port, flags, seq, payload);
    ip(src, dst, IpProtocol::TCP, seq as u16, &l4)
}

/// An IP packet carrying a UDP datagram.
pub fn udp(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let l4 = udp_datagram(src, dst, src_port, dst_port, payload);
    ip(src, dst, IpProtocol::UDP, src_port ^ dst_port, &l4)
}

/// The ICMP protocol of an address family: ICMP for IPv4, ICMPv6 for IPv6.
pub fn icmp_protocol(addr: IpAddr) -> IpProtocol {
    match addr {
        IpAddr::V4(_) => IpProtocol::ICMP,
        IpAddr::V6(_) => IpProtocol::ICMPV6,
    }
}

/// An IP packet carrying an ICMP (IPv4) or ICMPv6 (IPv6) echo request.
pub fn icmp_echo(src: IpAddr, dst: IpAddr, ident: u16, seq_no: u16) -> Vec<u8> {
    let data = b"wlbs ping payload";
    let msg = match (src, dst) {
        (IpAddr::V4(_), _) => {
            let repr = icmp::Repr::EchoRequest {
                ident,
                seq_no,
                data,
            };
            let mut m = vec![0u8; repr.buffer_len()];
            repr.emit(&mut icmp::Packet::new_unchecked(&mut m[..]));
            m
        }
        (IpAddr::V6(_), _) => {
            let repr = icmpv6::Repr::EchoRequest {
                ident,
                seq_no,
                data,
            };
            let mut m = vec![0u8; repr.buffer_len()];
            repr.emit(
                &mut icmpv6::Packet::new_unchecked(&mut m[..]),
                &pseudo(src, dst),
            );
            m
        }
    };
    ip(src, dst, icmp_protocol(src), ident, &msg)
}

/// The ICMP errors the tests send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
    /// Destination unreachable, port unreachable.
    PortUnreachable,
    /// IPv4: destination unreachable, fragmentation needed; IPv6: packet too big.
    PacketTooBig,
    /// Time exceeded in transit.
    TimeExceeded,
}

/// An IP packet carrying an ICMP/ICMPv6 error from `src` to `dst` that quotes `original`
/// (an IP packet), cut the way routers cut it: the IP header and eight bytes of payload for
/// IPv4, at most 1232 bytes for IPv6.
pub fn icmp_error(src: IpAddr, dst: IpAddr, kind: IcmpError, original: &[u8]) -> Vec<u8> {
    let msg = match (src, dst) {
        (IpAddr::V4(_), _) => {
            let header_len = original
                .first()
                .map_or(ipv4::HEADER_LEN, |b| usize::from(b & 0x0f) * 4);
            let quoted = &original[..original.len().min(header_len + 8)];
            let repr = match kind {
                IcmpError::PortUnreachable => icmp::Repr::DstUnreachable {
                    code: 3,
                    next_hop_mtu: 0,
                    original: quoted,
                },
                IcmpError::PacketTooBig => icmp::Repr::DstUnreachable {
                    code: 4,
                    next_hop_mtu: 1280,
                    original: quoted,
                },
                IcmpError::TimeExceeded => icmp::Repr::TimeExceeded {
                    code: 0,
                    original: quoted,
                },
            };
            let mut m = vec![0u8; repr.buffer_len()];
            repr.emit(&mut icmp::Packet::new_unchecked(&mut m[..]));
            m
        }
        (IpAddr::V6(_), _) => {
            let quoted = &original[..original.len().min(1232)];
            let repr = match kind {
                IcmpError::PortUnreachable => icmpv6::Repr::DstUnreachable {
                    code: 4,
                    original: quoted,
                },
                IcmpError::PacketTooBig => icmpv6::Repr::PktTooBig {
                    mtu: 1280,
                    original: quoted,
                },
                IcmpError::TimeExceeded => icmpv6::Repr::TimeExceeded {
                    code: 0,
                    original: quoted,
                },
            };
            let mut m = vec![0u8; repr.buffer_len()];
            repr.emit(
                &mut icmpv6::Packet::new_unchecked(&mut m[..]),
                &pseudo(src, dst),
            );
            m
        }
    };
    ip(src, dst, icmp_protocol(src), 0x1c4e, &msg)
}

/// Splits `l4` (a whole transport message of `protocol`) into IP fragments of at most
/// `chunk` payload bytes (rounded down to a multiple of eight, at least eight), in order.
/// IPv4 fragments use identification `ident as u16`; IPv6 ones a fragment header with
/// `ident` right after the fixed header.
pub fn fragments(
    src: IpAddr,
    dst: IpAddr,
    protocol: IpProtocol,
    ident: u32,
    l4: &[u8],
    chunk: usize,
) -> Vec<Vec<u8>> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let chunk = (chunk / 8).max(1) * 8;
            let mut out = Vec::new();
            let mut at = 0;
            while at < l4.len() {
                let end = (at + chunk).min(l4.len());
                let mut repr = ipv4_repr(s, d, protocol, ident as u16, end - at);
                repr.more_frags = end < l4.len();
                repr.frag_offset = at as u16;
                out.push(ipv4_packet(&repr, &l4[at..end]));
                at = end;
            }
            out
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6_fragments(s, d, false, protocol, ident, l4, chunk),
        _ => panic!("mixed address families: {src} -> {dst}"),
    }
}

/// IPv6 fragments of a packet whose unfragmentable part is the fixed header and, with
/// `hop_by_hop`, an 8-byte Hop-by-Hop header, and whose fragmentable part `fragmentable`
/// starts with a header of type `first` (the upper layer, or an extension header such as
/// Destination Options).
pub fn ipv6_fragments(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_by_hop: bool,
    first: IpProtocol,
    ident: u32,
    fragmentable: &[u8],
    chunk: usize,
) -> Vec<Vec<u8>> {
    let chunk = (chunk / 8).max(1) * 8;
    let mut out = Vec::new();
    let mut at = 0;
    while at < fragmentable.len() {
        let end = (at + chunk).min(fragmentable.len());
        let mut payload = if hop_by_hop {
            ipv6_options_header(IpProtocol::IPV6_FRAGMENT)
        } else {
            Vec::new()
        };
        let header_at = payload.len();
        payload.resize(header_at + ipv6::FRAGMENT_HEADER_LEN, 0);
        ipv6::FragmentRepr {
            next_header: first,
            frag_offset: at as u16,
            more_frags: end < fragmentable.len(),
            ident,
        }
        .emit(&mut ipv6::FragmentHeader::new_unchecked(
            &mut payload[header_at..],
        ));
        payload.extend_from_slice(&fragmentable[at..end]);
        let next = if hop_by_hop {
            IpProtocol::HOP_BY_HOP
        } else {
            IpProtocol::IPV6_FRAGMENT
        };
        out.push(ipv6_packet(src, dst, next, &payload));
        at = end;
    }
    out
}

/// An ARP request (not IP: the filter passes it).
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(ROUTER_MAC.as_bytes());
    a.extend_from_slice(&sender.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use wlbs_dataplane::wire::ip::ports;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tcp_frames_parse_back() {
        let (c, v) = (v4("198.51.100.7"), v4("192.0.2.10"));
        let p = tcp(c, v, 40000, 80, Flags::SYN, 7, b"");
        let f = ip_frame(
            Vlan::QinQ {
                outer: 100,
                inner: 42,
            },
            &p,
        );
        assert_eq!(&f[12..14], &[0x88, 0xa8]);
        assert_eq!(&f[16..18], &[0x81, 0x00]);
        assert_eq!(&f[20..22], &[0x08, 0x00]);
        let ip = ipv4::Packet::new_checked(&f[22..]).unwrap();
        let r = ipv4::Repr::parse(&ip).unwrap();
        assert_eq!(r.dst_addr, Ipv4Addr::new(192, 0, 2, 10));
        let seg = tcp::Packet::new_checked(ip.payload()).unwrap();
        assert!(tcp::Repr::parse(&seg, &pseudo(c, v)).is_ok());
        assert_eq!(ports(IpProtocol::TCP, ip.payload()), Some((40000, 80)));
    }

    #[test]
    fn fragments_cover_the_datagram() {
        let (c, v): (IpAddr, IpAddr) = (
            "2001:db8::7".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
        );
        let l4 = udp_datagram(c, v, 5000, 53, &[0xab; 100]);
        let frags = fragments(c, v, IpProtocol::UDP, 77, &l4, 30);
        assert_eq!(frags.len(), 5);
        let mut total = 0;
        for f in &frags {
            let p = ipv6::Packet::new_checked(&f[..]).unwrap();
            let upper = p.upper_layer().unwrap();
            let frag = upper.fragment.unwrap();
            assert_eq!(frag.ident, 77);
            assert_eq!(usize::from(frag.offset), total);
            total += p.upper_layer_payload(&upper).len();
        }
        assert_eq!(total, l4.len());

        let (c, v) = (v4("198.51.100.7"), v4("192.0.2.10"));
        let l4 = udp_datagram(c, v, 5000, 53, &[0xab; 100]);
        let frags = fragments(c, v, IpProtocol::UDP, 78, &l4, 30);
        assert_eq!(frags.len(), 5);
        let last = ipv4::Packet::new_checked(&frags[4][..]).unwrap();
        assert!(!last.more_frags());
        assert_eq!(last.frag_offset(), 96);
    }

    #[test]
    fn icmp_error_quotes_header_and_eight_bytes() {
        let (c, v) = (v4("198.51.100.7"), v4("192.0.2.10"));
        let original = udp(v, c, 53, 40000, &[1; 50]);
        let e = icmp_error(v4("203.0.113.1"), v, IcmpError::PortUnreachable, &original);
        let ip = ipv4::Packet::new_checked(&e[..]).unwrap();
        assert_eq!(ip.payload().len(), 8 + 20 + 8);
        let msg = icmp::Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp::Repr::parse(&msg).is_ok());
    }

    #[test]
    fn ipv4_options_move_the_payload() {
        let (c, v) = (Ipv4Addr::new(198, 51, 100, 7), Ipv4Addr::new(192, 0, 2, 10));
        let l4 = udp_datagram(c.into(), v.into(), 1, 2, b"x");
        let p = ipv4_with_options(c, v, IpProtocol::UDP, 1, &[1, 1, 1], &l4);
        let ip = ipv4::Packet::new_checked(&p[..]).unwrap();
        assert_eq!(ip.header_len(), 24);
        assert!(ipv4::Repr::parse(&ip).is_ok());
        assert_eq!(ip.payload(), &l4[..]);
    }
}
