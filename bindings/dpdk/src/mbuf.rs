use std::ptr::NonNull;

/// Packets per receive/transmit burst, as in DPDK's examples.
pub const BURST_SIZE: usize = 32;

const RX_RSS_HASH: u64 = 1 << 1; // RTE_MBUF_F_RX_RSS_HASH

/// One packet buffer, owned: dropping it returns it to its pool.
///
/// Only the first segment is exposed; wlbs configures no scatter, so frames fit one segment.
#[repr(transparent)]
pub struct Mbuf(NonNull<dpdk_sys::rte_mbuf>);

// SAFETY: an mbuf is owned by exactly one holder at a time; moving it between threads is how
// DPDK passes packets between lcores (and freeing from any thread is allowed).
unsafe impl Send for Mbuf {}

impl Mbuf {
    pub(crate) fn from_raw(ptr: NonNull<dpdk_sys::rte_mbuf>) -> Mbuf {
        Mbuf(ptr)
    }

    fn raw(&self) -> &dpdk_sys::rte_mbuf {
        // SAFETY: we own a valid mbuf for our whole lifetime.
        unsafe { self.0.as_ref() }
    }

    /// The frame's bytes (first segment).
    #[inline]
    pub fn data(&self) -> &[u8] {
        let m = self.raw();
        // SAFETY: buf_addr + data_off .. + data_len lies within the mbuf's data buffer, which we
        // own; the slice lives no longer than &self.
        unsafe {
            std::slice::from_raw_parts(
                (m.buf_addr as *const u8).add(m.data_off as usize),
                m.data_len as usize,
            )
        }
    }

    /// The frame's bytes, writable (first segment).
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in data(); &mut self makes the access exclusive (refcnt is 1 for mbufs we
        // receive or allocate; wlbs never clones mbufs).
        unsafe {
            let m = self.0.as_mut();
            std::slice::from_raw_parts_mut(
                (m.buf_addr as *mut u8).add(m.data_off as usize),
                m.data_len as usize,
            )
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.raw().data_len as usize
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Length of the whole packet (all segments).
    #[inline]
    pub fn pkt_len(&self) -> u32 {
        self.raw().pkt_len
    }

    /// The port the packet arrived on.
    #[inline]
    pub fn port(&self) -> u16 {
        self.raw().port
    }

    /// The NIC's RSS hash, when it computed one.
    #[inline]
    pub fn rss_hash(&self) -> Option<u32> {
        let m = self.raw();
        if m.ol_flags & RX_RSS_HASH != 0 {
            // SAFETY: with RX_RSS_HASH set the union holds the RSS hash.
            Some(unsafe { m.__bindgen_anon_2.hash.rss })
        } else {
            None
        }
    }

    /// Grows the frame by `len` bytes at its end and returns them, or `None` when the buffer
    /// has no room (the frame is unchanged then). Used to build frames in fresh mbufs.
    pub fn append(&mut self, len: usize) -> Option<&mut [u8]> {
        // SAFETY: exclusive access via &mut self; bounds checked against buf_len before writing.
        unsafe {
            let m = self.0.as_mut();
            let used = m.data_off as usize + m.data_len as usize;
            if used + len > m.buf_len as usize || m.data_len as usize + len > u16::MAX as usize {
                return None;
            }
            let start = (m.buf_addr as *mut u8).add(used);
            m.data_len += len as u16;
            m.pkt_len += len as u32;
            Some(std::slice::from_raw_parts_mut(start, len))
        }
    }

    /// Shortens the frame to `len` bytes (no-op if already shorter).
    pub fn truncate(&mut self, len: usize) {
        // SAFETY: exclusive access; only shrinks the lengths.
        let m = unsafe { self.0.as_mut() };
        if (len as u16 as usize) == len && len < m.data_len as usize {
            let cut = m.data_len as u32 - len as u32;
            m.data_len = len as u16;
            m.pkt_len -= cut;
        }
    }

    pub(crate) fn into_raw(self) -> *mut dpdk_sys::rte_mbuf {
        let p = self.0.as_ptr();
        std::mem::forget(self);
        p
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf; after this nothing refers to it.
        unsafe { dpdk_sys::rte_pktmbuf_free(self.0.as_ptr()) }
    }
}

/// Up to [`BURST_SIZE`] owned mbufs in a fixed array: what `rx_burst` fills and `tx_burst`
/// drains, with no allocation. Dropping or clearing it frees what it still holds.
pub struct Burst {
    pkts: [*mut dpdk_sys::rte_mbuf; BURST_SIZE],
    len: usize,
}

// SAFETY: a Burst owns its mbufs exclusively (see Mbuf's Send).
unsafe impl Send for Burst {}

impl Default for Burst {
    fn default() -> Self {
        Self::new()
    }
}

impl Burst {
    pub const fn new() -> Burst {
        Burst {
            pkts: [std::ptr::null_mut(); BURST_SIZE],
            len: 0,
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn is_full(&self) -> bool {
        self.len == BURST_SIZE
    }

    #[inline]
    pub fn as_slice(&self) -> &[Mbuf] {
        // SAFETY: pkts[..len] are non-null owned mbufs; Mbuf is repr(transparent) over
        // NonNull<rte_mbuf>, which has the layout of *mut rte_mbuf.
        unsafe { std::slice::from_raw_parts(self.pkts.as_ptr() as *const Mbuf, self.len) }
    }

    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [Mbuf] {
        // SAFETY: as in as_slice, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.pkts.as_mut_ptr() as *mut Mbuf, self.len) }
    }

    /// Adds a packet; gives it back when the burst is full.
    #[inline]
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.len == BURST_SIZE {
            return Err(m);
        }
        self.pkts[self.len] = m.into_raw();
        self.len += 1;
        Ok(())
    }

    /// Removes and returns the last packet.
    #[inline]
    pub fn pop(&mut self) -> Option<Mbuf> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        NonNull::new(self.pkts[self.len]).map(Mbuf::from_raw)
    }

    /// Keeps the packets for which `keep` says true, in order; the others are handed to
    /// `reject` (which may keep them elsewhere or drop them, freeing them).
    #[inline]
    pub fn retain_or<K, R>(&mut self, mut keep: K, mut reject: R)
    where
        K: FnMut(&mut Mbuf) -> bool,
        R: FnMut(Mbuf),
    {
        let mut kept = 0;
        for i in 0..self.len {
            let raw = self.pkts[i];
            // SAFETY: pkts[i] (i < len) is an owned, non-null mbuf; we either move it to slot
            // `kept` or hand ownership to `reject`, never both.
            let mut m = Mbuf(unsafe { NonNull::new_unchecked(raw) });
            if keep(&mut m) {
                self.pkts[kept] = m.into_raw();
                kept += 1;
            } else {
                reject(m);
            }
        }
        self.len = kept;
    }

    /// Frees every packet still held.
    #[inline]
    pub fn clear(&mut self) {
        if self.len > 0 {
            // SAFETY: pkts[..len] are owned mbufs, freed once; len is reset right after.
            unsafe { dpdk_sys::rte_pktmbuf_free_bulk(self.pkts.as_mut_ptr(), self.len as u32) };
            self.len = 0;
        }
    }

    pub(crate) fn spare_raw(&mut self) -> (*mut *mut dpdk_sys::rte_mbuf, u16) {
        // SAFETY: len <= BURST_SIZE, so the pointer stays within (or one past) the array.
        let ptr = unsafe { self.pkts.as_mut_ptr().add(self.len) };
        (ptr, (BURST_SIZE - self.len) as u16)
    }

    pub(crate) fn raw_mut(&mut self) -> (*mut *mut dpdk_sys::rte_mbuf, u16) {
        (self.pkts.as_mut_ptr(), self.len as u16)
    }

    /// Records that the driver filled `n` more slots after `len`.
    pub(crate) fn filled(&mut self, n: usize) {
        debug_assert!(self.len + n <= BURST_SIZE);
        self.len += n;
    }

    /// Records that the driver took the first `n` packets: shift the rest to the front.
    pub(crate) fn consumed(&mut self, n: usize) {
        debug_assert!(n <= self.len);
        self.pkts.copy_within(n..self.len, 0);
        self.len -= n;
    }
}

impl Drop for Burst {
    fn drop(&mut self) {
        self.clear();
    }
}
