//! Ethernet II framing: the 14-byte header, MAC addresses and the EtherType numbers the
//! load balancer dispatches on.

use core::fmt;
use core::str::FromStr;

use super::{read_u16, write_u16, Error, Result};

/// A 48-bit IEEE MAC address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    pub const BROADCAST: Self = Self([0xff; 6]);

    /// Reads an address from the first six bytes of `bytes`; `None` if there are fewer.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let octets: [u8; 6] = bytes.get(..6)?.try_into().ok()?;
        Some(Self(octets))
    }

    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// The I/G bit: group addresses, broadcast included.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// The U/L bit. NLB's cluster MACs (`02-bf-..`, `03-bf-..`) set it, vendor MACs do not.
    pub const fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EthernetAddress({self})")
    }
}

/// A string that is not six two-digit hex octets joined by one separator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid Ethernet address: expected six two-digit hex octets separated by ':' or '-', \
     e.g. 02:bf:c0:00:02:0a"
)]
pub struct ParseEthernetAddressError;

impl FromStr for EthernetAddress {
    type Err = ParseEthernetAddressError;

    /// Accepts `02:bf:c0:00:02:0a` and the Windows spelling `02-BF-C0-00-02-0A` (any case),
    /// but not a mix of separators.
    fn from_str(s: &str) -> core::result::Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 17 {
            return Err(ParseEthernetAddressError);
        }
        let separator = bytes[2];
        if separator != b':' && separator != b'-' {
            return Err(ParseEthernetAddressError);
        }
        let mut octets = [0u8; 6];
        for (i, octet) in octets.iter_mut().enumerate() {
            let at = i * 3;
            if i > 0 && bytes[at - 1] != separator {
                return Err(ParseEthernetAddressError);
            }
            let digits = s.get(at..at + 2).ok_or(ParseEthernetAddressError)?;
            if !digits.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(ParseEthernetAddressError);
            }
            *octet = u8::from_str_radix(digits, 16).map_err(|_| ParseEthernetAddressError)?;
        }
        Ok(Self(octets))
    }
}

/// An EtherType (or, after a VLAN tag, the encapsulated EtherType); open-ended.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EtherType(pub u16);

impl EtherType {
    pub const IPV4: Self = Self(0x0800);
    pub const ARP: Self = Self(0x0806);
    /// IEEE 802.1Q customer VLAN tag.
    pub const VLAN: Self = Self(0x8100);
    pub const IPV6: Self = Self(0x86dd);
    /// Windows NLB cluster heartbeat.
    pub const NLB_HEARTBEAT: Self = Self(0x886f);
    /// IEEE 802.1ad service tag (the outer tag of QinQ).
    pub const QINQ: Self = Self(0x88a8);

    /// Whether a VLAN tag (802.1Q or 802.1ad) follows instead of the payload.
    pub const fn is_vlan_tag(self) -> bool {
        self.0 == Self::VLAN.0 || self.0 == Self::QINQ.0
    }

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::IPV4 => "IPv4",
            Self::ARP => "ARP",
            Self::VLAN => "VLAN",
            Self::IPV6 => "IPv6",
            Self::NLB_HEARTBEAT => "NLB-Heartbeat",
            Self::QINQ => "QinQ",
            _ => return None,
        })
    }
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "0x{:04x}", self.0),
        }
    }
}

impl fmt::Debug for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "EtherType(0x{:04x})", self.0),
        }
    }
}

mod field {
    use crate::wire::{Field, Rest};

    pub const DESTINATION: Field = 0..6;
    pub const SOURCE: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const PAYLOAD: Rest = 14..;
}

/// Length of the Ethernet II header (no VLAN tag, no FCS: NICs strip it).
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// A view of an Ethernet II frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
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

    pub fn dst_addr(&self) -> EthernetAddress {
        let mut octets = [0u8; 6];
        octets.copy_from_slice(&self.buffer.as_ref()[field::DESTINATION]);
        EthernetAddress(octets)
    }

    pub fn src_addr(&self) -> EthernetAddress {
        let mut octets = [0u8; 6];
        octets.copy_from_slice(&self.buffer.as_ref()[field::SOURCE]);
        EthernetAddress(octets)
    }

    pub fn ethertype(&self) -> EtherType {
        EtherType(read_u16(self.buffer.as_ref(), field::ETHERTYPE))
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Frame<&'a T> {
    /// Everything after the header: a VLAN tag, or the network-layer packet.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_dst_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr.0);
    }

    pub fn set_src_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr.0);
    }

    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE, ethertype.0);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// The Ethernet header as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    pub src_addr: EthernetAddress,
    pub dst_addr: EthernetAddress,
    pub ethertype: EtherType,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &Frame<&T>) -> Result<Self> {
        frame.check_len()?;
        Ok(Self {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    /// Bytes [`emit`](Self::emit) writes; the payload starts at this offset.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header; the payload is left untouched.
    ///
    /// # Panics
    /// If the frame is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header of a broadcast ARP request from 02:bf:c0:00:02:0a, plus four payload bytes.
    const ARP_BROADCAST: [u8; 18] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0xbf, 0xc0, 0x00, 0x02, 0x0a, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00,
    ];

    #[test]
    fn frame_header_round_trips() {
        let frame = Frame::new_checked(&ARP_BROADCAST[..]).unwrap();
        let repr = Repr::parse(&frame).unwrap();
        assert_eq!(
            repr,
            Repr {
                src_addr: EthernetAddress([0x02, 0xbf, 0xc0, 0x00, 0x02, 0x0a]),
                dst_addr: EthernetAddress::BROADCAST,
                ethertype: EtherType::ARP,
            }
        );
        assert_eq!(frame.payload(), &[0x00, 0x01, 0x08, 0x00]);

        let mut out = [0u8; 18];
        let mut out_frame = Frame::new_unchecked(&mut out[..]);
        repr.emit(&mut out_frame);
        out_frame
            .payload_mut()
            .copy_from_slice(&[0x00, 0x01, 0x08, 0x00]);
        assert_eq!(out, ARP_BROADCAST);
    }

    #[test]
    fn short_frame_is_truncated() {
        assert_eq!(
            Frame::new_checked(&ARP_BROADCAST[..13]).unwrap_err(),
            Error::Truncated
        );
        assert!(Frame::new_checked(&ARP_BROADCAST[..14])
            .unwrap()
            .payload()
            .is_empty());
    }

    #[test]
    fn address_displays_lower_case_with_colons() {
        let mac = EthernetAddress([0x02, 0xbf, 0xc0, 0x00, 0x02, 0x0a]);
        assert_eq!(mac.to_string(), "02:bf:c0:00:02:0a");
        assert_eq!(format!("{mac:?}"), "EthernetAddress(02:bf:c0:00:02:0a)");
    }

    #[test]
    fn address_parses_colon_and_windows_dash_forms() {
        let mac = EthernetAddress([0x02, 0xbf, 0xc0, 0x00, 0x02, 0x0a]);
        assert_eq!("02:bf:c0:00:02:0a".parse(), Ok(mac));
        assert_eq!("02-BF-C0-00-02-0A".parse(), Ok(mac));
        for bad in [
            "",
            "02:bf:c0:00:02",
            "02:bf:c0:00:02:0a:",
            "02:bf-c0:00:02:0a",
            "02.bf.c0.00.02.0a",
            "02:bf:c0:00:02:0g",
            "2:bf:c0:00:02:0a0",
            "+2:bf:c0:00:02:0a",
            "02:bf:c0:00:02:é",
        ] {
            assert_eq!(
                bad.parse::<EthernetAddress>(),
                Err(ParseEthernetAddressError),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn address_classes_follow_the_ig_and_ul_bits() {
        let unicast_cluster: EthernetAddress = "02:bf:c0:00:02:0a".parse().unwrap();
        assert!(unicast_cluster.is_unicast() && unicast_cluster.is_locally_administered());
        let multicast_cluster: EthernetAddress = "03:bf:c0:00:02:0a".parse().unwrap();
        assert!(multicast_cluster.is_multicast() && !multicast_cluster.is_broadcast());
        let igmp_cluster: EthernetAddress = "01:00:5e:7f:02:0a".parse().unwrap();
        assert!(igmp_cluster.is_multicast() && !igmp_cluster.is_locally_administered());
        assert!(
            EthernetAddress::BROADCAST.is_broadcast() && EthernetAddress::BROADCAST.is_multicast()
        );
        let vendor = EthernetAddress([0x00, 0x15, 0x5d, 0x01, 0x02, 0x03]);
        assert!(vendor.is_unicast() && !vendor.is_locally_administered());
        assert_eq!(EthernetAddress::from_bytes(&[1, 2, 3, 4, 5]), None);
        assert_eq!(
            EthernetAddress::from_bytes(&[1, 2, 3, 4, 5, 6, 7]),
            Some(EthernetAddress([1, 2, 3, 4, 5, 6]))
        );
    }

    #[test]
    fn ethertypes_print_names() {
        assert_eq!(EtherType::NLB_HEARTBEAT.to_string(), "NLB-Heartbeat");
        assert_eq!(EtherType(0x1234).to_string(), "0x1234");
        assert!(EtherType::QINQ.is_vlan_tag() && EtherType::VLAN.is_vlan_tag());
        assert!(!EtherType::IPV4.is_vlan_tag());
    }
}
