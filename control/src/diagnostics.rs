//! The named diagnostics this host found (cluster IP or MAC mismatch, IP address conflict,
//! cluster MAC leaked, mode mismatch, cluster MAC not programmable): counted by kind for the
//! metrics, the latest kept for `query`, and logged rate limited (a misconfigured peer repeats
//! itself every heartbeat or ARP).

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::neighbour::Diagnostic;

/// The same diagnostic (same text: same kind, same offender) is logged at most once per this.
pub const LOG_INTERVAL_MS: u64 = 10_000;
/// Distinct diagnostics `query` shows.
const RECENT: usize = 8;

#[derive(Debug, Default)]
pub struct Diagnostics {
    counts: BTreeMap<&'static str, u64>,
    /// Latest distinct texts, newest last, with when each was last seen.
    recent: VecDeque<(String, u64)>,
    last_logged: HashMap<String, u64>,
}

impl Diagnostics {
    /// Records `d`; true when it is due in the log.
    pub fn report(&mut self, d: &Diagnostic, now_ms: u64) -> bool {
        self.note(d.kind(), d.to_string(), now_ms)
    }

    /// Records a diagnostic of `kind` found elsewhere (a peer's identity heartbeat); true
    /// when it is due in the log.
    pub fn note(&mut self, kind: &'static str, text: String, now_ms: u64) -> bool {
        *self.counts.entry(kind).or_default() += 1;
        self.recent.retain(|(t, _)| *t != text);
        self.recent.push_back((text.clone(), now_ms));
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        match self.last_logged.get(&text) {
            Some(&at) if now_ms.saturating_sub(at) < LOG_INTERVAL_MS => false,
            _ => {
                self.last_logged.insert(text, now_ms);
                true
            }
        }
    }

    /// How many of each kind were seen.
    pub fn counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.counts
    }

    /// The latest distinct diagnostics, oldest first, with the time each was last seen.
    pub fn recent(&self) -> impl Iterator<Item = &(String, u64)> {
        self.recent.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_but_logged_once_per_interval() {
        let mut d = Diagnostics::default();
        let leak = Diagnostic::ClusterMacLeaked {
            mac: wlbs_dataplane::wire::EthernetAddress([2, 0xbf, 192, 0, 2, 10]),
            sender_ip: None,
        };
        let fallback = Diagnostic::MacNotProgrammable {
            fallback: "promiscuous mode".into(),
        };
        assert!(d.report(&leak, 0));
        assert!(!d.report(&leak, 5_000));
        assert!(d.report(&fallback, 5_000));
        assert!(d.report(&leak, 10_000));
        assert_eq!(d.counts()["cluster_mac_leaked"], 3);
        assert_eq!(d.counts()[fallback.kind()], 1);
        let recent: Vec<_> = d.recent().map(|(t, at)| (t.clone(), *at)).collect();
        assert_eq!(recent.len(), 2);
        assert_eq!(
            recent[1].1, 10_000,
            "the leak moved to the end when seen again"
        );
    }
}
