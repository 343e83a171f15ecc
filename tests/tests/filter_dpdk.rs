//! The filter under real DPDK: three `wlbs run` processes (static members 1, 2, 3) read the
//! same capture through `net_pcap`; together they must take every VIP frame exactly once, and
//! each must pass the non-VIP frames.

use std::collections::HashMap;
use std::time::Duration;

use wlbs_control::pcap::{self, Record};
use wlbs_tests::Appliance;

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Ethernet/IPv4 frame to the cluster MAC with a TCP SYN or a UDP datagram.
fn frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, tcp: bool, seq: u16) -> Vec<u8> {
    let l4: Vec<u8> = if tcp {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 0x50;
        t[13] = 0x02;
        t
    } else {
        let mut u = vec![0u8; 8 + 10];
        u[0..2].copy_from_slice(&sport.to_be_bytes());
        u[2..4].copy_from_slice(&dport.to_be_bytes());
        u[4..6].copy_from_slice(&18u16.to_be_bytes());
        u
    };
    let mut ip = vec![
        0x45,
        0,
        0,
        0,
        0,
        0,
        0x40,
        0,
        64,
        if tcp { 6 } else { 17 },
        0,
        0,
    ];
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&seq.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut f = vec![
        0x02, 0xbf, 192, 0, 2, 10, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00,
    ];
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4);
    f
}

/// A UDP datagram to the VIP (port 5000 + `id`) cut into three IPv4 fragments, last first:
/// the appliance must hold the later ones until the first decides.
fn fragments_last_first(src: [u8; 4], id: u16) -> Vec<Vec<u8>> {
    let mut udp = vec![0u8; 48];
    udp[0..2].copy_from_slice(&(4000 + id).to_be_bytes());
    udp[2..4].copy_from_slice(&(5000 + id % 1000).to_be_bytes());
    udp[4..6].copy_from_slice(&48u16.to_be_bytes());
    let pieces = [(0usize, 24usize, true), (24, 16, true), (40, 8, false)];
    let mut out: Vec<Vec<u8>> = pieces
        .iter()
        .map(|&(off, len, more)| {
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
            ip[2..4].copy_from_slice(&((20 + len) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&(0x8000 | id).to_be_bytes());
            let frag = (off / 8) as u16 | if more { 0x2000 } else { 0 };
            ip[6..8].copy_from_slice(&frag.to_be_bytes());
            ip.extend_from_slice(&src);
            ip.extend_from_slice(&[192, 0, 2, 10]);
            let sum = checksum(&ip);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            let mut f = vec![
                0x02, 0xbf, 192, 0, 2, 10, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00,
            ];
            f.extend_from_slice(&ip);
            f.extend_from_slice(&udp[off..off + len]);
            f.resize(f.len().max(60), 0);
            f
        })
        .collect();
    out.reverse();
    out
}

const CONFIG: &str = r#"
[dataplane]
cluster_port = "net_pcap0"
host_port = "net_pcap1"

[cluster]
ip = "192.0.2.10"
members = [1, 2, 3]

[host]
priority = PRIORITY
dedicated_ip = "192.0.2.1PRIORITY"

[[port_rule]]
ports = "80"
protocol = "tcp"
affinity = "none"

[[port_rule]]
ports = "5000-5999"
protocol = "udp"
affinity = "single"
"#;

#[test]
fn three_hosts_partition_vip_frames_and_all_pass_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let mut frames = Vec::new();
    let mut vip = Vec::new();
    for i in 0..600u32 {
        let client = [198, 51, 100, (i % 250) as u8 + 1];
        let tcp = i % 3 != 0;
        let (dst, dport) = match i % 10 {
            9 => ([192, 0, 2, 12], 22),  // host 2's dedicated IP: passes everywhere
            8 => ([203, 0, 113, 9], 80), // not a VIP: passes everywhere
            7 => ([192, 0, 2, 10], 443), // VIP, no rule: the default host (1)
            _ if tcp => ([192, 0, 2, 10], 80), // rule 1
            _ => ([192, 0, 2, 10], 5000 + i as u16 % 1000), // rule 2
        };
        let f = frame(client, dst, 1024 + (i * 7) as u16, dport, tcp, i as u16);
        vip.push(dst == [192, 0, 2, 10]);
        frames.push(Record::new(1_700_000_000_000_000_000 + i as u64 * 1000, f));
        if i % 20 == 5 {
            for f in fragments_last_first([203, 0, 113, (i % 250) as u8 + 1], i as u16) {
                vip.push(true);
                frames.push(Record::new(1_700_000_000_000_000_000 + i as u64 * 1000, f));
            }
        }
    }
    pcap::write_all(std::fs::File::create(p("in.pcap")).unwrap(), &frames).unwrap();
    pcap::write_all(std::fs::File::create(p("empty.pcap")).unwrap(), &[]).unwrap();

    let mut apps = Vec::new();
    for host in 1..=3 {
        let eal = vec![
            "--vdev".to_string(),
            format!(
                "net_pcap0,rx_pcap={},tx_pcap={}",
                p("in.pcap").display(),
                p(&format!("cluster-out-{host}.pcap")).display()
            ),
            "--vdev".to_string(),
            format!(
                "net_pcap1,rx_pcap={},tx_pcap={}",
                p("empty.pcap").display(),
                p(&format!("host-out-{host}.pcap")).display()
            ),
        ];
        let config = CONFIG.replace("PRIORITY", &host.to_string());
        apps.push(Appliance::start(&format!("part{host}"), &config, &eal));
    }
    for app in apps.iter_mut() {
        assert!(
            app.wait_for("forwarding:", Duration::from_secs(30)),
            "appliance did not start:\n{}",
            app.stderr()
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    let mut outputs = Vec::new();
    for (i, app) in apps.into_iter().enumerate() {
        let (exit, _) = app.stop_with(libc::SIGINT, Duration::from_secs(10));
        assert_eq!(exit.code, Some(0), "{}", exit.stderr);
        assert!(exit
            .stderr
            .contains(&format!("host {} of static members [1, 2, 3]", i + 1)));
        let out =
            pcap::read_all(std::fs::File::open(p(&format!("host-out-{}.pcap", i + 1))).unwrap())
                .unwrap();
        outputs.push(out);
    }

    // Count, per input frame, how many hosts forwarded it.
    let mut seen: HashMap<Vec<u8>, [u32; 3]> = HashMap::new();
    for (h, out) in outputs.iter().enumerate() {
        for r in out {
            seen.entry(r.data.clone()).or_default()[h] += 1;
        }
    }
    let mut per_host = [0u32; 3];
    for (rec, is_vip) in frames.iter().zip(&vip) {
        let got = seen.get(&rec.data).copied().unwrap_or_default();
        if *is_vip {
            assert_eq!(
                got.iter().sum::<u32>(),
                1,
                "VIP frame taken by {got:?} hosts: {:02x?}",
                &rec.data[26..38]
            );
            for h in 0..3 {
                per_host[h] += got[h];
            }
        } else {
            assert_eq!(got, [1, 1, 1], "non-VIP frame must pass on every host");
        }
    }
    // Every host got a fair part of the VIP traffic (equal weights, 60 buckets).
    let total: u32 = per_host.iter().sum();
    assert_eq!(total as usize, vip.iter().filter(|v| **v).count());
    assert!(per_host.iter().all(|&n| n > total / 6), "{per_host:?}");
}
