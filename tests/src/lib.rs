//! Helpers for the integration tests: find the `wlbs` binary, run it as a child process with a
//! unique DPDK `--file-prefix` (DPDK allows one EAL per process), stop it like an operator
//! would (SIGINT/SIGTERM), and clean up `/var/run/dpdk/<prefix>` afterwards.

pub mod frames;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The `wlbs` binary next to this test executable (`target/<profile>/wlbs`), or `$WLBS_BIN`.
pub fn wlbs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WLBS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/wlbs
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("wlbs");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p wlbs-control), or set WLBS_BIN",
        bin.display()
    );
    bin
}

/// A `--file-prefix` unique to this process and call, so tests can run in parallel.
pub fn unique_prefix(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "wlbs-test-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Where a test appliance's DPDK memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// Anonymous memory, no hugepages needed (`--no-huge --no-shconf`).
    NoHuge,
    /// Hugepages, for vdevs that share memory with another process (`virtio_user` over
    /// vhost-user): `--in-memory --single-file-segments` (memfd-backed, so nothing is left in
    /// hugetlbfs even if the child is killed).
    Hugepages,
}

/// EAL arguments every test uses: no hugepages needed, no PCI probing, no shared config,
/// a private file prefix.
pub fn base_eal_args(prefix: &str) -> Vec<String> {
    eal_args_for(prefix, Memory::NoHuge)
}

fn eal_args_for(prefix: &str, memory: Memory) -> Vec<String> {
    let memory: &[&str] = match memory {
        Memory::NoHuge => &["--no-huge", "--no-shconf"],
        Memory::Hugepages => &["--in-memory", "--single-file-segments"],
    };
    memory
        .iter()
        .chain(&[
            "-m",
            "256",
            "--no-pci",
            "--file-prefix",
            prefix,
            "--log-level",
            "lib.eal:notice",
        ])
        .map(|s| s.to_string())
        .collect()
}

/// A running `wlbs run` child. Killed (and its DPDK runtime folder removed) on drop.
pub struct Appliance {
    child: Option<Child>,
    prefix: String,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// How the child ended.
#[derive(Debug)]
pub struct Exit {
    pub code: Option<i32>,
    pub stderr: String,
    /// Whether the EAL's runtime folder (`/var/run/dpdk/<prefix>`) was still there after the
    /// exit (a clean exit removes it).
    pub runtime_dir_left: bool,
}

impl Exit {
    /// The final summary line (`wlbs: stopped ...`), if any.
    pub fn summary(&self) -> Option<&str> {
        self.stderr.lines().find(|l| l.starts_with("wlbs: stopped"))
    }

    /// A number that follows `label` in the summary line (e.g. "cluster->host ").
    pub fn summary_figure(&self, label: &str) -> Option<u64> {
        let s = self.summary()?;
        let rest = &s[s.find(label)? + label.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }

    /// Packets per worker from the summary's "per worker 0:N 1:M" tail.
    pub fn per_worker(&self) -> Vec<u64> {
        let Some(s) = self.summary() else {
            return Vec::new();
        };
        let Some(tail) = s.split("per worker").nth(1) else {
            return Vec::new();
        };
        tail.split_whitespace()
            .filter_map(|w| w.split(':').nth(1)?.parse().ok())
            .collect()
    }
}

impl Appliance {
    /// Starts `wlbs run` with `config` (TOML text) and `eal` arguments (the base ones are
    /// added). The prefix is cleaned up when the Appliance is dropped.
    pub fn start(name: &str, config: &str, eal: &[String]) -> Appliance {
        Appliance::start_with(name, config, eal, Memory::NoHuge)
    }

    /// [`start`](Self::start) with the memory `memory` says.
    pub fn start_with(name: &str, config: &str, eal: &[String], memory: Memory) -> Appliance {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("wlbs.toml");
        // Each appliance its own control socket, so tests run in parallel.
        let socket = dir.path().join("wlbs.sock");
        let mut config = config.to_string();
        if !config.contains("[control]") {
            config.push_str(&format!(
                "\n[control]\nsocket = {:?}\n",
                socket.display().to_string()
            ));
        }
        // Metrics on a free loopback port (the log line says which).
        if !config.contains("[stats]") {
            config.push_str("\n[stats]\nlisten = \"127.0.0.1:0\"\n");
        }
        std::fs::write(&config_path, config).expect("write config");
        let prefix = unique_prefix(name);
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut args: Vec<String> = vec![
            "run".into(),
            "--config".into(),
            config_path.display().to_string(),
            "--".into(),
        ];
        args.extend(eal_args_for(&prefix, memory));
        args.extend(eal.iter().cloned());
        let child = Command::new(wlbs_bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn wlbs");
        Appliance {
            child: Some(child),
            prefix,
            stderr_path,
            _dir: dir,
        }
    }

    /// The child's process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The control socket the helper gave this appliance (unless its config names one).
    pub fn socket(&self) -> PathBuf {
        self._dir.path().join("wlbs.sock")
    }

    /// Runs `wlbs VERB --socket S [ARGS]` against this appliance: exit code, stdout, stderr.
    pub fn verb(&self, verb: &str, args: &[&str]) -> (Option<i32>, String, String) {
        let out = Command::new(wlbs_bin())
            .arg(verb)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run wlbs verb");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The `/metrics` address from the appliance's log line, once it has started.
    pub fn metrics_url(&self) -> Option<String> {
        let log = self.stderr();
        let at = log.find("Prometheus metrics at ")? + "Prometheus metrics at ".len();
        log[at..].split_whitespace().next().map(str::to_string)
    }

    /// What the child has written to stderr so far.
    pub fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.stderr_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits (bounded) until stderr contains `needle`; false on timeout or if the child exited.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return true;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return self.stderr().contains(needle);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends `signal` and waits (bounded by `timeout`) for the child to exit.
    pub fn stop_with(mut self, signal: i32, timeout: Duration) -> (Exit, Duration) {
        let mut child = self.child.take().expect("child");
        let sent = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let code = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status.code();
            }
            if sent.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = sent.elapsed();
        (
            Exit {
                code,
                stderr: self.stderr(),
                runtime_dir_left: self.runtime_dir().exists(),
            },
            took,
        )
    }

    /// Waits (bounded) for the child to exit by itself (e.g. on a bad config).
    pub fn wait_exit(mut self, timeout: Duration) -> Exit {
        let mut child = self.child.take().expect("child");
        let start = Instant::now();
        let code = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status.code();
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Exit {
            code,
            stderr: self.stderr(),
            runtime_dir_left: self.runtime_dir().exists(),
        }
    }

    /// The EAL's runtime folder of this appliance.
    fn runtime_dir(&self) -> PathBuf {
        Path::new("/var/run/dpdk").join(&self.prefix)
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A killed appliance cannot remove its own.
        let _ = std::fs::remove_dir_all(self.runtime_dir());
    }
}

/// An Ethernet/IPv4/UDP frame with a recognisable payload, for pass-through tests.
pub fn udp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], seq: u32, payload_len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(42 + payload_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload_len) as u16;
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 198, 51, 100, 7, 192, 0, 2, 10,
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
    let sum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&(40000 + (seq % 20000) as u16).to_be_bytes());
    f.extend_from_slice(&80u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..payload_len).map(|i| (seq as usize + i) as u8));
    f
}

/// An appliance that is a cluster of its own (host 1, heartbeats every 100 ms so it converges
/// within a second), on the two ports of [`pcap_ports`], with one port rule: TCP port 80 with
/// `affinity` (`None`: the default). The operator-facing tests (verbs, metrics, reload) start
/// from it.
pub fn one_host_config(affinity: Option<&str>) -> String {
    let affinity = affinity.map_or(String::new(), |a| format!("affinity = \"{a}\"\n"));
    format!(
        r#"
[dataplane]
cluster_port = "net_pcap0"
host_port = "net_pcap1"

[cluster]
ip = "192.0.2.10"
heartbeat_period_ms = 100

[host]
priority = 1
dedicated_ip = "192.0.2.11"

[[port_rule]]
ports = "80"
protocol = "tcp"
{affinity}"#
    )
}

/// Two `net_pcap` ports for an appliance in `dir`: the cluster port (`net_pcap0`) replays
/// `cluster_in` (over and over with `replay_forever`: a busy appliance) and writes
/// `cluster-out.pcap`; the host port (`net_pcap1`) replays `host_in` and writes
/// `host-out.pcap`. Returns the EAL arguments.
pub fn pcap_ports(
    dir: &Path,
    cluster_in: &[Vec<u8>],
    host_in: &[Vec<u8>],
    replay_forever: bool,
) -> Vec<String> {
    let p = |n: &str| dir.join(n).display().to_string();
    write_pcap(&dir.join("cluster-in.pcap"), cluster_in);
    write_pcap(&dir.join("host-in.pcap"), host_in);
    vec![
        "--vdev".to_string(),
        format!(
            "net_pcap0,rx_pcap={},tx_pcap={}{}",
            p("cluster-in.pcap"),
            p("cluster-out.pcap"),
            if replay_forever { ",infinite_rx=1" } else { "" }
        ),
        "--vdev".to_string(),
        format!(
            "net_pcap1,rx_pcap={},tx_pcap={}",
            p("host-in.pcap"),
            p("host-out.pcap")
        ),
    ]
}

/// Writes `frames` as a pcap file, one microsecond apart (what net_pcap's `rx_pcap` replays).
pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    use wlbs_control::pcap::{self, Record};
    let records: Vec<Record> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| Record::new(1_700_000_000_000_000_000 + i as u64 * 1000, f.clone()))
        .collect();
    pcap::write_all(std::fs::File::create(path).expect("create pcap"), &records)
        .expect("write pcap");
}

/// The IPv4 header checksum of `header` (whose checksum field is zero).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    !wlbs_dataplane::wire::checksum::data(header)
}

/// What a peer appliance started with `peer_config` (TOML) sends first: its identity
/// heartbeat (host name `web-<priority>`, its shared configuration) and its first
/// heartbeat, from `src`. Returns the frames and the peer's shared configuration.
pub fn peer_frames(
    peer_config: &str,
    src: wlbs_dataplane::wire::EthernetAddress,
) -> (Vec<Vec<u8>>, wlbs_control::consistency::SharedConfig) {
    use wlbs_control::cluster::ClusterView;
    use wlbs_control::config::Config;
    use wlbs_control::heartbeat::IdentityRepr;
    use wlbs_control::membership::{wire, Membership};
    use wlbs_dataplane::wire::EthernetAddress;

    let theirs = Config::parse(peer_config, Path::new("peer.toml")).expect("peer config");
    let view = ClusterView::from_config(&theirs).expect("a cluster member");
    let shared = view.shared_config(&theirs);
    let cluster_ip = theirs.cluster.as_ref().expect("[cluster]").ip;
    let host = theirs.host.as_ref().expect("[host]");
    let mut core = Membership::new(view.membership_settings(&theirs, 0x4242_4243), 0);
    let ping = core
        .poll_transmit(0)
        .expect("a starting host sends at once");
    let identity = IdentityRepr {
        version: 0x0206,
        host_priority: host.priority,
        cluster_ip,
        dedicated_ip: match host.dedicated_ip {
            Some(std::net::IpAddr::V4(a)) => Some(a),
            _ => None,
        },
        host_name: format!("web-{}", host.priority),
        others: Vec::new(),
    };
    let frames = vec![
        wire::encode_identity(&identity, &shared, src, EthernetAddress::BROADCAST, None)
            .expect("identity fits"),
        wire::encode(
            &ping,
            cluster_ip,
            &shared.rule_codes(),
            src,
            EthernetAddress::BROADCAST,
            None,
        ),
    ];
    (frames, shared)
}
