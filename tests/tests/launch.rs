//! `scripts/launch.sh --dry-run` on a fake machine (a /sys and /proc layout in a temporary
//! folder, given with `--sysfs`): the commands it prints for a sample config (hugepages on the
//! NICs' node, the bind to vfio-pci, `wlbs run` with the picked cores, the rebind on stop), its
//! errors, and `systemd-analyze verify` of `packaging/wlbs@.service`. Nothing here needs root
//! or changes the machine.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The checkout's root (this crate is `tests/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// The `wlbs` binary the dry runs name (it need not exist for a dry run).
const WLBS: &str = "/opt/wlbs/bin/wlbs";

const NIC0: &str = "0000:01:00.0";
const NIC1: &str = "0000:01:00.1";

/// A fake machine: 8 CPUs; with `numa`, node 0 holds CPUs 0-3 and node 1 CPUs 4-7 (else no
/// node folders at all); `isolated` as in /sys/devices/system/cpu/isolated; the two NICs on
/// `nic_nodes`, bound to ixgbe, with an IOMMU group; no free hugepages; nothing mounted on
/// /dev/hugepages; vfio-pci not loaded.
struct FakeMachine {
    root: tempfile::TempDir,
}

impl FakeMachine {
    fn new(numa: bool, isolated: &str, nic_nodes: [i32; 2]) -> Self {
        let root = tempfile::tempdir().unwrap();
        let m = FakeMachine { root };
        m.write("sys/devices/system/cpu/online", "0-7");
        m.write("sys/devices/system/cpu/isolated", isolated);
        if numa {
            for (node, cpus) in [(0, "0-3"), (1, "4-7")] {
                let dir = format!("sys/devices/system/node/node{node}");
                m.write(&format!("{dir}/cpulist"), cpus);
                m.write(
                    &format!("{dir}/hugepages/hugepages-2048kB/nr_hugepages"),
                    "0",
                );
                m.write(
                    &format!("{dir}/hugepages/hugepages-2048kB/free_hugepages"),
                    "0",
                );
            }
        }
        m.write("proc/sys/vm/nr_hugepages", "0");
        m.write(
            "proc/meminfo",
            "MemTotal: 16384000 kB\nHugePages_Free:        0\n",
        );
        m.write(
            "proc/mounts",
            "proc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n",
        );
        fs::create_dir_all(m.path("sys/bus/pci/drivers/ixgbe")).unwrap();
        fs::create_dir_all(m.path("sys/kernel/iommu_groups/12")).unwrap();
        for (pci, node) in [NIC0, NIC1].into_iter().zip(nic_nodes) {
            let dev = format!("sys/bus/pci/devices/{pci}");
            m.write(&format!("{dev}/numa_node"), &node.to_string());
            m.write(&format!("{dev}/class"), "0x020000");
            symlink(
                "../../../../bus/pci/drivers/ixgbe",
                m.path(&format!("{dev}/driver")),
            )
            .unwrap();
            symlink(
                "../../../../kernel/iommu_groups/12",
                m.path(&format!("{dev}/iommu_group")),
            )
            .unwrap();
        }
        // Something that is not a NIC, for the error listing NICs.
        m.write("sys/bus/pci/devices/0000:00:1f.2/class", "0x010601");
        m
    }

    /// The sample machine: 2 NUMA nodes, CPUs 2 and 3 isolated, both NICs on node 0.
    fn sample() -> Self {
        Self::new(true, "2-3", [0, 0])
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, format!("{text}\n")).unwrap();
    }

    /// Writes a config named `name` whose ports are `cluster` and `host`, 2 workers.
    fn config(&self, name: &str, cluster: &str, host: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(
            &p,
            format!(
                "[dataplane]\ncluster_port = \"{cluster}\"\nhost_port = \"{host}\"\nworkers = 2\n\n\
                 [cluster]\nip = \"192.0.2.10\"\nmembers = [1]\n\n[host]\npriority = 1\n"
            ),
        )
        .unwrap();
        p
    }

    /// `scripts/launch.sh --dry-run --sysfs ROOT --config CONFIG ARGS...`
    fn dry_run(&self, config: &Path, args: &[&str]) -> Run {
        let out = Command::new("bash")
            .arg(repo().join("scripts/launch.sh"))
            .arg("--dry-run")
            .arg("--sysfs")
            .arg(self.root.path())
            .arg("--config")
            .arg(config)
            .args(args)
            .env("WLBS_BIN", WLBS)
            .env_remove("WLBS_LAUNCH_MEM")
            .output()
            .expect("running bash scripts/launch.sh");
        Run::new(out, self.root.path())
    }
}

/// What a dry run printed: its commands ("+ " lines of stdout, the fake root shown as ROOT)
/// and its messages (stderr).
struct Run {
    status: Option<i32>,
    commands: Vec<String>,
    stderr: String,
}

impl Run {
    fn new(out: Output, root: &Path) -> Self {
        let root = root.to_str().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let commands = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("+ "))
            .map(|l| l.replace(root, "ROOT"))
            .collect();
        Run {
            status: out.status.code(),
            commands,
            stderr: String::from_utf8_lossy(&out.stderr).replace(root, "ROOT"),
        }
    }

    /// The `wlbs run` command line.
    fn wlbs_run(&self) -> &str {
        self.commands
            .iter()
            .find(|c| c.starts_with(&format!("{WLBS} run ")))
            .unwrap_or_else(|| panic!("no `wlbs run` among {:#?}\n{}", self.commands, self.stderr))
    }

    /// The value after `flag` in the `wlbs run` line.
    fn eal(&self, flag: &str) -> &str {
        let words: Vec<&str> = self.wlbs_run().split(' ').collect();
        let i = words
            .iter()
            .position(|w| *w == flag)
            .unwrap_or_else(|| panic!("no {flag} in {}", self.wlbs_run()));
        words[i + 1]
    }
}

#[test]
fn dry_run_prints_every_step_for_the_sample() {
    let m = FakeMachine::sample();
    let config = m.config("sample.toml", NIC0, NIC1);
    let run = m.dry_run(&config, &[]);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    let config = config
        .to_str()
        .unwrap()
        .replace(m.root.path().to_str().unwrap(), "ROOT");
    let expected = [
        // 1 GiB of 2 MiB pages on node 0, where both NICs are.
        "echo 512 > ROOT/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"
            .to_string(),
        "mkdir -p /dev/hugepages".into(),
        "mount -t hugetlbfs nodev /dev/hugepages".into(),
        "modprobe vfio-pci".into(),
        // The drivers to give back, noted for a launch after a crash.
        "mkdir -p /run/wlbs".into(),
        format!("echo '{NIC0}=ixgbe {NIC1}=ixgbe' > /run/wlbs/launch-sample.drivers"),
        format!("dpdk-devbind.py -b vfio-pci {NIC0}"),
        format!("dpdk-devbind.py -b vfio-pci {NIC1}"),
        // Workers on the isolated CPUs 2 and 3 of node 0, the main lcore on CPU 1 (not 0).
        format!(
            "{WLBS} run --config {config} -- -l 1,2,3 --main-lcore 1 -a {NIC0} -a {NIC1} \
             --file-prefix wlbs-sample --socket-mem 1024,0"
        ),
        // On stop: each NIC back to its kernel driver.
        format!("dpdk-devbind.py -b ixgbe {NIC0}"),
        format!("dpdk-devbind.py -b ixgbe {NIC1}"),
        "rm -f /run/wlbs/launch-sample.drivers".into(),
    ];
    assert_eq!(run.commands, expected, "{}", run.stderr);
    // The layout it read, said on stderr.
    assert!(
        run.stderr
            .contains("2 NUMA node(s): node0 [0 1 2 3] node1 [4 5 6 7], isolated: 2,3"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("different"), "{}", run.stderr);
}

#[test]
fn nics_from_the_command_line_override_the_config() {
    let m = FakeMachine::sample();
    // Ports by id: the script cannot know the PCI addresses without --nic.
    let config = m.config("ids.toml", "0", "1");
    let run = m.dry_run(&config, &[]);
    assert_eq!(run.status, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("not a PCI address"), "{}", run.stderr);
    assert!(run.commands.is_empty(), "{:#?}", run.commands);

    // The domain may be left out; the first --nic is the cluster NIC.
    let run = m.dry_run(
        &config,
        &["--nic", "01:00.1", "--nic", NIC0, "--mem", "512"],
    );
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert!(
        run.wlbs_run().contains(&format!("-a {NIC1} -a {NIC0}")),
        "{}",
        run.wlbs_run()
    );
    assert_eq!(run.eal("--socket-mem"), "512,0");
    assert!(run.stderr.contains("PCI address order"), "{}", run.stderr);
}

#[test]
fn a_missing_nic_is_named_and_nothing_is_done() {
    let m = FakeMachine::sample();
    let config = m.config("missing.toml", NIC0, "0000:05:00.0");
    let run = m.dry_run(&config, &[]);
    assert_eq!(run.status, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("host NIC 0000:05:00.0 does not exist"),
        "{}",
        run.stderr
    );
    // It lists the NICs that do exist (and not the SATA controller).
    assert!(
        run.stderr
            .contains(&format!("{NIC0} (ixgbe) {NIC1} (ixgbe)")),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("0000:00:1f.2 ("), "{}", run.stderr);
    assert!(run.commands.is_empty(), "{:#?}", run.commands);

    // A PCI device that is not a network controller is refused too.
    let config = m.config("disk.toml", NIC0, "0000:00:1f.2");
    let run = m.dry_run(&config, &[]);
    assert_eq!(run.status, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("is not a network controller"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_missing_config_exits_2() {
    let m = FakeMachine::sample();
    let run = m.dry_run(&m.path("nope.toml"), &[]);
    assert_eq!(run.status, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("nope.toml does not exist"),
        "{}",
        run.stderr
    );
}

#[test]
fn without_isolated_cores_other_cores_of_the_node_are_picked() {
    let isolated = FakeMachine::sample();
    let plain = FakeMachine::new(true, "", [0, 0]);
    let a = isolated.dry_run(&isolated.config("c.toml", NIC0, NIC1), &[]);
    let b = plain.dry_run(&plain.config("c.toml", NIC0, NIC1), &[]);
    assert_eq!(a.status, Some(0), "{}", a.stderr);
    assert_eq!(b.status, Some(0), "{}", b.stderr);
    assert_eq!(a.eal("-l"), "1,2,3");
    // Node 0 is CPUs 0-3: workers on 1 and 2, main lcore on 3, never CPU 0.
    assert_eq!(b.eal("-l"), "3,1,2");
    assert_eq!(b.eal("--main-lcore"), "3");
    assert_ne!(a.eal("-l"), b.eal("-l"));
    assert!(
        b.stderr.contains("0 isolated CPU(s) on node 0"),
        "{}",
        b.stderr
    );
}

#[test]
fn cores_follow_the_nic_node() {
    // Both NICs on node 1 (CPUs 4-7), CPU 5 isolated: workers on 5 first, then 4 and 6; the
    // main lcore on the CPU of node 1 left over.
    let m = FakeMachine::new(true, "5", [1, 1]);
    let config = m.config("n1.toml", NIC0, NIC1);
    let run = m.dry_run(&config, &["--workers", "3"]);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert_eq!(run.eal("-l"), "7,5,4,6");
    assert_eq!(run.eal("--main-lcore"), "7");
    assert_eq!(run.eal("--socket-mem"), "0,1024");
    assert!(run
        .commands
        .iter()
        .any(|c| c.contains("node/node1/hugepages/hugepages-2048kB/nr_hugepages")));

    // Fewer workers than the config's: wlbs would refuse to start.
    let run = m.dry_run(&config, &["--workers", "1"]);
    assert_eq!(run.status, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("[dataplane] workers = 2"),
        "{}",
        run.stderr
    );

    // --cores is taken as given (first: the main lcore), with a warning off the node.
    let run = m.dry_run(&config, &["--cores", "4,1-3"]);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert_eq!(run.eal("-l"), "4,1,2,3");
    assert_eq!(run.eal("--main-lcore"), "4");
    assert!(
        run.stderr.contains("the worker on CPU 1 is not on node 1"),
        "{}",
        run.stderr
    );
    let run = m.dry_run(&config, &["--cores", "4,4-6"]);
    assert_eq!(run.status, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("names a CPU twice"), "{}", run.stderr);
}

#[test]
fn nics_on_two_nodes_warn_and_get_memory_on_both() {
    let m = FakeMachine::new(true, "2-3", [0, 1]);
    let run = m.dry_run(&m.config("split.toml", NIC0, NIC1), &[]);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the cluster NIC is on node 0, the host NIC on node 1"),
        "{}",
        run.stderr
    );
    assert_eq!(run.eal("--socket-mem"), "1024,1024");
    // Cores follow the cluster NIC.
    assert_eq!(run.eal("-l"), "1,2,3");
}

#[test]
fn without_numa_nodes_the_global_pool_is_used() {
    let m = FakeMachine::new(false, "", [-1, -1]);
    let run = m.dry_run(&m.config("flat.toml", NIC0, NIC1), &[]);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert!(
        run.commands
            .contains(&"echo 512 > ROOT/proc/sys/vm/nr_hugepages".to_string()),
        "{:#?}",
        run.commands
    );
    assert_eq!(run.eal("-m"), "1024");
    assert!(
        !run.wlbs_run().contains("--socket-mem"),
        "{}",
        run.wlbs_run()
    );
    assert_eq!(run.eal("-l"), "3,1,2");
}

#[test]
fn hugetlbfs_already_mounted_and_pages_free_are_left_alone() {
    let m = FakeMachine::sample();
    m.write(
        "proc/mounts",
        "hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0",
    );
    let dir = "sys/devices/system/node/node0/hugepages/hugepages-2048kB";
    m.write(&format!("{dir}/nr_hugepages"), "1024");
    m.write(&format!("{dir}/free_hugepages"), "600");
    let run = m.dry_run(&m.config("c.toml", NIC0, NIC1), &[]);
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert!(
        !run.commands
            .iter()
            .any(|c| c.contains("hugepages") || c.starts_with("mount")),
        "{:#?}",
        run.commands
    );
}

#[test]
fn systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: systemd-analyze is not installed (package systemd)");
        return;
    }
    // The unit runs /usr/local/lib/wlbs/launch.sh, which verify checks exists: verify a copy
    // that runs this checkout's script instead, with nothing else changed.
    let unit = fs::read_to_string(repo().join("packaging/wlbs@.service")).unwrap();
    let installed = "ExecStart=/usr/local/lib/wlbs/launch.sh ";
    assert_eq!(unit.matches(installed).count(), 1, "{unit}");
    let script = repo().join("scripts/launch.sh");
    let local = unit.replace(
        installed,
        &format!("ExecStart={} ", script.to_str().unwrap()),
    );
    for (key, value) in [
        ("KillSignal", "SIGTERM"),
        ("KillMode", "mixed"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
    ] {
        assert!(
            unit.lines().any(|l| l == format!("{key}={value}")),
            "{key}={value} missing"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("wlbs@.service");
    fs::write(&copy, local).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    // Unknown keys or bad values are only warnings for verify: there must be none.
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("wlbs@")).collect();
    assert!(ours.is_empty(), "systemd-analyze verify complains:\n{text}");
}

#[test]
fn launch_script_is_shellcheck_clean() {
    let Ok(out) = Command::new("shellcheck")
        .arg(repo().join("scripts/launch.sh"))
        .output()
    else {
        println!("skipped: shellcheck is not installed (apt-get install shellcheck)");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
