//! User errors end `wlbs run` with one clear message and a non-zero exit, never a panic.

use std::time::Duration;

use wlbs_tests::{base_eal_args, unique_prefix, wlbs_bin, Appliance};

fn run_to_exit(name: &str, config: &str, eal: &[&str]) -> wlbs_tests::Exit {
    let eal: Vec<String> = eal.iter().map(|s| s.to_string()).collect();
    Appliance::start(name, config, &eal).wait_exit(Duration::from_secs(20))
}

fn assert_clean_error(exit: &wlbs_tests::Exit, expect: &[&str]) {
    assert_eq!(exit.code, Some(1), "{}", exit.stderr);
    assert!(!exit.stderr.contains("panicked"), "{}", exit.stderr);
    let error = exit
        .stderr
        .lines()
        .find(|l| l.starts_with("wlbs: error:"))
        .unwrap_or_else(|| panic!("no error line:\n{}", exit.stderr));
    for e in expect {
        assert!(error.contains(e), "{e:?} not in {error:?}");
    }
}

#[test]
fn unknown_port_lists_the_ports_that_exist() {
    let exit = run_to_exit(
        "noport",
        "[dataplane]\ncluster_port = \"net_pcap7\"\nhost_port = 1\n",
        &["--vdev", "net_null0", "--vdev", "net_null1"],
    );
    assert_clean_error(
        &exit,
        &[
            "cluster_port",
            "net_pcap7",
            "0 (net_null0)",
            "1 (net_null1)",
        ],
    );
}

#[test]
fn invalid_config_names_file_key_and_allowed_values() {
    let exit = run_to_exit(
        "badcfg",
        "[dataplane]\ncluster_port = 0\nhost_port = 1\nworkers = 100\n",
        &["--vdev", "net_null0", "--vdev", "net_null1"],
    );
    assert_clean_error(
        &exit,
        &["wlbs.toml", "[dataplane] workers = 100", "between 1 and 64"],
    );
}

#[test]
fn missing_config_file_is_named() {
    let prefix = unique_prefix("nofile");
    let out = std::process::Command::new(wlbs_bin())
        .args(["run", "--config", "/nonexistent/wlbs.toml", "--"])
        .args(base_eal_args(&prefix))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("config /nonexistent/wlbs.toml: cannot read"),
        "{stderr}"
    );
}

#[test]
fn more_workers_than_lcores_says_what_to_pass() {
    let exit = run_to_exit(
        "lcores",
        "[dataplane]\ncluster_port = 0\nhost_port = 1\nworkers = 3\n",
        &["--vdev", "net_null0", "--vdev", "net_null1", "-l", "0-1"],
    );
    assert_clean_error(&exit, &["workers = 3 needs 4 lcores", "--lcores"]);
}
