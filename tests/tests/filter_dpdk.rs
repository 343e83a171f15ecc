//! The filter under real DPDK: three `wlbs run` processes (static members 1, 2, 3) read the
//! same capture through `net_pcap`; together they must take every VIP frame exactly once, and
//! each must pass the non-VIP frames.

use std::collections::HashMap;
use std::time::Duration;

use std::net::IpAddr;

use wlbs_control::pcap::{self, Record};
use wlbs_dataplane::wire::tcp::Flags;
use wlbs_dataplane::wire::IpProtocol;
use wlbs_tests::frames::{self, Vlan};
use wlbs_tests::Appliance;

/// Ethernet/IPv4 frame to the cluster MAC with a TCP SYN or a UDP datagram.
fn frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, tcp: bool, seq: u16) -> Vec<u8> {
    let (src, dst) = (IpAddr::from(src), IpAddr::from(dst));
    let (protocol, l4) = if tcp {
        let syn = frames::tcp_segment(src, dst, sport, dport, Flags::SYN, seq.into(), b"");
        (IpProtocol::TCP, syn)
    } else {
        let dgram = frames::udp_datagram(src, dst, sport, dport, &[0; 10]);
        (IpProtocol::UDP, dgram)
    };
    frames::ip_frame(Vlan::Untagged, &frames::ip(src, dst, protocol, seq, &l4))
}

/// A UDP datagram to the VIP (port 5000 + `id`) cut into three IPv4 fragments, last first:
/// the appliance must hold the later ones until the first decides.
fn fragments_last_first(src: [u8; 4], id: u16) -> Vec<Vec<u8>> {
    let (src, vip) = (IpAddr::from(src), IpAddr::from([192, 0, 2, 10]));
    let udp = frames::udp_datagram(src, vip, 4000 + id, 5000 + id % 1000, &[7; 40]);
    let mut out: Vec<Vec<u8>> =
        frames::fragments(src, vip, IpProtocol::UDP, 0x8000 | id as u32, &udp, 16)
            .iter()
            .map(|p| frames::ip_frame(Vlan::Untagged, p))
            .collect();
    out.reverse();
    out
}

/// EAL arguments for an appliance whose cluster port replays `in.pcap` from `dir` and whose
/// ports write `cluster-out-TAG.pcap` and `host-out-TAG.pcap` there.
fn pcap_eal(dir: &std::path::Path, tag: &str) -> Vec<String> {
    let p = |n: &str| dir.join(n).display().to_string();
    vec![
        "--vdev".to_string(),
        format!(
            "net_pcap0,rx_pcap={},tx_pcap={}",
            p("in.pcap"),
            p(&format!("cluster-out-{tag}.pcap"))
        ),
        "--vdev".to_string(),
        format!(
            "net_pcap1,rx_pcap={},tx_pcap={}",
            p("empty.pcap"),
            p(&format!("host-out-{tag}.pcap"))
        ),
    ]
}

/// Writes `frames` as `in.pcap` (and an empty host-side capture) into `dir`.
fn write_input(dir: &std::path::Path, frames: &[Vec<u8>]) {
    wlbs_tests::write_pcap(&dir.join("in.pcap"), frames);
    wlbs_tests::write_pcap(&dir.join("empty.pcap"), &[]);
}

/// One appliance replays `frames` on its cluster port; returns how it ended and what left
/// its cluster and host ports.
fn replay(
    name: &str,
    config: &str,
    frames: &[Vec<u8>],
) -> (wlbs_tests::Exit, Vec<Record>, Vec<Record>) {
    let dir = tempfile::tempdir().unwrap();
    write_input(dir.path(), frames);
    let mut app = Appliance::start(name, config, &pcap_eal(dir.path(), "1"));
    assert!(
        app.wait_for("forwarding:", Duration::from_secs(30)),
        "{}",
        app.stderr()
    );
    std::thread::sleep(Duration::from_millis(1000));
    let (exit, _) = app.stop_with(libc::SIGINT, Duration::from_secs(10));
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    let read = |n: &str| pcap::read_all(std::fs::File::open(dir.path().join(n)).unwrap()).unwrap();
    let cluster_out = read("cluster-out-1.pcap");
    let host_out = read("host-out-1.pcap");
    (exit, cluster_out, host_out)
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
        frames.push(frame(
            client,
            dst,
            1024 + (i * 7) as u16,
            dport,
            tcp,
            i as u16,
        ));
        vip.push(dst == [192, 0, 2, 10]);
        if i % 20 == 5 {
            for f in fragments_last_first([203, 0, 113, (i % 250) as u8 + 1], i as u16) {
                vip.push(true);
                frames.push(f);
            }
        }
    }
    write_input(dir.path(), &frames);

    let mut apps = Vec::new();
    for host in 1..=3 {
        let eal = pcap_eal(dir.path(), &host.to_string());
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
        let got = seen.get(rec).copied().unwrap_or_default();
        if *is_vip {
            assert_eq!(
                got.iter().sum::<u32>(),
                1,
                "VIP frame taken by {got:?} hosts: {:02x?}",
                &rec[26..38]
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

#[test]
fn heartbeats_go_to_the_control_thread_and_never_to_the_host() {
    use std::net::Ipv4Addr;
    use wlbs_control::heartbeat::{self, HeartbeatRepr, RuleState};
    use wlbs_dataplane::wire::EthernetAddress;

    let peer = |priority: u8| HeartbeatRepr {
        version: 0x0206,
        host_priority: priority,
        cluster_ip: Ipv4Addr::new(192, 0, 2, 10),
        dedicated_ip: Ipv4Addr::new(192, 0, 2, 10 + priority),
        host_id: priority as u16 - 1,
        default_host_id: 0,
        convergence_state: 0,
        unique_host_code: 7,
        packets_handled: 0,
        teaming: 0,
        rules: vec![RuleState::default(); 2],
    };
    let mut frames = Vec::new();
    for i in 0..5u8 {
        let src = EthernetAddress([0x02, 2 + i % 2, 192, 0, 2, 10]);
        frames.push(heartbeat::emit_frame(
            &peer(2 + i % 2),
            src,
            EthernetAddress::BROADCAST,
        ));
    }
    // Another Microsoft protocol on the same EtherType: counted, dropped.
    let mut other = frames[0].clone();
    other[14..18].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    frames.push(other);
    // A runt of the EtherType: malformed.
    frames.push(frames[0][..40].to_vec());
    // And ordinary traffic to a dedicated address, which passes.
    frames.push(frame([198, 51, 100, 1], [192, 0, 2, 11], 1000, 22, true, 1));
    let (exit, _, out) = replay("hb", &CONFIG.replace("PRIORITY", "1"), &frames);
    let summary = exit.summary().unwrap();
    assert!(
        summary
            .contains("control heartbeats 5, identity 0, unknown code 1, malformed 1, ring full 0"),
        "{summary}"
    );
    assert_eq!(out.len(), 1, "only the ordinary frame reaches the host");
    assert_eq!(out[0].data, frames[7]);
}

#[test]
fn with_a_cluster_key_unsigned_forged_and_replayed_heartbeats_are_refused() {
    use std::net::Ipv4Addr;
    use wlbs_control::membership::wire::{self, ClusterKey};
    use wlbs_control::membership::{HostState, Ping, RuleMaps};
    use wlbs_dataplane::wire::EthernetAddress;

    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let key_bytes = b"lab cluster key, 32 bytes long!!".to_vec();
    std::fs::write(p("cluster.key"), &key_bytes).unwrap();
    let key = ClusterKey::new(key_bytes).unwrap();
    let forger = ClusterKey::new(b"not the cluster key at all......".to_vec()).unwrap();
    let ping = Ping {
        seq: 1,
        next_config: 0,
        priority: 2,
        host_code: 99,
        dedicated_ip: Ipv4Addr::new(192, 0, 2, 12),
        config: 1,
        view: 0b10,
        heard: 0b10,
        input: 0,
        target: 0,
        state: HostState::Converging,
        default_host: None,
        draining: false,
        load_weights: vec![50, 50],
        handling_priorities: vec![0, 0],
        rules: vec![RuleMaps::default(); 2],
    };
    let frame = |auth: Option<(&ClusterKey, u64)>| {
        wire::encode(
            &ping,
            Ipv4Addr::new(192, 0, 2, 10),
            &[1, 2],
            EthernetAddress([0x02, 2, 192, 0, 2, 10]),
            EthernetAddress::BROADCAST,
            auth,
        )
    };
    let good = frame(Some((&key, 100)));
    let frames = [
        good.clone(),
        good,                        // replayed
        frame(None),                 // unsigned
        frame(Some((&forger, 101))), // forged
        frame(Some((&key, 102))),    // good again
    ];
    let config = format!(
        "[dataplane]\ncluster_port = \"net_pcap0\"\nhost_port = \"net_pcap1\"\n\
         [cluster]\nip = \"192.0.2.10\"\nkey_file = \"{}\"\n[host]\npriority = 1\n",
        p("cluster.key").display()
    );
    let (exit, out, _) = replay("auth", &config, &frames);
    let summary = exit.summary().unwrap();
    assert!(summary.contains("control heartbeats 2,"), "{summary}");
    assert!(summary.contains("refused 3"), "{summary}");
    assert!(
        exit.stderr.contains("refused: replayed heartbeat"),
        "{}",
        exit.stderr
    );
    // Our own heartbeats go out signed: the cluster port's output verifies with the key.
    let mut guard = wire::ReplayGuard::default();
    let ours: Vec<_> = out
        .iter()
        .filter(|r| r.data.get(12..14) == Some(&[0x88, 0x6f][..]))
        .collect();
    let mut heartbeats = 0;
    let mut identities = 0;
    for r in ours {
        match wire::decode(&r.data, Some((&key, &mut guard))) {
            Ok(d) => {
                assert_eq!(d.ping.priority, 1);
                heartbeats += 1;
            }
            // The identity heartbeat (host name, configuration) goes out at start, signed too.
            Err(wire::DecodeError::Identity(id)) => {
                assert_eq!(id.repr.host_priority, 1);
                assert!(id.shared.is_some());
                identities += 1
            }
            Err(e) => panic!("our heartbeat does not verify: {e}"),
        }
    }
    assert!(heartbeats > 0, "the appliance sent no heartbeat");
    assert_eq!(identities, 1, "one identity heartbeat per 10 s");
}

/// A peer whose port rule differs is refused, and the log names it and the field, with both
/// values: what the identity heartbeat's configuration TLVs are for.
#[test]
fn a_peer_with_a_different_port_rule_is_refused_and_the_field_named() {
    use wlbs_control::membership::wire;
    use wlbs_dataplane::wire::EthernetAddress;

    let ours = "[dataplane]\ncluster_port = \"net_pcap0\"\nhost_port = \"net_pcap1\"\n\
                [cluster]\nip = \"192.0.2.10\"\n[host]\npriority = 1\n\
                [[port_rule]]\nports = \"80\"\nprotocol = \"tcp\"\n";
    let theirs_text = ours
        .replace(
            "priority = 1",
            "priority = 3\ndedicated_ip = \"192.0.2.13\"",
        )
        .replace("ports = \"80\"", "ports = \"80-81\"");
    let (frames, shared) =
        wlbs_tests::peer_frames(&theirs_text, EthernetAddress([0x02, 3, 192, 0, 2, 10]));
    let (exit, out, _) = replay("mismatch", ours, &frames);
    assert!(
        exit.stderr.contains(
            "host 3 (web-3, 192.0.2.13, 02:03:c0:00:02:0a) configuration differs: rule 1: ports 80-80 here, 80-81 there"
        ),
        "{}",
        exit.stderr
    );
    assert!(
        exit.stderr.contains(
            "host 3 (web-3, 192.0.2.13, 02:03:c0:00:02:0a) refused: configuration differs: rule 1: ports 80-80 here, 80-81 there"
        ),
        "{}",
        exit.stderr
    );
    // Our identity tells the peer the same from its side.
    let ours_shared = out
        .iter()
        .find_map(|r| match wire::decode(&r.data, None) {
            Err(wire::DecodeError::Identity(id)) => id.shared,
            _ => None,
        })
        .expect("our identity heartbeat describes our configuration");
    assert_eq!(
        wlbs_control::consistency::describe(&shared.differences(&ours_shared)),
        "rule 1: ports 80-81 here, 80-80 there"
    );
}
