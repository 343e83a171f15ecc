//! Deterministic simulation of the membership core: N hosts of the real state machine on a
//! simulated network with a virtual clock, seeded. Loss, delay, reordering, duplication,
//! partitions, crashes, restarts, joins and drainstops. A failing seed is printed and replays
//! with `WLBS_SIM_SEED=<seed>`.

use std::collections::{BTreeMap, BinaryHeap};
use std::net::Ipv4Addr;

use wlbs_control::membership::{Event, HostState, Membership, Ping, Settings};
use wlbs_dataplane::filter::{Mode, BUCKETS};

/// xorshift64*: small, seedable, good enough for choosing faults.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
}

const PERIOD: u64 = 100;
const TOLERANCE: u32 = 5;
const CLEANUP: u64 = 3_000;

fn settings(priority: u8, code: u32, modes: &[Mode]) -> Settings {
    Settings {
        priority,
        dedicated_ip: Ipv4Addr::new(192, 0, 2, 10 + priority),
        host_code: code,
        config_fingerprint: 0xfeed,
        period_ms: PERIOD,
        tolerance: TOLERANCE,
        cleanup_delay_ms: CLEANUP,
        modes: modes.to_vec(),
        load_weights: modes.iter().map(|_| 50).collect(),
        handling_priorities: modes
            .iter()
            .map(|m| if *m == Mode::Single { priority } else { 0 })
            .collect(),
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Delivery {
    at: std::cmp::Reverse<u64>,
    seq: std::cmp::Reverse<u64>,
    to: u8,
    ping_index: usize,
}

struct Host {
    core: Membership,
    /// When each outgoing bucket's connections will have finished (simulated data plane).
    drain_at: BTreeMap<(usize, usize), u64>,
    events: Vec<Event>,
}

struct Sim {
    now: u64,
    rng: Rng,
    modes: Vec<Mode>,
    hosts: BTreeMap<u8, Host>,
    queue: BinaryHeap<Delivery>,
    pings: Vec<Ping>,
    seq: u64,
    loss: f64,
    /// Hosts in different groups cannot hear each other.
    group: BTreeMap<u8, u8>,
    max_delay: u64,
    duplicate: f64,
    next_code: u32,
}

impl Sim {
    fn new(seed: u64, n: u8, modes: Vec<Mode>) -> Sim {
        let mut sim = Sim {
            now: 0,
            rng: Rng::new(seed),
            modes,
            hosts: BTreeMap::new(),
            queue: BinaryHeap::new(),
            pings: Vec::new(),
            seq: 0,
            loss: 0.0,
            group: BTreeMap::new(),
            max_delay: 20,
            duplicate: 0.0,
            next_code: 1,
        };
        for p in 1..=n {
            sim.start(p);
        }
        sim
    }

    fn start(&mut self, p: u8) {
        let code = self.next_code;
        self.next_code += 1;
        let core = Membership::new(settings(p, code, &self.modes), self.now);
        self.hosts.insert(
            p,
            Host {
                core,
                drain_at: BTreeMap::new(),
                events: Vec::new(),
            },
        );
    }

    fn crash(&mut self, p: u8) {
        self.hosts.remove(&p);
    }

    fn hears(&self, from: u8, to: u8) -> bool {
        self.group.get(&from).copied().unwrap_or(0) == self.group.get(&to).copied().unwrap_or(0)
    }

    /// Runs until `until` (virtual ms), checking `invariant` after every step.
    fn run(&mut self, until: u64, mut invariant: impl FnMut(&Sim)) {
        while self.now < until {
            // Next thing to happen: a delivery or the earliest host timer.
            let next_timer = self
                .hosts
                .values()
                .map(|h| h.core.poll_timeout())
                .min()
                .unwrap_or(until);
            let next_delivery = self.queue.peek().map_or(u64::MAX, |d| d.at.0);
            let t = next_timer.min(next_delivery).min(until).max(self.now);
            self.now = t;
            while self.queue.peek().is_some_and(|d| d.at.0 <= t) {
                let d = self.queue.pop().expect("peeked");
                if let Some(h) = self.hosts.get_mut(&d.to) {
                    h.core.handle_ping(t, &self.pings[d.ping_index]);
                }
            }
            let priorities: Vec<u8> = self.hosts.keys().copied().collect();
            for p in priorities {
                let modes = self.modes.len();
                let rng = &mut self.rng;
                let h = self.hosts.get_mut(&p).expect("host");
                // Simulated data plane: outgoing buckets drain after a random while.
                let own = h.core.ownership();
                let mut idle = vec![0u64; modes];
                for (r, o) in own.iter().enumerate() {
                    for b in 0..BUCKETS {
                        if o.outgoing & (1 << b) != 0 {
                            let at = *h
                                .drain_at
                                .entry((r, b))
                                .or_insert_with(|| t + rng.below(2 * CLEANUP));
                            if t >= at {
                                idle[r] |= 1 << b;
                            }
                        } else {
                            h.drain_at.remove(&(r, b));
                        }
                    }
                }
                h.core.set_idle(&idle);
                h.core.handle_timeout(t);
                while let Some(e) = h.core.poll_event() {
                    h.events.push(e);
                }
                if let Some(ping) = h.core.poll_transmit(t) {
                    self.pings.push(ping);
                    let index = self.pings.len() - 1;
                    let targets: Vec<u8> = self.hosts.keys().copied().filter(|&q| q != p).collect();
                    for q in targets {
                        if !self.hears(p, q) || self.rng.chance(self.loss) {
                            continue;
                        }
                        let copies = if self.rng.chance(self.duplicate) {
                            2
                        } else {
                            1
                        };
                        for _ in 0..copies {
                            self.seq += 1;
                            let delay = 1 + self.rng.below(self.max_delay);
                            self.queue.push(Delivery {
                                at: std::cmp::Reverse(t + delay),
                                seq: std::cmp::Reverse(self.seq),
                                to: q,
                                ping_index: index,
                            });
                        }
                    }
                }
            }
            invariant(self);
            if next_timer == u64::MAX && self.queue.is_empty() {
                self.now = until;
            }
        }
    }

    /// Checks that no bucket of a multiple-host rule takes new connections on two hosts.
    fn assert_one_new_connection_taker(&self, seed: u64) {
        let mut taken = vec![0u64; self.modes.len()];
        for (p, h) in &self.hosts {
            for (r, o) in h.core.ownership().iter().enumerate() {
                let mine = o.owned | o.incoming;
                if taken[r] & mine != 0 {
                    let detail: Vec<String> = self
                        .hosts
                        .iter()
                        .map(|(q, h)| {
                            let o = h.core.ownership()[r];
                            format!(
                                "host {q} {:?} members {:?} owned {:#x} incoming {:#x} outgoing {:#x}",
                                h.core.state(),
                                h.core.members(),
                                o.owned,
                                o.incoming,
                                o.outgoing
                            )
                        })
                        .collect();
                    panic!(
                        "seed {seed}: rule {r} buckets {:#x} take new connections on host {p} and another at {}:\n{}",
                        taken[r] & mine,
                        self.now,
                        detail.join("\n")
                    );
                }
                taken[r] |= mine;
            }
        }
    }

    fn assert_quiescent(&self, seed: u64) {
        let live: Vec<u8> = self
            .hosts
            .iter()
            .filter(|(_, h)| h.core.state() != HostState::Stopped)
            .map(|(p, _)| *p)
            .collect();
        for (p, h) in &self.hosts {
            if h.core.state() == HostState::Stopped {
                continue;
            }
            assert!(
                h.core.is_converged(),
                "seed {seed}: host {p} not converged at {}; hosts: {}",
                self.now,
                self.hosts
                    .iter()
                    .map(|(q, h)| format!(
                        "{q}: {:?} members {:?} last events {:?}",
                        h.core.state(),
                        h.core.members(),
                        &h.events[h.events.len().saturating_sub(3)..]
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            assert_eq!(
                h.core.members(),
                live,
                "seed {seed}: host {p} disagrees on members"
            );
        }
        for (r, mode) in self.modes.iter().enumerate() {
            if *mode != Mode::Multiple {
                continue;
            }
            for b in 0..BUCKETS {
                let owners: Vec<u8> = live
                    .iter()
                    .copied()
                    .filter(|p| {
                        let o = self.hosts[p].core.ownership();
                        o[r].owned & (1 << b) != 0
                    })
                    .collect();
                let moving: Vec<u8> = live
                    .iter()
                    .copied()
                    .filter(|p| {
                        let o = self.hosts[p].core.ownership();
                        (o[r].incoming | o[r].outgoing) & (1 << b) != 0
                    })
                    .collect();
                assert_eq!(
                    owners.len(),
                    1,
                    "seed {seed}: rule {r} bucket {b} owned by {owners:?} at {}",
                    self.now
                );
                assert!(
                    moving.is_empty(),
                    "seed {seed}: rule {r} bucket {b} still moving on {moving:?}"
                );
            }
        }
    }
}

/// Seeds 1..=count, cut short after `SEED_BUDGET` so CI time stays bounded on a loaded
/// machine; `WLBS_SIM_SEED=n` replays one.
fn seeds(count: u64) -> impl Iterator<Item = u64> {
    let one: Option<u64> = std::env::var("WLBS_SIM_SEED")
        .ok()
        .map(|s| s.parse().expect("WLBS_SIM_SEED is a number"));
    let started = std::time::Instant::now();
    let (first, last) = match one {
        Some(s) => (s, s),
        None => (1, count),
    };
    (first..=last).take_while(move |seed| {
        let in_budget = started.elapsed() < SEED_BUDGET;
        if !in_budget {
            eprintln!("time budget reached after {} seeds", seed - first);
        }
        in_budget
    })
}

const SEED_BUDGET: std::time::Duration = std::time::Duration::from_secs(25);

#[test]
fn a_healthy_cluster_converges_and_every_bucket_has_one_owner() {
    for seed in seeds(1000) {
        let mut rng = Rng::new(seed);
        // Mostly small clusters, now and then up to the full 32 hosts.
        let n = if seed % 10 == 0 {
            1 + rng.below(32) as u8
        } else {
            1 + rng.below(8) as u8
        };
        let mut sim = Sim::new(seed, n, vec![Mode::Multiple, Mode::Single, Mode::Multiple]);
        sim.run(30 * PERIOD, |s| s.assert_one_new_connection_taker(seed));
        sim.assert_quiescent(seed);
    }
}

/// Runs a healthy cluster of `n` to convergence, then returns it.
fn converged(seed: u64, n: u8, modes: Vec<Mode>) -> Sim {
    let mut sim = Sim::new(seed, n, modes);
    sim.run(20 * PERIOD, |_| {});
    sim.assert_quiescent(seed);
    sim
}

#[test]
fn a_failed_host_is_replaced_within_tolerance_plus_three_periods() {
    let mut recovery = Vec::new();
    let mut convergence = Vec::new();
    for seed in seeds(500) {
        let mut rng = Rng::new(seed ^ 0xfa11);
        let n = 2 + rng.below(7) as u8;
        let mut sim = converged(seed, n, vec![Mode::Multiple]);
        let victim = 1 + rng.below(n as u64) as u8;
        sim.crash(victim);
        let crashed_at = sim.now;
        let deadline = crashed_at + (TOLERANCE as u64 + 3) * PERIOD;
        let mut recovered_at = None;
        let mut converged_at = None;
        sim.run(deadline + 10 * PERIOD, |s| {
            s.assert_one_new_connection_taker(seed);
            if converged_at.is_none()
                && s.hosts
                    .values()
                    .all(|h| h.core.is_converged() && !h.core.members().contains(&victim))
            {
                converged_at = Some(s.now);
            }
            if recovered_at.is_none() {
                // What a client notices: new connections to every bucket succeed again.
                let all_converged = s
                    .hosts
                    .values()
                    .all(|h| !h.core.members().contains(&victim));
                // Every bucket has someone taking new connections again.
                let mut covered = 0u64;
                for h in s.hosts.values() {
                    let o = &h.core.ownership()[0];
                    covered |= o.owned | o.incoming;
                }
                if all_converged && covered == (1u64 << BUCKETS) - 1 {
                    recovered_at = Some(s.now);
                }
            }
        });
        let at = recovered_at
            .unwrap_or_else(|| panic!("seed {seed}: never recovered from host {victim} failing"));
        recovery.push(at - crashed_at);
        if let Some(c) = converged_at {
            convergence.push(c - crashed_at);
        }
        assert!(
            at <= deadline,
            "seed {seed}: recovered {} ms after host {victim} failed, bound {} ms",
            at - crashed_at,
            deadline - crashed_at
        );
        sim.run(sim.now + CLEANUP + 20 * PERIOD, |_| {});
        sim.assert_quiescent(seed);
    }
    recovery.sort_unstable();
    convergence.sort_unstable();
    let pct = |v: &[u64], q: usize| v.get(v.len().saturating_sub(1) * q / 100).copied();
    eprintln!(
        "failover over {} seeds (period {PERIOD} ms, tolerance {TOLERANCE}): buckets covered again p50 {:?} max {:?} ms; all converged without the failed host p50 {:?} max {:?} ms",
        recovery.len(),
        pct(&recovery, 50),
        recovery.last(),
        pct(&convergence, 50),
        convergence.last()
    );
}

#[test]
fn joins_restarts_and_drainstops_settle_to_one_owner_per_bucket() {
    for seed in seeds(500) {
        let mut rng = Rng::new(seed ^ 0x701e);
        let n = 1 + rng.below(6) as u8;
        let mut sim = converged(seed, n, vec![Mode::Multiple, Mode::Multiple]);
        // A new host joins.
        let newcomer = n + 1;
        sim.start(newcomer);
        sim.run(sim.now + 15 * PERIOD, |s| {
            s.assert_one_new_connection_taker(seed)
        });
        // One restarts (a new instance, same priority).
        let again = 1 + rng.below(newcomer as u64) as u8;
        sim.crash(again);
        sim.run(sim.now + 2 * PERIOD, |_| {});
        sim.start(again);
        sim.run(sim.now + 20 * PERIOD, |_| {});
        // One drains.
        if newcomer > 1 {
            let drainer = 1 + rng.below(newcomer as u64) as u8;
            let now = sim.now;
            sim.hosts.get_mut(&drainer).unwrap().core.drainstop(now);
            sim.run(sim.now + CLEANUP + 30 * PERIOD, |s| {
                s.assert_one_new_connection_taker(seed)
            });
            assert_eq!(
                sim.hosts[&drainer].core.state(),
                HostState::Stopped,
                "seed {seed}: drained host {drainer} did not stop"
            );
            assert!(sim.hosts[&drainer].events.contains(&Event::DrainComplete));
            sim.crash(drainer);
            sim.run(sim.now + 20 * PERIOD, |_| {});
        }
        sim.run(sim.now + CLEANUP + 20 * PERIOD, |_| {});
        sim.assert_quiescent(seed);
    }
}

#[test]
fn a_stopped_host_leaves_at_once_and_rejoins_on_start() {
    for seed in seeds(200) {
        let mut rng = Rng::new(seed ^ 0x5709);
        let n = 2 + rng.below(5) as u8;
        let mut sim = converged(seed, n, vec![Mode::Multiple, Mode::Single]);
        let stopper = 1 + rng.below(n as u64) as u8;
        let now = sim.now;
        sim.hosts.get_mut(&stopper).unwrap().core.stop(now);
        // Its last heartbeat says "stopped": the others need neither the tolerance nor
        // a failure to converge without it.
        sim.run(sim.now + 4 * PERIOD, |_| {});
        sim.assert_quiescent(seed);
        for (p, h) in &sim.hosts {
            if *p == stopper {
                assert!(h.events.contains(&Event::Stopped), "seed {seed}");
                assert!(h
                    .core
                    .ownership()
                    .iter()
                    .all(|o| o.owned == 0 && !o.handler));
                continue;
            }
            assert!(
                h.events.contains(&Event::HostLeft { priority: stopper }),
                "seed {seed}: host {p} did not see {stopper} leave: {:?}",
                h.events
            );
            assert!(
                !h.events.contains(&Event::HostFailed { priority: stopper }),
                "seed {seed}: host {p} took {stopper}'s stop for a failure"
            );
        }
        let now = sim.now;
        sim.hosts.get_mut(&stopper).unwrap().core.start(now);
        sim.run(sim.now + CLEANUP + 20 * PERIOD, |s| {
            s.assert_one_new_connection_taker(seed)
        });
        sim.assert_quiescent(seed);
        assert_eq!(sim.hosts[&stopper].core.members().len(), n as usize);
    }
}

#[test]
fn thirty_percent_loss_never_fails_a_live_member_of_eight() {
    for seed in seeds(3) {
        let mut sim = converged(seed, 8, vec![Mode::Multiple]);
        sim.loss = 0.3;
        sim.duplicate = 0.05;
        sim.max_delay = 60;
        sim.run(sim.now + 1000 * PERIOD, |_| {});
        for (p, h) in &sim.hosts {
            let failed: Vec<&Event> = h
                .events
                .iter()
                .filter(|e| matches!(e, Event::HostFailed { .. }))
                .collect();
            assert!(failed.is_empty(), "seed {seed}: host {p} saw {failed:?}");
        }
    }
}

#[test]
fn lossy_reordered_duplicated_and_partitioned_runs_settle_once_healed() {
    for seed in seeds(500) {
        let mut rng = Rng::new(seed ^ 0x10557);
        let n = 2 + rng.below(7) as u8;
        let mut sim = Sim::new(seed, n, vec![Mode::Multiple, Mode::Single]);
        sim.loss = rng.below(40) as f64 / 100.0;
        sim.duplicate = 0.1;
        sim.max_delay = 1 + rng.below(150);
        sim.run(10 * PERIOD, |_| {});
        // Split into two sub-clusters for a while, then heal.
        for p in 1..=n {
            sim.group.insert(p, p % 2);
        }
        sim.run(sim.now + 20 * PERIOD, |_| {});
        sim.group.clear();
        sim.loss = 0.0;
        sim.max_delay = 20;
        sim.run(sim.now + CLEANUP + 30 * PERIOD, |_| {});
        sim.assert_quiescent(seed);
    }
}

#[test]
fn two_hosts_with_different_configurations_never_both_serve() {
    // One against one: the host with the lower priority keeps serving, the other takes
    // nothing; whichever starts first.
    for first in [1u8, 2] {
        let mut sim = Sim::new(11, 0, vec![Mode::Multiple]);
        for p in [first, 3 - first] {
            let mut s = settings(p, 100 + p as u32, &sim.modes);
            s.config_fingerprint = 0xc0 + p as u32;
            sim.hosts.insert(
                p,
                Host {
                    core: Membership::new(s, sim.now),
                    drain_at: BTreeMap::new(),
                    events: Vec::new(),
                },
            );
            sim.run(sim.now + 10 * PERIOD, |_| {});
        }
        sim.run(sim.now + 20 * PERIOD, |_| {});
        let o2 = sim.hosts[&2].core.ownership();
        assert!(o2.iter().all(|r| r.owned | r.incoming == 0), "{o2:?}");
        assert_eq!(sim.hosts[&1].core.members(), vec![1]);
        assert!(sim.hosts[&1].core.is_converged());
        assert_eq!(
            sim.hosts[&1].core.ownership()[0].owned,
            (1u64 << BUCKETS) - 1
        );
    }
}

#[test]
fn a_peer_with_other_port_rules_is_refused_and_the_others_keep_serving() {
    let seed = 7;
    let mut sim = converged(seed, 3, vec![Mode::Multiple]);
    // Host 4 comes up with a different configuration.
    let mut s4 = settings(4, 99, &sim.modes);
    s4.config_fingerprint = 0xbad;
    sim.hosts.insert(
        4,
        Host {
            core: Membership::new(s4, sim.now),
            drain_at: BTreeMap::new(),
            events: Vec::new(),
        },
    );
    sim.run(sim.now + 20 * PERIOD, |s| {
        // The odd host never takes a bucket the others serve.
        let o = s.hosts[&4].core.ownership();
        assert!(
            o.iter().all(|r| r.owned | r.incoming == 0 && !r.handler),
            "{o:?}"
        );
    });
    assert!(
        sim.hosts[&4].events.contains(&Event::Outvoted {
            majority: vec![1, 2, 3]
        }),
        "{:?}",
        sim.hosts[&4].events
    );
    assert_eq!(sim.hosts[&4].core.state(), HostState::Converging);
    assert_eq!(sim.hosts[&4].core.default_host(), None);
    for p in 1..=3u8 {
        let h = &sim.hosts[&p];
        assert_eq!(h.core.members(), vec![1, 2, 3]);
        assert!(h.core.is_converged());
        assert!(
            h.events.iter().any(|e| matches!(
                e,
                Event::PeerRefused {
                    priority: 4,
                    cause: wlbs_control::membership::Refusal::ConfigMismatch { .. },
                    ..
                }
            )),
            "host {p}: {:?}",
            h.events
        );
    }
}

#[test]
fn a_rolling_reload_never_refuses_a_host_nor_moves_an_unchanged_rule() {
    for seed in seeds(100) {
        let mut rng = Rng::new(seed ^ 0x7e10ad);
        let n = 2 + rng.below(4) as u8;
        let modes = vec![Mode::Multiple, Mode::Multiple];
        let mut sim = converged(seed, n, modes.clone());
        let owners = |sim: &Sim| -> Vec<u64> {
            (1..=n)
                .map(|p| sim.hosts[&p].core.ownership()[0].owned)
                .collect()
        };
        let before = owners(&sim);
        // Host by host, a period or two apart: rule 0 stays, rule 1 changes (a new
        // fingerprint), as a reload of every host's file does.
        let mut order: Vec<u8> = (1..=n).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for p in order {
            let now = sim.now;
            let h = sim.hosts.get_mut(&p).unwrap();
            let mut s = settings(p, 0, &modes);
            s.config_fingerprint = 0xbeef;
            h.core.reconfigure(s, &[Some(0), None], now);
            sim.run(sim.now + (1 + rng.below(2)) * PERIOD, |s| {
                s.assert_one_new_connection_taker(seed);
                for (q, h) in &s.hosts {
                    assert!(
                        !h.events.iter().any(|e| matches!(
                            e,
                            Event::Outvoted { .. } | Event::PeerRefused { .. }
                        )),
                        "seed {seed}: host {q} refused or outvoted during a rolling reload: {:?}",
                        h.events
                    );
                }
                // Rule 0 never changes hands.
                let now_owners: Vec<u64> = (1..=n)
                    .map(|p| s.hosts[&p].core.ownership()[0].owned)
                    .collect();
                assert_eq!(
                    now_owners, before,
                    "seed {seed}: rule 0 moved during the reload"
                );
            });
        }
        sim.run(sim.now + CLEANUP + 20 * PERIOD, |_| {});
        sim.assert_quiescent(seed);
        for h in sim.hosts.values() {
            assert!(h.events.contains(&Event::ConfigApplied));
            assert!(!h.core.has_staged());
        }
        assert_eq!(owners(&sim), before, "seed {seed}: rule 0 moved");
    }
}
