//! Classic libpcap capture files (Ethernet link type): what `net_pcap` reads and writes, what
//! `wlbs filter` takes, and what the tests compare. Reads both byte orders and both the
//! microsecond and nanosecond variants; writes little-endian microsecond files.

use std::io::{self, Read, Write};

const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
const LINKTYPE_ETHERNET: u32 = 1;
/// Larger records are refused rather than allocated (a corrupt length must not exhaust memory).
const MAX_SNAPLEN: u32 = 256 * 1024;

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Capture time in nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// Length on the wire (may exceed `data.len()` for truncated captures).
    pub orig_len: u32,
    pub data: Vec<u8>,
}

impl Record {
    pub fn new(timestamp_ns: u64, data: Vec<u8>) -> Record {
        Record {
            timestamp_ns,
            orig_len: data.len() as u32,
            data,
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads a whole capture. Refuses link types other than Ethernet.
pub fn read_all<R: Read>(mut r: R) -> io::Result<Vec<Record>> {
    let mut header = [0u8; 24];
    r.read_exact(&mut header)
        .map_err(|e| invalid(format!("not a pcap file (short header: {e})")))?;
    let magic_le = u32::from_le_bytes(header[0..4].try_into().unwrap());
    let magic_be = u32::from_be_bytes(header[0..4].try_into().unwrap());
    let (big_endian, nanos) = match (magic_le, magic_be) {
        (MAGIC_MICROS, _) => (false, false),
        (MAGIC_NANOS, _) => (false, true),
        (_, MAGIC_MICROS) => (true, false),
        (_, MAGIC_NANOS) => (true, true),
        _ => {
            return Err(invalid(format!(
                "not a pcap file (magic {magic_le:#010x}; pcapng is not supported, convert with editcap -F pcap)"
            )))
        }
    };
    let u32_at = |b: &[u8], at: usize| {
        let bytes: [u8; 4] = b[at..at + 4].try_into().unwrap();
        if big_endian {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        }
    };
    let linktype = u32_at(&header, 20) & 0x0fff_ffff;
    if linktype != LINKTYPE_ETHERNET {
        return Err(invalid(format!(
            "pcap link type {linktype} is not Ethernet (1)"
        )));
    }
    let mut records = Vec::new();
    loop {
        let mut rh = [0u8; 16];
        match r.read_exact(&mut rh) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let secs = u32_at(&rh, 0) as u64;
        let frac = u32_at(&rh, 4) as u64;
        let incl = u32_at(&rh, 8);
        let orig_len = u32_at(&rh, 12);
        if incl > MAX_SNAPLEN {
            return Err(invalid(format!(
                "record {} claims {incl} bytes (corrupt file?)",
                records.len() + 1
            )));
        }
        let mut data = vec![0u8; incl as usize];
        r.read_exact(&mut data)
            .map_err(|e| invalid(format!("record {} truncated: {e}", records.len() + 1)))?;
        let timestamp_ns = secs * 1_000_000_000 + if nanos { frac } else { frac * 1000 };
        records.push(Record {
            timestamp_ns,
            orig_len,
            data,
        });
    }
    Ok(records)
}

/// Writes records as a little-endian microsecond pcap file.
pub fn write_all<W: Write>(mut w: W, records: &[Record]) -> io::Result<()> {
    let mut header = Vec::with_capacity(24);
    header.extend_from_slice(&MAGIC_MICROS.to_le_bytes());
    header.extend_from_slice(&2u16.to_le_bytes());
    header.extend_from_slice(&4u16.to_le_bytes());
    header.extend_from_slice(&0i32.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&65535u32.to_le_bytes());
    header.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    w.write_all(&header)?;
    for rec in records {
        let secs = (rec.timestamp_ns / 1_000_000_000) as u32;
        let micros = ((rec.timestamp_ns % 1_000_000_000) / 1000) as u32;
        w.write_all(&secs.to_le_bytes())?;
        w.write_all(&micros.to_le_bytes())?;
        w.write_all(&(rec.data.len() as u32).to_le_bytes())?;
        w.write_all(&rec.orig_len.max(rec.data.len() as u32).to_le_bytes())?;
        w.write_all(&rec.data)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_frames_and_times() {
        let recs = vec![
            Record::new(1_700_000_000_123_456_000, vec![1, 2, 3, 4]),
            Record::new(1_700_000_001_000_001_000, (0..=255).collect()),
        ];
        let mut buf = Vec::new();
        write_all(&mut buf, &recs).unwrap();
        assert_eq!(read_all(&buf[..]).unwrap(), recs);
    }

    #[test]
    fn big_endian_nanosecond_files_are_read() {
        let mut f = Vec::new();
        f.extend_from_slice(&MAGIC_NANOS.to_be_bytes());
        f.extend_from_slice(&[0, 2, 0, 4]);
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&65535u32.to_be_bytes());
        f.extend_from_slice(&1u32.to_be_bytes());
        f.extend_from_slice(&5u32.to_be_bytes());
        f.extend_from_slice(&7u32.to_be_bytes());
        f.extend_from_slice(&2u32.to_be_bytes());
        f.extend_from_slice(&2u32.to_be_bytes());
        f.extend_from_slice(&[0xaa, 0xbb]);
        let recs = read_all(&f[..]).unwrap();
        assert_eq!(recs, vec![Record::new(5_000_000_007, vec![0xaa, 0xbb])]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(read_all(&b"hello"[..]).is_err());
        assert!(read_all(&[0u8; 24][..]).is_err());
        let mut buf = Vec::new();
        write_all(&mut buf, &[Record::new(0, vec![9; 10])]).unwrap();
        buf.truncate(buf.len() - 3);
        assert!(read_all(&buf[..]).is_err());
        let mut huge = Vec::new();
        write_all(&mut huge, &[]).unwrap();
        huge.extend_from_slice(&[0; 8]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_all(&huge[..]).is_err());
    }
}
