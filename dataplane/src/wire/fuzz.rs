//! Property tests over the whole wire module: no byte string makes a checked view, an
//! accessor or a `Repr::parse` panic, and every `Repr` survives `emit` then `parse`.
//!
//! Uniformly random bytes rarely get past a version check, so besides raw bytes each
//! protocol is also fed bytes shaped to pass its first checks (version nibble, a length
//! field that fits, an interesting type), which is where the arithmetic lives.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn exercise_ethernet(bytes: &[u8]) {
    if let Ok(frame) = ethernet::Frame::new_checked(bytes) {
        let _ = (
            frame.dst_addr(),
            frame.src_addr(),
            frame.ethertype(),
            frame.payload(),
        );
        let _ = format!("{frame:?} {:?}", ethernet::Repr::parse(&frame));
        exercise_vlan(frame.payload());
    }
}

fn exercise_vlan(bytes: &[u8]) {
    if let Ok(tag) = vlan::Tag::new_checked(bytes) {
        let _ = (
            tag.pcp(),
            tag.dei(),
            tag.vlan_id(),
            tag.ethertype(),
            tag.payload(),
        );
        let _ = vlan::Repr::parse(&tag);
    }
}

fn exercise_arp(bytes: &[u8]) {
    if let Ok(packet) = arp::Packet::new_checked(bytes) {
        let _ = (
            packet.hardware_type(),
            packet.protocol_type(),
            packet.hardware_len(),
        );
        let _ = (packet.protocol_len(), packet.operation());
        let _ = (packet.source_hardware_addr(), packet.source_protocol_addr());
        let _ = (packet.target_hardware_addr(), packet.target_protocol_addr());
        let _ = arp::Repr::parse(&packet).map(|r| r.is_gratuitous());
    }
}

fn exercise_ipv4(bytes: &[u8]) {
    for packet in [
        ipv4::Packet::new_checked(bytes),
        ipv4::Packet::new_checked_truncated(bytes),
    ]
    .into_iter()
    .flatten()
    {
        let _ = (
            packet.version(),
            packet.header_len(),
            packet.dscp(),
            packet.ecn(),
        );
        let _ = (
            packet.total_len(),
            packet.ident(),
            packet.dont_frag(),
            packet.more_frags(),
        );
        let _ = (
            packet.frag_offset(),
            packet.is_fragment(),
            packet.ttl(),
            packet.protocol(),
        );
        let _ = (
            packet.checksum(),
            packet.src_addr(),
            packet.dst_addr(),
            packet.options(),
        );
        let _ = (packet.verify_checksum(), packet.pseudo_header());
        let _ = ipv4::Repr::parse(&packet);
        exercise_transport(packet.protocol(), packet.payload(), &packet.pseudo_header());
    }
}

fn exercise_ipv6(bytes: &[u8]) {
    for packet in [
        ipv6::Packet::new_checked(bytes),
        ipv6::Packet::new_checked_truncated(bytes),
    ]
    .into_iter()
    .flatten()
    {
        let _ = (
            packet.version(),
            packet.traffic_class(),
            packet.flow_label(),
        );
        let _ = (
            packet.payload_len(),
            packet.next_header(),
            packet.hop_limit(),
        );
        let _ = (packet.src_addr(), packet.dst_addr(), packet.payload());
        let _ = ipv6::Repr::parse(&packet);
        if let Ok(upper) = packet.upper_layer() {
            let l4 = packet.upper_layer_payload(&upper);
            exercise_transport(upper.protocol, l4, &packet.pseudo_header());
        }
        if let Ok(frag) = ipv6::FragmentHeader::new_checked(packet.payload()) {
            let _ = (
                frag.next_header(),
                frag.frag_offset(),
                frag.more_frags(),
                frag.ident(),
            );
            let _ = ipv6::FragmentRepr::parse(&frag);
        }
    }
}

fn exercise_transport(protocol: IpProtocol, bytes: &[u8], pseudo: &PseudoHeader) {
    let _ = ip::ports(protocol, bytes);
    exercise_tcp(bytes, pseudo);
    exercise_udp(bytes, pseudo);
    exercise_icmp(bytes);
    exercise_icmpv6(bytes, pseudo);
    exercise_igmp(bytes);
}

fn exercise_tcp(bytes: &[u8], pseudo: &PseudoHeader) {
    if let Ok(packet) = tcp::Packet::new_checked(bytes) {
        let _ = (
            packet.src_port(),
            packet.dst_port(),
            packet.seq_number(),
            packet.ack_number(),
        );
        let _ = (
            packet.header_len(),
            packet.flags(),
            packet.syn(),
            packet.ack(),
            packet.fin(),
        );
        let _ = (
            packet.rst(),
            packet.window_len(),
            packet.checksum(),
            packet.urgent_ptr(),
        );
        let _ = (
            packet.options(),
            packet.payload(),
            packet.verify_checksum(pseudo),
        );
        let _ = tcp::Repr::parse(&packet, pseudo);
    }
}

fn exercise_udp(bytes: &[u8], pseudo: &PseudoHeader) {
    if let Ok(packet) = udp::Packet::new_checked(bytes) {
        let _ = (
            packet.src_port(),
            packet.dst_port(),
            packet.len(),
            packet.checksum(),
        );
        let _ = (packet.payload(), packet.verify_checksum(pseudo));
        let _ = udp::Repr::parse(&packet, pseudo);
    }
}

fn exercise_icmp(bytes: &[u8]) {
    if let Ok(packet) = icmp::Packet::new_checked(bytes) {
        let _ = (
            packet.msg_type(),
            packet.msg_code(),
            packet.checksum(),
            packet.echo_ident(),
        );
        let _ = (
            packet.echo_seq_no(),
            packet.gateway(),
            packet.pointer(),
            packet.next_hop_mtu(),
        );
        let _ = (
            packet.data(),
            packet.verify_checksum(),
            icmp::Repr::parse(&packet),
        );
        if let Ok(quoted) = packet.embedded_ipv4() {
            let _ = (quoted.src_addr(), quoted.options(), quoted.payload());
            let _ = ip::ports(quoted.protocol(), quoted.payload());
        }
    }
}

fn exercise_icmpv6(bytes: &[u8], pseudo: &PseudoHeader) {
    if let Ok(packet) = icmpv6::Packet::new_checked(bytes) {
        let _ = (
            packet.msg_type(),
            packet.msg_code(),
            packet.checksum(),
            packet.echo_ident(),
        );
        let _ = (
            packet.echo_seq_no(),
            packet.mtu(),
            packet.pointer(),
            packet.router_flag(),
        );
        let _ = (
            packet.solicited_flag(),
            packet.override_flag(),
            packet.target_addr(),
        );
        let _ = (
            packet.link_layer_addr(),
            packet.data(),
            packet.verify_checksum(pseudo),
        );
        let _ = icmpv6::Repr::parse(&packet, pseudo);
        if let Ok(quoted) = packet.embedded_ipv6() {
            let _ = (quoted.src_addr(), quoted.payload(), quoted.upper_layer());
        }
    }
}

fn exercise_igmp(bytes: &[u8]) {
    if let Ok(packet) = igmp::Packet::new_checked(bytes) {
        let _ = (packet.msg_type(), packet.max_resp_code(), packet.checksum());
        let _ = (
            packet.group_addr(),
            packet.query_version(),
            packet.max_resp_time(),
        );
        let _ = (
            packet.num_group_records(),
            packet.verify_checksum(),
            igmp::Repr::parse(&packet),
        );
        for record in packet.group_records() {
            let _ = record;
        }
    }
}

fn exercise_all(bytes: &[u8]) {
    exercise_ethernet(bytes);
    exercise_vlan(bytes);
    exercise_arp(bytes);
    exercise_ipv4(bytes);
    exercise_ipv6(bytes);
    let v4 = PseudoHeader::V4 {
        src: Ipv4Addr::LOCALHOST,
        dst: Ipv4Addr::BROADCAST,
    };
    let v6 = PseudoHeader::V6 {
        src: Ipv6Addr::LOCALHOST,
        dst: Ipv6Addr::UNSPECIFIED,
    };
    exercise_transport(IpProtocol::TCP, bytes, &v4);
    exercise_transport(IpProtocol::UDP, bytes, &v6);
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..2000)
}

/// Forces an IPv4 version nibble and a total length no longer than the buffer, with
/// the IHL left random so option and payload arithmetic is exercised.
fn ipv4_like() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(any::<u8>(), 20..200),
        any::<u16>(),
        0..6u8,
    )
        .prop_map(|(mut bytes, total, protocol)| {
            bytes[0] = 0x40 | (bytes[0] & 0x0f);
            let total = usize::from(total) % (bytes.len() + 1);
            bytes[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            bytes[6] &= 0x3f; // mostly first fragments, so transport headers get parsed
            bytes[9] = [1, 2, 6, 17, 58, 44][usize::from(protocol)];
            bytes
        })
}

/// Forces IPv6 and an extension-header chain of random next-header values drawn from
/// the ones the walker follows, with random lengths.
fn ipv6_like() -> impl Strategy<Value = Vec<u8>> {
    let next = prop_oneof![
        Just(0u8),
        Just(6),
        Just(17),
        Just(43),
        Just(44),
        Just(51),
        Just(58),
        Just(60)
    ];
    (
        proptest::collection::vec(any::<u8>(), 40..400),
        proptest::collection::vec(next, 1..12),
    )
        .prop_map(|(mut bytes, chain)| {
            bytes[0] = 0x60 | (bytes[0] & 0x0f);
            let payload_len = (bytes.len() - 40) as u16;
            bytes[4..6].copy_from_slice(&payload_len.to_be_bytes());
            bytes[6] = chain[0];
            // Plant the chain's next-header bytes where the walker will look if each
            // header is 8 bytes long; lengths stay random, so most chains end early.
            for (i, next) in chain.iter().skip(1).enumerate() {
                if let Some(b) = bytes.get_mut(40 + 8 * i) {
                    *b = *next;
                }
            }
            bytes
        })
}

/// A message of one of the types the transport decoders treat specially.
fn message_like() -> impl Strategy<Value = Vec<u8>> {
    let msg_type = prop_oneof![
        Just(0u8),
        Just(3),
        Just(5),
        Just(8),
        Just(11),
        Just(12), // ICMP
        Just(0x11),
        Just(0x16),
        Just(0x17),
        Just(0x22), // IGMP
        Just(1),
        Just(2),
        Just(4),
        Just(128),
        Just(135),
        Just(136), // ICMPv6
    ];
    (proptest::collection::vec(any::<u8>(), 0..120), msg_type).prop_map(|(mut bytes, t)| {
        if let Some(b) = bytes.first_mut() {
            *b = t;
        }
        // Let the quoted header of an error message start like an IP header.
        if let Some(b) = bytes.get_mut(8) {
            *b = if t < 20 { 0x45 } else { 0x60 };
        }
        bytes
    })
}

fn pseudo_header() -> impl Strategy<Value = PseudoHeader> {
    prop_oneof![
        (any::<u32>(), any::<u32>()).prop_map(|(s, d)| PseudoHeader::V4 {
            src: Ipv4Addr::from(s),
            dst: Ipv4Addr::from(d)
        }),
        (any::<u128>(), any::<u128>()).prop_map(|(s, d)| PseudoHeader::V6 {
            src: Ipv6Addr::from(s),
            dst: Ipv6Addr::from(d)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in any_bytes()) {
        exercise_all(&bytes);
    }

    #[test]
    fn ipv4_shaped_bytes_never_panic(bytes in ipv4_like()) {
        exercise_ipv4(&bytes);
    }

    #[test]
    fn ipv6_shaped_bytes_never_panic(bytes in ipv6_like()) {
        exercise_ipv6(&bytes);
    }

    #[test]
    fn message_shaped_bytes_never_panic(bytes in message_like(), pseudo in pseudo_header()) {
        exercise_icmp(&bytes);
        exercise_icmpv6(&bytes, &pseudo);
        exercise_igmp(&bytes);
        exercise_tcp(&bytes, &pseudo);
        exercise_udp(&bytes, &pseudo);
    }
}

proptest! {
    #[test]
    fn ethernet_and_vlan_reprs_round_trip(
        src in any::<[u8; 6]>(), dst in any::<[u8; 6]>(), ethertype in any::<u16>(),
        pcp in 0..8u8, dei in any::<bool>(), vlan_id in 0..4096u16,
    ) {
        let eth = ethernet::Repr {
            src_addr: EthernetAddress(src),
            dst_addr: EthernetAddress(dst),
            ethertype: EtherType(ethertype),
        };
        let mut buf = [0u8; 14];
        eth.emit(&mut ethernet::Frame::new_unchecked(&mut buf[..]));
        prop_assert_eq!(ethernet::Repr::parse(&ethernet::Frame::new_checked(&buf[..]).unwrap()), Ok(eth));

        let tag = vlan::Repr { pcp, dei, vlan_id, ethertype: EtherType(ethertype) };
        let mut buf = [0u8; 4];
        tag.emit(&mut vlan::Tag::new_unchecked(&mut buf[..]));
        prop_assert_eq!(vlan::Repr::parse(&vlan::Tag::new_checked(&buf[..]).unwrap()), Ok(tag));
    }

    #[test]
    fn ethernet_address_text_round_trips(octets in any::<[u8; 6]>()) {
        let mac = EthernetAddress(octets);
        prop_assert_eq!(mac.to_string().parse(), Ok(mac));
        prop_assert_eq!(mac.to_string().replace(':', "-").to_uppercase().parse(), Ok(mac));
    }

    #[test]
    fn arp_repr_round_trips(
        op in any::<u16>(), sha in any::<[u8; 6]>(), spa in any::<u32>(),
        tha in any::<[u8; 6]>(), tpa in any::<u32>(),
    ) {
        let repr = arp::Repr {
            operation: arp::Operation(op),
            source_hardware_addr: EthernetAddress(sha),
            source_protocol_addr: Ipv4Addr::from(spa),
            target_hardware_addr: EthernetAddress(tha),
            target_protocol_addr: Ipv4Addr::from(tpa),
        };
        let mut buf = [0u8; arp::PACKET_LEN];
        repr.emit(&mut arp::Packet::new_unchecked(&mut buf[..]));
        prop_assert_eq!(arp::Repr::parse(&arp::Packet::new_checked(&buf[..]).unwrap()), Ok(repr));
    }

    #[test]
    fn ipv4_repr_round_trips(
        src in any::<u32>(), dst in any::<u32>(), protocol in any::<u8>(),
        payload_len in 0..1500usize, ttl in any::<u8>(), dscp in 0..64u8, ecn in 0..4u8,
        ident in any::<u16>(), dont_frag in any::<bool>(), more_frags in any::<bool>(),
        frag_units in 0..8192u16,
    ) {
        let repr = ipv4::Repr {
            src_addr: Ipv4Addr::from(src),
            dst_addr: Ipv4Addr::from(dst),
            protocol: IpProtocol(protocol),
            payload_len,
            ttl,
            dscp,
            ecn,
            ident,
            dont_frag,
            more_frags,
            frag_offset: frag_units * 8,
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut ipv4::Packet::new_unchecked(&mut buf[..]));
        prop_assert_eq!(ipv4::Repr::parse(&ipv4::Packet::new_checked(&buf[..]).unwrap()), Ok(repr));
    }

    #[test]
    fn ipv6_reprs_round_trip(
        src in any::<u128>(), dst in any::<u128>(), next in any::<u8>(),
        payload_len in 8..1500usize, hop_limit in any::<u8>(), traffic_class in any::<u8>(),
        flow_label in 0..(1u32 << 20), frag_units in 0..8192u16, more_frags in any::<bool>(),
        ident in any::<u32>(),
    ) {
        let repr = ipv6::Repr {
            src_addr: Ipv6Addr::from(src),
            dst_addr: Ipv6Addr::from(dst),
            next_header: IpProtocol(next),
            payload_len,
            hop_limit,
            traffic_class,
            flow_label,
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut ipv6::Packet::new_unchecked(&mut buf[..]));
        prop_assert_eq!(ipv6::Repr::parse(&ipv6::Packet::new_checked(&buf[..]).unwrap()), Ok(repr));

        let frag = ipv6::FragmentRepr {
            next_header: IpProtocol(next),
            frag_offset: frag_units * 8,
            more_frags,
            ident,
        };
        frag.emit(&mut ipv6::FragmentHeader::new_unchecked(&mut buf[40..]));
        let header = ipv6::FragmentHeader::new_checked(&buf[40..]).unwrap();
        prop_assert_eq!(ipv6::FragmentRepr::parse(&header), Ok(frag));
    }

    #[test]
    fn tcp_repr_round_trips(
        src_port in any::<u16>(), dst_port in any::<u16>(), seq in any::<u32>(),
        ack in any::<u32>(), flags in 0..0x200u16, window in any::<u16>(), urgent in any::<u16>(),
        option_words in proptest::collection::vec(any::<[u8; 4]>(), 0..=10),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        pseudo in pseudo_header(),
    ) {
        let options: Vec<u8> = option_words.concat();
        let repr = tcp::Repr {
            src_port,
            dst_port,
            seq_number: seq,
            ack_number: ack,
            flags: tcp::Flags(flags),
            window_len: window,
            urgent_ptr: urgent,
            options: &options,
            payload: &payload,
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut tcp::Packet::new_unchecked(&mut buf[..]), &pseudo);
        prop_assert_eq!(tcp::Repr::parse(&tcp::Packet::new_checked(&buf[..]).unwrap(), &pseudo), Ok(repr));
    }

    #[test]
    fn udp_repr_round_trips(
        src_port in any::<u16>(), dst_port in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        pseudo in pseudo_header(),
    ) {
        let repr = udp::Repr { src_port, dst_port, payload: &payload };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut udp::Packet::new_unchecked(&mut buf[..]), &pseudo);
        let packet = udp::Packet::new_checked(&buf[..]).unwrap();
        prop_assert_ne!(packet.checksum(), 0);
        prop_assert_eq!(udp::Repr::parse(&packet, &pseudo), Ok(repr));
    }

    #[test]
    fn checksum_detects_any_single_bit_flip(
        payload in proptest::collection::vec(any::<u8>(), 1..300),
        bit in any::<usize>(),
        pseudo in pseudo_header(),
    ) {
        let repr = udp::Repr { src_port: 1024, dst_port: 53, payload: &payload };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut udp::Packet::new_unchecked(&mut buf[..]), &pseudo);
        let bit = bit % (payload.len() * 8);
        buf[udp::HEADER_LEN + bit / 8] ^= 1 << (bit % 8);
        let packet = udp::Packet::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(udp::Repr::parse(&packet, &pseudo), Err(Error::Checksum));
    }
}
