//! FNV-1a (32 bits): the fingerprints and digests hosts compare (configuration, rules,
//! membership input and targets). Stable across hosts, builds and versions.

#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv(u32);

impl Fnv {
    pub(crate) fn new() -> Fnv {
        Fnv(0x811c_9dc5)
    }
    pub(crate) fn u8(&mut self, b: u8) {
        self.0 = (self.0 ^ b as u32).wrapping_mul(0x0100_0193);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        v.to_le_bytes().iter().for_each(|&b| self.u8(b));
    }
    pub(crate) fn bytes(&mut self, bs: &[u8]) {
        bs.iter().for_each(|&b| self.u8(b));
    }
    pub(crate) fn finish(&self) -> u32 {
        self.0
    }
}
