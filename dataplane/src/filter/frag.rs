//! IP fragments: every fragment of one datagram gets the same verdict on every host, whatever
//! order the fragments arrive in.
//!
//! Only the first fragment (offset 0) carries the transport ports, so it is classified like
//! any packet and its verdict is remembered under the datagram's key (source, destination,
//! protocol, identification) in a [`FragmentTable`]. Later fragments follow that verdict. A
//! later fragment that arrives before its first fragment is held in [`HeldFragments`] until the
//! first fragment decides, or dropped (and counted) after a short timeout. Every host sees the
//! same first fragment and computes the same verdict for it, so all hosts agree.
//!
//! RSS keeps all fragments of a datagram on one worker: NICs hash fragments (first one
//! included, since it has MF set) on addresses only.

use super::Verdict;

/// One IP datagram: the reassembly key of RFC 791 / RFC 8200.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DatagramKey {
    pub src: u128,
    pub dst: u128,
    pub id: u32,
    pub protocol: u8,
}

impl DatagramKey {
    fn slot_hash(&self) -> u64 {
        let mut h = super::hash::fmix64(self.src as u64 ^ (self.src >> 64) as u64);
        h = super::hash::fmix64(h ^ self.dst as u64 ^ (self.dst >> 64) as u64);
        super::hash::fmix64(h ^ ((self.id as u64) << 8 | self.protocol as u64))
    }
}

#[derive(Clone, Copy)]
struct Decided {
    key: DatagramKey,
    verdict: Verdict,
    decided_ms: u32,
}

/// Verdicts of first fragments in a 4-way set-associative cache keyed by datagram: fixed
/// memory, no allocation per packet. A full set evicts its oldest entry, whose later fragments
/// (if any are still to come) then time out; with 4 ways that takes five datagrams in flight
/// mapping to one set of 1,024.
pub struct FragmentTable {
    slots: Box<[Option<Decided>]>,
    /// Sets - 1 (the number of sets is a power of two).
    set_mask: usize,
    lifetime_ms: u32,
}

const WAYS: usize = 4;

/// Defaults: 4,096 datagrams remembered for 5 s; 256 fragments held for at most 500 ms.
pub const DEFAULT_DATAGRAMS: usize = 4096;
pub const DEFAULT_LIFETIME_MS: u32 = 5_000;
pub const DEFAULT_HELD: usize = 256;
pub const DEFAULT_HOLD_MS: u32 = 500;

impl Default for FragmentTable {
    fn default() -> Self {
        FragmentTable::new(DEFAULT_DATAGRAMS, DEFAULT_LIFETIME_MS)
    }
}

impl FragmentTable {
    /// Room for `datagrams` (rounded up to a power of two, at least one set).
    pub fn new(datagrams: usize, lifetime_ms: u32) -> FragmentTable {
        let sets = (datagrams.max(WAYS) / WAYS).next_power_of_two();
        FragmentTable {
            slots: vec![None; sets * WAYS].into_boxed_slice(),
            set_mask: sets - 1,
            lifetime_ms,
        }
    }

    fn set(&self, key: &DatagramKey) -> std::ops::Range<usize> {
        let first = (key.slot_hash() as usize & self.set_mask) * WAYS;
        first..first + WAYS
    }

    /// Remembers the first fragment's verdict for the datagram's later fragments.
    pub fn record(&mut self, key: DatagramKey, verdict: Verdict, now_ms: u32) {
        let range = self.set(&key);
        let set = &mut self.slots[range];
        // The same datagram again, else a free or expired way, else the oldest.
        let lifetime = self.lifetime_ms;
        let way = set
            .iter()
            .position(|d| d.is_some_and(|d| d.key == key))
            .or_else(|| {
                set.iter().position(|d| match d {
                    None => true,
                    Some(d) => now_ms.wrapping_sub(d.decided_ms) > lifetime,
                })
            })
            .unwrap_or_else(|| {
                (0..WAYS)
                    .max_by_key(|&i| set[i].map_or(u32::MAX, |d| now_ms.wrapping_sub(d.decided_ms)))
                    .unwrap_or(0)
            });
        set[way] = Some(Decided {
            key,
            verdict,
            decided_ms: now_ms,
        });
    }

    /// The verdict of the datagram's first fragment, if seen recently.
    pub fn lookup(&self, key: &DatagramKey, now_ms: u32) -> Option<Verdict> {
        self.slots[self.set(key)].iter().find_map(|d| match d {
            Some(d) if d.key == *key && now_ms.wrapping_sub(d.decided_ms) <= self.lifetime_ms => {
                Some(d.verdict)
            }
            _ => None,
        })
    }
}

struct Held<T> {
    key: DatagramKey,
    item: T,
    since_ms: u32,
}

/// Later fragments waiting for their first fragment, in a fixed number of places.
pub struct HeldFragments<T> {
    places: Vec<Option<Held<T>>>,
    held: usize,
    hold_ms: u32,
}

impl<T> Default for HeldFragments<T> {
    fn default() -> Self {
        HeldFragments::new(DEFAULT_HELD, DEFAULT_HOLD_MS)
    }
}

impl<T> HeldFragments<T> {
    pub fn new(places: usize, hold_ms: u32) -> HeldFragments<T> {
        HeldFragments {
            places: (0..places.max(1)).map(|_| None).collect(),
            held: 0,
            hold_ms,
        }
    }

    pub fn len(&self) -> usize {
        self.held
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Holds a fragment; gives it back when every place is taken.
    pub fn hold(&mut self, key: DatagramKey, item: T, now_ms: u32) -> Result<(), T> {
        match self.places.iter_mut().find(|p| p.is_none()) {
            Some(place) => {
                *place = Some(Held {
                    key,
                    item,
                    since_ms: now_ms,
                });
                self.held += 1;
                Ok(())
            }
            None => Err(item),
        }
    }

    /// Hands every held fragment whose first fragment has decided to `done` with that verdict,
    /// and every one held too long with `None` (drop it). Keeps the rest.
    pub fn release(
        &mut self,
        table: &FragmentTable,
        now_ms: u32,
        mut done: impl FnMut(T, Option<Verdict>),
    ) {
        if self.held == 0 {
            return;
        }
        for place in self.places.iter_mut() {
            let Some(h) = place else { continue };
            let decided = table.lookup(&h.key, now_ms);
            let expired = now_ms.wrapping_sub(h.since_ms) > self.hold_ms;
            if decided.is_some() || expired {
                let h = place.take().expect("checked above");
                self.held -= 1;
                done(h.item, decided);
            }
        }
    }

    /// Gives back everything held (at shutdown), as timed out.
    pub fn drain(&mut self, mut done: impl FnMut(T)) {
        for place in self.places.iter_mut() {
            if let Some(h) = place.take() {
                done(h.item);
            }
        }
        self.held = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Reason;

    fn key(id: u32) -> DatagramKey {
        DatagramKey {
            src: 0xc633_6407,
            dst: 0xc000_020a,
            id,
            protocol: 17,
        }
    }

    #[test]
    fn later_fragments_follow_the_first() {
        let mut t = FragmentTable::default();
        t.record(key(1), Verdict::Accept(Reason::BucketOwned), 100);
        assert_eq!(
            t.lookup(&key(1), 200),
            Some(Verdict::Accept(Reason::BucketOwned))
        );
        assert_eq!(t.lookup(&key(2), 200), None);
        assert_eq!(t.lookup(&key(1), 100 + DEFAULT_LIFETIME_MS + 1), None);
    }

    #[test]
    fn held_fragment_is_released_when_the_first_decides() {
        let mut t = FragmentTable::default();
        let mut held = HeldFragments::new(4, 500);
        held.hold(key(7), "second", 10).unwrap();
        let mut out = Vec::new();
        held.release(&t, 20, |item, v| out.push((item, v)));
        assert!(out.is_empty());
        t.record(key(7), Verdict::Drop(Reason::NotOwned), 30);
        held.release(&t, 31, |item, v| out.push((item, v)));
        assert_eq!(out, vec![("second", Some(Verdict::Drop(Reason::NotOwned)))]);
        assert!(held.is_empty());
    }

    #[test]
    fn held_fragment_times_out_and_a_full_hold_refuses() {
        let t = FragmentTable::default();
        let mut held = HeldFragments::new(2, 500);
        held.hold(key(1), 1, 0).unwrap();
        held.hold(key(2), 2, 0).unwrap();
        assert_eq!(held.hold(key(3), 3, 0), Err(3));
        let mut out = Vec::new();
        held.release(&t, 501, |item, v| out.push((item, v)));
        assert_eq!(out, vec![(1, None), (2, None)]);
        assert!(held.is_empty());
    }

    #[test]
    fn a_busy_set_keeps_four_datagrams_and_evicts_the_oldest() {
        // One set only: every key collides.
        let mut t = FragmentTable::new(4, 5_000);
        for id in 0..4 {
            t.record(key(id), Verdict::Accept(Reason::BucketOwned), id);
        }
        for id in 0..4 {
            assert!(t.lookup(&key(id), 10).is_some(), "datagram {id}");
        }
        t.record(key(9), Verdict::Drop(Reason::NotOwned), 11);
        assert!(t.lookup(&key(0), 12).is_none(), "the oldest went");
        assert!(t.lookup(&key(9), 12).is_some());
        assert!(t.lookup(&key(3), 12).is_some());
    }

    #[test]
    fn times_wrap_around() {
        let mut t = FragmentTable::default();
        t.record(key(1), Verdict::Accept(Reason::BucketOwned), u32::MAX - 10);
        assert!(t.lookup(&key(1), 20).is_some());
    }
}
