//! Our heartbeats decode as MS NLB in the tools operators will point at a cluster: Wireshark
//! (`tshark`) and tcpdump. If these tests fail after a codec change, the wire layout moved.
//!
//! Both tools are installed by `scripts/setup.sh`; a missing tool fails the test rather than
//! skipping it, so a green run always means the decode was checked.

use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use wlbs_control::heartbeat::{
    emit_frame, emit_identity_frame, HeartbeatRepr, IdentityRepr, RuleState,
};
use wlbs_control::pcap::{write_all, Record};
use wlbs_dataplane::wire::EthernetAddress;

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 80);
const DEDICATED_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 82);
/// Source MAC masked as unicast mode sends it: `02-<priority>-<cluster IP>`.
const MASKED_MAC: EthernetAddress = EthernetAddress([0x02, 0x02, 192, 168, 100, 80]);
const ODD_BUCKETS: u64 = 0x0aaa_aaaa_aaaa_aaaa;

/// Host 2 of the cluster in tcpdump's own `tests/msnlb.pcap`, with two port rules.
fn heartbeat() -> HeartbeatRepr {
    let rule = |code| RuleState {
        code,
        current: ODD_BUCKETS,
        new: ODD_BUCKETS,
        idle: 0,
        ready: 0,
        load_weight: 50,
    };
    HeartbeatRepr {
        version: 0x0206,
        host_priority: 2,
        cluster_ip: CLUSTER_IP,
        dedicated_ip: DEDICATED_IP,
        host_id: 1,
        default_host_id: 0,
        convergence_state: 5,
        unique_host_code: 77,
        packets_handled: 123,
        teaming: 0,
        rules: vec![rule(80 + (80 << 12)), rule(443 + (443 << 12))],
    }
}

fn identity() -> IdentityRepr {
    IdentityRepr {
        version: 0x0206,
        host_priority: 2,
        cluster_ip: CLUSTER_IP,
        dedicated_ip: Some(DEDICATED_IP),
        host_name: "web-02.cluster.example.net".to_owned(),
        others: Vec::new(),
    }
}

/// Writes the heartbeat (frame 1) and the identity heartbeat (frame 2) to a capture.
fn capture(dir: &Path) -> std::path::PathBuf {
    let records = vec![
        Record::new(
            1_000_000_000,
            emit_frame(&heartbeat(), MASKED_MAC, EthernetAddress::BROADCAST),
        ),
        Record::new(
            2_000_000_000,
            emit_identity_frame(&identity(), MASKED_MAC, EthernetAddress::BROADCAST).unwrap(),
        ),
    ];
    let path = dir.join("heartbeats.pcap");
    write_all(std::fs::File::create(&path).unwrap(), &records).unwrap();
    path
}

/// Runs `tool` and returns its stdout; panics with the fix if the tool is not installed.
fn run(tool: &str, args: &[&str], file: &Path) -> String {
    let output = match Command::new(tool).args(args).arg(file).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`{tool}` is not installed: run scripts/setup.sh (as root) to install it; \
             this test checks that {tool} decodes our heartbeats and does not skip"
        ),
        Err(e) => panic!("could not run {tool}: {e}"),
    };
    assert!(
        output.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The `-V` protocol tree of one frame, each line trimmed.
fn tshark_tree(file: &Path, frame: u32) -> Vec<String> {
    let filter = format!("frame.number == {frame}");
    run("tshark", &["-V", "-Y", &filter, "-r"], file)
        .lines()
        .map(|l| l.trim().to_owned())
        .collect()
}

fn assert_lines(tree: &[String], expected: &[&str]) {
    for want in expected {
        assert!(
            tree.iter().any(|l| l == want),
            "tshark did not print {want:?}:\n{}",
            tree.join("\n")
        );
    }
    assert!(
        !tree.iter().any(|l| l.contains("Malformed")),
        "tshark calls the frame malformed:\n{}",
        tree.join("\n")
    );
}

#[test]
fn tshark_decodes_our_heartbeat_as_ms_nlb() {
    let dir = tempfile::tempdir().unwrap();
    let tree = tshark_tree(&capture(dir.path()), 1);
    assert_lines(
        &tree,
        &[
            "[Protocols in frame: eth:ethertype:msnlb]",
            "Type: MS NLB heartbeat (0x886f)",
            "MS Network Load Balancing",
            "Signature: NLB Cluster Membership HeartBeat (0xc0de01bf)",
            "Version: 2.6",
            "Unique Host ID: 2",
            "Cluster IP: 192.168.100.80",
            "Host IP: 192.168.100.82",
            "My Host id: 1",
            "Default Host id: 0",
            "Convergence State: 5",
            "Number of Port Rules: 2",
            "Unique Host Code: 77",
            "Packets Handled: 123",
            "Port Rule Configuration Data: 327760 (0x00050050)",
            "Port Rule Configuration Data: 1814971 (0x001bb1bb)",
            "Current Map Data: 768614336404564650 (0x0aaaaaaaaaaaaaaa)",
            "New Map Data: 768614336404564650 (0x0aaaaaaaaaaaaaaa)",
            "Load Weights Data: 50 (0x00000032)",
        ],
    );
    // Every per-rule array has its 33 slots where Wireshark expects them.
    for array in [
        "Port Rule Configuration Data:",
        "Current Map Data:",
        "New Map Data:",
        "Idle Map Data:",
        "Ready Map Data:",
        "Load Weights Data:",
        "Reserved Data:",
    ] {
        let slots = tree.iter().filter(|l| l.starts_with(array)).count();
        assert_eq!(slots, 33, "{array} appears {slots} times");
    }
}

#[test]
fn tshark_decodes_our_identity_heartbeat_header_and_shows_our_tlv_as_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let tree = tshark_tree(&capture(dir.path()), 2);
    let name_hex: String = b"web-02.cluster.example.net"
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_lines(
        &tree,
        &[
            "MS Network Load Balancing",
            "Signature: NLB Extended HeartBeat (0xc0de01c0)",
            "Unique Host ID: 2",
            "Cluster IP: 192.168.100.80",
            "Host IP: 192.168.100.82",
            "Type: Unknown (129)",
            &format!("Unknown HB Data: 1a{name_hex}"),
        ],
    );
}

#[test]
fn tcpdump_prints_our_heartbeats_like_its_own_test_capture() {
    let dir = tempfile::tempdir().unwrap();
    let out = run("tcpdump", &["-n", "-r"], &capture(dir.path()));
    // The line tcpdump's tests/msnlb.out expects for host 2 of that capture.
    let want = "MS NLB heartbeat, host priority: 2, cluster IP: 192.168.100.80, \
                host IP: 192.168.100.82";
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for line in lines {
        assert!(line.ends_with(want), "{line:?} does not end with {want:?}");
    }
}
