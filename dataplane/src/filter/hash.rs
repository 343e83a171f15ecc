//! The bucket hash, version 1: ours, documented, identical on every host.
//!
//! A packet's *affinity input* (what its port rule's affinity says to hash) is packed into
//! 64-bit words; the words are folded into a 64-bit state with MurmurHash3's `fmix64`
//! finaliser, starting from a seed derived from the primary cluster IP; the bucket is the high
//! half of the state scaled onto 0..60 (Lemire's multiply-shift, no modulo bias worth naming).
//!
//! ```text
//! seed      = fmix64(0x776c_6273_5f76_3121 ^ cluster_ip_as_u32)      ("wlbs_v1!")
//! kind      = 1 (affinity none) | 2 (single) | 3 (network)
//! IPv4:  w0 = kind << 56 | 4 << 48
//!        w1 = addr << 32 | client_port << 16 | server_port
//! IPv6:  w0 = kind << 56 | 6 << 48 | client_port << 16 | server_port
//!        w1 = high 64 bits of addr,  w2 = low 64 bits of addr
//! affinity none:    addr = client address, both ports as they are
//! affinity single:  addr = client address, ports 0
//! affinity network: addr = client /24 (IPv4) or /56 (IPv6), ports 0
//! h = seed; for each word w: h = fmix64(h ^ w)
//! bucket = ((h >> 32) * 60) >> 32
//! ```
//!
//! `scripts/hash-reference.py` implements the same from this text alone; the test vectors in
//! `hash_vectors.txt` come from it and are checked here.

use std::net::Ipv4Addr;

/// Buckets per port rule.
pub const BUCKETS: usize = 60;

/// What the bucket hash takes from a packet, by the rule's affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Affinity {
    /// Client address and port, plus the server port: connections spread individually.
    None,
    /// Client address: all connections of one client go to one host.
    Single,
    /// Client /24 (IPv6: /56): clients behind a proxy farm stay on one host.
    Network,
}

impl Affinity {
    /// The configuration's word: `none`, `single`, `network`.
    pub fn name(self) -> &'static str {
        match self {
            Affinity::None => "none",
            Affinity::Single => "single",
            Affinity::Network => "network",
        }
    }

    fn kind(self) -> u64 {
        match self {
            Affinity::None => 1,
            Affinity::Single => 2,
            Affinity::Network => 3,
        }
    }
}

#[inline(always)]
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The hash seed every host derives from the primary cluster IP.
pub fn seed(cluster_ip: Ipv4Addr) -> u64 {
    fmix64(0x776c_6273_5f76_3121 ^ u32::from(cluster_ip) as u64)
}

#[inline(always)]
fn to_bucket(h: u64) -> u8 {
    (((h >> 32) * BUCKETS as u64) >> 32) as u8
}

/// Bucket of an IPv4 client.
#[inline]
pub fn bucket_v4(
    seed: u64,
    affinity: Affinity,
    client: u32,
    client_port: u16,
    server_port: u16,
) -> u8 {
    bucket_v4_after(
        v4_prefix(seed, affinity),
        affinity,
        client,
        client_port,
        server_port,
    )
}

/// The part of the IPv4 hash that depends only on the seed and the affinity: `fmix64(seed ^
/// w0)`. The filter table keeps it per rule, so a packet costs one `fmix64`.
#[inline]
pub fn v4_prefix(seed: u64, affinity: Affinity) -> u64 {
    fmix64(seed ^ (affinity.kind() << 56 | 4 << 48))
}

/// [`bucket_v4`] from a precomputed [`v4_prefix`].
#[inline(always)]
pub fn bucket_v4_after(
    prefix: u64,
    affinity: Affinity,
    client: u32,
    client_port: u16,
    server_port: u16,
) -> u8 {
    let (addr, cport, sport) = match affinity {
        Affinity::None => (client, client_port, server_port),
        Affinity::Single => (client, 0, 0),
        Affinity::Network => (client & 0xffff_ff00, 0, 0),
    };
    let w1 = (addr as u64) << 32 | (cport as u64) << 16 | sport as u64;
    to_bucket(fmix64(prefix ^ w1))
}

/// Bucket of an IPv6 client.
#[inline]
pub fn bucket_v6(
    seed: u64,
    affinity: Affinity,
    client: u128,
    client_port: u16,
    server_port: u16,
) -> u8 {
    let (addr, cport, sport) = match affinity {
        Affinity::None => (client, client_port, server_port),
        Affinity::Single => (client, 0, 0),
        Affinity::Network => (client & !((1u128 << 72) - 1), 0, 0),
    };
    let w0 = affinity.kind() << 56 | 6 << 48 | (cport as u64) << 16 | sport as u64;
    let h = fmix64(seed ^ w0);
    let h = fmix64(h ^ (addr >> 64) as u64);
    to_bucket(fmix64(h ^ addr as u64))
}

/// Convenience for tools and tests: the bucket of any client address.
pub fn bucket(
    seed: u64,
    affinity: Affinity,
    client: std::net::IpAddr,
    client_port: u16,
    server_port: u16,
) -> u8 {
    match client {
        std::net::IpAddr::V4(a) => bucket_v4(seed, affinity, a.into(), client_port, server_port),
        std::net::IpAddr::V6(a) => {
            bucket_v6(seed, affinity, u128::from(a), client_port, server_port)
        }
    }
}

/// The committed test vectors, for tests elsewhere (e.g. the control plane's).
pub const TEST_VECTORS: &str = include_str!("hash_vectors.txt");

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    /// Parses one line of `hash_vectors.txt`:
    /// `cluster_ip affinity client client_port server_port bucket`.
    fn parse_vector(line: &str) -> Option<(Ipv4Addr, Affinity, std::net::IpAddr, u16, u16, u8)> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 6 {
            return None;
        }
        let affinity = match f[1] {
            "none" => Affinity::None,
            "single" => Affinity::Single,
            "network" => Affinity::Network,
            _ => return None,
        };
        Some((
            f[0].parse().ok()?,
            affinity,
            f[2].parse().ok()?,
            f[3].parse().ok()?,
            f[4].parse().ok()?,
            f[5].parse().ok()?,
        ))
    }

    #[test]
    fn committed_test_vectors_hold() {
        let mut n = 0;
        for line in TEST_VECTORS.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (cluster, affinity, client, cport, sport, want) =
                parse_vector(line).unwrap_or_else(|| panic!("bad vector line {line:?}"));
            assert_eq!(
                bucket(seed(cluster), affinity, client, cport, sport),
                want,
                "{line}"
            );
            n += 1;
        }
        assert!(n >= 40, "only {n} vectors");
    }

    #[test]
    fn affinity_decides_what_counts() {
        let s = seed(Ipv4Addr::new(192, 0, 2, 10));
        let a = u32::from(Ipv4Addr::new(198, 51, 100, 7));
        let b = u32::from(Ipv4Addr::new(198, 51, 100, 200));
        // single: ports never matter
        for p in [1u16, 80, 65535] {
            assert_eq!(
                bucket_v4(s, Affinity::Single, a, p, 80),
                bucket_v4(s, Affinity::Single, a, 4242, 443)
            );
        }
        // network: the whole /24 agrees
        assert_eq!(
            bucket_v4(s, Affinity::Network, a, 1, 80),
            bucket_v4(s, Affinity::Network, b, 2, 443)
        );
        // none: some client port moves the bucket
        let base = bucket_v4(s, Affinity::None, a, 1000, 80);
        assert!((1001..1100).any(|p| bucket_v4(s, Affinity::None, a, p, 80) != base));
    }

    #[test]
    fn ipv6_network_affinity_is_slash_56() {
        let s = seed(Ipv4Addr::new(192, 0, 2, 10));
        let a: Ipv6Addr = "2001:db8:0:1200::1".parse().unwrap();
        let same56: Ipv6Addr = "2001:db8:0:12ff:ffff::9".parse().unwrap();
        let other56: Ipv6Addr = "2001:db8:0:1300::1".parse().unwrap();
        let b = |x: Ipv6Addr| bucket_v6(s, Affinity::Network, u128::from(x), 0, 0);
        assert_eq!(b(a), b(same56));
        let others: Vec<u8> = (0..64u128)
            .map(|i| bucket_v6(s, Affinity::Network, u128::from(other56) + (i << 72), 0, 0))
            .collect();
        assert!(others.iter().any(|&x| x != b(a)));
    }

    #[test]
    fn buckets_are_spread_evenly() {
        let s = seed(Ipv4Addr::new(203, 0, 113, 5));
        let mut counts = [0u32; BUCKETS];
        for i in 0..60_000u32 {
            let client = 0xc633_6400 | (i % 256);
            counts[bucket_v4(s, Affinity::None, client, (i / 256) as u16 + 1024, 80) as usize] += 1;
        }
        // 1,000 expected per bucket; a fair hash stays well within +-20%.
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn seed_depends_on_cluster_ip() {
        assert_ne!(
            seed(Ipv4Addr::new(192, 0, 2, 10)),
            seed(Ipv4Addr::new(192, 0, 2, 11))
        );
    }
}
