//! WLBS membership and convergence as a pure state machine (sans-IO, after quinn-proto): no
//! socket, no clock, no threads. The appliance feeds it heartbeats and time and sends what it
//! asks for; the tests feed it a simulated network and a virtual clock.
//!
//! ```text
//! handle_ping(now, ping)   a peer's heartbeat arrived
//! handle_timeout(now)      time passed (call at poll_timeout() or later)
//! poll_transmit(now)       our heartbeat, when one is due
//! poll_event()             what happened (converged, host failed, peer refused, ...)
//! ownership()              what the data plane may take now, per rule
//! ```
//!
//! **Liveness** (SWIM-style, so one receiver's losses are not enough to fail a host): a host
//! is alive while someone has heard it recently: this host directly, or a live member whose
//! heartbeat lists it as heard within its last two periods. It is failed after `tolerance`
//! periods without either.
//!
//! **Agreement.** Each heartbeat carries the sender's *view* (the live members it accepts) and
//! a digest of the *input* (every member's priority and per-rule parameters). While views or
//! inputs differ, hosts are converging and keep their bucket maps frozen. When every member of
//! the view reports the same view and input, each host computes the *target* assignment on its
//! own: `assignment::assign` with, as the previous assignment, the owners the members' frozen
//! maps report. Frozen maps are the same in every heartbeat a member sends in this round, so
//! every host computes the same target; a digest of it in the heartbeats confirms that. Then
//! the cluster is converged and hand-offs proceed.
//!
//! **Hand-off** of a bucket from A to B (both live): A stops taking new connections at once
//! (outgoing) and keeps those it holds; B waits until A's heartbeat no longer lists the bucket
//! in its new map (so no two hosts take new connections at once), then takes new connections
//! (incoming); when A reports the bucket idle (no descriptors left) or the cleanup delay has
//! passed, B owns it fully and A lets go. A failed host's buckets are taken at once.
//!
//! **Consistency**: a peer whose configuration fingerprint differs, or that duplicates a host
//! priority or a single-host handling priority, is refused: left out of the view, reported
//! once per cause.

mod ping;
pub mod wire;

use std::collections::VecDeque;
use std::net::Ipv4Addr;

pub use ping::{HostState, Ping, RuleMaps};
use wlbs_dataplane::filter::table::RuleOwnership;
use wlbs_dataplane::filter::{Mode, BUCKETS};

use crate::assignment::{self, Assignment, Member, NOBODY};
use crate::fnv::Fnv;

/// Highest host priority.
pub const MAX_PRIORITY: u8 = 32;

/// What this host is and how the cluster is set up: the parts peers must share are folded
/// into `config_fingerprint`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub priority: u8,
    pub dedicated_ip: Ipv4Addr,
    /// A per-host random number: tells two hosts configured with the same priority apart.
    pub host_code: u32,
    /// Everything peers must agree on (cluster IP and MAC, mode, port rules, period).
    pub config_fingerprint: u32,
    pub period_ms: u64,
    pub tolerance: u32,
    pub cleanup_delay_ms: u64,
    pub modes: Vec<Mode>,
    /// This host's load weight per rule (multiple-host rules).
    pub load_weights: Vec<u8>,
    /// This host's handling priority per rule (single-host rules; 0 elsewhere).
    pub handling_priorities: Vec<u8>,
}

/// Something the operator (and the log) should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Converged: every member agrees on the view and the target assignment.
    Converged {
        members: Vec<u8>,
        default_host: Option<u8>,
    },
    /// Started converging again (the view or a member's parameters changed).
    Converging { reason: String },
    /// A member stopped being heard.
    HostFailed { priority: u8 },
    /// A new member was heard.
    HostJoined { priority: u8 },
    /// A member left on purpose (stop, or drainstop complete): its last heartbeat said so.
    HostLeft { priority: u8 },
    /// This host stopped (`stop`): it takes nothing until `start`.
    Stopped,
    /// This host started again after a stop (`start`) and converges.
    Started,
    /// A peer is left out because its setup conflicts with ours.
    PeerRefused {
        priority: u8,
        dedicated_ip: Ipv4Addr,
        cause: Refusal,
    },
    /// Two default hosts were seen: two sub-clusters merged.
    Partition { other_default: u8 },
    /// Drainstop finished: no connections left, the host stopped.
    DrainComplete,
    /// A reloaded configuration took effect (at once, or when every member had it).
    ConfigApplied,
    /// This host's shared configuration differs from the one most live hosts run
    /// (`majority`): it takes no traffic until its configuration matches, so two
    /// configurations never serve the same buckets.
    Outvoted { majority: Vec<u8> },
}

/// What this host does for one port rule (`wlbs enable|drain|disable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuleControl {
    /// As configured.
    #[default]
    Enabled,
    /// No new connections here; existing ones finish.
    Draining,
    /// Nothing here: its buckets go to the others at once, connections in progress break.
    Disabled,
}

impl RuleControl {
    pub fn name(self) -> &'static str {
        match self {
            RuleControl::Enabled => "enabled",
            RuleControl::Draining => "draining",
            RuleControl::Disabled => "disabled",
        }
    }
}

/// Another host as this one sees it (for `query`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub priority: u8,
    pub dedicated_ip: Ipv4Addr,
    /// The state its last heartbeat reported.
    pub state: HostState,
    /// In this host's view (alive and not refused).
    pub member: bool,
    pub alive: bool,
    pub refused: Option<Refusal>,
}

/// Why a peer is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Its cluster configuration (cluster IP, MAC, mode, port rules, period) differs.
    ConfigMismatch { ours: u32, theirs: u32 },
    /// Another host uses the same host priority.
    DuplicatePriority,
    /// It uses a single-host handling priority that another member uses for the same rule.
    DuplicateHandlingPriority { rule: usize, handling_priority: u8 },
}

/// Per-bucket state on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bucket {
    /// Not ours.
    None,
    /// Ours: all traffic.
    Owned,
    /// Moving to us: new connections ours, the old owner keeps its own.
    Incoming { from: u8 },
    /// Assigned to us, but the old owner still takes new connections: wait.
    Pending { from: u8 },
    /// Assigned back to us while we were handing it to `from`, which already takes new
    /// connections: we keep serving ours (as when handing away) and wait like `Pending`.
    Reclaiming { from: u8 },
    /// Moving away: we keep our connections, nothing new.
    Outgoing { to: u8, since_ms: u64 },
}

#[derive(Debug, Clone, Default)]
struct Peer {
    /// Last heartbeat heard from it directly.
    last_direct_ms: Option<u64>,
    /// Last time a live member reported hearing it.
    last_indirect_ms: Option<u64>,
    last: Option<Ping>,
    refused: Option<Refusal>,
    /// A different host code seen with this priority recently (duplicate priority).
    other_code_ms: Option<u64>,
    /// The host code whose last heartbeat said "stopped": a late heartbeat of that instance
    /// (reordered on the way) must not bring it back.
    stopped_code: Option<u32>,
}

/// Host priorities as logs and answers show a set of hosts: `1,2,3` (inside braces there).
pub fn host_list(priorities: &[u8]) -> String {
    priorities
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The membership state machine of one host.
pub struct Membership {
    s: Settings,
    peers: Vec<Peer>,
    /// Members this host considers live and accepted (bit p-1 for priority p), itself included.
    view: u32,
    state: HostState,
    converged: bool,
    /// Target computed for (view, input); its digest.
    target: Option<(u32, u32, Assignment)>,
    buckets: Vec<[Bucket; BUCKETS]>,
    /// Per rule: outgoing buckets whose descriptors reached zero (from the data plane).
    idle_local: Vec<u64>,
    draining: bool,
    /// Stopped, with one last heartbeat (state stopped) still to send, so the others converge
    /// without us at once instead of after the tolerance.
    farewell: bool,
    next_ping_ms: u64,
    events: VecDeque<Event>,
    /// When the view or input last changed: agreement needs them stable for a while, so a
    /// starting host hears its peers before it takes anything.
    stable_since_ms: u64,
    last_input: u32,
    /// A starting host listens for two periods before it takes anything, so it hears the
    /// members already running (each sends every period).
    listen_until_ms: u64,
    /// Periods in which a peer's heartbeat did not arrive (gaps between its heartbeats).
    missed: u64,
    /// Set while most live hosts run another configuration: the hosts that do.
    outvoted: Option<Vec<u8>>,
    /// The default host of the last agreement: it keeps taking default-host traffic while
    /// the cluster converges again, as the buckets keep their owners.
    agreed_default: Option<u8>,
    /// Per rule: enabled, draining or disabled on this host.
    rule_control: Vec<RuleControl>,
    /// Heartbeats sent (the next one's count).
    sent: u64,
    /// When the current target was computed.
    target_since_ms: u64,
    /// A reloaded configuration waiting for every member to have it: settings and the kept
    /// rule map.
    staged: Option<(Settings, Vec<Option<usize>>)>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconfigured {
    Applied,
    /// Announced; it takes effect when these members have it too.
    Staged {
        waiting: Vec<u8>,
    },
}

impl Membership {
    pub fn new(settings: Settings, now_ms: u64) -> Membership {
        let rules = settings.modes.len();
        let mut m = Membership {
            peers: vec![Peer::default(); MAX_PRIORITY as usize + 1],
            view: bit(settings.priority),
            state: HostState::Converging,
            converged: false,
            target: None,
            buckets: vec![[Bucket::None; BUCKETS]; rules],
            idle_local: vec![0; rules],
            draining: false,
            farewell: false,
            next_ping_ms: now_ms,
            events: VecDeque::new(),
            stable_since_ms: now_ms,
            last_input: 0,
            listen_until_ms: now_ms + 2 * settings.period_ms,
            missed: 0,
            outvoted: None,
            agreed_default: None,
            rule_control: vec![RuleControl::Enabled; rules],
            sent: 1,
            target_since_ms: 0,
            staged: None,
            s: settings,
        };
        m.peers[m.s.priority as usize].last_direct_ms = Some(now_ms);
        m
    }

    pub fn priority(&self) -> u8 {
        self.s.priority
    }

    /// Stopped or suspended: takes nothing, sends nothing.
    pub fn is_stopped(&self) -> bool {
        self.state.is_stopped()
    }

    pub fn state(&self) -> HostState {
        self.state
    }

    /// Live, accepted members (priorities, ascending), this host included.
    pub fn members(&self) -> Vec<u8> {
        members_of(self.view)
    }

    pub fn is_converged(&self) -> bool {
        self.converged
    }

    /// The agreed target assignment, once computed.
    pub fn target(&self) -> Option<&Assignment> {
        self.target.as_ref().map(|(_, _, a)| a)
    }

    /// The default host: the lowest live member that is not draining (per the agreed
    /// assignment; while none is computed yet, the lowest live member).
    pub fn default_host(&self) -> Option<u8> {
        if self.outvoted.is_some() {
            return None;
        }
        match &self.target {
            Some((_, _, a)) => a.default_host,
            None => self.members().first().copied(),
        }
    }

    /// Heartbeat periods in which a peer's heartbeat did not arrive, since start.
    pub fn heartbeats_missed(&self) -> u64 {
        self.missed
    }

    /// Every other host heard so far, as its last heartbeat showed it.
    pub fn peer_status(&self, now_ms: u64) -> Vec<PeerStatus> {
        (1..=MAX_PRIORITY)
            .filter(|&p| p != self.s.priority)
            .filter_map(|p| {
                let peer = &self.peers[p as usize];
                let last = peer.last.as_ref()?;
                Some(PeerStatus {
                    priority: p,
                    dedicated_ip: last.dedicated_ip,
                    state: last.state,
                    member: self.view & bit(p) != 0,
                    alive: self.alive(p, now_ms),
                    refused: peer.refused.clone(),
                })
            })
            .collect()
    }

    /// Whether this host takes the traffic no port rule covers: it is the default host of the
    /// current agreement, or, while the cluster converges again, of the last one.
    pub fn serves_default(&self) -> bool {
        if self.outvoted.is_some() || self.draining || self.is_stopped() {
            return false;
        }
        let default = if self.converged {
            self.default_host()
        } else {
            self.agreed_default
        };
        default == Some(self.s.priority)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` wants to run next (never, once stopped and the last heartbeat
    /// sent).
    pub fn poll_timeout(&self) -> u64 {
        if self.is_stopped() && !self.farewell {
            u64::MAX
        } else {
            self.next_ping_ms
        }
    }

    /// Drainstop: take no new connections, let existing ones finish, then stop.
    pub fn drainstop(&mut self, now_ms: u64) {
        if self.is_stopped() {
            return;
        }
        self.draining = true;
        self.state = HostState::Draining;
        self.events.push_back(Event::Converging {
            reason: format!("host {} drainstop", self.s.priority),
        });
        self.converged = false;
        self.recompute(now_ms);
    }

    /// Stop: take nothing from now on (connections in progress break, as with NLB's `stop`;
    /// use `drainstop` to let them finish). One last heartbeat tells the others.
    pub fn stop(&mut self, now_ms: u64) {
        if self.is_stopped() {
            return;
        }
        self.enter_stopped();
        self.next_ping_ms = now_ms;
        self.events.push_back(Event::Stopped);
    }

    /// Suspend: stop (as `stop`), and stay stopped whatever start asks until `resume`.
    pub fn suspend(&mut self, now_ms: u64) {
        self.stop(now_ms);
        self.state = HostState::Suspended;
    }

    /// Resume after a suspend: the host is stopped and takes `start` again.
    pub fn resume(&mut self) {
        if self.state == HostState::Suspended {
            self.state = HostState::Stopped;
        }
    }

    /// Start again after a stop or a completed drainstop: listen, then converge as a new
    /// member would. Does nothing while running or suspended.
    pub fn start(&mut self, now_ms: u64) {
        if self.state != HostState::Stopped {
            return;
        }
        // A new instance code: the others tell our new heartbeats from late ones of before.
        let mut settings = self.s.clone();
        settings.host_code = settings.host_code.rotate_left(7).wrapping_add(2) | 1;
        if settings.host_code == self.s.host_code {
            settings.host_code ^= 2;
        }
        let mut fresh = Membership::new(settings, now_ms);
        fresh.events = std::mem::take(&mut self.events);
        fresh.events.push_back(Event::Started);
        fresh.missed = self.missed;
        fresh.rule_control = self.rule_control.clone();
        *self = fresh;
    }

    /// A reloaded configuration of this host. `kept[r]` is the index, in the old
    /// configuration, of new rule `r` when that rule did not change: its buckets keep their
    /// state (and the data plane keeps forwarding with them while the cluster converges
    /// again); a new or changed rule starts with nothing until the cluster agrees on it.
    ///
    /// Alone (or stopped), it applies at once. In a cluster it is staged: the heartbeats
    /// announce it, the host keeps running the configuration it has, and every host switches
    /// when every live member announces (or runs) the new one, so a rolling reload never
    /// leaves two configurations serving, nor a host refused. `Event::ConfigApplied` says
    /// when it took effect. A new reload replaces a staged one.
    pub fn reconfigure(
        &mut self,
        settings: Settings,
        kept: &[Option<usize>],
        now_ms: u64,
    ) -> Reconfigured {
        let alone = members_of(self.view) == [self.s.priority];
        if alone || self.is_stopped() || settings.config_fingerprint == self.s.config_fingerprint {
            self.staged = None;
            self.apply_config(settings, kept, now_ms);
            self.events.push_back(Event::ConfigApplied);
            return Reconfigured::Applied;
        }
        self.staged = Some((settings, kept.to_vec()));
        // Tell the others at once.
        self.next_ping_ms = now_ms;
        self.recompute(now_ms);
        if self.staged.is_none() {
            return Reconfigured::Applied;
        }
        Reconfigured::Staged {
            waiting: self.waiting_for_staged(),
        }
    }

    /// Whether a reloaded configuration waits for the other members.
    pub fn has_staged(&self) -> bool {
        self.staged.is_some()
    }

    /// The members that neither announce nor run the staged configuration yet.
    pub fn waiting_for_staged(&self) -> Vec<u8> {
        let Some((staged, _)) = &self.staged else {
            return Vec::new();
        };
        let fp = staged.config_fingerprint;
        members_of(self.view)
            .into_iter()
            .filter(|&p| p != self.s.priority)
            .filter(|&p| {
                !self.peers[p as usize]
                    .last
                    .as_ref()
                    .is_some_and(|l| l.config == fp || l.next_config == fp)
            })
            .collect()
    }

    /// The configurations this host belongs to: the one it runs, and the one it staged.
    fn own_configs(&self) -> [u32; 2] {
        [
            self.s.config_fingerprint,
            self.staged
                .as_ref()
                .map_or(self.s.config_fingerprint, |(s, _)| s.config_fingerprint),
        ]
    }

    fn apply_config(&mut self, settings: Settings, kept: &[Option<usize>], now_ms: u64) {
        let old_buckets = std::mem::take(&mut self.buckets);
        let old_idle = std::mem::take(&mut self.idle_local);
        let rules = settings.modes.len();
        self.buckets = (0..rules)
            .map(|r| {
                kept.get(r)
                    .copied()
                    .flatten()
                    .and_then(|o| old_buckets.get(o).copied())
                    .unwrap_or([Bucket::None; BUCKETS])
            })
            .collect();
        self.idle_local = (0..rules)
            .map(|r| {
                kept.get(r)
                    .copied()
                    .flatten()
                    .and_then(|o| old_idle.get(o).copied())
                    .unwrap_or(0)
            })
            .collect();
        let old_control = std::mem::take(&mut self.rule_control);
        self.rule_control = (0..rules)
            .map(|r| {
                kept.get(r)
                    .copied()
                    .flatten()
                    .and_then(|o| old_control.get(o).copied())
                    .unwrap_or_default()
            })
            .collect();
        self.s = Settings {
            priority: self.s.priority,
            host_code: self.s.host_code,
            ..settings
        };
        if self.is_stopped() {
            return;
        }
        self.events.push_back(Event::Converging {
            reason: "configuration reloaded".into(),
        });
        self.converged = false;
        self.target = None;
        self.stable_since_ms = now_ms;
        // Tell the others at once.
        self.next_ping_ms = now_ms;
        self.recompute(now_ms);
    }

    fn enter_stopped(&mut self) {
        self.state = HostState::Stopped;
        self.draining = false;
        self.converged = false;
        self.farewell = true;
        self.view = bit(self.s.priority);
        self.buckets
            .iter_mut()
            .for_each(|r| *r = [Bucket::None; BUCKETS]);
    }

    /// Tells the core which outgoing buckets have no descriptors left (per rule bitmaps,
    /// from the data plane's per-bucket counts).
    pub fn set_idle(&mut self, idle: &[u64]) {
        for (mine, theirs) in self.idle_local.iter_mut().zip(idle) {
            *mine = *theirs;
        }
    }

    /// What the data plane may take now.
    pub fn ownership(&self) -> Vec<RuleOwnership> {
        let target = self.target.as_ref().map(|(_, _, a)| a);
        (0..self.s.modes.len())
            .map(|r| {
                let mut o = RuleOwnership::default();
                for (b, state) in self.buckets[r].iter().enumerate() {
                    match state {
                        Bucket::Owned => o.owned |= 1 << b,
                        Bucket::Incoming { .. } => o.incoming |= 1 << b,
                        Bucket::Outgoing { .. } | Bucket::Reclaiming { .. } => o.outgoing |= 1 << b,
                        Bucket::None | Bucket::Pending { .. } => {}
                    }
                }
                o.handler = !self.is_stopped()
                    && self.rule_control[r] != RuleControl::Disabled
                    && target.is_some_and(|t| t.rules[r].handler == Some(self.s.priority));
                o
            })
            .collect()
    }

    /// A peer's heartbeat.
    pub fn handle_ping(&mut self, now_ms: u64, ping: &Ping) {
        let p = ping.priority;
        if p == 0 || p > MAX_PRIORITY || self.is_stopped() {
            return;
        }
        if p == self.s.priority {
            if ping.host_code != self.s.host_code {
                // Someone else claims our priority.
                self.peers[p as usize].other_code_ms = Some(now_ms);
                self.refuse(p, ping.dedicated_ip, Refusal::DuplicatePriority);
            }
            return;
        }
        if self.peers[p as usize]
            .last
            .as_ref()
            .is_some_and(|l| l.host_code == ping.host_code && ping.seq <= l.seq)
        {
            // Older than what we have from that instance (reordered, or duplicated).
            return;
        }
        let was_alive = self.alive(p, now_ms);
        {
            let peer = &mut self.peers[p as usize];
            if ping.state.is_stopped() {
                peer.stopped_code = Some(ping.host_code);
            } else if peer.stopped_code == Some(ping.host_code) {
                return;
            }
            if let Some(last) = &peer.last {
                // A new instance right after the old one said it stopped is a restart, not
                // a second host with the same priority.
                if last.host_code != ping.host_code
                    && !last.state.is_stopped()
                    && peer.last_direct_ms.is_some_and(|t| {
                        now_ms.saturating_sub(t) <= self.s.period_ms * self.s.tolerance as u64
                    })
                {
                    peer.other_code_ms = Some(now_ms);
                }
            }
            if let Some(last) = peer.last_direct_ms {
                // A gap of k periods means k - 1 heartbeats did not arrive (half a period of
                // slack for scheduling and delay).
                let gap = now_ms.saturating_sub(last);
                let period = self.s.period_ms.max(1);
                if gap > period + period / 2 {
                    // A host away longer than the tolerance was failed (or stopped): count
                    // the periods until then, not its whole absence.
                    self.missed += ((gap + period / 2) / period - 1).min(self.s.tolerance as u64);
                }
            }
            peer.last_direct_ms = Some(now_ms);
            peer.last = Some(ping.clone());
        }
        // Consistency checks: a conflicting peer stays out of the view.
        let ours = self.own_configs();
        let compatible = ours.contains(&ping.config)
            || (ping.next_config != 0 && ours.contains(&ping.next_config));
        let cause = if !compatible {
            Some(Refusal::ConfigMismatch {
                ours: self.s.config_fingerprint,
                theirs: ping.config,
            })
        } else if self.peers[p as usize]
            .other_code_ms
            .is_some_and(|t| now_ms.saturating_sub(t) <= self.window_ms())
        {
            Some(Refusal::DuplicatePriority)
        } else {
            self.handling_conflict(ping)
        };
        match cause {
            Some(c) => self.refuse(p, ping.dedicated_ip, c),
            None => self.peers[p as usize].refused = None,
        }
        // Hosts it has heard are alive as far as we know (indirect liveness).
        if self.peers[p as usize].refused.is_none() {
            let heard_at = now_ms.saturating_sub(2 * self.s.period_ms);
            for q in members_of(ping.heard) {
                if q != p && q != self.s.priority {
                    let peer = &mut self.peers[q as usize];
                    peer.last_indirect_ms = Some(peer.last_indirect_ms.unwrap_or(0).max(heard_at));
                }
            }
            if !was_alive {
                self.events.push_back(Event::HostJoined { priority: p });
            }
            if let Some(d) = ping.default_host {
                if ping.state.is_converged()
                    && self.converged
                    && Some(d) != self.default_host()
                    && d < self.s.priority
                    && bit(d) & self.view == 0
                {
                    self.events.push_back(Event::Partition { other_default: d });
                }
            }
        }
        self.recompute(now_ms);
    }

    /// Time passed: liveness, hand-off progress, and our next heartbeat's timing.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.recompute(now_ms);
    }

    /// Our heartbeat, when one is due (every period).
    pub fn poll_transmit(&mut self, now_ms: u64) -> Option<Ping> {
        if self.is_stopped() {
            if !std::mem::take(&mut self.farewell) {
                return None;
            }
            let ping = self.ping(now_ms);
            self.sent += 1;
            return Some(ping);
        }
        if now_ms < self.next_ping_ms {
            return None;
        }
        self.next_ping_ms = now_ms + self.s.period_ms;
        let ping = self.ping(now_ms);
        self.sent += 1;
        Some(ping)
    }

    fn window_ms(&self) -> u64 {
        self.s.period_ms * self.s.tolerance as u64
    }

    fn refuse(&mut self, p: u8, dedicated_ip: Ipv4Addr, cause: Refusal) {
        let peer = &mut self.peers[p as usize];
        if peer.refused.as_ref() != Some(&cause) {
            peer.refused = Some(cause.clone());
            self.events.push_back(Event::PeerRefused {
                priority: p,
                dedicated_ip,
                cause,
            });
        }
    }

    /// A single-host rule whose handling priority the peer shares with us or another member.
    fn handling_conflict(&self, ping: &Ping) -> Option<Refusal> {
        for (r, mode) in self.s.modes.iter().enumerate() {
            if *mode != Mode::Single {
                continue;
            }
            let theirs = ping.handling_priorities.get(r).copied().unwrap_or(0);
            if theirs == 0 {
                continue;
            }
            let mine = self.s.handling_priorities.get(r).copied().unwrap_or(0);
            let clash_with_me = mine == theirs && !self.draining;
            let clash_with_other = self.peers.iter().enumerate().any(|(q, peer)| {
                q as u8 != ping.priority
                    && peer.refused.is_none()
                    && peer.last.as_ref().is_some_and(|l| {
                        l.handling_priorities.get(r).copied().unwrap_or(0) == theirs
                            && l.priority < ping.priority
                    })
                    && bit(q as u8) & self.view != 0
            });
            if clash_with_me || clash_with_other {
                return Some(Refusal::DuplicateHandlingPriority {
                    rule: r,
                    handling_priority: theirs,
                });
            }
        }
        None
    }

    fn alive(&self, p: u8, now_ms: u64) -> bool {
        if p == self.s.priority {
            return !self.is_stopped();
        }
        let peer = &self.peers[p as usize];
        let last = peer
            .last_direct_ms
            .unwrap_or(0)
            .max(peer.last_indirect_ms.unwrap_or(0));
        (peer.last_direct_ms.is_some() || peer.last_indirect_ms.is_some())
            && now_ms.saturating_sub(last) <= self.window_ms()
            && peer.last.is_some()
            && !peer.last.as_ref().is_some_and(|l| l.state.is_stopped())
    }

    /// When this host's configuration is not the one most live hosts share: the hosts that
    /// share the winning one. Groups by configuration fingerprint; the largest wins, a tie
    /// goes to the group with the lowest host priority (every host decides alike).
    fn config_majority(&self, now_ms: u64) -> Option<Vec<u8>> {
        // Each host belongs to the configuration it runs and to the one it staged (a reload
        // on its way): a configuration's score is how many hosts belong to it.
        let mut hosts: Vec<(u8, [u32; 2])> = vec![(self.s.priority, self.own_configs())];
        for p in 1..=MAX_PRIORITY {
            if p == self.s.priority || !self.alive(p, now_ms) {
                continue;
            }
            if let Some(l) = self.peers[p as usize].last.as_ref() {
                let next = if l.next_config != 0 {
                    l.next_config
                } else {
                    l.config
                };
                hosts.push((p, [l.config, next]));
            }
        }
        let members_of_config = |c: u32| -> Vec<u8> {
            let mut m: Vec<u8> = hosts
                .iter()
                .filter(|(_, cs)| cs.contains(&c))
                .map(|(p, _)| *p)
                .collect();
            m.sort_unstable();
            m
        };
        let winner = hosts
            .iter()
            .flat_map(|(_, cs)| cs.iter().copied())
            .max_by_key(|&c| {
                let m = members_of_config(c);
                (
                    m.len(),
                    std::cmp::Reverse(m.first().copied().unwrap_or(u8::MAX)),
                )
            })
            .expect("our own configuration is there");
        (!self.own_configs().contains(&winner)).then(|| members_of_config(winner))
    }

    /// The members this host accepts now.
    fn compute_view(&self, now_ms: u64) -> u32 {
        let mut view = 0;
        for p in 1..=MAX_PRIORITY {
            if self.alive(p, now_ms)
                && (p == self.s.priority || self.peers[p as usize].refused.is_none())
            {
                view |= bit(p);
            }
        }
        view
    }

    /// The members and their parameters, as the assignment takes them.
    /// The members the assignment shares the traffic among: the view without the members
    /// that drain (they take nothing new; with every member draining, nobody does).
    fn input(&self) -> Vec<Member> {
        members_of(self.view)
            .into_iter()
            .filter_map(|p| {
                if p == self.s.priority {
                    return (!self.draining).then(|| self.me_as_member());
                }
                let l = self.peers[p as usize]
                    .last
                    .as_ref()
                    .expect("alive peers have pings");
                (!l.draining).then(|| Member {
                    priority: p,
                    load_weights: l.load_weights.clone(),
                    handling_priorities: l
                        .handling_priorities
                        .iter()
                        .map(|&h| if h == 0 { u8::MAX } else { h })
                        .collect(),
                })
            })
            .collect()
    }

    fn me_as_member(&self) -> Member {
        Member {
            priority: self.s.priority,
            load_weights: self.load_weights(),
            handling_priorities: self
                .handling_priorities()
                .iter()
                .map(|&h| if h == 0 { u8::MAX } else { h })
                .collect(),
        }
    }

    /// Load weights as this host announces them: out of the rule for one drained or
    /// disabled here.
    fn load_weights(&self) -> Vec<u8> {
        self.s
            .load_weights
            .iter()
            .zip(&self.rule_control)
            .map(|(&w, &c)| {
                if c == RuleControl::Enabled {
                    w
                } else {
                    crate::assignment::OUT_OF_RULE
                }
            })
            .collect()
    }

    /// Handling priorities as announced: none (0) for a rule drained or disabled here.
    fn handling_priorities(&self) -> Vec<u8> {
        self.s
            .handling_priorities
            .iter()
            .zip(&self.rule_control)
            .map(|(&h, &c)| if c == RuleControl::Enabled { h } else { 0 })
            .collect()
    }

    /// Enables, drains or disables rules on this host; the cluster converges again.
    pub fn control_rules(&mut self, rules: &[usize], control: RuleControl, now_ms: u64) {
        for &r in rules {
            if let Some(c) = self.rule_control.get_mut(r) {
                *c = control;
                if control == RuleControl::Disabled {
                    // Let go at once: no connection is kept.
                    for b in self.buckets[r].iter_mut() {
                        if matches!(b, Bucket::Outgoing { .. } | Bucket::Reclaiming { .. }) {
                            *b = Bucket::None;
                        }
                    }
                }
            }
        }
        self.next_ping_ms = now_ms;
        self.recompute(now_ms);
    }

    /// Per rule: enabled, draining or disabled on this host.
    pub fn rule_control(&self) -> &[RuleControl] {
        &self.rule_control
    }

    fn input_digest(&self) -> u32 {
        let mut h = Fnv::new();
        h.u32(self.view);
        for m in self.input() {
            h.u8(m.priority);
            h.bytes(&m.load_weights);
            h.bytes(&m.handling_priorities);
        }
        h.finish()
    }

    /// Re-evaluates everything: view, agreement, target, hand-off progress.
    fn recompute(&mut self, now_ms: u64) {
        self.reevaluate(now_ms);
    }

    fn reevaluate(&mut self, now_ms: u64) {
        if self.is_stopped() {
            return;
        }
        if self.staged.is_some() && self.waiting_for_staged().is_empty() {
            let (settings, kept) = self.staged.take().expect("checked");
            self.apply_config(settings, &kept, now_ms);
            self.events.push_back(Event::ConfigApplied);
            return;
        }
        let outvoted = self.config_majority(now_ms);
        if outvoted != self.outvoted {
            match &outvoted {
                Some(majority) => self.events.push_back(Event::Outvoted {
                    majority: majority.clone(),
                }),
                None => self.events.push_back(Event::Converging {
                    reason: "this host's configuration matches the cluster's again".into(),
                }),
            }
            self.outvoted = outvoted;
        }
        if self.outvoted.is_some() {
            // Take nothing: the hosts of the winning configuration take our buckets.
            self.view = bit(self.s.priority);
            self.converged = false;
            self.target = None;
            self.buckets
                .iter_mut()
                .for_each(|r| *r = [Bucket::None; BUCKETS]);
            self.state = HostState::Converging;
            return;
        }
        let view = self.compute_view(now_ms);
        if view != self.view {
            for p in members_of(self.view & !view) {
                if p == self.s.priority {
                    continue;
                }
                if self.peers[p as usize].refused.is_some() {
                    // Refused, not failed: the refusal was reported already.
                    continue;
                }
                let left = self.peers[p as usize]
                    .last
                    .as_ref()
                    .is_some_and(|l| l.state.is_stopped());
                self.events.push_back(if left {
                    Event::HostLeft { priority: p }
                } else {
                    Event::HostFailed { priority: p }
                });
            }
            self.view = view;
            self.take_over_failed(now_ms);
            if self.converged {
                self.events.push_back(Event::Converging {
                    reason: format!("members now {:?}", members_of(view)),
                });
            }
            self.converged = false;
        }
        let input = self.input_digest();
        if input != self.last_input {
            self.last_input = input;
            self.stable_since_ms = now_ms;
        }
        if self.target.as_ref().is_some_and(|(i, _, _)| *i != input) {
            if self.converged {
                self.events.push_back(Event::Converging {
                    reason: "member parameters changed".into(),
                });
            }
            self.converged = false;
            self.target = None;
        }
        // Phase 1: the view and input held still for a period (so a starting host hears its
        // peers before it takes anything), and every member reports them.
        let stable = now_ms.saturating_sub(self.stable_since_ms) >= self.s.period_ms
            && now_ms >= self.listen_until_ms;
        let agreed_input = stable
            && members_of(self.view).into_iter().all(|p| {
                p == self.s.priority
                    || self.peers[p as usize]
                        .last
                        .as_ref()
                        .is_some_and(|l| l.view == self.view && l.input == input)
            });
        if agreed_input && self.target.is_none() {
            self.target_since_ms = now_ms;
            let a = assignment::assign(&self.s.modes, &self.input(), Some(&self.previous()));
            let digest = digest_of(&a);
            self.target = Some((input, digest, a));
            let before = self.maps();
            self.apply_target(now_ms);
            // Buckets we stopped taking new connections for: say so at once, so their new
            // owners take them without waiting a period (and the others see our target).
            if self.maps() != before {
                self.next_ping_ms = now_ms;
            }
        }
        // Phase 2: every member reports the same target.
        if let Some((_, digest, _)) = &self.target {
            let digest = *digest;
            let agreed = agreed_input
                && members_of(self.view).into_iter().all(|p| {
                    p == self.s.priority
                        || self.peers[p as usize]
                            .last
                            .as_ref()
                            .is_some_and(|l| l.target == digest)
                });
            // Members that agree on the input but computed another target (they read the
            // previous owners off bucket maps that were still changing): after a few periods
            // every host computes it again from the maps it has now.
            let split = agreed_input
                && !self.converged
                && now_ms.saturating_sub(self.target_since_ms) >= 3 * self.s.period_ms
                && members_of(self.view).into_iter().any(|p| {
                    self.peers[p as usize]
                        .last
                        .as_ref()
                        .is_some_and(|l| l.target != 0 && l.target != digest)
                });
            if split {
                self.target = None;
            }
            if agreed && !self.converged {
                self.converged = true;
                self.agreed_default = self.default_host();
                self.events.push_back(Event::Converged {
                    members: members_of(self.view),
                    default_host: self.default_host(),
                });
            }
        }
        if self.converged {
            self.progress_hand_offs(now_ms);
        }
        self.state = if self.draining {
            if self.converged && self.holds_nothing() {
                self.events.push_back(Event::DrainComplete);
                self.enter_stopped();
                HostState::Stopped
            } else {
                HostState::Draining
            }
        } else if !self.converged {
            HostState::Converging
        } else if self.default_host() == Some(self.s.priority) {
            HostState::ConvergedDefault
        } else {
            HostState::Converged
        };
    }

    fn holds_nothing(&self) -> bool {
        self.buckets.iter().enumerate().all(|(r, rule)| {
            rule.iter().enumerate().all(|(b, s)| match s {
                Bucket::None | Bucket::Pending { .. } => true,
                Bucket::Outgoing { .. } | Bucket::Reclaiming { .. } => {
                    self.idle_local[r] & (1 << b) != 0
                }
                _ => false,
            })
        })
    }

    /// Buckets whose old owner failed become ours at once (no one else holds connections).
    fn take_over_failed(&mut self, _now_ms: u64) {
        let view = self.view;
        for rule in self.buckets.iter_mut() {
            for s in rule.iter_mut() {
                match *s {
                    Bucket::Incoming { from } | Bucket::Pending { from }
                        if bit(from) & view == 0 =>
                    {
                        *s = Bucket::Owned
                    }
                    Bucket::Outgoing { to, .. } if bit(to) & view == 0 => *s = Bucket::Owned,
                    _ => {}
                }
            }
        }
    }

    /// The owners the members' frozen maps report: the previous assignment every host uses.
    fn previous(&self) -> Assignment {
        let rules = self.s.modes.len();
        let mut prev = Assignment {
            rules: (0..rules)
                .map(|_| assignment::RuleAssignment {
                    owners: [NOBODY; BUCKETS],
                    handler: None,
                })
                .collect(),
            default_host: None,
        };
        let reported: Vec<(u8, Vec<RuleMaps>)> = members_of(self.view)
            .into_iter()
            .filter_map(|p| {
                if p == self.s.priority {
                    Some((p, self.maps()))
                } else {
                    self.peers[p as usize]
                        .last
                        .as_ref()
                        .map(|l| (p, l.rules.clone()))
                }
            })
            .collect();
        for (p, maps) in &reported {
            let p = *p;
            for (r, m) in maps.iter().enumerate().take(rules) {
                for b in 0..BUCKETS {
                    let claims = (m.new | m.ready) & (1 << b) != 0;
                    let o = &mut prev.rules[r].owners[b];
                    if claims && (*o == NOBODY || p < *o) {
                        *o = p;
                    }
                }
            }
        }
        // Buckets nobody claims for new connections: whoever still serves them.
        for (p, maps) in &reported {
            let p = *p;
            for (r, m) in maps.iter().enumerate().take(rules) {
                for b in 0..BUCKETS {
                    let o = &mut prev.rules[r].owners[b];
                    if *o == NOBODY && m.current & (1 << b) != 0 {
                        *o = p;
                    }
                }
            }
        }
        prev
    }

    /// Moves this host's buckets towards the new target.
    fn apply_target(&mut self, now_ms: u64) {
        let Some((_, _, target)) = &self.target else {
            return;
        };
        let me = self.s.priority;
        let prev = self.previous();
        for (r, rule) in self.buckets.iter_mut().enumerate() {
            if self.s.modes[r] != Mode::Multiple {
                *rule = [Bucket::None; BUCKETS];
                continue;
            }
            for (b, s) in rule.iter_mut().enumerate() {
                let to = target.rules[r].owners[b];
                let from = prev.rules[r].owners[b];
                *s = match (*s, to == me) {
                    (Bucket::Owned | Bucket::Incoming { .. }, true) => *s,
                    (Bucket::Outgoing { to: t, .. } | Bucket::Reclaiming { from: t }, true) => {
                        if t != me && bit(t) & self.view != 0 {
                            Bucket::Reclaiming { from: t }
                        } else {
                            Bucket::Owned
                        }
                    }
                    (_, true) => {
                        if from != NOBODY && from != me && bit(from) & self.view != 0 {
                            Bucket::Pending { from }
                        } else {
                            Bucket::Owned
                        }
                    }
                    // Disabled here: let go at once.
                    (_, false) if self.rule_control[r] == RuleControl::Disabled => Bucket::None,
                    // Moving away, also to nobody (every member draining): our connections
                    // finish here first.
                    (Bucket::Owned | Bucket::Incoming { .. }, false) => Bucket::Outgoing {
                        to,
                        since_ms: now_ms,
                    },
                    (Bucket::Outgoing { since_ms, .. }, false) => Bucket::Outgoing { to, since_ms },
                    (Bucket::Reclaiming { .. }, false) => Bucket::Outgoing {
                        to,
                        since_ms: now_ms,
                    },
                    (_, false) => Bucket::None,
                };
            }
        }
    }

    /// After agreement: pending -> incoming when the old owner stopped taking new
    /// connections; incoming -> owned when it reports the bucket idle (or the cleanup delay
    /// passed); outgoing -> none when the new owner owns it.
    fn progress_hand_offs(&mut self, now_ms: u64) {
        let delay = self.s.cleanup_delay_ms;
        for r in 0..self.buckets.len() {
            for b in 0..BUCKETS {
                let s = self.buckets[r][b];
                let peer_maps = |p: u8| {
                    self.peers[p as usize]
                        .last
                        .as_ref()
                        .and_then(|l| l.rules.get(r).copied())
                        .unwrap_or_default()
                };
                self.buckets[r][b] = match s {
                    Bucket::Pending { from } | Bucket::Reclaiming { from }
                        if peer_maps(from).new & (1 << b) == 0 =>
                    {
                        Bucket::Incoming { from }
                    }
                    Bucket::Incoming { from } => {
                        let m = peer_maps(from);
                        if m.idle & (1 << b) != 0 || m.current & (1 << b) == 0 {
                            Bucket::Owned
                        } else {
                            s
                        }
                    }
                    Bucket::Outgoing { to, since_ms } => {
                        let theirs = peer_maps(to);
                        if theirs.current & (1 << b) != 0 && theirs.new & (1 << b) != 0 {
                            // The new owner owns it fully: let go.
                            Bucket::None
                        } else if now_ms.saturating_sub(since_ms) >= delay {
                            // Cleanup delay passed: report it idle regardless.
                            self.idle_local[r] |= 1 << b;
                            s
                        } else {
                            s
                        }
                    }
                    other => other,
                };
            }
        }
    }

    /// Our bucket maps, as the heartbeat carries them.
    fn maps(&self) -> Vec<RuleMaps> {
        self.buckets
            .iter()
            .enumerate()
            .map(|(r, rule)| {
                let mut m = RuleMaps::default();
                for (b, s) in rule.iter().enumerate() {
                    let bit = 1u64 << b;
                    match s {
                        Bucket::Owned => {
                            m.current |= bit;
                            m.new |= bit;
                        }
                        Bucket::Incoming { .. } => m.new |= bit,
                        Bucket::Pending { .. } => m.ready |= bit,
                        Bucket::Reclaiming { .. } => {
                            m.current |= bit;
                            m.ready |= bit;
                            if self.idle_local[r] & bit != 0 {
                                m.idle |= bit;
                            }
                        }
                        Bucket::Outgoing { .. } => {
                            m.current |= bit;
                            if self.idle_local[r] & bit != 0 {
                                m.idle |= bit;
                            }
                        }
                        Bucket::None => {}
                    }
                }
                m
            })
            .collect()
    }

    fn ping(&self, now_ms: u64) -> Ping {
        let mut heard = bit(self.s.priority);
        for p in 1..=MAX_PRIORITY {
            if self.peers[p as usize]
                .last_direct_ms
                .is_some_and(|t| now_ms.saturating_sub(t) <= 2 * self.s.period_ms)
                && p != self.s.priority
            {
                heard |= bit(p);
            }
        }
        Ping {
            priority: self.s.priority,
            host_code: self.s.host_code,
            seq: self.sent,
            next_config: self
                .staged
                .as_ref()
                .map_or(0, |(st, _)| st.config_fingerprint),
            dedicated_ip: self.s.dedicated_ip,
            config: self.s.config_fingerprint,
            view: self.view,
            heard,
            input: self.input_digest(),
            target: self.target.as_ref().map_or(0, |(_, d, _)| *d),
            state: self.state,
            default_host: self.default_host(),
            draining: self.draining,
            load_weights: self.load_weights(),
            handling_priorities: self.handling_priorities(),
            rules: self.maps(),
        }
    }
}

fn bit(p: u8) -> u32 {
    if (1..=MAX_PRIORITY).contains(&p) {
        1 << (p - 1)
    } else {
        0
    }
}

fn members_of(view: u32) -> Vec<u8> {
    (1..=MAX_PRIORITY).filter(|&p| view & bit(p) != 0).collect()
}

fn digest_of(a: &Assignment) -> u32 {
    let mut h = Fnv::new();
    for r in &a.rules {
        h.bytes(&r.owners);
        h.u8(r.handler.unwrap_or(0));
    }
    h.u8(a.default_host.unwrap_or(0));
    // 0 means "no target" in heartbeats.
    h.finish().max(1)
}
