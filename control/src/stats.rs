//! What `/metrics` and `wlbs stats` show: every figure the appliance keeps, as Prometheus
//! metric families (see README "Metrics" for the list).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use dpdk::PortStats;
use hdrhistogram::Histogram;
use wlbs_dataplane::conn::ConnectionCounts;
use wlbs_dataplane::filter::classify::FilterCounters;
use wlbs_dataplane::filter::{Reason, BUCKETS};
use wlbs_dataplane::worker::WorkerCounters;

use crate::diagnostics::Diagnostics;
use crate::membership::HostState;
use crate::metrics::Exposition;

/// Heartbeat send delay buckets, seconds.
const SEND_DELAY_BOUNDS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
/// Convergence duration buckets, seconds.
const CONVERGENCE_BOUNDS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Burst processing time per packet buckets, seconds.
const PER_PACKET_BOUNDS: [f64; 10] = [
    10e-9, 20e-9, 50e-9, 100e-9, 200e-9, 500e-9, 1e-6, 2e-6, 5e-6, 10e-6,
];

/// Membership figures (heartbeat membership only).
pub struct MembershipFigures<'a> {
    pub state: HostState,
    pub members: usize,
    pub convergences: u64,
    /// Convergence durations, milliseconds.
    pub convergence_ms: &'a Histogram<u64>,
    pub heartbeats_sent: u64,
    pub heartbeats_missed: u64,
    /// Heartbeat send delay against schedule, milliseconds.
    pub send_delay_ms: &'a Histogram<u64>,
}

/// Control-plane counters of frames from the workers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ControlFigures {
    pub heartbeats: u64,
    pub identities: u64,
    pub unknown_code: u64,
    pub malformed: u64,
    pub rejected: u64,
    pub ring_full: u64,
}

pub struct MetricsView<'a> {
    pub version: &'static str,
    pub cluster: PortStats,
    pub host: PortStats,
    pub workers: &'a [WorkerCounters],
    /// Per worker: burst processing time per packet, TSC cycles.
    pub burst_cycles: &'a [Histogram<u64>],
    pub tsc_hz: u64,
    pub filter: &'a [Arc<FilterCounters>],
    pub connections: &'a [Arc<ConnectionCounts>],
    pub rules: usize,
    /// Buckets this host takes new connections for, per rule.
    pub owned_buckets: Vec<u32>,
    pub control: ControlFigures,
    pub membership: Option<MembershipFigures<'a>>,
    pub diagnostics: &'a Diagnostics,
    /// Remote control commands by result.
    pub remote: &'a [(&'static str, u64)],
}

type OwnedLabels = Vec<(&'static str, String)>;

fn l(pairs: &[(&'static str, &str)]) -> OwnedLabels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

pub fn render(v: &MetricsView) -> String {
    let mut e = Exposition::new();
    let build = l(&[("version", v.version)]);
    e.gauge(
        "wlbs_build_info",
        "Build information; the value is 1.",
        &[(&build, 1.0)],
    );

    let ports = [("cluster", &v.cluster), ("host", &v.host)];
    let mut packets = Vec::new();
    let mut bytes = Vec::new();
    let mut labels = Vec::new();
    for (port, s) in ports {
        labels.push((
            l(&[("port", port), ("direction", "rx")]),
            s.rx_packets,
            s.rx_bytes,
        ));
        labels.push((
            l(&[("port", port), ("direction", "tx")]),
            s.tx_packets,
            s.tx_bytes,
        ));
    }
    for (lab, p, b) in &labels {
        packets.push((lab.as_slice(), *p));
        bytes.push((lab.as_slice(), *b));
    }
    e.counter(
        "wlbs_port_packets_total",
        "Packets per port and direction, as the port counts them (rte_eth_stats).",
        &packets,
    );
    e.counter(
        "wlbs_port_bytes_total",
        "Bytes per port and direction, as the port counts them (rte_eth_stats).",
        &bytes,
    );
    let sum = |f: &dyn Fn(&WorkerCounters) -> u64| v.workers.iter().map(f).sum::<u64>();
    let tx_full_cluster =
        sum(&|w| w.outbound.tx_full.load(Relaxed) + w.control.tx_full.load(Relaxed));
    let tx_full_host = sum(&|w| w.inbound.tx_full.load(Relaxed));
    let drops = [
        (
            l(&[("port", "cluster"), ("reason", "rx_missed")]),
            v.cluster.rx_missed,
        ),
        (
            l(&[("port", "cluster"), ("reason", "rx_nombuf")]),
            v.cluster.rx_nombuf,
        ),
        (
            l(&[("port", "cluster"), ("reason", "rx_errors")]),
            v.cluster.rx_errors,
        ),
        (
            l(&[("port", "cluster"), ("reason", "tx_full")]),
            tx_full_cluster,
        ),
        (
            l(&[("port", "host"), ("reason", "rx_missed")]),
            v.host.rx_missed,
        ),
        (
            l(&[("port", "host"), ("reason", "rx_nombuf")]),
            v.host.rx_nombuf,
        ),
        (
            l(&[("port", "host"), ("reason", "rx_errors")]),
            v.host.rx_errors,
        ),
        (l(&[("port", "host"), ("reason", "tx_full")]), tx_full_host),
    ];
    let drops: Vec<_> = drops.iter().map(|(a, b)| (a.as_slice(), *b)).collect();
    e.counter(
        "wlbs_port_dropped_packets_total",
        "Packets lost at a port: NIC ring full (rx_missed), no mbuf (rx_nombuf), receive errors, or a full TX queue (tx_full).",
        &drops,
    );

    let mut forwarded = Vec::new();
    for (i, w) in v.workers.iter().enumerate() {
        let q = i.to_string();
        for (dir, c) in [
            ("inbound", &w.inbound),
            ("outbound", &w.outbound),
            ("control", &w.control),
        ] {
            forwarded.push((
                l(&[("worker", &q), ("direction", dir)]),
                c.packets.load(Relaxed),
            ));
        }
    }
    let forwarded: Vec<_> = forwarded.iter().map(|(a, b)| (a.as_slice(), *b)).collect();
    e.counter(
        "wlbs_worker_packets_total",
        "Packets each worker forwarded: inbound (cluster to host), outbound (host to cluster), control (frames of the control thread).",
        &forwarded,
    );
    let hz = v.tsc_hz.max(1) as f64;
    let burst: Vec<(OwnedLabels, &Histogram<u64>)> = v
        .burst_cycles
        .iter()
        .enumerate()
        .map(|(i, h)| (vec![("worker", i.to_string())], h))
        .collect();
    let burst: Vec<_> = burst.iter().map(|(a, h)| (a.as_slice(), *h)).collect();
    e.histogram(
        "wlbs_worker_burst_seconds_per_packet",
        &format!(
            "Processing time of non-empty bursts (one in {} is timed) divided by their packets, per worker.",
            wlbs_dataplane::worker::TIME_EVERY_BURSTS
        ),
        &PER_PACKET_BOUNDS,
        1.0 / hz,
        &burst,
    );

    if !v.filter.is_empty() {
        let mut verdicts = Vec::new();
        for r in Reason::ALL {
            let n: u64 = v.filter.iter().map(|c| c.verdicts(r)).sum();
            let kind = match r as usize {
                x if x <= Reason::HandOffUdp as usize => "accept",
                x if x == Reason::Fragment as usize => "follow",
                x if x < Reason::DedicatedIp as usize => "drop",
                _ => "pass",
            };
            verdicts.push((l(&[("verdict", kind), ("reason", r.name())]), n));
        }
        let verdicts: Vec<_> = verdicts.iter().map(|(a, b)| (a.as_slice(), *b)).collect();
        e.counter(
            "wlbs_filter_verdicts_total",
            "Filter verdicts by reason (fragments follow their first fragment's verdict).",
            &verdicts,
        );
        let mut buckets = Vec::new();
        for rule in 0..v.rules {
            for b in 0..BUCKETS {
                let n: u64 = v
                    .filter
                    .iter()
                    .map(|c| c.accepted(rule as u8, b as u8))
                    .sum();
                buckets.push((
                    l(&[
                        ("rule", &(rule + 1).to_string()),
                        ("bucket", &b.to_string()),
                    ]),
                    n,
                ));
            }
        }
        let buckets: Vec<_> = buckets.iter().map(|(a, b)| (a.as_slice(), *b)).collect();
        e.counter(
            "wlbs_bucket_accepted_packets_total",
            "Packets this host accepted, per port rule (from 1) and bucket (0..59).",
            &buckets,
        );
        let conn =
            |f: &dyn Fn(&ConnectionCounts) -> u64| v.connections.iter().map(|c| f(c)).sum::<u64>();
        e.gauge(
            "wlbs_descriptors",
            "Connection descriptors live now.",
            &[(&[], conn(&|c| c.live()) as f64)],
        );
        e.counter(
            "wlbs_descriptors_created_total",
            "Connection descriptors created.",
            &[(&[], conn(&|c| c.created()))],
        );
        e.counter(
            "wlbs_descriptors_closed_total",
            "Connection descriptors freed after RST or FIN.",
            &[(&[], conn(&|c| c.closed()))],
        );
        e.counter(
            "wlbs_descriptors_expired_total",
            "Connection descriptors freed by the idle timeout.",
            &[(&[], conn(&|c| c.expired()))],
        );
        e.counter(
            "wlbs_descriptors_full_total",
            "New connections the full descriptor table could not record (they fall back to bucket ownership).",
            &[(&[], conn(&|c| c.full()))],
        );
        let owned: Vec<_> = v
            .owned_buckets
            .iter()
            .enumerate()
            .map(|(r, n)| (l(&[("rule", &(r + 1).to_string())]), *n as f64))
            .collect();
        let owned: Vec<_> = owned.iter().map(|(a, b)| (a.as_slice(), *b)).collect();
        e.gauge(
            "wlbs_owned_buckets",
            "Buckets this host takes new connections for, per port rule.",
            &owned,
        );
        let c = v.control;
        let frames = [
            (l(&[("kind", "heartbeat")]), c.heartbeats),
            (l(&[("kind", "identity")]), c.identities),
            (l(&[("kind", "unknown_code")]), c.unknown_code),
            (l(&[("kind", "malformed")]), c.malformed),
        ];
        let frames: Vec<_> = frames.iter().map(|(a, b)| (a.as_slice(), *b)).collect();
        e.counter(
            "wlbs_heartbeats_received_total",
            "Frames of EtherType 0x886F received, by kind.",
            &frames,
        );
        e.counter(
            "wlbs_heartbeats_rejected_total",
            "Heartbeats and identities refused with a cluster key: missing or wrong tag, or replayed.",
            &[(&[], c.rejected)],
        );
        e.counter(
            "wlbs_control_ring_full_total",
            "Control frames a worker dropped because its ring to the control thread was full.",
            &[(&[], c.ring_full)],
        );
    }

    if let Some(m) = &v.membership {
        let states = [
            HostState::Converging,
            HostState::Converged,
            HostState::ConvergedDefault,
            HostState::Draining,
            HostState::Stopped,
            HostState::Suspended,
        ];
        let state: Vec<_> = states
            .iter()
            .map(|s| {
                (
                    l(&[("state", s.key())]),
                    if *s == m.state { 1.0 } else { 0.0 },
                )
            })
            .collect();
        let state: Vec<_> = state.iter().map(|(a, b)| (a.as_slice(), *b)).collect();
        e.gauge(
            "wlbs_host_state",
            "This host's state (1 for the current one); NLB's code is in wlbs_host_state_code.",
            &state,
        );
        e.gauge(
            "wlbs_host_state_code",
            "NLB's code for this host's state (1005 stopped ... 1008 converged as default).",
            &[(&[], m.state.nlb_code() as f64)],
        );
        e.gauge(
            "wlbs_members",
            "Live members this host agrees on, itself included.",
            &[(&[], m.members as f64)],
        );
        e.counter(
            "wlbs_convergences_total",
            "Times this host converged.",
            &[(&[], m.convergences)],
        );
        e.histogram(
            "wlbs_convergence_duration_seconds",
            "From the start of a convergence to its end.",
            &CONVERGENCE_BOUNDS,
            1e-3,
            &[(&[], m.convergence_ms)],
        );
        e.counter(
            "wlbs_heartbeats_sent_total",
            "Heartbeats this host sent.",
            &[(&[], m.heartbeats_sent)],
        );
        e.counter(
            "wlbs_heartbeats_missed_total",
            "Heartbeat periods in which a member's heartbeat did not arrive.",
            &[(&[], m.heartbeats_missed)],
        );
        e.histogram(
            "wlbs_heartbeat_send_delay_seconds",
            "How late each heartbeat left against its schedule (1 ms resolution): the send jitter.",
            &SEND_DELAY_BOUNDS,
            1e-3,
            &[(&[], m.send_delay_ms)],
        );
    }

    let kinds = [
        "cluster_ip_mismatch",
        "mac_not_programmable",
        "ip_address_conflict",
        "cluster_mac_leaked",
        "mode_mismatch",
    ];
    let diags: Vec<_> = kinds
        .iter()
        .map(|k| {
            (
                l(&[("kind", k)]),
                v.diagnostics.counts().get(k).copied().unwrap_or(0),
            )
        })
        .collect();
    let diags: Vec<_> = diags.iter().map(|(a, b)| (a.as_slice(), *b)).collect();
    e.counter(
        "wlbs_diagnostics_total",
        "Named diagnostics found, by kind (see README: Diagnostics).",
        &diags,
    );
    if !v.remote.is_empty() {
        let remote: Vec<_> = v
            .remote
            .iter()
            .map(|(r, n)| (l(&[("result", r)]), *n))
            .collect();
        let remote: Vec<_> = remote.iter().map(|(a, b)| (a.as_slice(), *b)).collect();
        e.counter(
            "wlbs_remote_commands_total",
            "Remote control commands received, by result.",
            &remote,
        );
    }
    e.finish()
}
