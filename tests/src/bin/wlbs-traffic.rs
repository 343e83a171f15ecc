//! Writes benchmark traffic as a pcap file: a realistic mix of flows to the cluster IP, chosen
//! with the real bucket hash and assignment so that a given host owns all of them (its accept
//! path) or none of them (its drop path).
//!
//! Each flow is TCP (a SYN, then a data segment) with probability 0.6, else one UDP datagram;
//! every frame is 60 bytes (64 on the wire). Clients come from 198.51.100.0/24 and
//! 203.0.113.0/24 with pseudo-random ports.
//!
//! ```text
//! wlbs-traffic --config FILE --host P --select owned|not-owned|any --flows N --out FILE.pcap
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use wlbs_control::cluster::ClusterView;
use wlbs_control::config::Config;
use wlbs_control::pcap::{self, Record};
use wlbs_dataplane::filter::hash;

struct Args {
    config: PathBuf,
    host: u8,
    select: String,
    flows: usize,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let (mut config, mut host, mut select, mut flows, mut out) = (None, None, None, None, None);
    while let Some(a) = it.next() {
        let mut v = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--config" => config = Some(PathBuf::from(v()?)),
            "--host" => host = Some(v()?.parse()?),
            "--select" => select = Some(v()?),
            "--flows" => flows = Some(v()?.parse()?),
            "--out" => out = Some(PathBuf::from(v()?)),
            _ => bail!("unknown argument {a}; usage: --config FILE --host P --select owned|not-owned|any --flows N --out FILE"),
        }
    }
    Ok(Args {
        config: config.context("--config is required")?,
        host: host.context("--host is required")?,
        select: select.unwrap_or_else(|| "any".into()),
        flows: flows.context("--flows is required")?,
        out: out.context("--out is required")?,
    })
}

fn frame(
    cluster_mac: [u8; 6],
    client: Ipv4Addr,
    vip: Ipv4Addr,
    cport: u16,
    sport: u16,
    l4: L4,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&cluster_mac);
    f.extend_from_slice(&[0x02, 0x00, 0x5e, 0x00, 0x53, 0x01]);
    f.extend_from_slice(&[0x08, 0x00]);
    let (proto, l4_bytes) = match l4 {
        L4::Tcp { flags } => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&cport.to_be_bytes());
            t[2..4].copy_from_slice(&sport.to_be_bytes());
            t[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
            t[12] = 0x50;
            t[13] = flags;
            t[14..16].copy_from_slice(&64240u16.to_be_bytes());
            (6u8, t)
        }
        L4::Udp => {
            let mut u = vec![0u8; 8 + 18];
            u[0..2].copy_from_slice(&cport.to_be_bytes());
            u[2..4].copy_from_slice(&sport.to_be_bytes());
            u[4..6].copy_from_slice(&26u16.to_be_bytes());
            (17u8, u)
        }
    };
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4_bytes.len()) as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&client.octets());
    ip[16..20].copy_from_slice(&vip.octets());
    let sum = wlbs_tests::ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4_bytes);
    f.resize(60, 0);
    f
}

#[derive(Clone, Copy)]
enum L4 {
    Tcp { flags: u8 },
    Udp,
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let config = Config::load(&args.config)?;
    let Some(mut view) = ClusterView::from_config(&config) else {
        bail!("{} has no [cluster]", args.config.display());
    };
    view.priority = args.host;
    let members = view.static_members(&config);
    let (table, assignment) = view.table(&members, None, 1);
    let vip = view.spec.cluster_ip;
    let o = vip.octets();
    let cluster_mac = [0x02, 0xbf, o[0], o[1], o[2], o[3]];
    let rules = config.effective_port_rules();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut records = Vec::new();
    // Each flow once: a repeated 5-tuple would be one descriptor, not two.
    let mut seen = std::collections::HashSet::new();
    let mut flows = 0usize;
    let mut tries = 0usize;
    while flows < args.flows {
        tries += 1;
        if tries > args.flows * 1000 + 1_000_000 {
            bail!(
                "could not find {} flows for --select {}",
                args.flows,
                args.select
            );
        }
        let r = next();
        let client = if r & 1 == 0 {
            Ipv4Addr::new(198, 51, 100, (r >> 8) as u8)
        } else {
            Ipv4Addr::new(203, 0, 113, (r >> 8) as u8)
        };
        let cport = 1024 + ((r >> 16) as u16 % 64512);
        let tcp = (r >> 32) % 10 < 6;
        let sport = if tcp { 80 } else { 53 };
        let rule = rules
            .iter()
            .position(|ru| {
                ru.ports.first <= sport
                    && sport <= ru.ports.last
                    && if tcp {
                        ru.protocol().covers_tcp()
                    } else {
                        ru.protocol().covers_udp()
                    }
            })
            .context("no port rule covers TCP 80 / UDP 53")?;
        let affinity = view.spec.rules[rule].affinity;
        let bucket = hash::bucket(table.seed, affinity, IpAddr::V4(client), cport, sport);
        let owner = assignment.rules[rule].owners[bucket as usize];
        let keep = match args.select.as_str() {
            "owned" => owner == args.host,
            "not-owned" => owner != args.host,
            "any" => true,
            s => bail!("--select {s}: owned, not-owned or any"),
        };
        if !keep || !seen.insert((client, cport, tcp)) {
            continue;
        }
        let at = 1_700_000_000_000_000_000 + records.len() as u64 * 1000;
        if tcp {
            records.push(Record::new(
                at,
                frame(
                    cluster_mac,
                    client,
                    vip,
                    cport,
                    sport,
                    L4::Tcp { flags: 0x02 },
                ),
            ));
            records.push(Record::new(
                at + 500,
                frame(
                    cluster_mac,
                    client,
                    vip,
                    cport,
                    sport,
                    L4::Tcp { flags: 0x18 },
                ),
            ));
        } else {
            records.push(Record::new(
                at,
                frame(cluster_mac, client, vip, cport, sport, L4::Udp),
            ));
        }
        flows += 1;
    }
    let out = std::fs::File::create(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    pcap::write_all(std::io::BufWriter::new(out), &records)?;
    eprintln!(
        "wlbs-traffic: {} flows, {} frames ({}) for host {} of {:?}",
        flows,
        records.len(),
        args.select,
        args.host,
        members.iter().map(|m| m.priority).collect::<Vec<_>>()
    );
    Ok(())
}
