//! `wlbs reload` and SIGHUP against a running appliance under traffic: a valid change is
//! applied without a packet of an unchanged rule dropped; a broken configuration, or one
//! that needs a restart, changes nothing and says why.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use wlbs_dataplane::wire::tcp::Flags;
use wlbs_dataplane::wire::IpProtocol;
use wlbs_tests::frames::{self, Vlan};
use wlbs_tests::Appliance;

/// SYNs and data to port 80 (rule 1) and 8080 (no rule yet: the default host's) from many
/// clients, replayed over and over.
fn traffic() -> Vec<Vec<u8>> {
    let vip = IpAddr::from([192, 0, 2, 10]);
    (0..64u16)
        .map(|i| {
            let client = IpAddr::from([198, 51, 100, (i % 200) as u8 + 1]);
            let port = if i % 4 == 3 { 8080 } else { 80 };
            let flags = if i % 2 == 0 { Flags::SYN } else { Flags::ACK };
            let seg = frames::tcp_segment(client, vip, 30000 + i, port, flags, i.into(), b"");
            frames::ip_frame(
                Vlan::Untagged,
                &frames::ip(client, vip, IpProtocol::TCP, i, &seg),
            )
        })
        .collect()
}

/// Filter verdicts by (verdict, reason), from `wlbs stats`.
fn verdicts(app: &Appliance) -> HashMap<String, f64> {
    let (code, text, err) = app.verb("stats", &[]);
    assert_eq!(code, Some(0), "{err}");
    text.lines()
        .filter_map(|l| l.strip_prefix("wlbs_filter_verdicts_total{"))
        .filter_map(|l| {
            let (labels, v) = l.split_once("} ")?;
            Some((labels.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

#[test]
fn reload_under_traffic_changes_rules_without_dropping_the_unchanged_ones() {
    let dir = tempfile::tempdir().unwrap();
    let eal = wlbs_tests::pcap_ports(dir.path(), &traffic(), &[], true);
    let config = wlbs_tests::one_host_config(Some("none"))
        .replace("[dataplane]\n", "[dataplane]\nmbufs = 8192\n");
    let mut app = Appliance::start("reload", &config, &eal);
    assert!(
        app.wait_for("converged with hosts {1}", Duration::from_secs(30)),
        "{}",
        app.stderr()
    );
    let config_path = app.dir().join("wlbs.toml");
    let original = std::fs::read_to_string(&config_path).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = verdicts(&app);
    assert!(
        delta(
            &HashMap::new(),
            &before,
            "verdict=\"accept\",reason=\"default_host\""
        ) > 0.0
    );

    // 1. A broken file: refused, exit 1, nothing changed.
    std::fs::write(
        &config_path,
        original.replace("ports = \"80\"", "ports = \"80-\""),
    )
    .unwrap();
    let (code, _, err) = app.verb("reload", &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("reload refused, nothing changed") && err.contains("ports"),
        "{err}"
    );
    // 2. A change that needs a restart: refused, named.
    std::fs::write(
        &config_path,
        original.replace("mbufs = 8192", "mbufs = 16384"),
    )
    .unwrap();
    let (code, _, err) = app.verb("reload", &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("needs a restart: [dataplane]"), "{err}");
    std::thread::sleep(Duration::from_millis(200));
    let unchanged = verdicts(&app);
    for reason in [
        "rule_disabled",
        "not_default_host",
        "not_owned",
        "host_stopped",
    ] {
        assert_eq!(
            delta(
                &before,
                &unchanged,
                &format!("verdict=\"drop\",reason=\"{reason}\"")
            ),
            0.0,
            "{reason} after refused reloads"
        );
    }

    // 3. A valid change, by SIGHUP: port 8080 gets a disabled rule; rule 1 stays.
    let with_rule = format!(
        "{original}\n[[port_rule]]\nports = \"8080\"\nprotocol = \"tcp\"\nmode = \"disabled\"\n"
    );
    std::fs::write(&config_path, &with_rule).unwrap();
    unsafe { libc::kill(app.pid() as i32, libc::SIGHUP) };
    assert!(
        app.wait_for(
            "reload: applied: rule 2 added: ports 8080, tcp, vip all, disabled",
            Duration::from_secs(10)
        ),
        "{}",
        app.stderr()
    );
    assert!(
        app.wait_for("converged with hosts {1}", Duration::from_secs(10)),
        "{}",
        app.stderr()
    );
    std::thread::sleep(Duration::from_millis(500));
    let after = verdicts(&app);
    // Port 80 was never dropped: while the cluster converged again, rule 1 kept its buckets.
    for reason in ["not_owned", "host_stopped", "handed_off", "old_owner_keeps"] {
        assert_eq!(
            delta(
                &unchanged,
                &after,
                &format!("verdict=\"drop\",reason=\"{reason}\"")
            ),
            0.0,
            "{reason} during the reload: {after:?}"
        );
    }
    // Port 8080: the default host's before, dropped by the disabled rule now.
    assert!(
        delta(
            &unchanged,
            &after,
            "verdict=\"drop\",reason=\"rule_disabled\""
        ) > 0.0
    );
    let (code, q, _) = app.verb("query", &["--json"]);
    assert_eq!(code, Some(0));
    let q: serde_json::Value = serde_json::from_str(&q).unwrap();
    assert_eq!(
        q["data"]["hosts"][0]["buckets"],
        serde_json::json!([60, 0]),
        "{q}"
    );

    let (exit, _) = app.stop_with(libc::SIGINT, Duration::from_secs(10));
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
}
