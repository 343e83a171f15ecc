//! `wlbs reload` and SIGHUP: what a new configuration changes, whether it can be applied to a
//! running appliance, and which port rules stay as they were.
//!
//! Applied live: `[cluster] vips`, `mask`, `members` (static lists), `heartbeat_period_ms`,
//! `heartbeat_tolerance`, `connection_cleanup_delay_s`, `[host] dedicated_ip`, and the port
//! rules (added, removed, changed; load weights and handling priorities). Everything the
//! ports, queues, memory, sockets or the cluster's identity (cluster IP, MAC, mode, key,
//! host priority) are built from needs a restart: such a reload is refused and changes
//! nothing.

use crate::config::Config;

/// A valid reload: what changes, and for each new rule the index of the same rule in the old
/// configuration, when it did not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<String>,
    pub kept: Vec<Option<usize>>,
}

/// Compares the running configuration with a new one.
pub fn plan(old: &Config, new: &Config) -> Result<Plan, String> {
    let mut restart = Vec::new();
    let mut changes = Vec::new();
    let differ = |out: &mut Vec<String>, key: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{key} {a} -> {b}"));
        }
    };
    if old.dataplane != new.dataplane {
        restart
            .push("[dataplane] (ports, queues, memory and timeouts are set at start)".to_string());
    }
    differ(
        &mut restart,
        "[control] socket",
        old.control.socket.display().to_string(),
        new.control.socket.display().to_string(),
    );
    differ(
        &mut restart,
        "[stats] listen",
        old.stats.listen.clone(),
        new.stats.listen.clone(),
    );
    match (&old.cluster, &new.cluster) {
        (Some(a), Some(b)) => {
            differ(
                &mut restart,
                "[cluster] ip",
                a.ip.to_string(),
                b.ip.to_string(),
            );
            differ(
                &mut restart,
                "[cluster] mode",
                a.mode.0.to_string(),
                b.mode.0.to_string(),
            );
            differ(
                &mut restart,
                "[cluster] mac",
                a.cluster_mac().to_string(),
                b.cluster_mac().to_string(),
            );
            differ(
                &mut restart,
                "[cluster] igmp_version",
                a.igmp_version.to_string(),
                b.igmp_version.to_string(),
            );
            differ(
                &mut restart,
                "[cluster] mask_source_mac",
                a.mask_source_mac.to_string(),
                b.mask_source_mac.to_string(),
            );
            differ(
                &mut restart,
                "[cluster] multicast_spoof",
                a.multicast_spoof.to_string(),
                b.multicast_spoof.to_string(),
            );
            differ(
                &mut restart,
                "[cluster] key_file",
                format!("{:?}", a.key_file),
                format!("{:?}", b.key_file),
            );
            if a.members.is_some() != b.members.is_some() {
                restart.push(
                    "[cluster] members (static membership and heartbeats are chosen at start)"
                        .to_string(),
                );
            }
            differ(
                &mut changes,
                "[cluster] vips",
                format!("{:?}", a.vips),
                format!("{:?}", b.vips),
            );
            differ(
                &mut changes,
                "[cluster] mask",
                a.mask.to_string(),
                b.mask.to_string(),
            );
            differ(
                &mut changes,
                "[cluster] members",
                format!("{:?}", a.members),
                format!("{:?}", b.members),
            );
            differ(
                &mut changes,
                "[cluster] heartbeat_period_ms",
                a.heartbeat_period_ms.to_string(),
                b.heartbeat_period_ms.to_string(),
            );
            differ(
                &mut changes,
                "[cluster] heartbeat_tolerance",
                a.heartbeat_tolerance.to_string(),
                b.heartbeat_tolerance.to_string(),
            );
            differ(
                &mut changes,
                "[cluster] connection_cleanup_delay_s",
                a.connection_cleanup_delay_s.to_string(),
                b.connection_cleanup_delay_s.to_string(),
            );
        }
        (None, None) => {}
        _ => restart.push("[cluster] (added or removed: pass-through is chosen at start)".into()),
    }
    match (&old.host, &new.host) {
        (Some(a), Some(b)) => {
            differ(
                &mut restart,
                "[host] priority",
                a.priority.to_string(),
                b.priority.to_string(),
            );
            differ(
                &mut changes,
                "[host] dedicated_ip",
                format!("{:?}", a.dedicated_ip),
                format!("{:?}", b.dedicated_ip),
            );
        }
        (None, None) => {}
        _ => restart.push("[host] (added or removed)".into()),
    }
    if !restart.is_empty() {
        return Err(format!("needs a restart: {}", restart.join("; ")));
    }

    let old_rules = old.effective_port_rules();
    let new_rules = new.effective_port_rules();
    let mut used = vec![false; old_rules.len()];
    let kept: Vec<Option<usize>> = new_rules
        .iter()
        .map(|r| {
            let found = old_rules
                .iter()
                .enumerate()
                .position(|(i, o)| !used[i] && o == r);
            if let Some(i) = found {
                used[i] = true;
            }
            found
        })
        .collect();
    for (i, (r, k)) in new_rules.iter().zip(&kept).enumerate() {
        match k {
            Some(o) if *o == i => {}
            Some(o) => changes.push(format!("rule {} is now rule {}", o + 1, i + 1)),
            None => changes.push(format!(
                "rule {} {}: {}",
                i + 1,
                if i < old_rules.len() {
                    "changed"
                } else {
                    "added"
                },
                describe_rule(r)
            )),
        }
    }
    for (i, u) in used.iter().enumerate() {
        if !u && i >= new_rules.len() {
            changes.push(format!("rule {} removed", i + 1));
        }
    }
    Ok(Plan { changes, kept })
}

/// "ports 8080, tcp, vip all, disabled" in the configuration's words.
fn describe_rule(r: &crate::config::PortRuleConfig) -> String {
    use wlbs_dataplane::filter::RuleVip;
    let rule = r.to_rule();
    let ports = if rule.first_port == rule.last_port {
        rule.first_port.to_string()
    } else {
        format!("{}-{}", rule.first_port, rule.last_port)
    };
    let vip = match rule.vip {
        RuleVip::All => "all".to_string(),
        RuleVip::Addr(a) => a.to_string(),
    };
    format!(
        "ports {ports}, {}, vip {vip}, {}",
        rule.protocol.name(),
        rule.mode.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[dataplane]
cluster_port = 0
host_port = 1
[cluster]
ip = "192.0.2.10"
[host]
priority = 1
[[port_rule]]
ports = "80"
protocol = "tcp"
[[port_rule]]
ports = "443"
protocol = "tcp"
"#;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn unchanged_rules_are_kept_by_identity_and_changes_listed() {
        let old = config(BASE);
        let new = config(
            &BASE
                .replace("ports = \"443\"", "ports = \"443-444\"")
                .replace("[host]", "heartbeat_tolerance = 8\n[host]"),
        );
        let p = plan(&old, &new).unwrap();
        assert_eq!(p.kept, vec![Some(0), None]);
        assert!(
            p.changes
                .iter()
                .any(|c| c == "[cluster] heartbeat_tolerance 5 -> 8"),
            "{p:?}"
        );
        assert!(
            p.changes
                .iter()
                .any(|c| c == "rule 2 changed: ports 443-444, tcp, vip all, multiple"),
            "{p:?}"
        );
        // A rule inserted in front: the others keep their state under their new index.
        let inserted = config(&BASE.replace(
            "[[port_rule]]\nports = \"80\"",
            "[[port_rule]]\nports = \"8080\"\nprotocol = \"tcp\"\n[[port_rule]]\nports = \"80\"",
        ));
        assert_eq!(
            plan(&old, &inserted).unwrap().kept,
            vec![None, Some(0), Some(1)]
        );
        assert!(plan(&old, &old).unwrap().changes.is_empty());
    }

    #[test]
    fn what_the_ports_and_the_cluster_identity_are_built_from_needs_a_restart() {
        let old = config(BASE);
        for (from, to, key) in [
            ("cluster_port = 0", "cluster_port = 2", "[dataplane]"),
            ("ip = \"192.0.2.10\"", "ip = \"192.0.2.11\"", "[cluster] ip"),
            ("priority = 1", "priority = 2", "[host] priority"),
            ("[host]", "mode = \"multicast\"\n[host]", "[cluster] mode"),
            ("[host]", "members = [1]\n[host]", "[cluster] members"),
        ] {
            let e = plan(&old, &config(&BASE.replace(from, to))).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
