//! From configuration and membership to the filter table the workers read: the control
//! plane's side of the filter. Static membership (`[cluster] members`) lives here; the
//! membership protocol will feed the same functions.

use wlbs_dataplane::filter::table::FilterTable;
use wlbs_dataplane::filter::{FilterSpec, Mode};

use crate::assignment::{self, Assignment, Member};
use crate::config::Config;
use crate::consistency::SharedConfig;
use crate::membership::Settings;

/// A cluster member's view of the cluster: what it filters on and who it is.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub spec: FilterSpec,
    pub modes: Vec<Mode>,
    /// This host's priority.
    pub priority: u8,
    /// This host's per-rule parameters, as the assignment takes them.
    pub me: Member,
}

impl ClusterView {
    /// `None` in pass-through mode (no `[cluster]`).
    pub fn from_config(config: &Config) -> Option<ClusterView> {
        let spec = config.filter_spec()?;
        let host = config.host.as_ref()?;
        let rules = config.effective_port_rules();
        Some(ClusterView {
            modes: rules.iter().map(|r| r.mode()).collect(),
            priority: host.priority,
            me: Member {
                priority: host.priority,
                load_weights: rules.iter().map(|r| r.weight()).collect(),
                handling_priorities: rules
                    .iter()
                    .map(|r| r.handling_priority.unwrap_or(u8::MAX))
                    .collect(),
            },
            spec,
        })
    }

    /// The static member list: `[cluster] members`, or this host alone. Other members are
    /// assumed to have this host's rules and load weights (static mode exchanges nothing), and
    /// a single-host rule goes to the live member with the lowest host priority.
    pub fn static_members(&self, config: &Config) -> Vec<Member> {
        let priorities = config
            .cluster
            .as_ref()
            .and_then(|c| c.members.clone())
            .unwrap_or_else(|| vec![self.priority]);
        priorities
            .into_iter()
            .map(|p| Member {
                priority: p,
                load_weights: self.me.load_weights.clone(),
                handling_priorities: vec![p; self.modes.len()],
            })
            .collect()
    }

    /// Whether membership is static (`[cluster] members`) rather than by heartbeats.
    pub fn is_static(config: &Config) -> bool {
        config.cluster.as_ref().is_some_and(|c| c.members.is_some())
    }

    /// What every member must share: cluster addresses, port rules, heartbeat period.
    pub fn shared_config(&self, config: &Config) -> SharedConfig {
        let cluster = config
            .cluster
            .as_ref()
            .expect("a cluster view has a [cluster]");
        SharedConfig::new(
            &self.spec,
            cluster.heartbeat_period_ms,
            cluster.mode.0,
            cluster.cluster_mac(),
        )
    }

    /// The membership core's settings for this host. `host_code` tells this instance apart
    /// from another host started with the same priority.
    pub fn membership_settings(&self, config: &Config, host_code: u32) -> Settings {
        let cluster = config
            .cluster
            .as_ref()
            .expect("a cluster view has a [cluster]");
        Settings {
            priority: self.priority,
            dedicated_ip: match config.host.as_ref().and_then(|h| h.dedicated_ip) {
                Some(std::net::IpAddr::V4(a)) => a,
                _ => std::net::Ipv4Addr::UNSPECIFIED,
            },
            host_code,
            config_fingerprint: self.shared_config(config).fingerprint(),
            period_ms: cluster.heartbeat_period_ms as u64,
            tolerance: cluster.heartbeat_tolerance,
            cleanup_delay_ms: cluster.connection_cleanup_delay_s as u64 * 1000,
            modes: self.modes.clone(),
            load_weights: self.me.load_weights.clone(),
            handling_priorities: self
                .me
                .handling_priorities
                .iter()
                .map(|&h| if h == u8::MAX { 0 } else { h })
                .collect(),
        }
    }

    /// The table for what the membership core lets this host take.
    pub fn table_for(
        &self,
        ownership: &[wlbs_dataplane::filter::table::RuleOwnership],
        default_host: bool,
        running: bool,
        generation: u64,
    ) -> FilterTable {
        FilterTable::new(&self.spec, ownership, default_host, running, generation)
    }

    /// The assignment for `members` and the table this host filters with.
    pub fn table(
        &self,
        members: &[Member],
        previous: Option<&Assignment>,
        generation: u64,
    ) -> (FilterTable, Assignment) {
        let a = assignment::assign(&self.modes, members, previous);
        let table = self.table_for(
            &a.ownership_of(self.priority),
            a.default_host == Some(self.priority),
            members.iter().any(|m| m.priority == self.priority),
            generation,
        );
        (table, a)
    }
}
