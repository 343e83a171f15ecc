//! Prometheus metrics from a busy appliance: `/metrics` over HTTP and `wlbs stats` over the
//! control socket give the same families, and `promtool check metrics` accepts both.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use wlbs_dataplane::wire::tcp::Flags;
use wlbs_dataplane::wire::IpProtocol;
use wlbs_tests::frames::{self, Vlan};
use wlbs_tests::Appliance;

/// SYNs to the VIP from many clients, plus traffic to the dedicated IP.
fn traffic() -> Vec<Vec<u8>> {
    let vip = IpAddr::from([192, 0, 2, 10]);
    let dedicated = IpAddr::from([192, 0, 2, 11]);
    (0..64u16)
        .map(|i| {
            let client = IpAddr::from([198, 51, 100, (i % 250) as u8 + 1]);
            let dst = if i % 8 == 7 { dedicated } else { vip };
            let syn = frames::tcp_segment(client, dst, 30000 + i, 80, Flags::SYN, i.into(), b"");
            frames::ip_frame(
                Vlan::Untagged,
                &frames::ip(client, dst, IpProtocol::TCP, i, &syn),
            )
        })
        .collect()
}

fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut s = TcpStream::connect(host).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /{path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("HTTP answer");
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/setup.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample `name{labels}` (exactly as written), or of `name` without labels.
fn value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample}"))
}

#[test]
fn metrics_from_a_busy_appliance_pass_promtool_over_http_and_the_control_socket() {
    let dir = tempfile::tempdir().unwrap();
    let eal = wlbs_tests::pcap_ports(dir.path(), &traffic(), &[], true);
    let config = wlbs_tests::one_host_config(Some("none"))
        .replace("[dataplane]\n", "[dataplane]\nmbufs = 8192\n");
    let mut app = Appliance::start("stats", &config, &eal);
    assert!(
        app.wait_for("converged with hosts {1}", Duration::from_secs(30)),
        "{}",
        app.stderr()
    );
    std::thread::sleep(Duration::from_millis(700));
    let url = app
        .metrics_url()
        .expect("the log names the metrics address");
    let http = http_get(&url);
    let (code, socket, err) = app.verb("stats", &[]);
    assert_eq!(code, Some(0), "{err}");
    let (exit, _) = app.stop_with(libc::SIGINT, Duration::from_secs(10));
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);

    for text in [&http, &socket] {
        promtool_check(text);
        assert!(
            value(
                text,
                "wlbs_port_packets_total{port=\"cluster\",direction=\"rx\"}"
            ) > 1000.0
        );
        assert_eq!(
            value(text, "wlbs_host_state{state=\"converged_default\"}"),
            1.0
        );
        assert_eq!(value(text, "wlbs_host_state_code"), 1008.0);
        assert_eq!(value(text, "wlbs_members"), 1.0);
        assert_eq!(value(text, "wlbs_owned_buckets{rule=\"1\"}"), 60.0);
        assert!(value(text, "wlbs_heartbeats_sent_total") >= 3.0);
        assert!(value(text, "wlbs_convergences_total") >= 1.0);
        assert!(value(text, "wlbs_heartbeat_send_delay_seconds_count") >= 3.0);
        assert!(
            value(
                text,
                "wlbs_worker_burst_seconds_per_packet_count{worker=\"0\"}"
            ) > 0.0
        );
        let accepted: f64 = text
            .lines()
            .filter(|l| l.starts_with("wlbs_filter_verdicts_total{verdict=\"accept\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        let dedicated = value(
            text,
            "wlbs_filter_verdicts_total{verdict=\"pass\",reason=\"dedicated_ip\"}",
        );
        let judged = |prefix: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                .sum()
        };
        // 7 of every 8 frames go to the VIP (accepted, or dropped before the host converged),
        // 1 to the dedicated IP.
        let vip = judged("wlbs_filter_verdicts_total{")
            - judged("wlbs_filter_verdicts_total{verdict=\"pass\"");
        assert!(accepted > 0.0 && dedicated > 0.0);
        assert!((vip / dedicated - 7.0).abs() < 0.1, "{vip} {dedicated}");
        let per_bucket: f64 = (0..60)
            .map(|b| {
                value(
                    text,
                    &format!("wlbs_bucket_accepted_packets_total{{rule=\"1\",bucket=\"{b}\"}}"),
                )
            })
            .sum();
        assert!(
            (per_bucket - accepted).abs() <= accepted * 0.01 + 64.0,
            "{per_bucket} vs {accepted}"
        );
        assert_eq!(
            value(
                text,
                "wlbs_diagnostics_total{kind=\"mac_not_programmable\"}"
            ),
            1.0
        );
        assert!(value(text, "wlbs_build_info{version=\"0.1.0\"}") == 1.0);
        // Bounded labels: never a client address.
        assert!(
            !text.contains("198.51.100."),
            "a client address in the metrics"
        );
    }
}
