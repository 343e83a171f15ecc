//! The operator verbs against a running appliance over its control socket: `query` (text and
//! `--json`), `stop`, `start`, `drainstop`, and the exit statuses scripts test.

use std::time::Duration;

use wlbs_tests::Appliance;

fn start(name: &str) -> (Appliance, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let eal = wlbs_tests::pcap_ports(dir.path(), &[], &[], false);
    let mut app = Appliance::start(name, &wlbs_tests::one_host_config(None), &eal);
    assert!(
        app.wait_for("converged with hosts {1}", Duration::from_secs(30)),
        "{}",
        app.stderr()
    );
    (app, dir)
}

fn json(app: &Appliance, verb: &str) -> serde_json::Value {
    let (code, out, err) = app.verb(verb, &["--json"]);
    assert_eq!(code, Some(0), "{verb}: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    v["data"].clone()
}

fn wait_state(app: &Appliance, state: &str) -> serde_json::Value {
    for _ in 0..200 {
        let q = json(app, "query");
        if q["state"] == state {
            return q;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("never reached {state}: {}", app.stderr());
}

#[test]
fn query_stop_start_and_drainstop_over_the_control_socket() {
    let (app, _dir) = start("verbs");
    // query: NLB's words and code, this host with its buckets.
    let (code, text, _) = app.verb("query", &[]);
    assert_eq!(code, Some(0));
    assert!(
        text.starts_with("host 1 converged as DEFAULT (1008) with hosts {1}; cluster 192.0.2.10"),
        "{text}"
    );
    let q = json(&app, "query");
    assert_eq!(q["code"], 1008);
    assert_eq!(q["members"], serde_json::json!([1]));
    assert_eq!(q["hosts"][0]["dedicated_ip"], "192.0.2.11");
    assert_eq!(q["hosts"][0]["buckets"], serde_json::json!([60]));

    // stop, and stop again: refused, exit status 1.
    let s = json(&app, "stop");
    assert_eq!(s["state"], "stopped");
    assert_eq!(s["code"], 1005);
    let (code, _, err) = app.verb("stop", &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("already stopped"), "{err}");
    let q = json(&app, "query");
    assert_eq!(q["hosts"][0]["buckets"], serde_json::json!([0]));

    // start: converges again.
    json(&app, "start");
    let q = wait_state(&app, "converged_default");
    assert_eq!(q["hosts"][0]["buckets"], serde_json::json!([60]));

    // drainstop with no connections: stopped by itself.
    let d = json(&app, "drainstop");
    assert_eq!(d["code"], 1009);
    wait_state(&app, "stopped");
    assert!(
        app.stderr().contains("drainstop complete"),
        "{}",
        app.stderr()
    );

    let (exit, _) = app.stop_with(libc::SIGINT, Duration::from_secs(10));
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
}

#[test]
fn no_appliance_means_exit_two_and_a_second_one_on_the_socket_is_refused() {
    let out = std::process::Command::new(wlbs_tests::wlbs_bin())
        .args(["query", "--socket", "/nonexistent/wlbs.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no wlbs appliance answers"));

    let (app, _dir) = start("verbs-two");
    let config = format!(
        "{}\n[control]\nsocket = {:?}\n",
        wlbs_tests::one_host_config(None),
        app.socket().display().to_string()
    );
    let second = Appliance::start("verbs-second", &config, &[]);
    let exit = second.wait_exit(Duration::from_secs(20));
    assert_eq!(exit.code, Some(1), "{}", exit.stderr);
    assert!(
        exit.stderr
            .contains("another wlbs appliance is running there"),
        "{}",
        exit.stderr
    );
    // The first one still answers.
    assert_eq!(json(&app, "query")["code"], 1008);
}

#[test]
fn port_rules_are_drained_disabled_enabled_and_queried_and_suspend_holds_off_start() {
    let (app, _dir) = start("verbs-rules");
    // queryport: the rule, its mode, this host's part.
    let (code, text, _) = app.verb("queryport", &["80"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.starts_with("rule 1: ports 80-80 tcp on all VIPs: multiple hosts, 60 of 60 buckets here; enabled on this host"),
        "{text}"
    );
    let (code, _, err) = app.verb("queryport", &["81"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no port rule covers 81"), "{err}");
    let (code, _, err) = app.verb("queryport", &["198.51.100.1:80"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not a virtual IP"), "{err}");

    // drain: no new connections here (alone: nobody's), then enable again.
    let (code, text, _) = app.verb("drain", &["192.0.2.10:80"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("rule(s) 1 draining on host 1"), "{text}");
    let mut buckets = 60;
    for _ in 0..100 {
        let (_, t, _) = app.verb("queryport", &["80", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        buckets = v["data"]["rules"][0]["buckets"].as_u64().unwrap();
        if buckets == 0 && v["data"]["rules"][0]["state"] == "draining" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(buckets, 0);
    let (code, text, _) = app.verb("disable", &["all"]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text, _) = app.verb("enable", &["80"]);
    assert_eq!(code, Some(0), "{text}");
    let q = wait_state(&app, "converged_default");
    assert_eq!(q["hosts"][0]["buckets"], serde_json::json!([60]), "{q}");

    // params and display: the configuration in force, defaults included.
    let (code, params, _) = app.verb("params", &[]);
    assert_eq!(code, Some(0));
    assert!(params.contains("[cluster] ip 192.0.2.10"), "{params}");
    assert!(params.contains("heartbeat_period_ms 100"), "{params}");
    assert!(
        params.contains(
            "[[port_rule]] 1: vip all, ports 80-80, protocol tcp, mode multiple, affinity single"
        ),
        "{params}"
    );
    let (code, display, _) = app.verb("display", &[]);
    assert_eq!(code, Some(0));
    assert!(
        display.starts_with("host 1 converged as DEFAULT (1008)"),
        "{display}"
    );
    assert!(display.contains("configuration in force:"), "{display}");

    // suspend: stopped, and start is refused until resume.
    let s = json(&app, "suspend");
    assert_eq!(s["state"], "suspended");
    assert_eq!(s["code"], 1013);
    let (code, _, err) = app.verb("start", &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("suspended"), "{err}");
    json(&app, "resume");
    json(&app, "start");
    wait_state(&app, "converged_default");
    let (exit, _) = app.stop_with(libc::SIGINT, Duration::from_secs(10));
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
}

#[test]
fn ip2mac_prints_the_three_macs_the_group_and_the_static_entries() {
    let out = std::process::Command::new(wlbs_tests::wlbs_bin())
        .args(["ip2mac", "192.0.2.10", "--vips", "192.0.2.20"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "02:bf:c0:00:02:0a",
        "03:bf:c0:00:02:0a",
        "01:00:5e:7f:02:0a",
        "239.255.2.10",
        "ip neigh replace 192.0.2.10 lladdr 03:bf:c0:00:02:0a",
        "ip neigh replace 192.0.2.20 lladdr 03:bf:c0:00:02:0a",
        "mac address-table static 03bf.c000.020a",
    ] {
        assert!(text.contains(needle), "{needle}:\n{text}");
    }
    let bad = std::process::Command::new(wlbs_tests::wlbs_bin())
        .args(["ip2mac", "192.0.2.300"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "clap refuses a bad address");
}
