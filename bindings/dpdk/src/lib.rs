//! The small safe layer over `dpdk-sys`: EAL, mempools, ports, RX/TX queues, mbuf bursts and
//! lcore launch. This crate is the only place in wlbs with `unsafe` DPDK calls; each block says
//! why it is sound.
//!
//! Shapes follow DPDK's own examples (l2fwd): set everything up on the main lcore, hand each
//! worker lcore its queues, and keep the per-packet path to `rx_burst`, work, `tx_burst`.

mod eal;
mod error;
mod huge;
mod mbuf;
mod mempool;
mod port;

pub use eal::{Eal, LaunchHandle, PortName};
pub use error::{Error, Result};
pub use huge::HugeSlice;
pub use mbuf::{Burst, Mbuf, BURST_SIZE};
pub use mempool::Mempool;
pub use port::{DevInfo, Link, Port, PortConfig, PortStats, RxQueue, TxQueue};

/// Reads the CPU's time-stamp counter (cheap, monotonic on the CPUs DPDK supports).
#[inline(always)]
pub fn rdtsc() -> u64 {
    // On x86-64, DPDK's rte_rdtsc is this one instruction; reading it here saves a call into
    // the out-of-line wrapper of that static inline function (three per burst).
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads a CPU register; no memory is touched.
    unsafe {
        std::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: reads a CPU register; no memory is touched.
    unsafe {
        dpdk_sys::rte_rdtsc()
    }
}

/// Time-stamp counter ticks per second, as measured by the EAL.
pub fn tsc_hz() -> u64 {
    // SAFETY: a plain getter; valid once the EAL is up (returns 0 before, never UB).
    unsafe { dpdk_sys::rte_get_tsc_hz() }
}

/// The lcore id of the calling thread (`u32::MAX` for a non-EAL thread).
pub fn lcore_id() -> u32 {
    // SAFETY: reads a thread-local variable.
    unsafe { dpdk_sys::rte_lcore_id() }
}

/// The CPU pause instruction, for short idle spins.
#[inline]
pub fn pause() {
    // SAFETY: a CPU hint, no memory effect.
    unsafe { dpdk_sys::rte_pause() }
}
