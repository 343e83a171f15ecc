//! `wlbs run`: brings up the EAL, the cluster port and the host port, launches one poll-mode
//! worker per RX queue of the cluster port, and runs the control thread on the main lcore until
//! asked to stop. Then it stops the workers and the ports and reports what went through.

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use dpdk::{Eal, Mempool, Port, PortConfig, PortStats, TxQueue};
use hdrhistogram::Histogram;
use tracing::{info, warn};
use wlbs_dataplane::conn::{ConnectionCounts, Timeouts};
use wlbs_dataplane::filter::classify::{Filter, FilterCounters};
use wlbs_dataplane::wire::EthernetAddress;
use wlbs_dataplane::worker::{
    self, ControlChannel, FilterWorker, HostMac, Idle, MacPolicy, WorkerCounters, WorkerQueues,
    WorkerReport,
};

mod cluster_port;
mod control_io;

use cluster_port::program_cluster_port;
pub use control_io::ControlCounts;
use control_io::{ControlTx, FromPeer, RemoteDatagram, Side};

use crate::cluster::ClusterView;
use crate::config::{Config, PortSpec};
use crate::consistency::describe;
use crate::ctl;
use crate::diagnostics::Diagnostics;
use crate::heartbeat;
use crate::membership::wire;
use crate::membership::{host_list, Event, Membership, Reconfigured, Refusal};
use crate::neighbour::{Diagnostic, HostFrame, Neighbour};
use crate::peers::Peers;
use crate::reload;
use crate::remote;
use crate::stats;
use crate::stats_http::StatsServer;
use crate::verbs;

/// How often the control thread looks at the stop flag (the stop deadline is one second).
const CONTROL_TICK: Duration = Duration::from_millis(20);
/// NLB's IdentityHeartbeatPeriod: host name and dedicated IP, for `query`.
const IDENTITY_PERIOD_MS: u64 = 10_000;
/// Frames each worker can queue for the control thread between two of its ticks.
const CONTROL_RING: usize = 1024;
/// Per-lcore mempool cache, as in DPDK's examples.
const MEMPOOL_CACHE: u32 = 256;

/// What went through the appliance, printed as one line when it stops.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub elapsed: Duration,
    /// Cluster port to host port.
    pub inbound_packets: u64,
    /// Host port to cluster port.
    pub outbound_packets: u64,
    /// Packets a full TX queue refused (both directions).
    pub tx_full: u64,
    pub cluster: PortStats,
    pub host: PortStats,
    /// Packets forwarded by each worker (both directions).
    pub per_worker: Vec<u64>,
    /// Filter verdicts (cluster members only): accepted, passed, dropped.
    pub filter: Option<[u64; 3]>,
    /// Connection descriptors at the stop: live, and new connections the full table refused.
    pub descriptors: Option<(u64, u64)>,
    /// Frames the control thread got from the workers (cluster members only).
    pub control: Option<ControlCounts>,
    /// Heartbeats sent, and their send delay against schedule (p99 and max, ms).
    pub heartbeats_sent: Option<(u64, u64, u64)>,
}

impl Summary {
    pub fn dropped(&self) -> u64 {
        self.tx_full
            + self.cluster.rx_missed
            + self.host.rx_missed
            + self.cluster.rx_nombuf
            + self.host.rx_nombuf
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wlbs: stopped after {:.3} s: cluster->host {} packets, host->cluster {} packets, dropped {} (tx full {}, rx missed {}, no mbuf {})",
            self.elapsed.as_secs_f64(),
            self.inbound_packets,
            self.outbound_packets,
            self.dropped(),
            self.tx_full,
            self.cluster.rx_missed + self.host.rx_missed,
            self.cluster.rx_nombuf + self.host.rx_nombuf,
        )?;
        if let Some([accepted, passed, dropped]) = self.filter {
            write!(
                f,
                "; filter accepted {accepted}, passed {passed}, not ours {dropped}"
            )?;
        }
        if let Some((live, full)) = self.descriptors {
            write!(f, "; descriptors live {live}, table full {full}")?;
        }
        if let Some(c) = self.control {
            write!(
                f,
                "; control heartbeats {}, identity {}, unknown code {}, malformed {}, ring full {}, refused {}",
                c.heartbeats, c.identities, c.unknown_code, c.malformed, c.ring_full, c.rejected
            )?;
        }
        if let Some((sent, p99, max)) = self.heartbeats_sent {
            write!(
                f,
                "; heartbeats sent {sent} (late p99 {p99} ms, max {max} ms)"
            )?;
        }
        write!(f, "; per worker")?;
        for (i, n) in self.per_worker.iter().enumerate() {
            write!(f, " {i}:{n}")?;
        }
        Ok(())
    }
}

/// The EAL arguments wlbs passes: the user's, plus an lcore layout when the user gave none
/// (the main lcore and one per worker, all free to run on any CPU, so an appliance with more
/// workers than CPUs still starts; pin them with `-l`/`--lcores` on bare metal).
pub fn eal_args(user: &[String], workers: u16) -> Vec<String> {
    let mut args = vec!["wlbs".to_string()];
    args.extend(user.iter().cloned());
    let has_layout = user.iter().any(|a| {
        a == "-l" || a == "-c" || a.starts_with("--lcores") || a.starts_with("-l") && a.len() > 2
    });
    if !has_layout {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        args.push(format!("--lcores=(0-{workers})@(0-{})", cpus - 1));
    }
    args
}

/// Free 2 MiB (or other size) hugepages, from the text of /proc/meminfo.
pub fn free_hugepages(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn check_hugepages(user_args: &[String]) -> Result<()> {
    if user_args.iter().any(|a| a == "--no-huge") {
        return Ok(());
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if free_hugepages(&meminfo) == 0 {
        bail!(
            "no free hugepages: run scripts/setup.sh (reserves 1 GiB of 2 MiB pages and mounts hugetlbfs), or pass --no-huge to the EAL (after --)"
        );
    }
    Ok(())
}

fn find_port(eal: &Eal, spec: &PortSpec, key: &str) -> Result<Port> {
    let id = eal
        .find_port(&spec.to_string())
        .with_context(|| format!("[dataplane] {key} = {spec:?}"))?;
    Ok(Port::open(id)?)
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The control thread's own TX queue on each port (never shared with a worker), when the
/// driver has one to spare.
struct ControlQueues {
    cluster_tx: Option<TxQueue>,
    host_tx: Option<TxQueue>,
}

impl ControlQueues {
    fn describe(&self) -> String {
        let q = |t: &Option<TxQueue>| match t {
            Some(t) => format!("TX queue {}", t.queue()),
            None => "worker 0's TX queue".to_string(),
        };
        format!(
            "{} on the cluster port and {} on the host port",
            q(&self.cluster_tx),
            q(&self.host_tx)
        )
    }
}

/// Runs the appliance until `stop` is set (by Ctrl-C or SIGTERM), then stops everything.
/// `reload` (SIGHUP) re-reads `config_path`, as `wlbs reload` does.
pub fn run(
    config: &Config,
    config_path: &std::path::Path,
    key: Option<wire::ClusterKey>,
    user_eal_args: &[String],
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
) -> Result<Summary> {
    let dp = &config.dataplane;
    // The control socket first: a second appliance with the same socket stops here, before
    // it touches a port.
    let mut ctl = ctl::Server::bind(&config.control.socket)?;
    let mut stats_server = match config.stats.listen.as_str() {
        "off" => None,
        addr => Some(StatsServer::bind(addr)?),
    };
    check_hugepages(user_eal_args)?;
    let args = eal_args(user_eal_args, dp.workers);
    let eal = Eal::init(&args).with_context(|| {
        format!(
            "EAL initialisation failed (EAL args: {})",
            args[1..].join(" ")
        )
    })?;

    let lcores = eal.worker_lcores();
    if lcores.len() < dp.workers as usize {
        bail!(
            "[dataplane] workers = {} needs {} lcores (the main lcore for the control thread and one per worker), the EAL has {}: give e.g. --lcores=(0-{})@(0-1) after --",
            dp.workers,
            dp.workers + 1,
            lcores.len() + 1,
            dp.workers
        );
    }

    let mut cluster = find_port(&eal, &dp.cluster_port, "cluster_port")?;
    let mut host = find_port(&eal, &dp.host_port, "host_port")?;

    // Enough mbufs to fill every RX and TX ring of both ports, plus the per-lcore caches and a
    // burst in flight per worker.
    let queues = dp.workers as u32;
    let mbufs = dp.mbufs.unwrap_or(
        2 * queues * dp.rx_descriptors as u32
            + 2 * (queues + 1) * dp.tx_descriptors as u32
            + (queues + 1) * (MEMPOOL_CACHE + 64)
            + 1024,
    );
    let pool = Mempool::new(
        "wlbs_mbufs",
        mbufs,
        MEMPOOL_CACHE,
        dp.mbuf_size,
        cluster.socket(),
    )
    .with_context(|| format!("creating a pool of {mbufs} mbufs"))?;

    // Each worker has a TX queue on each port; the control thread wants one more of its own.
    // Some PMDs (net_pcap with one tx_pcap, net_af_packet with qpairs=1) offer only one queue
    // per worker: then control frames will travel through worker 0's queue.
    let mut port_cfgs = Vec::new();
    for (role, port) in [("cluster", &cluster), ("host", &host)] {
        let info = port.info()?;
        if info.max_tx_queues < dp.workers || info.max_rx_queues < dp.workers {
            bail!(
                "[dataplane] workers = {}: the {role} port {} ({}, driver {}) has {} RX and {} TX queues; each worker needs one of each",
                dp.workers,
                port.id(),
                port.name(),
                info.driver,
                info.max_rx_queues,
                info.max_tx_queues
            );
        }
        port_cfgs.push(PortConfig {
            rx_queues: dp.workers,
            tx_queues: (dp.workers + 1).min(info.max_tx_queues),
            rx_descriptors: dp.rx_descriptors,
            tx_descriptors: dp.tx_descriptors,
        });
    }
    for ((role, port), port_cfg) in [("cluster", &mut cluster), ("host", &mut host)]
        .into_iter()
        .zip(&port_cfgs)
    {
        let rss = port.configure(port_cfg, &pool).with_context(|| {
            format!(
                "configuring the {role} port {} ({})",
                port.id(),
                port.name()
            )
        })?;
        let info = port.info()?;
        let mac = port.mac().map(mac_string).unwrap_or_default();
        info!(
            "{role} port {} ({}, driver {}, MAC {mac}): {} RX queues{}, {} TX queues",
            port.id(),
            port.name(),
            info.driver,
            port_cfg.rx_queues,
            if rss { " with RSS" } else { "" },
            port_cfg.tx_queues,
        );
        if port_cfg.rx_queues > 1 && !rss {
            warn!(
                "{role} port {}: driver {} has no RSS; traffic reaches queue 0 only",
                port.id(),
                info.driver
            );
        }
        if port_cfg.tx_queues == dp.workers {
            info!(
                "{role} port {}: driver {} has no spare TX queue for the control thread; its frames will go out through worker 0's queue",
                port.id(),
                info.driver
            );
        }
    }

    let mut worker_queues = Vec::with_capacity(dp.workers as usize);
    for q in 0..dp.workers {
        worker_queues.push(WorkerQueues {
            cluster_rx: cluster.rx_queue(q)?,
            host_tx: host.tx_queue(q)?,
            host_rx: host.rx_queue(q)?,
            cluster_tx: cluster.tx_queue(q)?,
        });
    }
    let control = ControlQueues {
        cluster_tx: (port_cfgs[0].tx_queues > dp.workers)
            .then(|| cluster.tx_queue(dp.workers))
            .transpose()?,
        host_tx: (port_cfgs[1].tx_queues > dp.workers)
            .then(|| host.tx_queue(dp.workers))
            .transpose()?,
    };

    cluster
        .start()
        .with_context(|| format!("starting the cluster port {}", cluster.name()))?;
    host.start()
        .with_context(|| format!("starting the host port {}", host.name()))?;

    // A bump in the wire: the host port sends whatever the host side sends (to any MAC), and
    // the cluster port receives the frames for the host side's own MAC as well as the
    // cluster MAC.
    if let Err(e) = host.set_promiscuous(true) {
        warn!(
            "host port {}: promiscuous mode refused ({e}): only frames for the port's own MAC will reach the cluster",
            host.name()
        );
    }
    let mut diagnostics = Diagnostics::default();
    let mut mac_plan = match (config.cluster.as_ref(), config.host.as_ref()) {
        (Some(c), Some(h)) => Some(program_cluster_port(
            &mut cluster,
            c,
            h,
            dp,
            &mut diagnostics,
        )?),
        _ => {
            if let Err(e) = cluster.set_promiscuous(true) {
                warn!(
                    "cluster port {}: promiscuous mode refused ({e})",
                    cluster.name()
                );
            }
            None
        }
    };

    // The filter: this host's table from the configuration and static membership.
    let mut view = ClusterView::from_config(config);
    let epoch = Instant::now();
    let now_ms = || epoch.elapsed().as_millis() as u64;
    // Dynamic membership (no `[cluster] members`): the core decides what we take; until it
    // converges we take nothing, as an NLB host does while it converges.
    let mut membership = view
        .as_ref()
        .filter(|_| !ClusterView::is_static(config))
        .map(|view| {
            let host_code = (dpdk::rdtsc() as u32) | 1;
            Membership::new(view.membership_settings(config, host_code), now_ms())
        });
    let published = view.as_ref().map(|view| {
        if let Some(m) = &membership {
            info!(
                "cluster {}: host {} starting, converging with heartbeats every {} ms",
                view.spec.cluster_ip,
                view.priority,
                config.cluster.as_ref().map_or(0, |c| c.heartbeat_period_ms)
            );
            let table = view.table_for(&m.ownership(), false, true, 1);
            return Arc::new(ArcSwap::from_pointee(table));
        }
        let members = view.static_members(config);
        let (table, assignment) = view.table(&members, None, 1);
        let mine: u32 = (0..assignment.rules.len())
            .map(|r| assignment.buckets_of(r, view.priority).count_ones())
            .sum();
        info!(
            "cluster {}: host {} of static members {:?}{}; {} port rule(s), {} bucket(s) owned here",
            view.spec.cluster_ip,
            view.priority,
            members.iter().map(|m| m.priority).collect::<Vec<_>>(),
            if table.default_host { ", DEFAULT host" } else { "" },
            view.modes.len(),
            mine
        );
        Arc::new(ArcSwap::from_pointee(table))
    });
    let host_mac = Arc::new(match dp.host_mac {
        Some(mac) => HostMac::fixed(mac.0 .0),
        None => HostMac::learned(),
    });
    let timeouts = Timeouts {
        tcp_idle_ms: dp.tcp_idle_timeout_s.saturating_mul(1000),
        tcp_close_wait_ms: dp.tcp_close_wait_s.saturating_mul(1000),
        udp_idle_ms: dp.udp_idle_timeout_s.saturating_mul(1000),
    };
    let tsc_per_ms = (dpdk::tsc_hz() / 1000).max(1);
    // Remote control: UDP to the cluster IP and port, for the control thread.
    let remote_control_addr = config
        .cluster
        .as_ref()
        .filter(|_| config.remote_control.enabled)
        .map(|c| (c.ip.octets(), config.remote_control.port));
    let mut remote = match (remote_control_addr, key.as_ref(), config.host.as_ref()) {
        (Some(_), Some(k), Some(h)) => Some(remote::Receiver::new(k.bytes().to_vec(), h.priority)),
        _ => None,
    };
    let mut remote_refused = 0u64;
    let per_worker_connections = (dp.max_connections as usize).div_ceil(dp.workers as usize);
    let mut filter_counters: Vec<Arc<FilterCounters>> = Vec::new();
    let mut connection_counts: Vec<Arc<ConnectionCounts>> = Vec::new();
    let mut control_channels: Vec<Arc<ControlChannel>> = Vec::new();
    let mut neighbour = mac_plan
        .as_ref()
        .map(|p| Neighbour::new(p.neighbour.clone(), now_ms()));
    let mut filters: Vec<Option<FilterWorker>> = (0..dp.workers)
        .map(|i| {
            published.as_ref().map(|table| {
                let filter = Filter::new(
                    per_worker_connections,
                    timeouts,
                    dpdk::rdtsc() ^ (i as u64) << 56,
                );
                filter_counters.push(filter.counters());
                connection_counts.push(filter.connection_counts());
                let control = Arc::new(ControlChannel::new(CONTROL_RING));
                control_channels.push(Arc::clone(&control));
                let plan = mac_plan.as_ref().expect("a cluster member has a MAC plan");
                FilterWorker {
                    counters: filter.counters(),
                    filter,
                    table: Arc::clone(table),
                    host_mac: Arc::clone(&host_mac),
                    tsc_per_ms,
                    last_sweep_ms: 0,
                    control,
                    mac: MacPolicy {
                        leak_watch: neighbour
                            .as_ref()
                            .and_then(|n| n.watched_source())
                            .map(|m| m.0),
                        masked_source: plan.masked_source.map(|m| m.0),
                        remote_control: remote_control_addr,
                    },
                }
            })
        })
        .collect();

    let counters: Arc<Vec<WorkerCounters>> =
        Arc::new((0..dp.workers).map(|_| WorkerCounters::default()).collect());
    let worker_stop = Arc::new(AtomicBool::new(false));
    let idle = if dp.busy_poll {
        Idle::BusyPoll
    } else {
        Idle::Backoff
    };
    // Each worker's burst-time histogram, as it last published it (for /metrics).
    let burst_times: Arc<Vec<Mutex<Histogram<u64>>>> = Arc::new(
        (0..dp.workers)
            .map(|_| {
                Mutex::new(
                    Histogram::<u64>::new_with_bounds(1, 1_000_000, 2)
                        .expect("static histogram bounds"),
                )
            })
            .collect(),
    );
    let reports: Arc<Mutex<Vec<Option<WorkerReport>>>> =
        Arc::new(Mutex::new((0..dp.workers).map(|_| None).collect()));

    let started = Instant::now();
    let mut handles = Vec::with_capacity(dp.workers as usize);
    for (i, (q, lcore)) in worker_queues.into_iter().zip(&lcores).enumerate() {
        let counters = Arc::clone(&counters);
        let stop_flag = Arc::clone(&worker_stop);
        let reports = Arc::clone(&reports);
        let burst_times = Arc::clone(&burst_times);
        let filter = filters[i].take();
        let launched = eal.launch(*lcore, move || {
            let report = worker::run(q, &counters[i], &stop_flag, idle, filter, &burst_times[i]);
            if let Ok(mut r) = reports.lock() {
                r[i] = Some(report);
            }
            0
        });
        match launched {
            Ok(h) => handles.push(h),
            Err(e) => {
                worker_stop.store(true, Ordering::SeqCst);
                for h in handles {
                    h.wait();
                }
                return Err(e).context(format!("launching worker {i} on lcore {lcore}"));
            }
        }
    }
    info!(
        "forwarding: {} worker(s) on lcores {:?} ({}); control thread on lcore {} with {}; control socket {}",
        dp.workers,
        &lcores[..dp.workers as usize],
        if dp.busy_poll {
            "busy polling"
        } else {
            "idle back-off"
        },
        eal.main_lcore(),
        control.describe(),
        ctl.path().display(),
    );

    if let Some(a) = stats_server.as_ref().and_then(|s| s.local_addr()) {
        info!("stats: Prometheus metrics at http://{a}/metrics");
    }
    // The configuration in force (a reload replaces it), and a reload staged until every
    // member has it.
    let mut current = config.clone();
    let mut staged_reload: Option<(Config, reload::Plan)> = None;
    let mut control_counts = ControlCounts::default();
    // Convergences and how long each took (from the first "converging" to "converged").
    let mut convergences = 0u64;
    let mut converging_since: Option<u64> = Some(0);
    let mut convergence_ms =
        Histogram::<u64>::new_with_bounds(1, 3_600_000, 2).expect("static histogram bounds");
    let tsc_hz = dpdk::tsc_hz();
    let mut generation = 1u64;
    let mut published_state = None;
    // Heartbeats leave from the masked MAC in unicast mode (the port's own otherwise), to the
    // broadcast address in unicast mode and to the cluster MAC in the multicast modes.
    let heartbeat_source = mac_plan
        .as_ref()
        .map(|p| p.source)
        .unwrap_or(EthernetAddress::BROADCAST);
    let heartbeat_dest = mac_plan
        .as_ref()
        .map(|p| p.heartbeat_destination)
        .unwrap_or(EthernetAddress::BROADCAST);
    let mut leaks_seen = 0u64;
    let mut control_tx = ControlTx {
        cluster: control.cluster_tx,
        host: control.host_tx,
    };
    if let Some(n) = neighbour.as_ref() {
        for frame in n.start_frames() {
            control_tx.send_bytes(&pool, Side::Cluster, &control_channels[0], &frame);
        }
    }
    let mut shared = view.as_ref().map(|v| v.shared_config(config));
    let mut rule_codes = shared.as_ref().map(|s| s.rule_codes()).unwrap_or_default();
    let mut peers = shared.clone().map(Peers::new);
    // Heartbeat send delay against schedule, in ms (1 ms resolution: the control loop's).
    let mut send_jitter =
        Histogram::<u64>::new_with_bounds(1, 60_000, 2).expect("static histogram bounds");
    let mut identity_due_ms = 0u64;
    let mut last_identity_ms = 0u64;
    let host_name: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| {
            h.trim()
                .chars()
                .take(heartbeat::MAX_HOST_NAME_LEN)
                .collect()
        })
        .unwrap_or_default();
    let mut replay = wire::ReplayGuard::default();
    // Sequence numbers start from the wall clock, so they keep growing across restarts.
    let mut sequence = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64 * 1000);
    while !stop.load(Ordering::Relaxed) {
        let tick = match &membership {
            Some(m) => Duration::from_millis(m.poll_timeout().saturating_sub(now_ms()).clamp(1, 5)),
            None => CONTROL_TICK,
        };
        std::thread::sleep(tick);
        let now = now_ms();
        let mut peers_changed = false;
        let mut remote_requests = Vec::new();
        for ch in &control_channels {
            while let Some(frame) = ch.ring.pop() {
                if let (Some((ip, port)), Some(r)) = (remote_control_addr, remote.as_mut()) {
                    if worker::is_udp_to(frame.data(), ip, port) {
                        let Some(d) = RemoteDatagram::parse(frame.data()) else {
                            continue;
                        };
                        let wall = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64);
                        match r.accept(&d.payload, wall) {
                            Ok(Some((request, command))) => {
                                info!("remote control from {}: {}", d.src_ip, command.verb);
                                remote_requests.push((request, command, d));
                            }
                            Ok(None) => {}
                            Err(why) => {
                                remote_refused += 1;
                                // Rate limited: the first, then one line per 100.
                                if remote_refused % 100 == 1 {
                                    warn!(
                                        "remote control command from {}:{} refused: {} ({} refused so far)",
                                        d.src_ip,
                                        d.src_port,
                                        why.label(),
                                        remote_refused
                                    );
                                }
                            }
                        }
                        continue;
                    }
                }
                if !worker::is_nlb_frame(frame.data()) {
                    // ARP, neighbour discovery, IGMP from the wire.
                    let Some(n) = neighbour.as_mut() else {
                        continue;
                    };
                    let outcome = n.on_cluster_frame(frame.data(), now);
                    for d in &outcome.diagnostics {
                        if diagnostics.report(d, now) {
                            warn!("{d}");
                        }
                    }
                    for answer in &outcome.transmit {
                        control_tx.send_bytes(&pool, Side::Cluster, &control_channels[0], answer);
                    }
                    if outcome.pass_to_host {
                        control_tx.send_mbuf(Side::Host, &control_channels[0], frame);
                    }
                    continue;
                }
                let auth = key.as_ref().map(|k| (k, &mut replay));
                let (Some(from), Some(m), Some(peers)) = (
                    control_counts.take(frame.data(), auth),
                    membership.as_mut(),
                    peers.as_mut(),
                ) else {
                    continue;
                };
                match from {
                    FromPeer::Ping(d) => {
                        peers_changed |= peers.heard(d.ping.priority, d.ping.dedicated_ip, d.src);
                        m.handle_ping(now, &d.ping);
                    }
                    FromPeer::Identity(id) => {
                        if let Some(line) = peers.identity(&id) {
                            warn!("{line}");
                        }
                        // Cluster IP, MAC or mode differences are KB Q193598's causes.
                        let priority = id.repr.host_priority;
                        if let Some(info) = peers.get(priority) {
                            for d in &info.differences {
                                if let (Some(kind), Some(diagnosis)) = (d.kind(), d.diagnosis()) {
                                    diagnostics.note(
                                        kind,
                                        format!("{}: {d}. {diagnosis}", info.name_of(priority)),
                                        now,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        if let (Some(n), Some(plan)) = (neighbour.as_mut(), mac_plan.as_ref()) {
            // ARP and neighbour discovery from the host side: never an answer for a VIP.
            for ch in &control_channels {
                while let Some(mut frame) = ch.host_ring.pop() {
                    match n.on_host_frame(frame.data()) {
                        HostFrame::Pass => {
                            plan.mask(frame.data_mut());
                            control_tx.send_mbuf(Side::Cluster, &control_channels[0], frame);
                        }
                        HostFrame::Drop => {}
                        HostFrame::Rewrite(mut bytes) => {
                            plan.mask(&mut bytes);
                            control_tx.send_bytes(
                                &pool,
                                Side::Cluster,
                                &control_channels[0],
                                &bytes,
                            );
                        }
                    }
                }
            }
            if n.poll_timeout().is_some_and(|t| t <= now) {
                for frame in n.handle_timeout(now) {
                    control_tx.send_bytes(&pool, Side::Cluster, &control_channels[0], &frame);
                }
            }
            if peers_changed {
                if let Some(peers) = peers.as_ref() {
                    let ips: Vec<std::net::Ipv4Addr> =
                        peers.iter().filter_map(|(_, p)| p.dedicated_ip).collect();
                    n.set_peer_dedicated_ips(&ips);
                }
            }
            // Frames seen with the cluster MAC as their source (counted by the workers).
            if let Some(mut d) = n.check_source(plan.cluster_mac) {
                let leaks: u64 = control_channels
                    .iter()
                    .map(|c| c.cluster_mac_leaks.load(Ordering::Relaxed))
                    .sum();
                if leaks > leaks_seen {
                    leaks_seen = leaks;
                    if let Diagnostic::ClusterMacLeaked { sender_ip, .. } = &mut d {
                        *sender_ip = control_channels
                            .iter()
                            .map(|c| c.last_leak_sender.load(Ordering::Relaxed) as u32)
                            .find(|&ip| ip != 0)
                            .map(|ip| std::net::IpAddr::V4(ip.into()));
                    }
                    if diagnostics.report(&d, now) {
                        warn!("{d} ({leaks} such frame(s) so far)");
                    }
                }
            }
        }
        let membership_now = membership
            .as_ref()
            .map(|m| (m.state(), m.members().len(), m.heartbeats_missed()));
        let remote_counts: Vec<(&'static str, u64)> = remote.as_ref().map_or(Vec::new(), |r| {
            let mut v: Vec<_> = r.counts.iter().map(|(k, n)| (*k, *n)).collect();
            v.sort_unstable();
            v
        });
        let render = || {
            let snapshots: Vec<Histogram<u64>> = burst_times
                .iter()
                .map(|h| {
                    h.lock()
                        .map(|h| h.clone())
                        .unwrap_or_else(|e| e.into_inner().clone())
                })
                .collect();
            let mut control = control_counts;
            control.ring_full = control_channels
                .iter()
                .map(|c| c.ring_full.load(Ordering::Relaxed))
                .sum();
            // What the published table lets the workers take new connections for.
            let owned_buckets = published.as_ref().map_or(Vec::new(), |t| {
                t.load()
                    .rules()
                    .iter()
                    .map(|r| (r.ownership.owned | r.ownership.incoming).count_ones())
                    .collect()
            });
            stats::render(&stats::MetricsView {
                version: env!("CARGO_PKG_VERSION"),
                cluster: cluster.stats().unwrap_or_default(),
                host: host.stats().unwrap_or_default(),
                workers: &counters,
                burst_cycles: &snapshots,
                tsc_hz,
                filter: &filter_counters,
                connections: &connection_counts,
                rules: view.as_ref().map_or(0, |v| v.modes.len()),
                owned_buckets,
                control: stats::ControlFigures {
                    heartbeats: control.heartbeats,
                    identities: control.identities,
                    unknown_code: control.unknown_code,
                    malformed: control.malformed,
                    rejected: control.rejected,
                    ring_full: control.ring_full,
                },
                membership: membership_now.as_ref().map(|(state, members, missed)| {
                    stats::MembershipFigures {
                        state: *state,
                        members: *members,
                        convergences,
                        convergence_ms: &convergence_ms,
                        heartbeats_sent: send_jitter.len(),
                        heartbeats_missed: *missed,
                        send_delay_ms: &send_jitter,
                    }
                }),
                diagnostics: &diagnostics,
                remote: &remote_counts,
            })
        };
        if let Some(server) = stats_server.as_mut() {
            server.poll(render);
        }
        // What the verbs read besides the membership core (which they may change).
        let facts_now = || {
            let cluster = current.cluster.as_ref();
            verbs::Facts {
                now_ms: now,
                view: view.as_ref(),
                peers: peers.as_ref(),
                host_name: &host_name,
                static_members: cluster.and_then(|c| c.members.clone()),
                heartbeat_period_ms: cluster.map_or(0, |c| c.heartbeat_period_ms),
                heartbeat_tolerance: cluster.map_or(0, |c| c.heartbeat_tolerance),
                descriptors_live: connection_counts.iter().map(|c| c.live()).sum(),
                diagnostics: &diagnostics,
                mac: mac_plan.as_ref().map(|p| p.describe.as_str()),
                heartbeat_late_ms: (!send_jitter.is_empty())
                    .then(|| (send_jitter.value_at_quantile(0.99), send_jitter.max())),
                config: &current,
                rule_figures: rule_figures(&filter_counters, &connection_counts, view.as_ref()),
            }
        };
        let mut reload_now = reload.swap(false, Ordering::Relaxed);
        let mut reload_waiting = Vec::new();
        for (request, command, from) in remote_requests {
            let facts = facts_now();
            let response = verbs::answer(request, membership.as_mut(), &facts, render);
            if let (Some(r), Some(plan), Some((ip, port))) =
                (remote.as_ref(), mac_plan.as_ref(), remote_control_addr)
            {
                let answer = r.answer(&command, &response);
                let frame = from.reply(plan.source, Ipv4Addr::from(ip), port, &answer);
                control_tx.send_bytes(&pool, Side::Cluster, &control_channels[0], &frame);
            }
        }
        while let Some(pending) = ctl.next_request() {
            if pending.request == ctl::Request::Reload {
                reload_now = true;
                reload_waiting.push(pending);
                continue;
            }
            let facts = facts_now();
            if pending.request != ctl::Request::Query && pending.request != ctl::Request::Stats {
                info!("control socket: {:?}", pending.request);
            }
            let request = pending.request.clone();
            let _ = pending.answer(&verbs::answer(request, membership.as_mut(), &facts, render));
        }
        // The configuration the appliance adopts this tick: a reload applied at once, or a
        // staged one the membership core has just switched to.
        let mut adopt: Option<(Config, reload::Plan)> = None;
        if staged_reload.is_some() && membership.as_ref().is_some_and(|m| !m.has_staged()) {
            adopt = staged_reload.take();
            if let Some((_, plan)) = &adopt {
                info!(
                    "reload: every member has the new configuration: applied: {}",
                    plan.changes.join("; ")
                );
            }
        }
        if reload_now {
            // A new configuration: valid and applicable, or nothing changes.
            let outcome = match Config::load(config_path)
                .map_err(|e| e.to_string())
                .and_then(|new| reload::plan(&current, &new).map(|plan| (new, plan)))
            {
                Err(e) => Err(format!("reload refused, nothing changed: {e}")),
                Ok((new, plan)) => {
                    let changes = if plan.changes.is_empty() {
                        "the configuration is unchanged".to_string()
                    } else {
                        plan.changes.join("; ")
                    };
                    let settings =
                        ClusterView::from_config(&new).map(|nv| nv.membership_settings(&new, 0));
                    match (membership.as_mut(), settings) {
                        (Some(m), Some(settings)) => {
                            match m.reconfigure(settings, &plan.kept, now) {
                                Reconfigured::Applied => {
                                    staged_reload = None;
                                    adopt = Some((new, plan));
                                    Ok(format!("reload: applied: {changes}"))
                                }
                                Reconfigured::Staged { waiting } => {
                                    staged_reload = Some((new, plan));
                                    Ok(format!(
                                        "reload: staged: {changes}; it takes effect on every host when hosts {{{}}} have it too (reload them)",
                                        host_list(&waiting)
                                    ))
                                }
                            }
                        }
                        _ => {
                            adopt = Some((new, plan));
                            Ok(format!("reload: applied: {changes}"))
                        }
                    }
                }
            };
            match &outcome {
                Ok(line) => info!("{line}"),
                Err(line) => warn!("{line}"),
            }
            for pending in reload_waiting {
                let _ = pending.answer(&match &outcome {
                    Ok(line) => ctl::Response::ok(line.clone(), serde_json::Value::Null),
                    Err(line) => ctl::Response::refused(line.clone()),
                });
            }
        }
        if let Some((new, _)) = adopt {
            // The appliance follows: rules, VIPs, the filter table, ARP for new VIPs.
            let new_view = ClusterView::from_config(&new);
            if let (Some(nv), Some(table)) = (new_view.as_ref(), published.as_ref()) {
                if membership.is_none() {
                    generation += 1;
                    let (t, _) = nv.table(&nv.static_members(&new), None, generation);
                    table.store(Arc::new(t));
                }
                // Republish with the new rules even if the ownership bits are equal.
                published_state = None;
                let new_shared = nv.shared_config(&new);
                rule_codes = new_shared.rule_codes();
                if let Some(p) = peers.as_mut() {
                    p.set_ours(new_shared.clone());
                }
                shared = Some(new_shared);
                if let (Some(plan_mac), Some(c), Some(h)) =
                    (mac_plan.as_mut(), new.cluster.as_ref(), new.host.as_ref())
                {
                    plan_mac.neighbour.vips = c.vips.clone();
                    plan_mac.neighbour.dedicated_ip = match h.dedicated_ip {
                        Some(std::net::IpAddr::V4(a)) => Some(a),
                        _ => None,
                    };
                    let n = Neighbour::new(plan_mac.neighbour.clone(), now);
                    for frame in n.start_frames() {
                        control_tx.send_bytes(&pool, Side::Cluster, &control_channels[0], &frame);
                    }
                    neighbour = Some(n);
                }
                // The others hear the new configuration at once.
                identity_due_ms = now;
            }
            view = new_view;
            current = new;
        }
        let (Some(m), Some(view), Some(table)) =
            (membership.as_mut(), view.as_ref(), published.as_ref())
        else {
            continue;
        };
        // Outgoing buckets whose descriptors all finished are idle.
        let idle: Vec<u64> = (0..view.modes.len())
            .map(|r| {
                let counts = wlbs_dataplane::conn::sum_buckets(&connection_counts, r as u8);
                counts
                    .iter()
                    .enumerate()
                    .filter(|(_, &n)| n == 0)
                    .fold(0u64, |acc, (b, _)| acc | 1 << b)
            })
            .collect();
        m.set_idle(&idle);
        m.handle_timeout(now);
        let due = m.poll_timeout();
        while let Some(ping) = m.poll_transmit(now) {
            // How late this heartbeat leaves, against its schedule.
            send_jitter.saturating_record(now.saturating_sub(due));
            let frame = wire::encode(
                &ping,
                view.spec.cluster_ip,
                &rule_codes,
                heartbeat_source,
                heartbeat_dest,
                key.as_ref().map(|k| {
                    sequence += 1;
                    (k, sequence)
                }),
            );
            control_tx.send_bytes(&pool, Side::Cluster, &control_channels[0], &frame);
        }
        while let Some(event) = m.poll_event() {
            // A refused or new peer hears our identity (with our configuration) soon, so it
            // can name what differs without waiting for the 10 s period.
            if matches!(event, Event::PeerRefused { .. } | Event::HostJoined { .. }) {
                identity_due_ms = identity_due_ms.min(now.max(last_identity_ms + 1000));
            }
            match event {
                Event::Converged { .. } => {
                    if let Some(since) = converging_since.take() {
                        convergence_ms.saturating_record(now.saturating_sub(since));
                    }
                    convergences += 1;
                }
                Event::Converging { .. } | Event::Started => {
                    converging_since.get_or_insert(now);
                }
                _ => {}
            }
            if let Some(peers) = peers.as_ref() {
                log_event(&event, peers);
            }
        }
        if now >= identity_due_ms {
            last_identity_ms = now;
            identity_due_ms = now + IDENTITY_PERIOD_MS;
            let identity = heartbeat::IdentityRepr {
                version: 0x0206,
                host_priority: view.priority,
                cluster_ip: view.spec.cluster_ip,
                dedicated_ip: match current.host.as_ref().and_then(|h| h.dedicated_ip) {
                    Some(std::net::IpAddr::V4(a)) => Some(a),
                    _ => None,
                },
                host_name: host_name.clone(),
                others: Vec::new(),
            };
            let shared = shared
                .as_ref()
                .expect("a cluster member has a shared config");
            match wire::encode_identity(
                &identity,
                shared,
                heartbeat_source,
                heartbeat_dest,
                key.as_ref().map(|k| {
                    sequence += 1;
                    (k, sequence)
                }),
            ) {
                Ok(frame) => {
                    control_tx.send_bytes(&pool, Side::Cluster, &control_channels[0], &frame)
                }
                Err(e) => warn!("identity heartbeat not sent: {e}"),
            }
        }
        if staged_reload.is_some() && !m.has_staged() {
            // The core switched to the staged configuration this tick: the appliance follows
            // at the start of the next one, before anything is published with it.
            continue;
        }
        let ownership = m.ownership();
        let default_host = m.serves_default();
        let running = !m.is_stopped();
        let now_state = (ownership.clone(), default_host, running);
        if published_state.as_ref() != Some(&now_state) {
            generation += 1;
            table.store(Arc::new(view.table_for(
                &ownership,
                default_host,
                running,
                generation,
            )));
            published_state = Some(now_state);
        }
    }

    if let Some(n) = neighbour.as_ref() {
        // Worker 0 sends what is queued for it before it stops.
        for frame in &n.stop_frames() {
            control_tx.send_bytes(&pool, Side::Cluster, &control_channels[0], frame);
        }
    }
    worker_stop.store(true, Ordering::SeqCst);
    for h in handles {
        let lcore = h.lcore();
        let code = h.wait();
        if code != 0 {
            warn!("worker on lcore {lcore} ended with {code}");
        }
    }
    let elapsed = started.elapsed();

    let mut summary = Summary {
        elapsed,
        ..Summary::default()
    };
    for c in counters.iter() {
        let inbound = c.inbound.packets.load(Ordering::Relaxed);
        let outbound = c.outbound.packets.load(Ordering::Relaxed);
        summary.inbound_packets += inbound;
        summary.outbound_packets += outbound;
        summary.tx_full +=
            c.inbound.tx_full.load(Ordering::Relaxed) + c.outbound.tx_full.load(Ordering::Relaxed);
        summary.per_worker.push(inbound + outbound);
    }
    if published.is_some() {
        let mut totals = [0u64; 3];
        for c in &filter_counters {
            for (t, n) in totals.iter_mut().zip(c.totals()) {
                *t += n;
            }
        }
        summary.filter = Some(totals);
        summary.descriptors = Some(
            connection_counts
                .iter()
                .fold((0, 0), |(l, f), c| (l + c.live(), f + c.full())),
        );
        for ch in &control_channels {
            while let Some(m) = ch.ring.pop() {
                control_counts.take(m.data(), key.as_ref().map(|k| (k, &mut replay)));
            }
            control_counts.ring_full += ch.ring_full.load(Ordering::Relaxed);
        }
        summary.control = Some(control_counts);
        if membership.is_some() {
            summary.heartbeats_sent = Some((
                send_jitter.len(),
                send_jitter.value_at_quantile(0.99),
                send_jitter.max(),
            ));
        }
    }
    summary.cluster = cluster.stats().unwrap_or_default();
    summary.host = host.stats().unwrap_or_default();
    log_burst_times(&reports);

    cluster.stop().context("stopping the cluster port")?;
    host.stop().context("stopping the host port")?;
    Ok(summary)
}

/// Per rule: live descriptors and accepted packets, summed over the workers.
fn rule_figures(
    filter: &[Arc<FilterCounters>],
    connections: &[Arc<ConnectionCounts>],
    view: Option<&ClusterView>,
) -> Vec<(u64, u64)> {
    let rules = view.map_or(0, |v| v.modes.len());
    (0..rules as u8)
        .map(|r| {
            let live: u64 = wlbs_dataplane::conn::sum_buckets(connections, r)
                .iter()
                .map(|&n| n as u64)
                .sum();
            let accepted: u64 = (0..wlbs_dataplane::filter::BUCKETS as u8)
                .map(|b| filter.iter().map(|c| c.accepted(r, b)).sum::<u64>())
                .sum();
            (live, accepted)
        })
        .collect()
}

/// Membership events, named as NLB's event log names them.
fn log_event(event: &Event, peers: &Peers) {
    match event {
        Event::Converged {
            members,
            default_host,
        } => info!(
            "converged with hosts {{{}}}{}",
            host_list(members),
            default_host.map_or(String::new(), |d| format!(" (default host {d})"))
        ),
        Event::Converging { reason } => info!("converging: {reason}"),
        Event::HostFailed { priority } => warn!("host {priority} failed: no heartbeat heard"),
        Event::HostJoined { priority } => info!("host {priority} joined"),
        Event::HostLeft { priority } => info!("host {priority} left the cluster (stopped)"),
        Event::Stopped => info!("host stopped: taking no traffic until start"),
        Event::Started => info!("host started: converging"),
        Event::PeerRefused {
            priority,
            dedicated_ip,
            cause,
        } => {
            let mut info = peers.get(*priority).cloned().unwrap_or_default();
            if !dedicated_ip.is_unspecified() {
                info.dedicated_ip = Some(*dedicated_ip);
            }
            let who = info.name_of(*priority);
            match cause {
                Refusal::ConfigMismatch { .. } if !info.differences.is_empty() => warn!(
                    "{who} refused: configuration differs: {}",
                    describe(&info.differences)
                ),
                Refusal::ConfigMismatch { ours, theirs } => warn!(
                    "{who} refused: configuration differs (fingerprint {ours:08x} here, {theirs:08x} there); the fields follow when its identity heartbeat arrives"
                ),
                Refusal::DuplicatePriority => warn!(
                    "{who} refused: another host uses host priority {priority} (each host needs its own)"
                ),
                Refusal::DuplicateHandlingPriority {
                    rule,
                    handling_priority,
                } => warn!(
                    "{who} refused: rule {}: handling priority {handling_priority} is used by another host too (single-host rules need distinct handling priorities)",
                    rule + 1
                ),
            }
        }
        Event::Partition { other_default } => warn!(
            "network partition: host {other_default} is a second default host (duplicate cluster subnets)"
        ),
        Event::DrainComplete => info!("drainstop complete: no connections left, host stopped"),
        Event::ConfigApplied => info!("converging with the reloaded configuration"),
        Event::Outvoted { majority } => warn!(
            "this host's configuration differs from the one hosts {{{}}} share: it takes no traffic until its configuration matches theirs (NLB: inconsistent port rules); see the refusals above for the fields",
            host_list(majority)
        ),
    }
}

fn log_burst_times(reports: &Mutex<Vec<Option<WorkerReport>>>) {
    let hz = dpdk::tsc_hz().max(1) as f64;
    let Ok(reports) = reports.lock() else { return };
    for (i, r) in reports.iter().enumerate() {
        let Some(r) = r else { continue };
        let h = &r.cycles_per_packet;
        if h.is_empty() {
            continue;
        }
        let ns = |cycles: u64| cycles as f64 * 1e9 / hz;
        info!(
            "worker {i}: burst processing per packet p50 {:.1} ns, p99 {:.1} ns, max {:.1} ns over {} timed bursts (one in {})",
            ns(h.value_at_quantile(0.5)),
            ns(h.value_at_quantile(0.99)),
            ns(h.max()),
            h.len(),
            wlbs_dataplane::worker::TIME_EVERY_BURSTS
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcore_layout_is_added_only_when_missing() {
        let a = eal_args(&["--no-huge".into()], 2);
        assert_eq!(a[0], "wlbs");
        assert!(
            a.iter().any(|x| x.starts_with("--lcores=(0-2)@(0-")),
            "{a:?}"
        );
        let b = eal_args(&["-l".into(), "0-1".into()], 1);
        assert!(!b.iter().any(|x| x.starts_with("--lcores")), "{b:?}");
        let c = eal_args(&["--lcores=0@0,1@1".into()], 1);
        assert_eq!(c.iter().filter(|x| x.starts_with("--lcores")).count(), 1);
    }

    #[test]
    fn hugepages_free_is_read_from_meminfo() {
        let m = "MemTotal: 1 kB\nHugePages_Total:    1024\nHugePages_Free:      17\n";
        assert_eq!(free_hugepages(m), 17);
        assert_eq!(free_hugepages("MemTotal: 1 kB\n"), 0);
    }

    #[test]
    fn summary_is_one_line_with_every_figure() {
        let s = Summary {
            elapsed: Duration::from_millis(1500),
            inbound_packets: 10,
            outbound_packets: 3,
            tx_full: 2,
            per_worker: vec![8, 5],
            ..Summary::default()
        };
        let line = s.to_string();
        assert!(!line.contains('\n'));
        assert_eq!(
            line,
            "wlbs: stopped after 1.500 s: cluster->host 10 packets, host->cluster 3 packets, dropped 2 (tx full 2, rx missed 0, no mbuf 0); per worker 0:8 1:5"
        );
    }
}
