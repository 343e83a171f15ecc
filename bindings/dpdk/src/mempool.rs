use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::error::{from_rte_errno, Error, Result};
use crate::mbuf::Mbuf;

/// A pool of packet buffers (`rte_pktmbuf_pool_create`). Cheap to clone; the pool is freed when
/// the last clone goes, so ports that set up queues on it keep a clone.
#[derive(Clone)]
pub struct Mempool {
    inner: Arc<PoolPtr>,
}

struct PoolPtr(NonNull<dpdk_sys::rte_mempool>);

// SAFETY: DPDK mempools are multi-producer/multi-consumer safe; the pointer is only used through
// DPDK's thread-safe API.
unsafe impl Send for PoolPtr {}
// SAFETY: as above.
unsafe impl Sync for PoolPtr {}

impl Drop for PoolPtr {
    fn drop(&mut self) {
        // SAFETY: last reference; no queue uses the pool any more (ports hold clones).
        unsafe { dpdk_sys::rte_mempool_free(self.0.as_ptr()) }
    }
}

impl Mempool {
    /// `n` mbufs with `data_room` bytes each (headroom included), a per-lcore cache of
    /// `cache` mbufs, on NUMA `socket` (-1: any).
    pub fn new(name: &str, n: u32, cache: u32, data_room: u16, socket: i32) -> Result<Mempool> {
        let cname = CString::new(name)
            .map_err(|_| Error::InvalidArgument(format!("mempool name {name:?} has a NUL byte")))?;
        // SAFETY: cname is a valid C string for the call; DPDK copies the name.
        let ptr = unsafe {
            dpdk_sys::rte_pktmbuf_pool_create(cname.as_ptr(), n, cache, 0, data_room, socket)
        };
        let ptr = NonNull::new(ptr).ok_or_else(|| from_rte_errno("rte_pktmbuf_pool_create"))?;
        Ok(Mempool {
            inner: Arc::new(PoolPtr(ptr)),
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut dpdk_sys::rte_mempool {
        self.inner.0.as_ptr()
    }

    /// A fresh, empty mbuf, or `None` when the pool is exhausted.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is valid; the returned mbuf (if any) is exclusively ours.
        let m = unsafe { dpdk_sys::rte_pktmbuf_alloc(self.as_ptr()) };
        NonNull::new(m).map(Mbuf::from_raw)
    }

    /// Mbufs currently free in the pool (including per-lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: reads counters of a valid pool.
        unsafe { dpdk_sys::rte_mempool_avail_count(self.as_ptr()) }
    }
}
