//! The worker poll loop, one per RX queue of the cluster port, in the shape of DPDK's l2fwd:
//! receive a burst, judge each packet, send, repeat. Each worker also serves the host port's
//! queue of the same index, so both directions of a flow stay on one core.
//!
//! Inbound (cluster -> host) frames go through the filter when the appliance is a cluster
//! member; outbound (host -> cluster) frames pass. The filter table is loaded once per burst,
//! so every packet is judged by exactly one published table.
//!
//! Counters live in the worker's own cache lines and are written with relaxed stores by that
//! worker only; the control thread reads them whenever it likes.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use dpdk::{Burst, Mbuf, RxQueue, TxQueue, BURST_SIZE};
use hdrhistogram::Histogram;

use crate::filter::classify::{Decision, Filter, FilterCounters, Tally, Triaged};
use crate::filter::frag::{DatagramKey, HeldFragments};
use crate::filter::table::FilterTable;
use crate::filter::{Reason, Verdict};

/// The four queues one worker owns: it polls `cluster_rx` and `host_rx`, and transmits on
/// `host_tx` and `cluster_tx` (never shared with another thread).
pub struct WorkerQueues {
    pub cluster_rx: RxQueue,
    pub host_tx: TxQueue,
    pub host_rx: RxQueue,
    pub cluster_tx: TxQueue,
}

/// How a worker waits when there is nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Pure busy polling (bare metal, a dedicated core).
    BusyPoll,
    /// Pause, then short sleeps, so several appliances can share few cores.
    Backoff,
}

/// One direction's counters.
#[derive(Default)]
pub struct DirectionCounters {
    /// Packets forwarded. (Bytes are counted by the ports themselves: `rte_eth_stats`.)
    pub packets: AtomicU64,
    /// Packets the TX queue had no room for (dropped, like l2fwd does).
    pub tx_full: AtomicU64,
}

/// Counters of one worker; one writer (the worker), any number of readers.
#[derive(Default)]
#[repr(align(128))]
pub struct WorkerCounters {
    /// Cluster port to host port.
    pub inbound: DirectionCounters,
    /// Host port to cluster port.
    pub outbound: DirectionCounters,
    /// Control frames (heartbeats) the control thread sent through this worker.
    pub control: DirectionCounters,
    /// Polls that found both RX queues empty.
    pub idle_polls: AtomicU64,
}

/// Adds to a counter that only this thread writes: a plain load and store, no locked add.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

/// The host side's MAC: accepted frames are sent to it. Configured, or learned from the source
/// of frames the host port sends; unknown until then (frames keep their destination).
pub struct HostMac {
    /// 0: unknown; else 1 << 48 | the address.
    value: AtomicU64,
    fixed: bool,
}

impl HostMac {
    pub fn fixed(mac: [u8; 6]) -> HostMac {
        HostMac {
            value: AtomicU64::new(1 << 48 | mac_to_u64(&mac)),
            fixed: true,
        }
    }

    pub fn learned() -> HostMac {
        HostMac {
            value: AtomicU64::new(0),
            fixed: false,
        }
    }

    pub fn get(&self) -> Option<[u8; 6]> {
        let v = self.value.load(Relaxed);
        (v != 0).then(|| {
            let b = v.to_be_bytes();
            [b[2], b[3], b[4], b[5], b[6], b[7]]
        })
    }

    /// Learns from an outbound frame's source MAC (unicast only).
    #[inline]
    pub fn learn(&self, frame: &[u8]) {
        if self.fixed || frame.len() < 12 || frame[6] & 1 != 0 {
            return;
        }
        let v = 1 << 48 | mac_to_u64(&frame[6..12]);
        if self.value.load(Relaxed) != v {
            self.value.store(v, Relaxed);
        }
    }
}

fn mac_to_u64(mac: &[u8]) -> u64 {
    mac.iter().take(6).fold(0u64, |acc, &b| acc << 8 | b as u64)
}

/// Frames for the control thread (heartbeats), handed over through a lock-free ring: one
/// producer (the worker), one consumer (the control thread). The ring holds mbufs, so nothing is
/// copied; a full ring drops the frame and counts it (the control thread is late, and a lost
/// heartbeat is tolerated by design).
pub struct ControlChannel {
    /// Control frames from the cluster port: heartbeats, ARP, neighbour discovery, IGMP.
    pub ring: ArrayQueue<Mbuf>,
    /// ARP and neighbour discovery frames the host side sends: the control thread decides
    /// whether they may reach the cluster (a host must not answer for a VIP).
    pub host_ring: ArrayQueue<Mbuf>,
    /// Frames the control thread sends through this worker's cluster TX queue, when the
    /// driver has no spare TX queue for the control thread (net_pcap, net_af_packet).
    pub tx: ArrayQueue<Mbuf>,
    /// The same for the host port.
    pub host_tx: ArrayQueue<Mbuf>,
    /// Frames handed over.
    pub frames: AtomicU64,
    /// Frames dropped because the ring was full.
    pub ring_full: AtomicU64,
    /// Frames seen on the cluster port with the cluster MAC as their source (a leak: the
    /// switch learns it).
    pub cluster_mac_leaks: AtomicU64,
    /// The IPv4 source of the last such frame (0: not IPv4).
    pub last_leak_sender: AtomicU64,
}

impl ControlChannel {
    pub fn new(capacity: usize) -> ControlChannel {
        ControlChannel {
            ring: ArrayQueue::new(capacity.max(1)),
            host_ring: ArrayQueue::new(capacity.max(1)),
            tx: ArrayQueue::new(64),
            host_tx: ArrayQueue::new(64),
            frames: AtomicU64::new(0),
            ring_full: AtomicU64::new(0),
            cluster_mac_leaks: AtomicU64::new(0),
            last_leak_sender: AtomicU64::new(0),
        }
    }
}

/// What the cluster MAC mode asks of the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacPolicy {
    /// A source MAC that must never be seen on the wire (the cluster MAC in unicast mode with
    /// masking): frames with it are counted as leaks. `None`: nothing to watch.
    pub leak_watch: Option<[u8; 6]>,
    /// Unicast mode with masking: the source every frame leaving the cluster port carries
    /// (02-<priority>-<cluster IP>).
    pub masked_source: Option<[u8; 6]>,
    /// Remote control: UDP to this address and port goes to the control thread.
    pub remote_control: Option<([u8; 4], u16)>,
}

/// An untagged IPv4/UDP frame to `addr`:`port` (a remote control command).
#[inline]
pub fn is_udp_to(frame: &[u8], addr: [u8; 4], port: u16) -> bool {
    if frame.get(12..14) != Some(&[0x08, 0x00][..]) || frame.get(23) != Some(&17) {
        return false;
    }
    let ihl = frame.get(14).map_or(0, |v| (v & 0x0f) as usize * 4);
    frame.get(30..34) == Some(&addr[..])
        && ihl >= 20
        && frame.get(14 + ihl + 2..14 + ihl + 4) == Some(&port.to_be_bytes()[..])
}

/// EtherType of NLB heartbeats (and other Microsoft cluster frames: the control thread checks
/// the code inside).
pub const ETHERTYPE_NLB: u16 = 0x886f;

/// Whether a frame from the cluster port belongs to the control thread rather than the filter:
/// an untagged frame of the NLB EtherType (heartbeats are sent untagged on the cluster's
/// segment, as NLB does), or a neighbour frame (see [`is_neighbour_frame`]).
#[inline]
pub fn is_control_frame(frame: &[u8]) -> bool {
    is_nlb_frame(frame) || is_neighbour_frame(frame)
}

/// An untagged frame of the NLB EtherType (heartbeats, identity heartbeats).
#[inline]
pub fn is_nlb_frame(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&ETHERTYPE_NLB.to_be_bytes()[..])
}

/// An untagged ARP frame, IPv6 neighbour solicitation or advertisement (no extension
/// headers, as RFC 4861 sends them), or IGMP message: the control thread answers for the
/// VIPs, keeps the host side from answering, and joins the IGMP group.
#[inline]
pub fn is_neighbour_frame(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x06]) => true,
        // IPv4, protocol 2 (IGMP).
        Some([0x08, 0x00]) => frame.get(23) == Some(&2),
        // IPv6, next header 58 (ICMPv6), type 135 or 136.
        Some([0x86, 0xdd]) => {
            frame.get(20) == Some(&58) && matches!(frame.get(54), Some(135 | 136))
        }
        _ => false,
    }
}

/// What a filtering worker needs beyond its queues.
pub struct FilterWorker {
    pub filter: Filter,
    /// `filter.counters()`, kept so the loop touches no reference count per burst.
    pub counters: Arc<FilterCounters>,
    /// The table the control thread publishes.
    pub table: Arc<ArcSwap<FilterTable>>,
    pub host_mac: Arc<HostMac>,
    /// TSC ticks per millisecond, for the filter's clock.
    pub tsc_per_ms: u64,
    /// When the idle sweep last ran (filter clock).
    pub last_sweep_ms: u32,
    /// Heartbeats go here instead of through the filter.
    pub control: Arc<ControlChannel>,
    pub mac: MacPolicy,
}

/// Where a frame the worker does not forward goes.
#[derive(Clone, Copy)]
enum Reject {
    Drop,
    Hold(DatagramKey),
    Control,
}

/// A filtering worker's spare bursts and held fragments, allocated once.
struct Scratch {
    /// Held fragments whose first fragment has decided, on their way out.
    released: Burst,
    /// Frames to free together at the end of a burst.
    dropped: Burst,
    held: HeldFragments<Mbuf>,
    /// The first step's findings for each frame of the burst being filtered.
    triage: [Triaged; BURST_SIZE],
}

// Control frames of a burst are marked in a u64.
const _: () = assert!(BURST_SIZE <= 64);

/// What a worker hands back when it stops.
pub struct WorkerReport {
    /// Processing time of sampled non-empty bursts, in TSC cycles per packet.
    pub cycles_per_packet: Histogram<u64>,
}

/// One non-empty burst in this many is timed. Reading the TSC costs about 10 ns on the
/// development VM (measured: 9.6 ns per `rdtsc`), and a burst of 32 frames judged on the drop
/// path takes about 900 ns: timing every burst cost a few percent of the rate.
pub const TIME_EVERY_BURSTS: u32 = 8;

/// The burst-time histogram, fed by a sample of the bursts.
struct BurstTimer {
    cycles_per_packet: Histogram<u64>,
    /// Non-empty bursts until the next timed one.
    countdown: u32,
}

impl BurstTimer {
    /// Times the first non-empty burst, then one in [`TIME_EVERY_BURSTS`].
    fn new() -> BurstTimer {
        BurstTimer {
            cycles_per_packet: Histogram::<u64>::new_with_bounds(1, 1_000_000, 2)
                .expect("static histogram bounds"),
            countdown: 1,
        }
    }

    /// The TSC now if this burst is one to time.
    #[inline]
    fn start(&mut self) -> Option<u64> {
        if self.countdown > 1 {
            self.countdown -= 1;
            return None;
        }
        self.countdown = TIME_EVERY_BURSTS;
        Some(dpdk::rdtsc())
    }

    #[inline]
    fn stop(&mut self, started: Option<u64>, packets: usize) {
        if let Some(start) = started {
            let per_packet = (dpdk::rdtsc().wrapping_sub(start) / packets.max(1) as u64).max(1);
            self.cycles_per_packet.saturating_record(per_packet);
        }
    }
}

/// Spins briefly on an empty poll, then sleeps for growing short intervals (up to
/// `MAX_SLEEP`), so an idle appliance costs little CPU but answers within a millisecond.
struct Backoff {
    idle: Idle,
    empty_polls: u32,
}

const SPIN_POLLS: u32 = 512;
const MAX_SLEEP: Duration = Duration::from_micros(500);
/// The idle sweep visits every descriptor slot once per this many milliseconds, a slice per
/// millisecond: bounded work per burst, and no streaming of the whole table through the cache
/// (which a fixed per-loop budget does under load, evicting the live descriptors).
const SWEEP_PERIOD_MS: usize = 1000;

impl Backoff {
    #[inline]
    fn on_poll(&mut self, got: usize) {
        if got > 0 || self.idle == Idle::BusyPoll {
            self.empty_polls = 0;
            return;
        }
        self.empty_polls = self.empty_polls.saturating_add(1);
        if self.empty_polls < SPIN_POLLS {
            dpdk::pause();
        } else {
            let step = (self.empty_polls - SPIN_POLLS).min(6);
            std::thread::sleep((Duration::from_micros(10) * (1 << step)).min(MAX_SLEEP));
        }
    }
}

/// How often a worker copies its burst-time histogram to where the control thread reads it.
const PUBLISH_EVERY_MS: u64 = 500;

/// Runs the loop until `stop` is set: pass-through when `filter` is `None`. The burst-time
/// histogram is copied into `published` about every half second (never waiting for the lock).
pub fn run(
    mut q: WorkerQueues,
    counters: &WorkerCounters,
    stop: &AtomicBool,
    idle: Idle,
    mut filter: Option<FilterWorker>,
    published: &Mutex<Histogram<u64>>,
) -> WorkerReport {
    let publish_every = (dpdk::tsc_hz() / 1000).max(1) * PUBLISH_EVERY_MS;
    let mut next_publish = dpdk::rdtsc().wrapping_add(publish_every);
    let mut burst = Burst::new();
    let mut scratch = Scratch {
        released: Burst::new(),
        dropped: Burst::new(),
        held: HeldFragments::default(),
        triage: [Triaged::default(); BURST_SIZE],
    };
    let mut backoff = Backoff {
        idle,
        empty_polls: 0,
    };
    let mut timer = BurstTimer::new();
    while !stop.load(Relaxed) {
        // The loop's one clock reading: the filter's milliseconds and the publish schedule.
        let now = dpdk::rdtsc();
        let inbound = match filter.as_mut() {
            None => forward(
                &mut q.cluster_rx,
                &mut q.host_tx,
                &mut burst,
                &counters.inbound,
                &mut timer,
                |_| {},
            ),
            Some(f) => filter_inbound(
                f,
                &mut q,
                &mut burst,
                &mut scratch,
                &counters.inbound,
                &mut timer,
                now,
            ),
        };
        if let Some(f) = filter.as_ref() {
            send_control_frames(f, &mut q, &mut burst, counters);
        }
        let outbound = match filter.as_ref() {
            None => forward(
                &mut q.host_rx,
                &mut q.cluster_tx,
                &mut burst,
                &counters.outbound,
                &mut timer,
                |_| {},
            ),
            Some(f) => outbound_to_cluster(
                f,
                &mut q,
                &mut burst,
                &mut scratch.dropped,
                &counters.outbound,
                &mut timer,
            ),
        };
        if inbound + outbound == 0 {
            bump(&counters.idle_polls, 1);
        }
        if now >= next_publish {
            next_publish = now.wrapping_add(publish_every);
            if let Ok(mut h) = published.try_lock() {
                h.reset();
                let _ = h.add(&timer.cycles_per_packet);
            }
        }
        backoff.on_poll(inbound + outbound);
    }
    // The control thread's last frames (an IGMP leave) may have been queued just before the
    // stop, while this worker slept: send them before leaving.
    if let Some(f) = filter.as_ref() {
        send_control_frames(f, &mut q, &mut burst, counters);
    }
    if let Ok(mut h) = published.lock() {
        h.reset();
        let _ = h.add(&timer.cycles_per_packet);
    }
    if let Some(counters) = filter.as_ref().map(|f| &f.counters) {
        scratch
            .held
            .drain(|_| counters.count(&Decision::of(Verdict::Drop(Reason::FragmentTimeout))));
    }
    WorkerReport {
        cycles_per_packet: timer.cycles_per_packet,
    }
}

/// Control frames (heartbeats, ARP answers, frames passed on) the control thread queued for
/// this worker's TX queues.
#[inline]
fn send_control_frames(
    f: &FilterWorker,
    q: &mut WorkerQueues,
    burst: &mut Burst,
    counters: &WorkerCounters,
) {
    for (ring, tx) in [
        (&f.control.tx, &mut q.cluster_tx),
        (&f.control.host_tx, &mut q.host_tx),
    ] {
        while !burst.is_full() {
            match ring.pop() {
                Some(m) => {
                    let _ = burst.push(m);
                }
                None => break,
            }
        }
        if !burst.is_empty() {
            send(tx, burst, &counters.control);
        }
    }
}

/// One burst from `rx` to `tx`, unchanged. Returns how many packets arrived.
#[inline]
fn forward(
    rx: &mut RxQueue,
    tx: &mut TxQueue,
    burst: &mut Burst,
    counters: &DirectionCounters,
    timer: &mut BurstTimer,
    mut inspect: impl FnMut(&Mbuf),
) -> usize {
    let n = rx.rx_burst(burst);
    if n == 0 {
        return 0;
    }
    let started = timer.start();
    if let Some(m) = burst.as_slice().first() {
        inspect(m);
    }
    send(tx, burst, counters);
    timer.stop(started, n);
    n
}

#[inline]
fn send(tx: &mut TxQueue, burst: &mut Burst, counters: &DirectionCounters) {
    let sent = tx.tx_burst(burst);
    if !burst.is_empty() {
        bump(&counters.tx_full, burst.len() as u64);
        burst.clear();
    }
    bump(&counters.packets, sent as u64);
}

/// One burst from the host port to the cluster port: the host MAC learned, neighbour frames
/// to the control thread, every other frame with the masked source MAC in unicast mode.
#[inline]
fn outbound_to_cluster(
    f: &FilterWorker,
    q: &mut WorkerQueues,
    burst: &mut Burst,
    dropped: &mut Burst,
    counters: &DirectionCounters,
    timer: &mut BurstTimer,
) -> usize {
    let n = q.host_rx.rx_burst(burst);
    if n == 0 {
        return 0;
    }
    let started = timer.start();
    if let Some(m) = burst.as_slice().first() {
        f.host_mac.learn(m.data());
    }
    let control = &f.control;
    let masked = f.mac.masked_source;
    burst.retain_or(
        |m| {
            if is_neighbour_frame(m.data()) {
                return false;
            }
            if let Some(src) = masked {
                if let Some(field) = m.data_mut().get_mut(6..12) {
                    field.copy_from_slice(&src);
                }
            }
            true
        },
        |m| match control.host_ring.push(m) {
            Ok(()) => bump(&control.frames, 1),
            Err(m) => {
                bump(&control.ring_full, 1);
                let _ = dropped.push(m);
            }
        },
    );
    dropped.clear();
    send(&mut q.cluster_tx, burst, counters);
    timer.stop(started, n);
    n
}

/// A frame with the cluster MAC as its source: counted, with its IPv4 sender, for the
/// control thread's `cluster MAC leaked` diagnostic.
#[cold]
fn note_leak(control: &ControlChannel, frame: &[u8]) {
    bump(&control.cluster_mac_leaks, 1);
    let sender = match (frame.get(12..14), frame.get(26..30)) {
        (Some([0x08, 0x00]), Some(ip)) => u32::from_be_bytes([ip[0], ip[1], ip[2], ip[3]]),
        _ => 0,
    };
    control.last_leak_sender.store(sender as u64, Relaxed);
}

/// One burst from the cluster port through the filter to the host port.
#[inline]
fn filter_inbound(
    f: &mut FilterWorker,
    q: &mut WorkerQueues,
    burst: &mut Burst,
    scratch: &mut Scratch,
    counters: &DirectionCounters,
    timer: &mut BurstTimer,
    now_tsc: u64,
) -> usize {
    let Scratch {
        released,
        dropped,
        held,
        triage,
    } = scratch;
    let n = q.cluster_rx.rx_burst(burst);
    let now_ms = (now_tsc / f.tsc_per_ms) as u32;
    let since = now_ms.wrapping_sub(f.last_sweep_ms) as usize;
    if since > 0 {
        let per_ms = f.filter.connections().slot_count() / SWEEP_PERIOD_MS + 1;
        f.filter.expire(now_ms, since.min(SWEEP_PERIOD_MS) * per_ms);
        f.last_sweep_ms = now_ms;
    }
    if n > 0 {
        let started = timer.start();
        let table = f.table.load();
        let host_mac = f.host_mac.get();
        let filter_counters = &*f.counters;
        let reject: Cell<Reject> = Cell::new(Reject::Drop);
        let filter = &mut f.filter;
        let control = &f.control;
        let leak_watch = f.mac.leak_watch;
        let remote = f.mac.remote_control;
        let mut tally = Tally::default();
        // First step over the whole burst: control frames set aside, every other frame
        // triaged, which decides most and starts loading the descriptors of the rest, so
        // their lookups below overlap instead of waiting for memory one by one.
        let mut to_control = 0u64;
        for (i, (m, triage)) in burst.as_slice().iter().zip(triage.iter_mut()).enumerate() {
            let data = m.data();
            if let Some(mac) = &leak_watch {
                if data.get(6..12) == Some(&mac[..]) {
                    note_leak(control, data);
                }
            }
            if is_control_frame(data) || remote.is_some_and(|(ip, port)| is_udp_to(data, ip, port))
            {
                to_control |= 1 << i;
            } else {
                filter.triage(&table, data, triage);
            }
        }
        // Second step, in frame order.
        let mut i = 0;
        burst.retain_or(
            |m| {
                let k = i;
                i += 1;
                if to_control & 1 << k != 0 {
                    reject.set(Reject::Control);
                    return false;
                }
                let d = filter.finish(&table, m.data(), &triage[k], now_ms);
                tally.add(filter_counters, &d);
                match d.verdict {
                    Verdict::Accept(_) => {
                        if let Some(mac) = host_mac {
                            m.data_mut()[..6].copy_from_slice(&mac);
                        }
                        true
                    }
                    Verdict::Pass(_) => true,
                    Verdict::Drop(_) => {
                        reject.set(Reject::Drop);
                        false
                    }
                    Verdict::Hold => {
                        reject.set(Reject::Hold(filter.held_datagram()));
                        false
                    }
                }
            },
            |m| match reject.get() {
                Reject::Hold(key) => {
                    if let Err(m) = held.hold(key, m, now_ms) {
                        filter_counters
                            .count(&Decision::of(Verdict::Drop(Reason::FragmentOverflow)));
                        // At most a burst's worth is rejected per burst: there is room.
                        let _ = dropped.push(m);
                    }
                }
                Reject::Control => match control.ring.push(m) {
                    Ok(()) => bump(&control.frames, 1),
                    Err(m) => {
                        bump(&control.ring_full, 1);
                        let _ = dropped.push(m);
                    }
                },
                // Freed together below, in one bulk call.
                Reject::Drop => {
                    let _ = dropped.push(m);
                }
            },
        );
        dropped.clear();
        filter_counters.flush(&mut tally);
        send(&mut q.host_tx, burst, counters);
        timer.stop(started, n);
    }
    if !held.is_empty() {
        let filter_counters = &*f.counters;
        let host_mac = f.host_mac.get();
        held.release(f.filter.fragments(), now_ms, |mut m, verdict| {
            let verdict = verdict.unwrap_or(Verdict::Drop(Reason::FragmentTimeout));
            filter_counters.count(&Decision::of(match verdict {
                Verdict::Accept(_) => Verdict::Accept(Reason::Fragment),
                Verdict::Pass(_) => Verdict::Pass(Reason::Fragment),
                other => other,
            }));
            if verdict.forwards() {
                if let (Verdict::Accept(_), Some(mac)) = (verdict, host_mac) {
                    m.data_mut()[..6].copy_from_slice(&mac);
                }
                if released.is_full() {
                    send(&mut q.host_tx, released, counters);
                }
                // Not full any more: push cannot fail.
                let _ = released.push(m);
            }
        });
        if !released.is_empty() {
            send(&mut q.host_tx, released, counters);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_burst_and_then_one_in_eight_are_timed() {
        let mut timer = BurstTimer::new();
        let every = TIME_EVERY_BURSTS as usize;
        let timed: Vec<usize> = (0..3 * every + 1)
            .filter(|_| {
                let started = timer.start();
                timer.stop(started, 32);
                started.is_some()
            })
            .collect();
        assert_eq!(timed, vec![0, every, 2 * every, 3 * every]);
        assert_eq!(timer.cycles_per_packet.len(), 4);
    }

    #[test]
    fn host_mac_is_learned_from_unicast_sources_only() {
        let h = HostMac::learned();
        assert_eq!(h.get(), None);
        let mut frame = [0u8; 14];
        frame[6..12].copy_from_slice(&[0x01, 0, 0x5e, 0, 0, 1]);
        h.learn(&frame);
        assert_eq!(h.get(), None, "a multicast source is not a host");
        frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 1, 2]);
        h.learn(&frame);
        assert_eq!(h.get(), Some([0x02, 0, 0, 0, 1, 2]));
        h.learn(&frame[..8]);
        assert_eq!(h.get(), Some([0x02, 0, 0, 0, 1, 2]), "runts teach nothing");
    }

    #[test]
    fn heartbeats_go_to_the_control_thread() {
        let mut f = [0u8; 64];
        f[12..14].copy_from_slice(&[0x88, 0x6f]);
        assert!(is_control_frame(&f));
        assert!(!is_control_frame(&f[..13]));
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        assert!(!is_control_frame(&f));
    }

    #[test]
    fn arp_nd_and_igmp_go_to_the_control_thread_other_ip_does_not() {
        let mut f = [0u8; 64];
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(is_neighbour_frame(&f) && is_control_frame(&f));
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[23] = 2;
        assert!(is_neighbour_frame(&f), "IGMP");
        f[23] = 6;
        assert!(!is_neighbour_frame(&f), "TCP");
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[20] = 58;
        for (icmp_type, nd) in [(135, true), (136, true), (128, false), (133, false)] {
            f[54] = icmp_type;
            assert_eq!(is_neighbour_frame(&f), nd, "ICMPv6 type {icmp_type}");
        }
        f[20] = 17;
        f[54] = 135;
        assert!(
            !is_neighbour_frame(&f),
            "UDP that happens to hold 135 there"
        );
        assert!(!is_neighbour_frame(&f[..30]));
        // A VLAN-tagged ARP is not diverted (the filter passes it on).
        f[12..14].copy_from_slice(&[0x81, 0x00]);
        f[16..18].copy_from_slice(&[0x08, 0x06]);
        assert!(!is_neighbour_frame(&f));
    }

    #[test]
    fn remote_control_datagrams_are_recognised_by_address_and_port() {
        let mut f = [0u8; 64];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 17;
        f[30..34].copy_from_slice(&[192, 0, 2, 10]);
        f[36..38].copy_from_slice(&2504u16.to_be_bytes());
        assert!(is_udp_to(&f, [192, 0, 2, 10], 2504));
        assert!(!is_udp_to(&f, [192, 0, 2, 11], 2504));
        assert!(!is_udp_to(&f, [192, 0, 2, 10], 2505));
        f[23] = 6;
        assert!(!is_udp_to(&f, [192, 0, 2, 10], 2504), "TCP");
        f[23] = 17;
        f[14] = 0x46; // options: the port moves 4 bytes on
        assert!(!is_udp_to(&f, [192, 0, 2, 10], 2504));
        assert!(!is_udp_to(&f[..36], [192, 0, 2, 10], 2504));
    }

    #[test]
    fn configured_host_mac_is_never_relearned() {
        let h = HostMac::fixed([0x02, 0, 0, 0, 0, 9]);
        let mut frame = [0u8; 14];
        frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 1, 2]);
        h.learn(&frame);
        assert_eq!(h.get(), Some([0x02, 0, 0, 0, 0, 9]));
    }
}
