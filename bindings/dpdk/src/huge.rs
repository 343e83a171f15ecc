use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// 2 MiB: the huge page size the kernel's transparent huge pages use on x86-64.
const HUGE_PAGE: usize = 2 << 20;

/// A fixed-size slice on memory backed by transparent huge pages where the kernel allows it
/// (`madvise(MADV_HUGEPAGE)`), filled at creation so every page is faulted in before the packet
/// path touches it. For large tables read at random on the fast path (connection descriptors):
/// with 4 KiB pages each lookup would also miss the TLB.
///
/// Heap memory, not DPDK's: works without an EAL (e.g. for offline tools and tests).
pub struct HugeSlice<T: Copy> {
    ptr: NonNull<T>,
    len: usize,
    layout: Layout,
}

// SAFETY: HugeSlice owns its elements like a Box<[T]>.
unsafe impl<T: Copy + Send> Send for HugeSlice<T> {}
// SAFETY: as above; shared access only hands out &[T].
unsafe impl<T: Copy + Sync> Sync for HugeSlice<T> {}

impl<T: Copy> HugeSlice<T> {
    /// `len` copies of `value`. Panics only if the size overflows `isize` (as `vec!` would).
    pub fn new(len: usize, value: T) -> HugeSlice<T> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .expect("HugeSlice size overflows")
            .max(1);
        let align = if bytes >= HUGE_PAGE {
            HUGE_PAGE
        } else {
            std::mem::align_of::<T>()
        };
        let size = bytes.next_multiple_of(align);
        let layout = Layout::from_size_align(size, align.max(std::mem::align_of::<T>()))
            .expect("HugeSlice layout");
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(raw as *mut T) else {
            alloc::handle_alloc_error(layout)
        };
        if size >= HUGE_PAGE {
            // SAFETY: the range is our own fresh allocation; MADV_HUGEPAGE is only a hint (it
            // fails harmlessly where THP is disabled).
            unsafe { libc::madvise(raw as *mut libc::c_void, size, libc::MADV_HUGEPAGE) };
        }
        for i in 0..len {
            // SAFETY: i < len and the allocation holds len elements of T, suitably aligned.
            unsafe { ptr.as_ptr().add(i).write(value) };
        }
        HugeSlice { ptr, len, layout }
    }
}

impl<T: Copy> Deref for HugeSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: ptr holds len initialised elements for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> DerefMut for HugeSlice<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in deref, with exclusive access through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> Drop for HugeSlice<T> {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with exactly this layout; T: Copy needs no drop.
        unsafe { alloc::dealloc(self.ptr.as_ptr() as *mut u8, self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_slices_hold_their_values() {
        let mut s = HugeSlice::new(10, 7u32);
        assert_eq!(&s[..], &[7; 10]);
        s[3] = 9;
        assert_eq!(s[3], 9);
        let big = HugeSlice::new(1 << 20, (1u64, 2u64));
        assert_eq!(big.len(), 1 << 20);
        assert!(big.iter().all(|&x| x == (1, 2)));
        assert_eq!(big.as_ptr() as usize % HUGE_PAGE, 0);
        let empty: HugeSlice<u8> = HugeSlice::new(0, 0);
        assert!(empty.is_empty());
    }
}
