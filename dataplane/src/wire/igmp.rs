//! IGMP (RFC 1112, RFC 2236, RFC 3376): the queries and reports by which a cluster in
//! IGMP multicast mode keeps switches forwarding its multicast MAC to every host.
//!
//! IGMPv1/v2 messages are decoded fully; IGMPv3 queries and reports only as far as
//! answering and counting them needs.

use core::time::Duration;
use std::net::Ipv4Addr;

use super::{checksum, read_ipv4, read_u16, write_u16, Error, Result};

/// IGMP message type; open-ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Message(pub u8);

impl Message {
    /// Query of every version; the length and max response code tell them apart.
    pub const MEMBERSHIP_QUERY: Self = Self(0x11);
    pub const V1_MEMBERSHIP_REPORT: Self = Self(0x12);
    pub const V2_MEMBERSHIP_REPORT: Self = Self(0x16);
    pub const LEAVE_GROUP: Self = Self(0x17);
    pub const V3_MEMBERSHIP_REPORT: Self = Self(0x22);
}

/// IGMP protocol version of a query (RFC 3376 section 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    V1,
    V2,
    V3,
}

mod field {
    use crate::wire::{Field, Rest};

    pub const TYPE: usize = 0;
    /// Max response time (v1: unused, zero; v2: tenths of a second; v3: coded).
    pub const MAX_RESP_CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const GROUP_ADDR: Field = 4..8;

    /// IGMPv3 query: reserved (4 bits), S (1 bit), QRV (3 bits).
    pub const V3_QUERY_FLAGS: usize = 8;
    /// IGMPv3 query: querier's query interval code.
    pub const V3_QUERY_QQIC: usize = 9;
    pub const V3_QUERY_NUM_SOURCES: Field = 10..12;

    pub const V3_REPORT_NUM_RECORDS: Field = 6..8;
    pub const V3_REPORT_RECORDS: Rest = 8..;

    // Offsets within a group record of an IGMPv3 report.
    pub const RECORD_TYPE: usize = 0;
    /// Auxiliary data length in 32-bit words.
    pub const RECORD_AUX_LEN: usize = 1;
    pub const RECORD_NUM_SOURCES: Field = 2..4;
    pub const RECORD_GROUP_ADDR: Field = 4..8;
}

/// Length of an IGMPv1/v2 message.
pub const HEADER_LEN: usize = field::GROUP_ADDR.end;
/// Length of an IGMPv3 query without sources.
pub const V3_QUERY_LEN: usize = field::V3_QUERY_NUM_SOURCES.end;
/// Length of an IGMPv3 group record without sources or auxiliary data.
pub const GROUP_RECORD_LEN: usize = 8;

/// Robustness variable and query interval written into IGMPv3 queries: RFC 3376 defaults.
const V3_DEFAULT_QRV: u8 = 2;
const V3_DEFAULT_QQIC: u8 = 125;

/// A view of an IGMP message. The buffer is the whole message (the IP payload), which
/// the checksum covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps `buffer` after checking it holds the eight-byte header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
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

    pub fn msg_type(&self) -> Message {
        Message(self.buffer.as_ref()[field::TYPE])
    }

    pub fn max_resp_code(&self) -> u8 {
        self.buffer.as_ref()[field::MAX_RESP_CODE]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The group a v1/v2 message is about; `0.0.0.0` in a general query. In an IGMPv3
    /// report these bytes are the reserved field and record count instead.
    pub fn group_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::GROUP_ADDR)
    }

    /// Version of a query: v3 if at least twelve bytes long, else v1 if the max
    /// response code is zero, else v2.
    pub fn query_version(&self) -> Version {
        if self.buffer.as_ref().len() >= V3_QUERY_LEN {
            Version::V3
        } else if self.max_resp_code() == 0 {
            Version::V1
        } else {
            Version::V2
        }
    }

    /// The time a query allows for reports; IGMPv1 queries, which carry none, get the
    /// fixed ten seconds of RFC 1112.
    pub fn max_resp_time(&self) -> Duration {
        max_resp_time(self.query_version(), self.max_resp_code())
    }

    /// Number of group records in an IGMPv3 report; 0 for other messages.
    pub fn num_group_records(&self) -> u16 {
        if self.msg_type() != Message::V3_MEMBERSHIP_REPORT {
            return 0;
        }
        read_u16(self.buffer.as_ref(), field::V3_REPORT_NUM_RECORDS)
    }

    pub fn verify_checksum(&self) -> bool {
        checksum::data(self.buffer.as_ref()) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The group records of an IGMPv3 report (empty for other messages).
    pub fn group_records(&self) -> GroupRecords<'a> {
        GroupRecords {
            data: &self.buffer.as_ref()[field::V3_REPORT_RECORDS],
            remaining: self.num_group_records(),
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_msg_type(&mut self, msg_type: Message) {
        self.buffer.as_mut()[field::TYPE] = msg_type.0;
    }

    pub fn set_max_resp_code(&mut self, code: u8) {
        self.buffer.as_mut()[field::MAX_RESP_CODE] = code;
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    pub fn set_group_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::GROUP_ADDR].copy_from_slice(&addr.octets());
    }

    /// Recomputes the checksum over the whole buffer; call after any change.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::data(self.buffer.as_ref());
        self.set_checksum(!sum);
    }
}

/// Decodes a max response code into a duration (RFC 3376 section 4.1.1 for v3).
pub fn max_resp_time(version: Version, code: u8) -> Duration {
    let tenths = match version {
        Version::V1 => 100,
        Version::V2 => u64::from(code),
        // Codes from 128 up are a float: 1 | exp (3 bits) | mant (4 bits).
        Version::V3 if code >= 0x80 => {
            u64::from((code & 0x0f) | 0x10) << (((code >> 4) & 0x07) + 3)
        }
        Version::V3 => u64::from(code),
    };
    Duration::from_millis(tenths * 100)
}

/// One group record of an IGMPv3 report, without its source list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupRecord {
    /// 1 MODE_IS_INCLUDE .. 6 BLOCK_OLD_SOURCES (RFC 3376 section 4.2.12).
    pub record_type: u8,
    pub group_addr: Ipv4Addr,
    pub num_sources: u16,
}

/// Iterator over the group records of an IGMPv3 report. Yields `Err(Truncated)` once,
/// then stops, if a record runs past the message.
#[derive(Debug, Clone)]
pub struct GroupRecords<'a> {
    data: &'a [u8],
    remaining: u16,
}

impl Iterator for GroupRecords<'_> {
    type Item = Result<GroupRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let Some(header) = self.data.get(..GROUP_RECORD_LEN) else {
            self.remaining = 0;
            return Some(Err(Error::Truncated));
        };
        let num_sources = read_u16(header, field::RECORD_NUM_SOURCES);
        let len = GROUP_RECORD_LEN
            + usize::from(num_sources) * 4
            + usize::from(header[field::RECORD_AUX_LEN]) * 4;
        if self.data.len() < len {
            self.remaining = 0;
            return Some(Err(Error::Truncated));
        }
        self.data = &self.data[len..];
        Some(Ok(GroupRecord {
            record_type: header[field::RECORD_TYPE],
            group_addr: read_ipv4(header, field::RECORD_GROUP_ADDR),
            num_sources,
        }))
    }
}

/// An IGMP message as plain values.
///
/// IGMPv3 queries keep only what answering them needs: their source list, S flag,
/// robustness variable and query interval are dropped by `parse`, and `emit` writes a
/// query without sources using the RFC 3376 defaults (QRV 2, QQIC 125 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Repr<'a> {
    /// A general query (group `0.0.0.0`) or a group-specific one.
    MembershipQuery {
        version: Version,
        max_resp_code: u8,
        group_addr: Ipv4Addr,
    },
    ReportV1 {
        group_addr: Ipv4Addr,
    },
    ReportV2 {
        group_addr: Ipv4Addr,
    },
    LeaveGroup {
        group_addr: Ipv4Addr,
    },
    /// An IGMPv3 report; `records` are the raw group records, all checked to fit.
    ReportV3 {
        num_records: u16,
        records: &'a [u8],
    },
}

impl<'a> Repr<'a> {
    /// Parses a message, verifying its checksum; v1/v2 reports and leaves must name a
    /// multicast group.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Self> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        let data = packet.buffer.as_ref();
        let group_addr = packet.group_addr();
        let multicast = |repr| {
            if group_addr.is_multicast() {
                Ok(repr)
            } else {
                Err(Error::Malformed)
            }
        };
        match packet.msg_type() {
            Message::MEMBERSHIP_QUERY => {
                let version = packet.query_version();
                if version == Version::V3 {
                    let sources = usize::from(read_u16(data, field::V3_QUERY_NUM_SOURCES));
                    if data.len() < V3_QUERY_LEN + sources * 4 {
                        return Err(Error::Truncated);
                    }
                }
                Ok(Repr::MembershipQuery {
                    version,
                    max_resp_code: packet.max_resp_code(),
                    group_addr,
                })
            }
            Message::V1_MEMBERSHIP_REPORT => multicast(Repr::ReportV1 { group_addr }),
            Message::V2_MEMBERSHIP_REPORT => multicast(Repr::ReportV2 { group_addr }),
            Message::LEAVE_GROUP => multicast(Repr::LeaveGroup { group_addr }),
            Message::V3_MEMBERSHIP_REPORT => {
                let mut records = packet.group_records();
                let all = records.data;
                for record in &mut records {
                    record?;
                }
                let used = all.len() - records.data.len();
                Ok(Repr::ReportV3 {
                    num_records: packet.num_group_records(),
                    records: &all[..used],
                })
            }
            _ => Err(Error::Unsupported),
        }
    }

    pub fn buffer_len(&self) -> usize {
        match *self {
            Repr::MembershipQuery {
                version: Version::V3,
                ..
            } => V3_QUERY_LEN,
            Repr::ReportV3 { records, .. } => HEADER_LEN + records.len(),
            _ => HEADER_LEN,
        }
    }

    /// Writes the message and its checksum. The buffer is the message, so size it to
    /// [`buffer_len`](Self::buffer_len).
    ///
    /// # Panics
    /// If the buffer is shorter than `buffer_len`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let (msg_type, code, group_addr) = match *self {
            Repr::MembershipQuery {
                version,
                max_resp_code,
                group_addr,
            } => {
                if version == Version::V3 {
                    let data = packet.buffer.as_mut();
                    data[field::V3_QUERY_FLAGS] = V3_DEFAULT_QRV;
                    data[field::V3_QUERY_QQIC] = V3_DEFAULT_QQIC;
                    write_u16(data, field::V3_QUERY_NUM_SOURCES, 0);
                }
                let code = if version == Version::V1 {
                    0
                } else {
                    max_resp_code
                };
                (Message::MEMBERSHIP_QUERY, code, group_addr)
            }
            Repr::ReportV1 { group_addr } => (Message::V1_MEMBERSHIP_REPORT, 0, group_addr),
            Repr::ReportV2 { group_addr } => (Message::V2_MEMBERSHIP_REPORT, 0, group_addr),
            Repr::LeaveGroup { group_addr } => (Message::LEAVE_GROUP, 0, group_addr),
            Repr::ReportV3 {
                num_records,
                records,
            } => {
                let data = packet.buffer.as_mut();
                write_u16(data, 4..6, 0);
                write_u16(data, field::V3_REPORT_NUM_RECORDS, num_records);
                data[HEADER_LEN..HEADER_LEN + records.len()].copy_from_slice(records);
                packet.set_msg_type(Message::V3_MEMBERSHIP_REPORT);
                packet.set_max_resp_code(0);
                packet.fill_checksum();
                return;
            }
        };
        packet.set_msg_type(msg_type);
        packet.set_max_resp_code(code);
        packet.set_group_addr(group_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 0, 1);

    /// IGMPv2 membership report for 239.255.0.1.
    const V2_REPORT: [u8; 8] = [0x16, 0x00, 0xf9, 0xfe, 0xef, 0xff, 0x00, 0x01];
    /// IGMPv2 general query allowing 10 s.
    const V2_QUERY: [u8; 8] = [0x11, 0x64, 0xee, 0x9b, 0x00, 0x00, 0x00, 0x00];
    /// IGMPv2 leave for 239.255.0.1.
    const LEAVE: [u8; 8] = [0x17, 0x00, 0xf8, 0xfe, 0xef, 0xff, 0x00, 0x01];
    /// IGMPv3 general query, QRV 2, QQIC 125, no sources.
    const V3_QUERY: [u8; 12] = [0x11, 0x64, 0xec, 0x1e, 0, 0, 0, 0, 0x02, 0x7d, 0x00, 0x00];
    /// IGMPv3 report with one record: CHANGE_TO_EXCLUDE_MODE {} for 239.255.0.1, a join.
    const V3_REPORT: [u8; 16] = [
        0x22, 0x00, 0xe9, 0xfd, 0x00, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0xef, 0xff, 0x00,
        0x01,
    ];

    fn round_trip(bytes: &[u8]) -> Repr<'_> {
        let packet = Packet::new_checked(bytes).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, bytes);
        repr
    }

    #[test]
    fn v2_report_for_cluster_group_round_trips() {
        assert_eq!(round_trip(&V2_REPORT), Repr::ReportV2 { group_addr: GROUP });
    }

    #[test]
    fn v2_query_and_leave_round_trip() {
        let query = round_trip(&V2_QUERY);
        assert_eq!(
            query,
            Repr::MembershipQuery {
                version: Version::V2,
                max_resp_code: 100,
                group_addr: Ipv4Addr::UNSPECIFIED,
            }
        );
        let packet = Packet::new_checked(&V2_QUERY[..]).unwrap();
        assert_eq!(packet.max_resp_time(), Duration::from_secs(10));
        assert_eq!(round_trip(&LEAVE), Repr::LeaveGroup { group_addr: GROUP });
    }

    #[test]
    fn v1_report_and_query_are_recognised() {
        let repr = Repr::ReportV1 { group_addr: GROUP };
        let mut out = [0u8; 8];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(round_trip(&out), repr);

        let query = Repr::MembershipQuery {
            version: Version::V1,
            max_resp_code: 0,
            group_addr: Ipv4Addr::UNSPECIFIED,
        };
        query.emit(&mut Packet::new_unchecked(&mut out[..]));
        let packet = Packet::new_checked(&out[..]).unwrap();
        assert_eq!(packet.query_version(), Version::V1);
        assert_eq!(packet.max_resp_time(), Duration::from_secs(10));
        assert_eq!(Repr::parse(&packet), Ok(query));
    }

    #[test]
    fn v3_query_and_report_round_trip() {
        assert_eq!(
            round_trip(&V3_QUERY),
            Repr::MembershipQuery {
                version: Version::V3,
                max_resp_code: 100,
                group_addr: Ipv4Addr::UNSPECIFIED,
            }
        );
        assert_eq!(
            round_trip(&V3_REPORT),
            Repr::ReportV3 {
                num_records: 1,
                records: &V3_REPORT[8..]
            }
        );
        let packet = Packet::new_checked(&V3_REPORT[..]).unwrap();
        let records: Vec<_> = packet.group_records().collect();
        assert_eq!(
            records,
            [Ok(GroupRecord {
                record_type: 4,
                group_addr: GROUP,
                num_sources: 0
            })]
        );
    }

    #[test]
    fn v3_max_resp_code_uses_the_float_encoding() {
        assert_eq!(max_resp_time(Version::V3, 100), Duration::from_secs(10));
        // 0x80: mant 0, exp 0 -> 16 << 3 = 128 tenths.
        assert_eq!(
            max_resp_time(Version::V3, 0x80),
            Duration::from_millis(12_800)
        );
        // 0xff: mant 15, exp 7 -> 31 << 10 = 31744 tenths.
        assert_eq!(
            max_resp_time(Version::V3, 0xff),
            Duration::from_millis(3_174_400)
        );
        assert_eq!(
            max_resp_time(Version::V2, 0xff),
            Duration::from_millis(25_500)
        );
    }

    #[test]
    fn v3_report_with_records_past_the_end_is_truncated() {
        let mut bytes = V3_REPORT;
        bytes[7] = 2; // claims a second record
        Packet::new_unchecked(&mut bytes[..]).fill_checksum();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        let records: Vec<_> = packet.group_records().collect();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1], Err(Error::Truncated));
        assert_eq!(Repr::parse(&packet), Err(Error::Truncated));

        let mut sources = V3_REPORT;
        sources[11] = 1; // one source address that is not there
        Packet::new_unchecked(&mut sources[..]).fill_checksum();
        assert_eq!(
            Repr::parse(&Packet::new_checked(&sources[..]).unwrap()),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn bad_messages_are_rejected() {
        assert_eq!(
            Packet::new_checked(&V2_REPORT[..7]).unwrap_err(),
            Error::Truncated
        );

        let mut corrupted = V2_REPORT;
        corrupted[7] = 2;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&corrupted[..]).unwrap()),
            Err(Error::Checksum)
        );

        let mut unicast_group = V2_REPORT;
        unicast_group[4] = 10;
        Packet::new_unchecked(&mut unicast_group[..]).fill_checksum();
        assert_eq!(
            Repr::parse(&Packet::new_checked(&unicast_group[..]).unwrap()),
            Err(Error::Malformed)
        );

        let mut v3_query_missing_sources = V3_QUERY;
        v3_query_missing_sources[11] = 1;
        Packet::new_unchecked(&mut v3_query_missing_sources[..]).fill_checksum();
        assert_eq!(
            Repr::parse(&Packet::new_checked(&v3_query_missing_sources[..]).unwrap()),
            Err(Error::Truncated)
        );

        let mut dvmrp = V2_REPORT;
        dvmrp[0] = 0x13;
        Packet::new_unchecked(&mut dvmrp[..]).fill_checksum();
        assert_eq!(
            Repr::parse(&Packet::new_checked(&dvmrp[..]).unwrap()),
            Err(Error::Unsupported)
        );
    }
}
