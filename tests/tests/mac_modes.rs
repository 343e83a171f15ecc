//! Cluster MAC modes under real DPDK (net_pcap): ARP answered for the VIPs with the cluster
//! MAC, the host side kept from answering, every frame leaving the cluster port masked in
//! unicast mode, multicast and IGMP modes, and the named diagnostics of KB Q193598's "IP
//! address conflict". net_pcap refuses a MAC change and extra MAC filters, so it is also the
//! port on which the "cluster MAC not programmable" fallback is checked.

use std::net::Ipv4Addr;
use std::time::Duration;

use wlbs_control::pcap::{self, Record};
use wlbs_dataplane::wire::{arp, EthernetAddress};
use wlbs_tests::Appliance;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 2];
const UNICAST_MAC: [u8; 6] = [0x02, 0xbf, 192, 0, 2, 10];
const MULTICAST_MAC: [u8; 6] = [0x03, 0xbf, 192, 0, 2, 10];
const IGMP_MAC: [u8; 6] = [0x01, 0x00, 0x5e, 0x7f, 2, 10];
/// Host 2's masked source in unicast mode.
const MASKED: [u8; 6] = [0x02, 0x02, 192, 0, 2, 10];
const BROADCAST: [u8; 6] = [0xff; 6];

fn config(extra_cluster: &str) -> String {
    format!(
        r#"
[dataplane]
cluster_port = "net_pcap0"
host_port = "net_pcap1"

[cluster]
ip = "192.0.2.10"
vips = ["192.0.2.20"]
members = [1, 2]
{extra_cluster}

[host]
priority = 2
dedicated_ip = "192.0.2.12"
"#
    )
}

/// An ARP frame: `op` 1 request, 2 reply.
fn arp_frame(
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa.octets());
    f.resize(60, 0);
    f
}

fn who_has(target: Ipv4Addr) -> Vec<u8> {
    arp_frame(
        CLIENT_MAC,
        BROADCAST,
        1,
        CLIENT_MAC,
        Ipv4Addr::new(192, 0, 2, 100),
        [0; 6],
        target,
    )
}

/// An IPv4/UDP frame from `src_mac`.
fn udp_from(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = wlbs_tests::udp_frame(src_mac, dst_mac, 1, 18);
    f[26..30].copy_from_slice(&src.octets());
    f[30..34].copy_from_slice(&dst.octets());
    f[24..26].copy_from_slice(&[0, 0]);
    let sum = wlbs_tests::ipv4_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f
}

struct Run {
    stderr: String,
    cluster_out: Vec<Record>,
    host_out: Vec<Record>,
    query: Option<serde_json::Value>,
}

/// One appliance: `cluster_in` arrives on the cluster port, `host_in` on the host port; it
/// runs for `ms`, answers a `query --json`, and stops on SIGINT.
fn run(name: &str, config: &str, cluster_in: &[Vec<u8>], host_in: &[Vec<u8>], ms: u64) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let eal = wlbs_tests::pcap_ports(dir.path(), cluster_in, host_in, false);
    let mut app = Appliance::start(name, config, &eal);
    assert!(
        app.wait_for("forwarding:", Duration::from_secs(30)),
        "{}",
        app.stderr()
    );
    std::thread::sleep(Duration::from_millis(ms));
    let (code, out, _) = app.verb("query", &["--json"]);
    let query = (code == Some(0)).then(|| serde_json::from_str::<serde_json::Value>(&out).unwrap());
    let (exit, _) = app.stop_with(libc::SIGINT, Duration::from_secs(10));
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    let read = |n: &str| pcap::read_all(std::fs::File::open(dir.path().join(n)).unwrap()).unwrap();
    Run {
        stderr: exit.stderr,
        cluster_out: read("cluster-out.pcap"),
        host_out: read("host-out.pcap"),
        query,
    }
}

fn arp_of(r: &Record) -> Option<arp::Repr> {
    if r.data.get(12..14) != Some(&[0x08, 0x06][..]) {
        return None;
    }
    arp::Repr::parse(&arp::Packet::new_checked(&r.data[14..]).ok()?).ok()
}

fn eth_src(r: &Record) -> [u8; 6] {
    r.data[6..12].try_into().unwrap()
}

fn eth_dst(r: &Record) -> [u8; 6] {
    r.data[0..6].try_into().unwrap()
}

#[test]
fn unicast_answers_arp_for_the_vips_keeps_the_host_quiet_and_masks_every_frame() {
    let vip = Ipv4Addr::new(192, 0, 2, 10);
    let vip2 = Ipv4Addr::new(192, 0, 2, 20);
    let dedicated = Ipv4Addr::new(192, 0, 2, 12);
    let client = Ipv4Addr::new(192, 0, 2, 100);
    let cluster_in = [who_has(vip), who_has(dedicated), who_has(vip2)];
    let host_in = [
        // The server answers for the VIP itself (it holds it on lo): must not leak.
        arp_frame(
            SERVER_MAC, CLIENT_MAC, 2, SERVER_MAC, vip, CLIENT_MAC, client,
        ),
        // The server asks for the client from its own address: passes, masked.
        arp_frame(
            SERVER_MAC, BROADCAST, 1, SERVER_MAC, dedicated, [0; 6], client,
        ),
        udp_from(SERVER_MAC, CLIENT_MAC, vip, client),
    ];
    let run = run("mac-unicast", &config(""), &cluster_in, &host_in, 500);

    // net_pcap takes neither a new MAC nor an extra filter: the fallback, named.
    assert!(
        run.stderr.contains(
            "unicast cluster MAC 02:bf:c0:00:02:0a received by promiscuous mode (fallback); as the port's MAC address refused: rte_eth_dev_default_mac_addr_set failed"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("cluster MAC not programmable")
            && run.stderr.contains("KB Q193598")
            && run.stderr.contains("cause 3")
            && run.stderr.contains("multicast mode"),
        "{}",
        run.stderr
    );
    let q = run.query.expect("query answered");
    assert_eq!(
        q["data"]["diagnostic_counts"]["mac_not_programmable"], 1,
        "{q}"
    );

    // Every frame leaving the cluster port carries the masked source.
    assert!(!run.cluster_out.is_empty());
    for r in &run.cluster_out {
        assert_eq!(
            eth_src(r),
            MASKED,
            "unmasked frame on the cluster port: {:02x?}",
            &r.data[..14]
        );
    }
    let arps: Vec<arp::Repr> = run.cluster_out.iter().filter_map(arp_of).collect();
    // Answers to the two VIP requests: the cluster MAC for the VIP, to the requester.
    for v in [vip, vip2] {
        let answer = arps
            .iter()
            .find(|a| a.operation == arp::Operation::REPLY && a.source_protocol_addr == v)
            .unwrap_or_else(|| panic!("no ARP reply for {v}: {arps:?}"));
        assert_eq!(answer.source_hardware_addr, EthernetAddress(UNICAST_MAC));
        assert_eq!(answer.target_protocol_addr, client);
        assert_eq!(answer.target_hardware_addr, EthernetAddress(CLIENT_MAC));
        // And a gratuitous ARP at start.
        assert!(
            arps.iter().any(|a| a.is_gratuitous()
                && a.source_protocol_addr == v
                && a.source_hardware_addr == EthernetAddress(UNICAST_MAC)),
            "no gratuitous ARP for {v}: {arps:?}"
        );
    }
    // The server's own answer for the VIP never leaves; its request does.
    assert!(!arps
        .iter()
        .any(|a| a.source_hardware_addr == EthernetAddress(SERVER_MAC)
            && a.source_protocol_addr == vip));
    assert!(arps
        .iter()
        .any(|a| a.operation == arp::Operation::REQUEST && a.source_protocol_addr == dedicated));
    assert!(run
        .cluster_out
        .iter()
        .any(|r| r.data.get(12..14) == Some(&[0x08, 0x00][..])));

    // The host side sees the request for its dedicated IP, not those for the VIPs.
    let host_arps: Vec<arp::Repr> = run.host_out.iter().filter_map(arp_of).collect();
    assert_eq!(host_arps.len(), 1, "{host_arps:?}");
    assert_eq!(host_arps[0].target_protocol_addr, dedicated);
}

#[test]
fn multicast_mode_maps_the_vip_to_the_multicast_mac_and_heartbeats_go_to_it() {
    let vip = Ipv4Addr::new(192, 0, 2, 10);
    let cfg =
        config("mode = \"multicast\"").replace("members = [1, 2]\n", "heartbeat_period_ms = 100\n");
    let run = run("mac-multicast", &cfg, &[who_has(vip)], &[], 500);
    assert!(
        run.stderr
            .contains("multicast cluster MAC 03:bf:c0:00:02:0a received"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("not programmable"), "{}", run.stderr);
    let answer = run
        .cluster_out
        .iter()
        .filter_map(arp_of)
        .find(|a| a.operation == arp::Operation::REPLY)
        .expect("an ARP reply");
    assert_eq!(answer.source_hardware_addr, EthernetAddress(MULTICAST_MAC));
    // A multicast MAC is never a source: the frames carry the port's own MAC.
    let heartbeats: Vec<&Record> = run
        .cluster_out
        .iter()
        .filter(|r| r.data.get(12..14) == Some(&[0x88, 0x6f][..]))
        .collect();
    assert!(!heartbeats.is_empty());
    for r in run.cluster_out.iter() {
        assert_eq!(eth_src(r)[0] & 1, 0, "multicast source");
        assert_ne!(eth_src(r), MULTICAST_MAC);
    }
    for h in heartbeats {
        assert_eq!(
            eth_dst(h),
            MULTICAST_MAC,
            "heartbeats go to the cluster MAC"
        );
    }
}

/// The IGMP messages in a capture: (type, group, destination IP).
fn igmp(records: &[Record]) -> Vec<(u8, Ipv4Addr, Ipv4Addr, [u8; 6])> {
    records
        .iter()
        .filter(|r| r.data.get(12..14) == Some(&[0x08, 0x00][..]) && r.data.get(23) == Some(&2))
        .map(|r| {
            let ihl = (r.data[14] & 0x0f) as usize * 4;
            let igmp = &r.data[14 + ihl..];
            let dst = Ipv4Addr::new(r.data[30], r.data[31], r.data[32], r.data[33]);
            let group = Ipv4Addr::new(igmp[4], igmp[5], igmp[6], igmp[7]);
            (igmp[0], group, dst, eth_dst(r))
        })
        .collect()
}

#[test]
fn igmp_mode_joins_239_255_c_d_at_start_and_leaves_at_stop() {
    let group = Ipv4Addr::new(239, 255, 2, 10);
    let run = run("mac-igmp", &config("mode = \"igmp\""), &[], &[], 300);
    assert!(
        run.stderr
            .contains("igmp cluster MAC 01:00:5e:7f:02:0a received"),
        "{}",
        run.stderr
    );
    let msgs = igmp(&run.cluster_out);
    assert!(
        msgs.contains(&(0x16, group, group, IGMP_MAC)),
        "no IGMPv2 report for {group}: {msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.0 == 0x17 && m.1 == group && m.2 == Ipv4Addr::new(224, 0, 0, 2)),
        "no leave at stop: {msgs:?}"
    );
    // IGMPv1: a v1 report, and no leave (v1 has none).
    let v1 = run_v1();
    assert!(v1.iter().any(|m| m.0 == 0x12 && m.1 == group), "{v1:?}");
    assert!(!v1.iter().any(|m| m.0 == 0x17), "{v1:?}");
}

fn run_v1() -> Vec<(u8, Ipv4Addr, Ipv4Addr, [u8; 6])> {
    let r = run(
        "mac-igmp-v1",
        &config("mode = \"igmp\"\nigmp_version = 1"),
        &[],
        &[],
        300,
    );
    igmp(&r.cluster_out)
}

#[test]
fn a_leaked_cluster_mac_and_a_stranger_claiming_the_vip_are_named() {
    let vip = Ipv4Addr::new(192, 0, 2, 10);
    let stranger = [0x02, 0, 0, 0, 0, 0x99];
    let cluster_in = [
        // Someone sends with the cluster MAC as its source (the switch learns it).
        udp_from(
            UNICAST_MAC,
            CLIENT_MAC,
            Ipv4Addr::new(192, 0, 2, 50),
            Ipv4Addr::new(192, 0, 2, 100),
        ),
        // A machine outside the cluster claims the VIP.
        arp_frame(stranger, BROADCAST, 2, stranger, vip, [0xff; 6], vip),
    ];
    let run = run("mac-diagnostics", &config(""), &cluster_in, &[], 500);
    assert!(
        run.stderr.contains("cluster MAC leaked")
            && run.stderr.contains("192.0.2.50")
            && run.stderr.contains("Q258609"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("IP address conflict") && run.stderr.contains("02:00:00:00:00:99"),
        "{}",
        run.stderr
    );
    let q = run.query.expect("query answered");
    let counts = &q["data"]["diagnostic_counts"];
    assert_eq!(counts["cluster_mac_leaked"], 1, "{q}");
    assert_eq!(counts["ip_address_conflict"], 1, "{q}");
    let text = q["text"].as_str().unwrap();
    assert!(text.contains("diagnostic: IP address conflict"), "{text}");
}

#[test]
fn a_peer_with_another_cluster_ip_mac_or_mode_is_refused_with_kb_q193598s_cause() {
    let ours = config("heartbeat_period_ms = 100").replace("members = [1, 2]\n", "");
    let peer = |from: &str, to: &str| {
        ours.replace("priority = 2", "priority = 3")
            .replace(
                "dedicated_ip = \"192.0.2.12\"",
                "dedicated_ip = \"192.0.2.13\"",
            )
            .replace(from, to)
    };
    for (name, peer_config, field, diagnosis, kind) in [
        (
            "ip",
            peer("ip = \"192.0.2.10\"", "ip = \"192.0.2.11\""),
            "cluster IP 192.0.2.10 here, 192.0.2.11 there",
            "KB Q193598, cause 1",
            "cluster_ip_mismatch",
        ),
        (
            "mac",
            peer(
                "heartbeat_period_ms = 100",
                "heartbeat_period_ms = 100\nmac = \"02:bf:c0:00:02:0b\"",
            ),
            "cluster MAC 02:bf:c0:00:02:0a here, 02:bf:c0:00:02:0b there",
            "KB Q193598, cause 2",
            "cluster_ip_mismatch",
        ),
        (
            "mode",
            peer(
                "heartbeat_period_ms = 100",
                "heartbeat_period_ms = 100\nmode = \"multicast\"",
            ),
            "cluster mode unicast here, multicast there",
            "mode mismatch",
            "mode_mismatch",
        ),
    ] {
        let (frames, _) =
            wlbs_tests::peer_frames(&peer_config, EthernetAddress([0x02, 3, 192, 0, 2, 10]));
        let run = run(&format!("mac-peer-{name}"), &ours, &frames, &[], 400);
        let refused = run
            .stderr
            .lines()
            .find(|l| {
                l.contains(
                    "host 3 (web-3, 192.0.2.13, 02:03:c0:00:02:0a) refused: configuration differs",
                )
            })
            .unwrap_or_else(|| panic!("{name}: no refusal naming host 3: {}", run.stderr));
        assert!(refused.contains(field), "{name}: {refused}");
        assert!(refused.contains(diagnosis), "{name}: {refused}");
        let q = run.query.expect("query answered");
        assert!(
            q["data"]["diagnostic_counts"][kind].as_u64() >= Some(1),
            "{name}: {q}"
        );
        let host3 = q["data"]["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["priority"] == 3)
            .unwrap_or_else(|| panic!("{name}: query does not list host 3: {q}"));
        assert!(
            host3["refused"].as_str().is_some_and(|r| r.contains(field)),
            "{name}: {host3}"
        );
    }
}

/// A neighbour solicitation from the client for `target`, to its solicited-node group.
fn solicitation(target: std::net::Ipv6Addr) -> Vec<u8> {
    use wlbs_dataplane::wire::{icmpv6, ipv6, IpProtocol};
    let client: std::net::Ipv6Addr = "2001:db8::64".parse().unwrap();
    let o = target.octets();
    let group = std::net::Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | o[13] as u16,
        u16::from_be_bytes([o[14], o[15]]),
    );
    let message = icmpv6::Repr::NeighborSolicit {
        target_addr: target,
        source_lladdr: Some(EthernetAddress(CLIENT_MAC)),
    };
    let ip = ipv6::Repr {
        src_addr: client,
        dst_addr: group,
        next_header: IpProtocol::ICMPV6,
        payload_len: message.buffer_len(),
        hop_limit: 255,
        traffic_class: 0,
        flow_label: 0,
    };
    let mut f = vec![0u8; 14 + ip.buffer_len()];
    let g = group.octets();
    f[0..6].copy_from_slice(&[0x33, 0x33, g[12], g[13], g[14], g[15]]);
    f[6..12].copy_from_slice(&CLIENT_MAC);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    ip.emit(&mut ipv6::Packet::new_unchecked(&mut f[14..]));
    message.emit(
        &mut icmpv6::Packet::new_unchecked(&mut f[14 + ipv6::HEADER_LEN..]),
        &ip.pseudo_header(),
    );
    f
}

#[test]
fn an_ipv6_vip_gets_neighbour_advertisements_with_the_cluster_mac() {
    use wlbs_dataplane::wire::{icmpv6, ipv6};
    let vip6: std::net::Ipv6Addr = "2001:db8::10".parse().unwrap();
    let cfg = config("").replace(
        "vips = [\"192.0.2.20\"]",
        "vips = [\"192.0.2.20\", \"2001:db8::10\"]",
    );
    let run = run("mac-ipv6", &cfg, &[solicitation(vip6)], &[], 400);
    let adverts: Vec<(bool, EthernetAddress, [u8; 6])> = run
        .cluster_out
        .iter()
        .filter(|r| r.data.get(12..14) == Some(&[0x86, 0xdd][..]))
        .filter_map(|r| {
            let ip = ipv6::Packet::new_checked(&r.data[14..]).ok()?;
            let ip_repr = ipv6::Repr::parse(&ip).ok()?;
            let icmp = icmpv6::Packet::new_checked(ip.payload()).ok()?;
            match icmpv6::Repr::parse(&icmp, &ip_repr.pseudo_header()).ok()? {
                icmpv6::Repr::NeighborAdvert {
                    solicited_flag,
                    target_addr,
                    target_lladdr: Some(mac),
                    ..
                } if target_addr == vip6 => Some((solicited_flag, mac, eth_src(r))),
                _ => None,
            }
        })
        .collect();
    // One unsolicited advertisement at start, one in answer to the solicitation; the cluster
    // MAC as the target's link-layer address, the masked MAC as the frame's source.
    assert!(
        adverts.iter().any(|(solicited, _, _)| !solicited),
        "{adverts:?}"
    );
    assert!(
        adverts.iter().any(|(solicited, _, _)| *solicited),
        "{adverts:?}"
    );
    for (_, mac, src) in &adverts {
        assert_eq!(*mac, EthernetAddress(UNICAST_MAC));
        assert_eq!(*src, MASKED);
    }
    // The solicitation for the VIP is answered here, not passed to the host side.
    assert!(
        !run.host_out
            .iter()
            .any(|r| r.data.get(12..14) == Some(&[0x86, 0xdd][..])),
        "the host side saw the solicitation"
    );
}
