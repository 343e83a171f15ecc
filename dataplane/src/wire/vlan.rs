//! IEEE 802.1Q / 802.1ad VLAN tags: the four bytes after a `0x8100` or `0x88a8`
//! EtherType, holding the tag control information and the EtherType of what follows.

use super::{read_u16, write_u16, Error, EtherType, Result};

mod field {
    use crate::wire::{Field, Rest};

    /// PCP (3 bits), DEI (1 bit), VLAN ID (12 bits).
    pub const TCI: Field = 0..2;
    pub const ETHERTYPE: Field = 2..4;
    pub const PAYLOAD: Rest = 4..;
}

/// Length of a tag as it follows the outer EtherType.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// A view of a VLAN tag and the bytes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Tag<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds a whole tag.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let tag = Self::new_unchecked(buffer);
        tag.check_len()?;
        Ok(tag)
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

    /// Priority code point (802.1p class of service), 0..=7.
    pub fn pcp(&self) -> u8 {
        (read_u16(self.buffer.as_ref(), field::TCI) >> 13) as u8
    }

    /// Drop eligible indicator.
    pub fn dei(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::TCI) & 0x1000 != 0
    }

    /// VLAN identifier, 0..=4095 (0: priority tag only; 4095 reserved).
    pub fn vlan_id(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TCI) & 0x0fff
    }

    /// EtherType of what follows the tag: the payload, or another tag in QinQ.
    pub fn ethertype(&self) -> EtherType {
        EtherType(read_u16(self.buffer.as_ref(), field::ETHERTYPE))
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Tag<&'a T> {
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Tag<T> {
    /// Sets the priority; only the low three bits of `pcp` are used.
    pub fn set_pcp(&mut self, pcp: u8) {
        let tci = read_u16(self.buffer.as_ref(), field::TCI);
        let tci = (tci & 0x1fff) | (u16::from(pcp & 0x07) << 13);
        write_u16(self.buffer.as_mut(), field::TCI, tci);
    }

    pub fn set_dei(&mut self, dei: bool) {
        let tci = read_u16(self.buffer.as_ref(), field::TCI);
        let tci = if dei { tci | 0x1000 } else { tci & !0x1000 };
        write_u16(self.buffer.as_mut(), field::TCI, tci);
    }

    /// Sets the VLAN ID; only the low twelve bits of `vlan_id` are used.
    pub fn set_vlan_id(&mut self, vlan_id: u16) {
        let tci = read_u16(self.buffer.as_ref(), field::TCI);
        let tci = (tci & 0xf000) | (vlan_id & 0x0fff);
        write_u16(self.buffer.as_mut(), field::TCI, tci);
    }

    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE, ethertype.0);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// A VLAN tag as plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// 0..=7; higher bits are dropped on emit.
    pub pcp: u8,
    pub dei: bool,
    /// 0..=4095; higher bits are dropped on emit.
    pub vlan_id: u16,
    pub ethertype: EtherType,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(tag: &Tag<&T>) -> Result<Self> {
        tag.check_len()?;
        Ok(Self {
            pcp: tag.pcp(),
            dei: tag.dei(),
            vlan_id: tag.vlan_id(),
            ethertype: tag.ethertype(),
        })
    }

    /// Bytes [`emit`](Self::emit) writes; the payload starts at this offset.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, tag: &mut Tag<T>) {
        let tci = (u16::from(self.pcp & 0x07) << 13)
            | (u16::from(self.dei) << 12)
            | (self.vlan_id & 0x0fff);
        write_u16(tag.buffer.as_mut(), field::TCI, tci);
        tag.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::Frame;

    /// A QinQ frame: service tag VLAN 100, customer tag VLAN 42 priority 5, then IPv4.
    const QINQ_FRAME: [u8; 24] = [
        0x01, 0x00, 0x5e, 0x7f, 0x00, 0x01, 0x00, 0x15, 0x5d, 0x01, 0x02, 0x03, 0x88,
        0xa8, // eth
        0x00, 0x64, 0x81, 0x00, // S-tag: VID 100, inner TPID 0x8100
        0xa0, 0x2a, 0x08, 0x00, // C-tag: PCP 5, VID 42, IPv4
        0x45, 0x00,
    ];

    #[test]
    fn qinq_tags_are_walked_to_the_inner_ethertype() {
        let frame = Frame::new_checked(&QINQ_FRAME[..]).unwrap();
        assert_eq!(frame.ethertype(), EtherType::QINQ);
        let outer = Tag::new_checked(frame.payload()).unwrap();
        assert_eq!((outer.pcp(), outer.dei(), outer.vlan_id()), (0, false, 100));
        assert_eq!(outer.ethertype(), EtherType::VLAN);
        let inner = Tag::new_checked(outer.payload()).unwrap();
        assert_eq!((inner.pcp(), inner.dei(), inner.vlan_id()), (5, false, 42));
        assert_eq!(inner.ethertype(), EtherType::IPV4);
        assert_eq!(inner.payload(), &[0x45, 0x00]);
    }

    #[test]
    fn tag_round_trips() {
        let bytes = [0xb0, 0x2a, 0x86, 0xdd];
        let repr = Repr::parse(&Tag::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(
            repr,
            Repr {
                pcp: 5,
                dei: true,
                vlan_id: 42,
                ethertype: EtherType::IPV6
            }
        );
        let mut out = [0u8; 4];
        repr.emit(&mut Tag::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
    }

    #[test]
    fn setters_keep_the_other_tci_bits() {
        let mut bytes = [0xff, 0xff, 0x08, 0x00];
        let mut tag = Tag::new_checked(&mut bytes[..]).unwrap();
        tag.set_vlan_id(0x123);
        assert_eq!((tag.pcp(), tag.dei(), tag.vlan_id()), (7, true, 0x123));
        tag.set_pcp(2);
        tag.set_dei(false);
        assert_eq!((tag.pcp(), tag.dei(), tag.vlan_id()), (2, false, 0x123));
    }

    #[test]
    fn short_tag_is_truncated() {
        assert_eq!(
            Tag::new_checked(&[0x00, 0x64, 0x08][..]).unwrap_err(),
            Error::Truncated
        );
    }
}
