//! The worker poll loop, one per RX queue of the cluster port, in the shape of DPDK's l2fwd:
//! receive a burst, handle each packet, send, repeat. Each worker also serves the host port's
//! queue of the same index, so both directions of a flow stay on one core.
//!
//! Counters live in the worker's own cache lines and are written with relaxed stores by that
//! worker only; the control thread reads them whenever it likes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use dpdk::{Burst, RxQueue, TxQueue};
use hdrhistogram::Histogram;

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
    /// Polls that found both RX queues empty.
    pub idle_polls: AtomicU64,
}

/// Adds to a counter that only this thread writes: a plain load and store, no locked add.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

/// What a worker hands back when it stops.
pub struct WorkerReport {
    /// Processing time of each non-empty burst, in TSC cycles per packet.
    pub cycles_per_packet: Histogram<u64>,
}

/// Spins briefly on an empty poll, then sleeps for growing short intervals (up to
/// `MAX_SLEEP`), so an idle appliance costs little CPU but answers within a millisecond.
struct Backoff {
    idle: Idle,
    empty_polls: u32,
}

const SPIN_POLLS: u32 = 512;
const MAX_SLEEP: Duration = Duration::from_micros(500);

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

/// Runs the pass-through loop until `stop` is set.
pub fn run(
    mut q: WorkerQueues,
    counters: &WorkerCounters,
    stop: &AtomicBool,
    idle: Idle,
) -> WorkerReport {
    let mut burst = Burst::new();
    let mut backoff = Backoff {
        idle,
        empty_polls: 0,
    };
    let mut cycles_per_packet =
        Histogram::<u64>::new_with_bounds(1, 1_000_000, 2).expect("static histogram bounds");
    while !stop.load(Relaxed) {
        let inbound = forward(
            &mut q.cluster_rx,
            &mut q.host_tx,
            &mut burst,
            &counters.inbound,
            &mut cycles_per_packet,
        );
        let outbound = forward(
            &mut q.host_rx,
            &mut q.cluster_tx,
            &mut burst,
            &counters.outbound,
            &mut cycles_per_packet,
        );
        if inbound + outbound == 0 {
            bump(&counters.idle_polls, 1);
        }
        backoff.on_poll(inbound + outbound);
    }
    WorkerReport { cycles_per_packet }
}

/// One burst from `rx` to `tx`, unchanged. Returns how many packets arrived.
#[inline]
fn forward(
    rx: &mut RxQueue,
    tx: &mut TxQueue,
    burst: &mut Burst,
    counters: &DirectionCounters,
    cycles_per_packet: &mut Histogram<u64>,
) -> usize {
    let n = rx.rx_burst(burst);
    if n == 0 {
        return 0;
    }
    let start = dpdk::rdtsc();
    let sent = tx.tx_burst(burst);
    if !burst.is_empty() {
        bump(&counters.tx_full, burst.len() as u64);
        burst.clear();
    }
    bump(&counters.packets, sent as u64);
    let per_packet = (dpdk::rdtsc().wrapping_sub(start) / n as u64).max(1);
    cycles_per_packet.saturating_record(per_packet);
    n
}
