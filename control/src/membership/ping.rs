//! What a heartbeat says, as the membership core sees it. The appliance maps it onto the NLB
//! heartbeat layout (`crate::heartbeat`); the simulator passes it around as it is.

use std::net::Ipv4Addr;

/// A host's state, as NLB names them (with the codes `query` shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostState {
    Converging,
    Converged,
    ConvergedDefault,
    Draining,
    Stopped,
    Suspended,
}

impl HostState {
    /// Stopped or suspended: out of the cluster.
    pub fn is_stopped(self) -> bool {
        matches!(self, HostState::Stopped | HostState::Suspended)
    }

    pub fn is_converged(self) -> bool {
        matches!(self, HostState::Converged | HostState::ConvergedDefault)
    }

    /// As `query` prints it.
    pub fn name(self) -> &'static str {
        match self {
            HostState::Converging => "converging",
            HostState::Converged => "converged",
            HostState::ConvergedDefault => "converged as DEFAULT",
            HostState::Draining => "draining",
            HostState::Stopped => "stopped",
            HostState::Suspended => "suspended",
        }
    }

    /// For scripts (`--json`).
    pub fn key(self) -> &'static str {
        match self {
            HostState::Converging => "converging",
            HostState::Converged => "converged",
            HostState::ConvergedDefault => "converged_default",
            HostState::Draining => "draining",
            HostState::Stopped => "stopped",
            HostState::Suspended => "suspended",
        }
    }

    /// NLB's return code for the state.
    pub fn nlb_code(self) -> u32 {
        match self {
            HostState::Converging => 1006,
            HostState::Converged => 1007,
            HostState::ConvergedDefault => 1008,
            HostState::Draining => 1009,
            HostState::Stopped => 1005,
            HostState::Suspended => 1013,
        }
    }

    /// The heartbeat's convergence-state field.
    pub fn wire(self) -> u16 {
        match self {
            HostState::Converging => 1,
            HostState::Converged => 2,
            HostState::ConvergedDefault => 3,
            HostState::Draining => 4,
            HostState::Stopped => 5,
            HostState::Suspended => 6,
        }
    }

    pub fn from_wire(v: u16) -> Option<HostState> {
        Some(match v {
            1 => HostState::Converging,
            2 => HostState::Converged,
            3 => HostState::ConvergedDefault,
            4 => HostState::Draining,
            5 => HostState::Stopped,
            6 => HostState::Suspended,
            _ => return None,
        })
    }
}

/// One rule's bucket maps in a heartbeat (bit b = bucket b).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RuleMaps {
    /// Buckets the sender serves: owned, or handing away (its connections).
    pub current: u64,
    /// Buckets the sender takes new connections for.
    pub new: u64,
    /// Buckets the sender hands away that have no connections left.
    pub idle: u64,
    /// Buckets assigned to the sender that it waits to take.
    pub ready: u64,
}

/// A heartbeat's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    pub priority: u8,
    pub host_code: u32,
    /// Counts the sender's heartbeats: a receiver ignores one older than the last it has from
    /// that sender instance (reordered on the way).
    pub seq: u64,
    pub dedicated_ip: Ipv4Addr,
    /// Fingerprint of the cluster configuration the sender runs.
    pub config: u32,
    /// Fingerprint of a reloaded configuration the sender staged (0: none).
    pub next_config: u32,
    /// The members the sender accepts (bit p-1 for priority p).
    pub view: u32,
    /// Hosts the sender heard directly in its last two periods.
    pub heard: u32,
    /// Digest of the assignment input (view and members' parameters) the sender sees.
    pub input: u32,
    /// Digest of the target assignment the sender computed (0: none yet).
    pub target: u32,
    pub state: HostState,
    pub default_host: Option<u8>,
    pub draining: bool,
    pub load_weights: Vec<u8>,
    pub handling_priorities: Vec<u8>,
    pub rules: Vec<RuleMaps>,
}
