//! Packet wire formats: typed, zero-copy views over the headers the load balancer reads
//! on the fast path, and `Repr` values the control plane and tests build and emit.
//!
//! Every protocol module follows one shape. `Packet::new_checked` validates the buffer's
//! lengths once; after that every accessor is a bounds-safe fixed-offset read, so the
//! worker can classify millions of packets a second without allocating and without a
//! malformed frame ever reaching a panic. `Repr::parse` additionally checks values
//! (version numbers, checksums) and `Repr::emit` writes a well-formed header back.
//!
//! This module owns the shared [`Error`] and the byte-order helpers; addresses are
//! `std::net::{Ipv4Addr, Ipv6Addr}` and [`EthernetAddress`].

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod icmpv6;
pub mod igmp;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod vlan;

#[cfg(test)]
mod fuzz;

pub use checksum::PseudoHeader;
pub use ethernet::{EtherType, EthernetAddress};
pub use ip::IpProtocol;

/// Why a buffer could not be read as, or did not check out as, a packet of some protocol.
///
/// Deliberately carries no data: it is returned per packet on the fast path, where the
/// caller only counts and drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Error {
    /// The buffer ends before a header, or before the length a header field declares.
    #[error("packet truncated: the buffer is shorter than its headers require")]
    Truncated,
    /// A field holds a value the protocol forbids (wrong version, a length below the minimum).
    #[error("malformed packet: a header field holds a value the protocol does not allow")]
    Malformed,
    /// The checksum carried in the packet does not match its contents.
    #[error("checksum mismatch")]
    Checksum,
    /// Well-formed, but a variant this crate does not decode (another hardware type, an
    /// unknown message type, too many IPv6 extension headers).
    #[error("unsupported packet: a valid format or message type this decoder does not handle")]
    Unsupported,
}

/// Result of wire-format parsing.
pub type Result<T> = core::result::Result<T, Error>;

/// Byte range of a fixed-size field within a header.
pub(crate) type Field = core::ops::Range<usize>;
/// Everything from a fixed offset to the end of the header or buffer.
pub(crate) type Rest = core::ops::RangeFrom<usize>;

// Big-endian field access. These index the buffer directly: the views call them only
// for fields that `check_len` has proven lie inside it.

#[inline]
pub(crate) fn read_u16(data: &[u8], field: Field) -> u16 {
    let b = &data[field];
    u16::from_be_bytes([b[0], b[1]])
}

#[inline]
pub(crate) fn read_u32(data: &[u8], field: Field) -> u32 {
    let b = &data[field];
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[inline]
pub(crate) fn read_ipv4(data: &[u8], field: Field) -> std::net::Ipv4Addr {
    let b = &data[field];
    std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

#[inline]
pub(crate) fn read_ipv6(data: &[u8], field: Field) -> std::net::Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&data[field]);
    std::net::Ipv6Addr::from(octets)
}

#[inline]
pub(crate) fn write_u16(data: &mut [u8], field: Field, value: u16) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

#[inline]
pub(crate) fn write_u32(data: &mut [u8], field: Field, value: u32) {
    data[field].copy_from_slice(&value.to_be_bytes());
}
