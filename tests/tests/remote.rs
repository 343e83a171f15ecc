//! Remote control under real DPDK (net_pcap): signed commands to the cluster IP's UDP port are
//! answered with a signed answer from the cluster IP; a replayed, forged, stale or foreign
//! command is refused (or ignored), counted and logged.

use std::net::Ipv4Addr;
use std::time::Duration;

use wlbs_control::remote::{Answer, Command, Target};
use wlbs_tests::Appliance;

const KEY: &[u8] = b"remote control key of the lab!!!";
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

/// Ethernet/IPv4/UDP from the client to the cluster IP, port 2504.
fn datagram(command: &Command, src_port: u16) -> Vec<u8> {
    let payload = serde_json::to_vec(command).unwrap();
    let mut f = wlbs_tests::udp_frame(CLIENT_MAC, [0x02, 0xbf, 192, 0, 2, 10], 1, payload.len());
    f[26..30].copy_from_slice(&CLIENT.octets());
    f[30..34].copy_from_slice(&[192, 0, 2, 10]);
    f[24..26].copy_from_slice(&[0, 0]);
    let sum = wlbs_tests::ipv4_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f[34..36].copy_from_slice(&src_port.to_be_bytes());
    f[36..38].copy_from_slice(&2504u16.to_be_bytes());
    f[40..42].copy_from_slice(&[0, 0]);
    f[42..].copy_from_slice(&payload);
    f
}

#[test]
fn signed_commands_are_answered_and_replays_forgeries_and_stale_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    std::fs::write(dir.path().join("cluster.key"), KEY).unwrap();
    let query = Command::new(KEY, "query", Target::Cluster);
    let forged = Command::new(b"not the cluster key, but 32 long", "stop", Target::Cluster);
    // Authentic, but two minutes old.
    let mut stale = Command::new(KEY, "stop", Target::Cluster);
    stale.ts -= 120_000;
    stale.tag = wlbs_control::remote::sign(KEY, &stale);
    let other_host = Command::new(KEY, "stop", Target::Host(3));
    let frames = vec![
        datagram(&query, 40001),
        datagram(&query, 40001), // the same command again: a replay
        datagram(&forged, 40002),
        datagram(&stale, 40003),
        datagram(&other_host, 40004),
    ];
    let config = format!(
        "[dataplane]\ncluster_port = \"net_pcap0\"\nhost_port = \"net_pcap1\"\n\
         [cluster]\nip = \"192.0.2.10\"\nheartbeat_period_ms = 100\nkey_file = \"{}\"\n\
         [host]\npriority = 2\ndedicated_ip = \"192.0.2.12\"\n\
         [remote_control]\nenabled = true\n",
        p("cluster.key")
    );
    let eal = wlbs_tests::pcap_ports(dir.path(), &frames, &[], false);
    let mut app = Appliance::start("remote", &config, &eal);
    assert!(
        app.wait_for("forwarding:", Duration::from_secs(30)),
        "{}",
        app.stderr()
    );
    std::thread::sleep(Duration::from_millis(600));
    let (_, stats, _) = app.verb("stats", &[]);
    let (exit, _) = app.stop_with(libc::SIGINT, Duration::from_secs(10));
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);

    // One answer: to the query, from the cluster IP's port 2504, signed.
    let out = wlbs_control::pcap::read_all(
        std::fs::File::open(dir.path().join("cluster-out.pcap")).unwrap(),
    )
    .unwrap();
    let answers: Vec<Answer> = out
        .iter()
        .filter(|r| r.data.get(12..14) == Some(&[0x08, 0x00][..]) && r.data.get(23) == Some(&17))
        .filter(|r| r.data[34..36] == 2504u16.to_be_bytes())
        .map(|r| {
            assert_eq!(&r.data[0..6], &CLIENT_MAC, "sent back to the client's MAC");
            assert_eq!(&r.data[26..30], &[192, 0, 2, 10], "from the cluster IP");
            assert_eq!(&r.data[30..34], &CLIENT.octets());
            assert_eq!(r.data[36..38], 40001u16.to_be_bytes());
            let len = u16::from_be_bytes([r.data[38], r.data[39]]) as usize;
            serde_json::from_slice(&r.data[42..34 + len]).unwrap()
        })
        .collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    let a = &answers[0];
    assert!(a.verify(KEY));
    assert_eq!(a.host, 2);
    assert_eq!(a.nonce, query.nonce);
    assert!(a.text.starts_with("host 2 "), "{}", a.text);

    for why in ["replayed", "unauthenticated", "stale"] {
        assert!(
            exit.stderr.contains(&format!("refused: {why}"))
                || stats.contains(&format!("result=\"{why}\"}} 1")),
            "{why}: {}\n{stats}",
            exit.stderr
        );
        assert!(
            stats.contains(&format!("wlbs_remote_commands_total{{result=\"{why}\"}} 1")),
            "{why}: {stats}"
        );
    }
    assert!(
        stats.contains("wlbs_remote_commands_total{result=\"accepted\"} 1"),
        "{stats}"
    );
    assert!(
        stats.contains("wlbs_remote_commands_total{result=\"not_for_us\"} 1"),
        "{stats}"
    );
    // Refusals are logged, rate limited: the first one at least.
    assert!(
        exit.stderr
            .contains("remote control command from 192.0.2.100:40001 refused: replayed"),
        "{}",
        exit.stderr
    );
}
