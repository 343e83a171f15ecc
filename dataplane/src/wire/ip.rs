//! What IPv4 and IPv6 share: the protocol / next-header number space, and reading the
//! transport ports the filter hashes on.

use core::fmt;

/// An IP protocol number (IPv4 "protocol", IPv6 "next header"); IANA's registry, open-ended.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    pub const HOP_BY_HOP: Self = Self(0);
    pub const ICMP: Self = Self(1);
    pub const IGMP: Self = Self(2);
    pub const TCP: Self = Self(6);
    pub const UDP: Self = Self(17);
    pub const IPV6_ROUTING: Self = Self(43);
    pub const IPV6_FRAGMENT: Self = Self(44);
    pub const GRE: Self = Self(47);
    pub const ESP: Self = Self(50);
    pub const AH: Self = Self(51);
    pub const ICMPV6: Self = Self(58);
    pub const IPV6_NO_NEXT: Self = Self(59);
    pub const IPV6_DEST_OPTS: Self = Self(60);
    pub const SCTP: Self = Self(132);

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::HOP_BY_HOP => "HopByHop",
            Self::ICMP => "ICMP",
            Self::IGMP => "IGMP",
            Self::TCP => "TCP",
            Self::UDP => "UDP",
            Self::IPV6_ROUTING => "IPv6-Route",
            Self::IPV6_FRAGMENT => "IPv6-Frag",
            Self::GRE => "GRE",
            Self::ESP => "ESP",
            Self::AH => "AH",
            Self::ICMPV6 => "ICMPv6",
            Self::IPV6_NO_NEXT => "IPv6-NoNxt",
            Self::IPV6_DEST_OPTS => "IPv6-Opts",
            Self::SCTP => "SCTP",
            _ => return None,
        })
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "protocol {}", self.0),
        }
    }
}

impl fmt::Debug for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "IpProtocol({})", self.0),
        }
    }
}

/// Source and destination port of a TCP, UDP or SCTP header starting at `l4`.
///
/// Needs only the first four bytes, so it also reads the transport header quoted in an
/// ICMP error (which carries just eight bytes of it) and the first fragment of a
/// datagram. Returns `None` for other protocols or fewer than four bytes.
pub fn ports(protocol: IpProtocol, l4: &[u8]) -> Option<(u16, u16)> {
    match protocol {
        IpProtocol::TCP | IpProtocol::UDP | IpProtocol::SCTP => match l4 {
            [s0, s1, d0, d1, ..] => Some((
                u16::from_be_bytes([*s0, *s1]),
                u16::from_be_bytes([*d0, *d1]),
            )),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_read_from_a_truncated_transport_header() {
        let quoted_udp = [0x9c, 0x40, 0x00, 0x35, 0x00, 0x20, 0xab, 0xcd];
        assert_eq!(ports(IpProtocol::UDP, &quoted_udp), Some((40000, 53)));
        assert_eq!(ports(IpProtocol::TCP, &quoted_udp[..4]), Some((40000, 53)));
        assert_eq!(ports(IpProtocol::TCP, &quoted_udp[..3]), None);
        assert_eq!(ports(IpProtocol::ICMP, &quoted_udp), None);
    }

    #[test]
    fn protocol_names_print_for_logs() {
        assert_eq!(IpProtocol::TCP.to_string(), "TCP");
        assert_eq!(IpProtocol(253).to_string(), "protocol 253");
        assert_eq!(format!("{:?}", IpProtocol::IPV6_FRAGMENT), "IPv6-Frag");
        assert_eq!(format!("{:?}", IpProtocol(253)), "IpProtocol(253)");
    }
}
