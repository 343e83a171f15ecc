//! The WLBS filter: every host sees every frame for the cluster's virtual IPs and keeps exactly
//! its share. Three steps, as readable as Linux's xt_cluster match:
//!
//! 1. find the port rule of a VIP packet (O(1): a port -> rule array per VIP and protocol);
//! 2. hash the rule's affinity input to one of 60 buckets ([`hash`]);
//! 3. decide from the bucket's ownership in the published [`table::FilterTable`] and this
//!    worker's connection descriptors ([`classify`]).

pub mod classify;
pub mod frag;
pub mod hash;
pub mod table;

use std::net::{IpAddr, Ipv4Addr};

pub use hash::{Affinity, BUCKETS};

/// Most port rules a cluster may have (NLB's limit; heartbeats carry 33 slots including the
/// implicit default rule).
pub const MAX_RULES: usize = 32;

/// Transport protocols a port rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Both,
}

impl Protocol {
    /// The configuration's word: `tcp`, `udp`, `both`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Both => "both",
        }
    }

    pub fn covers_tcp(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Both)
    }

    pub fn covers_udp(self) -> bool {
        matches!(self, Protocol::Udp | Protocol::Both)
    }

    pub fn overlaps(self, other: Protocol) -> bool {
        (self.covers_tcp() && other.covers_tcp()) || (self.covers_udp() && other.covers_udp())
    }
}

/// How a port rule's traffic is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Buckets split among the live hosts by load weight.
    Multiple,
    /// All traffic to the live host with the best handling priority.
    Single,
    /// Dropped by every host (a firewall rule).
    Disabled,
}

impl Mode {
    /// The configuration's word: `multiple`, `single`, `disabled`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Multiple => "multiple",
            Mode::Single => "single",
            Mode::Disabled => "disabled",
        }
    }
}

/// Which virtual IP a port rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleVip {
    /// Every VIP of the cluster without a rule of its own for the port.
    All,
    Addr(IpAddr),
}

/// A port rule as the data plane sees it (per-host weights and handling priorities live in the
/// control plane: they only shape the assignment).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortRule {
    pub vip: RuleVip,
    pub first_port: u16,
    pub last_port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    pub affinity: Affinity,
}

impl PortRule {
    /// NLB's default port rule: every port of every VIP, TCP and UDP, shared by all hosts
    /// with single affinity (what a cluster without `[[port_rule]]` gets).
    pub fn nlb_default() -> PortRule {
        PortRule {
            vip: RuleVip::All,
            first_port: 0,
            last_port: 65535,
            protocol: Protocol::Both,
            mode: Mode::Multiple,
            affinity: Affinity::Single,
        }
    }

    pub fn covers_port(&self, port: u16) -> bool {
        (self.first_port..=self.last_port).contains(&port)
    }
}

/// The cluster as the filter needs it: which addresses are VIPs, which are dedicated (never
/// balanced), the rules, and the hash seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterSpec {
    /// The primary cluster IP; also seeds the bucket hash.
    pub cluster_ip: Ipv4Addr,
    /// Every VIP, the primary cluster IP first.
    pub vips: Vec<IpAddr>,
    /// Dedicated IPs: traffic to them passes through untouched.
    pub dedicated: Vec<IpAddr>,
    pub rules: Vec<PortRule>,
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// VIP traffic this host takes: forward to the host side.
    Accept(Reason),
    /// VIP traffic another host takes, or traffic nobody may take.
    Drop(Reason),
    /// Not load-balanced traffic (dedicated IP, other addresses, non-IP): forward untouched.
    Pass(Reason),
    /// A non-first fragment whose first fragment has not been seen yet: hold it until the
    /// first fragment decides (see [`frag`]).
    Hold,
}

impl Verdict {
    pub fn reason(self) -> Option<Reason> {
        match self {
            Verdict::Accept(r) | Verdict::Drop(r) | Verdict::Pass(r) => Some(r),
            Verdict::Hold => None,
        }
    }

    pub fn forwards(self) -> bool {
        matches!(self, Verdict::Accept(_) | Verdict::Pass(_))
    }
}

/// Why a frame got its verdict; counted per worker, exported as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Reason {
    /// Accept: the bucket is ours.
    BucketOwned = 0,
    /// Accept: a connection this host holds a descriptor for.
    Descriptor,
    /// Accept: a new connection in a bucket moving to us.
    NewConnection,
    /// Accept: single-host rule, we are its handler.
    SingleHost,
    /// Accept: no rule covers the port (or not TCP/UDP) and we are the default host.
    DefaultHost,
    /// Accept: UDP in a bucket moving away; the old owner keeps UDP until the hand-off
    /// completes (UDP has no handshake to tell a new flow from an old one).
    HandOffUdp,
    /// Accept/Drop: a fragment following its first fragment's verdict.
    Fragment,
    /// Drop: the bucket belongs to another host.
    NotOwned,
    /// Drop: the bucket is moving to us but the packet belongs to a connection the old owner
    /// still holds (or, for UDP, the old owner keeps UDP until the hand-off completes).
    OldOwnerKeeps,
    /// Drop: the bucket is moving away and we hold no descriptor for this connection.
    HandedOff,
    /// Drop: single-host rule handled by another host.
    NotHandler,
    /// Drop: no rule covers the port and another host is the default host.
    NotDefaultHost,
    /// Drop: the rule is disabled.
    RuleDisabled,
    /// Drop: this host is stopped (takes no VIP traffic).
    HostStopped,
    /// Drop: a VIP packet too short or inconsistent to classify.
    Malformed,
    /// Drop: a held fragment whose first fragment never came.
    FragmentTimeout,
    /// Drop: the fragment holding area was full.
    FragmentOverflow,
    /// Pass: addressed to a dedicated IP.
    DedicatedIp,
    /// Pass: IP traffic not addressed to a VIP.
    NotVip,
    /// Pass: not IP (ARP, heartbeats and other EtherTypes for now).
    NotIp,
}

impl Reason {
    pub const COUNT: usize = Reason::NotIp as usize + 1;

    pub const ALL: [Reason; Reason::COUNT] = [
        Reason::BucketOwned,
        Reason::Descriptor,
        Reason::NewConnection,
        Reason::SingleHost,
        Reason::DefaultHost,
        Reason::HandOffUdp,
        Reason::Fragment,
        Reason::NotOwned,
        Reason::OldOwnerKeeps,
        Reason::HandedOff,
        Reason::NotHandler,
        Reason::NotDefaultHost,
        Reason::RuleDisabled,
        Reason::HostStopped,
        Reason::Malformed,
        Reason::FragmentTimeout,
        Reason::FragmentOverflow,
        Reason::DedicatedIp,
        Reason::NotVip,
        Reason::NotIp,
    ];

    /// Stable snake_case name (metric label, `--explain` output).
    pub fn name(self) -> &'static str {
        match self {
            Reason::BucketOwned => "bucket_owned",
            Reason::Descriptor => "descriptor",
            Reason::NewConnection => "new_connection",
            Reason::SingleHost => "single_host",
            Reason::DefaultHost => "default_host",
            Reason::HandOffUdp => "hand_off_udp",
            Reason::Fragment => "fragment",
            Reason::NotOwned => "not_owned",
            Reason::OldOwnerKeeps => "old_owner_keeps",
            Reason::HandedOff => "handed_off",
            Reason::NotHandler => "not_handler",
            Reason::NotDefaultHost => "not_default_host",
            Reason::RuleDisabled => "rule_disabled",
            Reason::HostStopped => "host_stopped",
            Reason::Malformed => "malformed",
            Reason::FragmentTimeout => "fragment_timeout",
            Reason::FragmentOverflow => "fragment_overflow",
            Reason::DedicatedIp => "dedicated_ip",
            Reason::NotVip => "not_vip",
            Reason::NotIp => "not_ip",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_table_is_complete_and_ordered() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let names: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Reason::COUNT);
    }
}
