//! From configuration and membership to the filter table the workers read: the control
//! plane's side of the filter. Static membership (`[cluster] members`) lives here; the
//! membership protocol will feed the same functions.

use wlbs_dataplane::filter::table::FilterTable;
use wlbs_dataplane::filter::{FilterSpec, Mode};

use crate::assignment::{self, Assignment, Member};
use crate::config::Config;

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

    /// The assignment for `members` and the table this host filters with.
    pub fn table(
        &self,
        members: &[Member],
        previous: Option<&Assignment>,
        generation: u64,
    ) -> (FilterTable, Assignment) {
        let a = assignment::assign(&self.modes, members, previous);
        let ownership = a.ownership_of(self.priority);
        let table = FilterTable::new(
            &self.spec,
            &ownership,
            a.default_host == Some(self.priority),
            members.iter().any(|m| m.priority == self.priority),
            generation,
        );
        (table, a)
    }
}
