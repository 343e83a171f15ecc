//! The pass-through appliance under real DPDK: frames cross unchanged both ways, several
//! workers share the load, and the operator's stop signals end it cleanly with a summary.

use std::time::Duration;

use wlbs_control::pcap;
use wlbs_tests::{udp_frame, Appliance};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

use wlbs_tests::write_pcap;

fn read_frames(path: &std::path::Path) -> Vec<Vec<u8>> {
    pcap::read_all(std::fs::File::open(path).unwrap())
        .unwrap()
        .into_iter()
        .map(|r| r.data)
        .collect()
}

#[test]
fn frames_cross_unchanged_in_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let inbound: Vec<Vec<u8>> = (0..200)
        .map(|i| udp_frame(CLIENT_MAC, SERVER_MAC, i, 18 + (i as usize % 1400)))
        .collect();
    let outbound: Vec<Vec<u8>> = (0..150)
        .map(|i| udp_frame(SERVER_MAC, CLIENT_MAC, 10_000 + i, 60 + (i as usize % 700)))
        .collect();
    let p = |n: &str| dir.path().join(n);
    write_pcap(&p("cluster-in.pcap"), &inbound);
    write_pcap(&p("host-in.pcap"), &outbound);
    let eal = vec![
        "--vdev".to_string(),
        format!(
            "net_pcap0,rx_pcap={},tx_pcap={}",
            p("cluster-in.pcap").display(),
            p("cluster-out.pcap").display()
        ),
        "--vdev".to_string(),
        format!(
            "net_pcap1,rx_pcap={},tx_pcap={}",
            p("host-in.pcap").display(),
            p("host-out.pcap").display()
        ),
    ];
    let mut app = Appliance::start(
        "pcap",
        "[dataplane]\ncluster_port = \"net_pcap0\"\nhost_port = \"net_pcap1\"\n",
        &eal,
    );
    assert!(
        app.wait_for("forwarding:", Duration::from_secs(20)),
        "appliance did not start:\n{}",
        app.stderr()
    );
    // The pcap PMD reads its file once; give the worker time to move every frame.
    std::thread::sleep(Duration::from_millis(1500));
    let (exit, _) = app.stop_with(libc::SIGINT, Duration::from_secs(10));
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    assert_eq!(
        exit.summary_figure("cluster->host "),
        Some(200),
        "{}",
        exit.stderr
    );
    assert_eq!(
        exit.summary_figure("host->cluster "),
        Some(150),
        "{}",
        exit.stderr
    );
    assert_eq!(exit.summary_figure("dropped "), Some(0), "{}", exit.stderr);
    assert_eq!(read_frames(&p("host-out.pcap")), inbound);
    assert_eq!(read_frames(&p("cluster-out.pcap")), outbound);
}

#[test]
fn two_workers_both_carry_traffic() {
    // net_null generates frames on every RX queue; RSS config is accepted, and each worker
    // polls its own queue pair.
    let eal: Vec<String> = ["--vdev", "net_null0", "--vdev", "net_null1,no-rx=1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut app = Appliance::start(
        "twoworkers",
        "[dataplane]\ncluster_port = \"net_null0\"\nhost_port = \"net_null1\"\nworkers = 2\n",
        &eal,
    );
    assert!(
        app.wait_for("forwarding: 2 worker(s)", Duration::from_secs(20)),
        "appliance did not start:\n{}",
        app.stderr()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (exit, _) = app.stop_with(libc::SIGINT, Duration::from_secs(10));
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    assert!(
        exit.stderr.contains("2 RX queues with RSS"),
        "{}",
        exit.stderr
    );
    let per_worker = exit.per_worker();
    assert_eq!(per_worker.len(), 2, "{}", exit.stderr);
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "both workers must forward: {per_worker:?}"
    );
}

fn stop_test(signal: i32, name: &str) {
    let eal: Vec<String> = ["--vdev", "net_null0", "--vdev", "net_null1,no-rx=1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut app = Appliance::start(name, "[dataplane]\ncluster_port = 0\nhost_port = 1\n", &eal);
    assert!(
        app.wait_for("forwarding:", Duration::from_secs(20)),
        "{}",
        app.stderr()
    );
    let (exit, took) = app.stop_with(signal, Duration::from_secs(10));
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    assert!(
        exit.summary().is_some(),
        "no summary line:\n{}",
        exit.stderr
    );
    assert!(exit.summary_figure("cluster->host ").unwrap() > 0);
    assert!(
        !exit.runtime_dir_left,
        "a clean exit leaves no /var/run/dpdk folder behind"
    );
    // The stop deadline is one second; allow for a loaded CI machine.
    assert!(took < Duration::from_secs(3), "stopping took {took:?}");
}

#[test]
fn ctrl_c_stops_cleanly_with_a_summary() {
    stop_test(libc::SIGINT, "sigint");
}

#[test]
fn sigterm_stops_cleanly_with_a_summary() {
    stop_test(libc::SIGTERM, "sigterm");
}
