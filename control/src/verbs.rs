//! The appliance's side of the operator verbs: what `query`, `stop`, `start` and `drainstop`
//! do to the membership core and what they answer, in NLB's words and codes.

use serde_json::json;

use crate::cluster::ClusterView;
use crate::config::Config;
use crate::consistency::describe;
use crate::ctl::{Request, Response};
use crate::diagnostics::Diagnostics;
use crate::membership::{host_list, HostState, Membership, Refusal, RuleControl};
use crate::peers::Peers;
use wlbs_dataplane::filter::{Mode, Protocol, RuleVip};

/// What the control thread knows besides the membership core, for `query`.
pub struct Facts<'a> {
    pub now_ms: u64,
    pub view: Option<&'a ClusterView>,
    pub peers: Option<&'a Peers>,
    pub host_name: &'a str,
    /// Static membership (`[cluster] members`), when membership is not by heartbeats.
    pub static_members: Option<Vec<u8>>,
    pub heartbeat_period_ms: u32,
    pub heartbeat_tolerance: u32,
    /// Connection descriptors live on this host (all workers).
    pub descriptors_live: u64,
    /// Heartbeat send lateness against schedule: p99 and max, ms.
    pub heartbeat_late_ms: Option<(u64, u64)>,
    pub diagnostics: &'a Diagnostics,
    /// How the cluster port receives the cluster MAC.
    pub mac: Option<&'a str>,
    /// The configuration in force.
    pub config: &'a Config,
    /// Per rule: live connection descriptors and packets accepted on this host.
    pub rule_figures: Vec<(u64, u64)>,
}

/// Carries out `request`. `membership` is `None` in pass-through and static modes. `metrics`
/// renders the Prometheus text (for `stats`).
pub fn answer(
    request: Request,
    membership: Option<&mut Membership>,
    facts: &Facts,
    metrics: impl FnOnce() -> String,
) -> Response {
    match &request {
        Request::Stats => return Response::ok(metrics(), serde_json::Value::Null),
        // The control loop reloads itself (it owns the configuration); nothing to do here.
        Request::Reload => return Response::refused("reload is carried out by the control loop"),
        Request::Params => return Response::ok(params_text(facts.config), serde_json::Value::Null),
        Request::Display => {
            let mut q = answer(Request::Query, membership, facts, metrics);
            q.text = format!(
                "{}\n\nconfiguration in force:\n{}",
                q.text,
                params_text(facts.config)
            );
            return q;
        }
        Request::Queryport { port } => return queryport(port, membership.as_deref(), facts),
        _ => {}
    }
    let Some(view) = facts.view else {
        return match request {
            Request::Query => Response::ok(
                "pass-through: no [cluster] configured, every frame is forwarded unchanged",
                json!({"state": "pass_through"}),
            ),
            _ => Response::refused(
                "pass-through mode (no [cluster]): there is no cluster to leave or join",
            ),
        };
    };
    let Some(m) = membership else {
        let members = facts.static_members.clone().unwrap_or_default();
        return match request {
            Request::Query => {
                let mut text = format!(
                    "host {} of static members {{{}}} (no heartbeats: [cluster] members is set)",
                    view.priority,
                    host_list(&members)
                );
                let mut data =
                    json!({"state": "static", "priority": view.priority, "members": members});
                mac_and_diagnostics(facts, &mut text, &mut data);
                Response::ok(text, data)
            }
            _ => Response::refused(
                "static membership ([cluster] members): the membership is driven from outside; remove [cluster] members to use stop, start and drainstop",
            ),
        };
    };
    let now = facts.now_ms;
    let suspended = m.state() == HostState::Suspended;
    let refuse_suspended = |m: &Membership| {
        Response::refused(
            state_line(m, view.priority)
                + ": suspended, it ignores start, stop and drainstop until resume",
        )
    };
    match request {
        Request::Query => query(m, view, facts),
        Request::Stop | Request::Start | Request::Drainstop if suspended => refuse_suspended(m),
        Request::Stop => {
            if m.is_stopped() {
                return Response::refused(state_line(m, view.priority) + ": already stopped");
            }
            m.stop(now);
            Response::ok(state_line(m, view.priority), state_json(m))
        }
        Request::Start => {
            if !m.is_stopped() {
                return Response::refused(state_line(m, view.priority) + ": already started");
            }
            m.start(now);
            Response::ok(state_line(m, view.priority), state_json(m))
        }
        Request::Suspend => {
            if suspended {
                return Response::refused(state_line(m, view.priority) + ": already suspended");
            }
            m.suspend(now);
            Response::ok(
                format!(
                    "{}: stopped; start, stop and drainstop are ignored until resume",
                    state_line(m, view.priority)
                ),
                state_json(m),
            )
        }
        Request::Resume => {
            if !suspended {
                return Response::refused(state_line(m, view.priority) + ": not suspended");
            }
            m.resume();
            Response::ok(
                format!("{}: start it to rejoin", state_line(m, view.priority)),
                state_json(m),
            )
        }
        Request::Stats
        | Request::Reload
        | Request::Params
        | Request::Display
        | Request::Queryport { .. } => unreachable!("answered above"),
        Request::Enable { ref rules }
        | Request::Disable { ref rules }
        | Request::Drain { ref rules } => {
            let control = match request {
                Request::Enable { .. } => RuleControl::Enabled,
                Request::Disable { .. } => RuleControl::Disabled,
                _ => RuleControl::Draining,
            };
            let selected = match select_rules(view, rules) {
                Ok(r) => r,
                Err(e) => return Response::refused(e),
            };
            m.control_rules(&selected, control, now);
            Response::ok(
                format!(
                    "rule(s) {} {} on host {}",
                    selected
                        .iter()
                        .map(|r| (r + 1).to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    control.name(),
                    view.priority
                ),
                json!({"rules": selected.iter().map(|r| r + 1).collect::<Vec<_>>(), "control": control.name()}),
            )
        }
        Request::Drainstop => {
            if m.is_stopped() {
                return Response::refused(state_line(m, view.priority) + ": already stopped");
            }
            m.drainstop(now);
            Response::ok(
                format!(
                    "{}: no new connections; it stops when its {} connection(s) have finished",
                    state_line(m, view.priority),
                    facts.descriptors_live
                ),
                state_json(m),
            )
        }
    }
}

/// "host 1 converged as DEFAULT (1008)".
fn state_line(m: &Membership, priority: u8) -> String {
    format!(
        "host {priority} {} ({})",
        m.state().name(),
        m.state().nlb_code()
    )
}

fn state_json(m: &Membership) -> serde_json::Value {
    json!({"state": m.state().key(), "code": m.state().nlb_code()})
}

fn buckets_per_rule(m: &Membership, rules: usize, priority: u8) -> Vec<u32> {
    (0..rules)
        .map(|r| {
            m.target()
                .map_or(0, |a| a.buckets_of(r, priority).count_ones())
        })
        .collect()
}

fn query(m: &Membership, view: &ClusterView, facts: &Facts) -> Response {
    let rules = view.modes.len();
    let me = view.priority;
    let members = m.members();
    let mut text = format!(
        "{} with hosts {{{}}}; cluster {}, heartbeats every {} ms, tolerance {}\n",
        state_line(m, me),
        host_list(&members),
        view.spec.cluster_ip,
        facts.heartbeat_period_ms,
        facts.heartbeat_tolerance
    );
    text.push_str(&format!(
        "{:<5} {:<16} {:<20} {:<28} {}\n",
        "host", "dedicated IP", "name", "state", "buckets per rule"
    ));
    let mut hosts = Vec::new();
    let my_ip = view
        .spec
        .dedicated
        .first()
        .map_or(String::new(), |a| a.to_string());
    // This host: what it takes now (nothing once stopped), whatever the last agreement said.
    let my_buckets: Vec<u32> = m
        .ownership()
        .iter()
        .map(|o| (o.owned | o.incoming).count_ones())
        .collect();
    text.push_str(&format!(
        "{:<5} {:<16} {:<20} {:<28} {}\n",
        me,
        my_ip,
        facts.host_name,
        format!("{} ({})", m.state().name(), m.state().nlb_code()),
        join_counts(&my_buckets)
    ));
    hosts.push(json!({
        "priority": me, "dedicated_ip": my_ip, "name": facts.host_name, "this_host": true,
        "state": m.state().key(), "code": m.state().nlb_code(), "buckets": my_buckets,
    }));
    for peer in m.peer_status(facts.now_ms) {
        let info = facts
            .peers
            .and_then(|p| p.get(peer.priority))
            .cloned()
            .unwrap_or_default();
        let name = info.name.clone().unwrap_or_default();
        let buckets = buckets_per_rule(m, rules, peer.priority);
        // A host no longer heard counts as gone from the cluster, as in NLB.
        let (state, key, code): (String, &str, u32) = match (peer.alive, peer.state) {
            (_, HostState::Stopped) => ("stopped".to_string(), "stopped", 1005),
            (_, HostState::Suspended) => ("suspended".to_string(), "suspended", 1013),
            (false, _) => ("not heard (failed)".to_string(), "failed", 1005),
            (true, s) => (
                format!("{} ({})", s.name(), s.nlb_code()),
                s.key(),
                s.nlb_code(),
            ),
        };
        let refused = peer.refused.as_ref().map(|cause| match cause {
            Refusal::ConfigMismatch { .. } if !info.differences.is_empty() => {
                format!("configuration differs: {}", describe(&info.differences))
            }
            Refusal::ConfigMismatch { .. } => {
                "configuration differs (waiting for its identity heartbeat to name the fields)"
                    .to_string()
            }
            Refusal::DuplicatePriority => format!("host priority {} used twice", peer.priority),
            Refusal::DuplicateHandlingPriority {
                rule,
                handling_priority,
            } => format!(
                "rule {}: handling priority {handling_priority} used twice",
                rule + 1
            ),
        });
        let shown_state = match &refused {
            Some(why) if peer.alive => format!("REFUSED: {why}"),
            _ => state,
        };
        text.push_str(&format!(
            "{:<5} {:<16} {:<20} {:<28} {}\n",
            peer.priority,
            peer.dedicated_ip.to_string(),
            name,
            shown_state,
            if peer.member {
                join_counts(&buckets)
            } else {
                "-".into()
            }
        ));
        hosts.push(json!({
            "priority": peer.priority, "dedicated_ip": peer.dedicated_ip.to_string(),
            "name": name, "mac": info.mac.map(|m| m.to_string()), "this_host": false,
            "state": key, "code": code, "member": peer.member,
            "buckets": if peer.member { buckets } else { vec![0; rules] },
            "refused": refused,
        }));
    }
    text.push_str(&format!(
        "connections: {} descriptor(s) live",
        facts.descriptors_live
    ));
    if let Some((p99, max)) = facts.heartbeat_late_ms {
        text.push_str(&format!(
            "; heartbeats sent late by p99 {p99} ms, max {max} ms"
        ));
    }
    let mut data = json!({
        "priority": me,
        "state": m.state().key(),
        "code": m.state().nlb_code(),
        "converged": m.is_converged(),
        "members": members,
        "default_host": m.default_host(),
        "cluster_ip": view.spec.cluster_ip.to_string(),
        "hosts": hosts,
        "descriptors_live": facts.descriptors_live,
        "heartbeat_late_ms": facts.heartbeat_late_ms.map(|(p99, max)| json!({"p99": p99, "max": max})),
    });
    mac_and_diagnostics(facts, &mut text, &mut data);
    Response::ok(text, data)
}

/// How the cluster port receives the cluster MAC, and the diagnostics seen lately.
fn mac_and_diagnostics(facts: &Facts, text: &mut String, data: &mut serde_json::Value) {
    if let Some(mac) = facts.mac {
        text.push_str(&format!("\nMAC: {mac}"));
    }
    let recent: Vec<&String> = facts.diagnostics.recent().map(|(t, _)| t).collect();
    for d in &recent {
        text.push_str(&format!("\ndiagnostic: {d}"));
    }
    data["mac"] = json!(facts.mac);
    data["diagnostics"] = json!(recent);
    data["diagnostic_counts"] = json!(facts.diagnostics.counts());
}

fn join_counts(counts: &[u32]) -> String {
    counts
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The rules a selector names: `all`, `80`, `192.0.2.10:80`, `192.0.2.10:all`
/// (`[2001:db8::10]:80` for IPv6). A VIP's own rules win over `all` rules, as in the filter.
pub fn select_rules(view: &ClusterView, selector: &str) -> Result<Vec<usize>, String> {
    let rules = &view.spec.rules;
    let bad =
        || format!("{selector:?}: expected a port (80), all, vip:port (192.0.2.10:80) or vip:all");
    if selector == "all" {
        return Ok((0..rules.len()).collect());
    }
    let (vip, port) = match selector.rsplit_once(':') {
        Some((v, p)) if selector.matches(':').count() == 1 || v.starts_with('[') => {
            let v = v.trim_start_matches('[').trim_end_matches(']');
            (Some(v.parse::<std::net::IpAddr>().map_err(|_| bad())?), p)
        }
        _ => (None, selector),
    };
    if let Some(v) = vip {
        if !view.spec.vips.contains(&v) {
            return Err(format!("{v} is not a virtual IP of this cluster"));
        }
    }
    let port: Option<u16> = match port {
        "all" if vip.is_some() => None,
        p => Some(p.parse().map_err(|_| bad())?),
    };
    let matches = |want: RuleVip| -> Vec<usize> {
        rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.vip == want && port.is_none_or(|p| r.covers_port(p)))
            .map(|(i, _)| i)
            .collect()
    };
    let selected = match vip {
        Some(v) => {
            let own = matches(RuleVip::Addr(v));
            if own.is_empty() && port.is_some() {
                matches(RuleVip::All)
            } else {
                own
            }
        }
        None => rules
            .iter()
            .enumerate()
            .filter(|(_, r)| port.is_some_and(|p| r.covers_port(p)))
            .map(|(i, _)| i)
            .collect(),
    };
    if selected.is_empty() {
        return Err(format!("no port rule covers {selector}"));
    }
    Ok(selected)
}

fn queryport(port: &str, membership: Option<&Membership>, facts: &Facts) -> Response {
    let Some(view) = facts.view else {
        return Response::refused("pass-through mode (no [cluster]): no port rules");
    };
    let selected = match select_rules(view, port) {
        Ok(r) => r,
        Err(e) => return Response::refused(e),
    };
    let mut text = String::new();
    let mut rules = Vec::new();
    for r in selected {
        let rule = &view.spec.rules[r];
        let control = membership
            .and_then(|m| m.rule_control().get(r).copied())
            .unwrap_or_default();
        let buckets = membership
            .and_then(|m| m.ownership().get(r).copied())
            .map(|o| (o.owned | o.incoming).count_ones())
            .unwrap_or(0);
        let handler = membership
            .and_then(|m| m.ownership().get(r).copied())
            .is_some_and(|o| o.handler);
        let (connections, accepted) = facts.rule_figures.get(r).copied().unwrap_or((0, 0));
        let mode = match rule.mode {
            Mode::Multiple => format!("multiple hosts, {buckets} of 60 buckets here"),
            Mode::Single => format!(
                "single host, {}",
                if handler {
                    "handled here"
                } else {
                    "handled elsewhere"
                }
            ),
            Mode::Disabled => "disabled (dropped by every host)".to_string(),
        };
        let protocol = match rule.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Both => "tcp and udp",
        };
        let vip = match rule.vip {
            RuleVip::All => "all VIPs".to_string(),
            RuleVip::Addr(a) => a.to_string(),
        };
        text.push_str(&format!(
            "rule {}: ports {}-{} {protocol} on {vip}: {mode}; {} on this host; {connections} connection(s) live, {accepted} packet(s) accepted\n",
            r + 1,
            rule.first_port,
            rule.last_port,
            control.name()
        ));
        rules.push(json!({
            "rule": r + 1, "first_port": rule.first_port, "last_port": rule.last_port,
            "state": control.name(), "buckets": buckets, "handler": handler,
            "connections": connections, "accepted_packets": accepted,
        }));
    }
    Response::ok(text.trim_end().to_string(), json!({ "rules": rules }))
}

/// The configuration in force, every key with its value (defaults included).
pub fn params_text(c: &Config) -> String {
    let mut out = String::new();
    let dp = &c.dataplane;
    out.push_str(&format!(
        "[dataplane] cluster_port {}, host_port {}, workers {}, busy_poll {}, rx/tx descriptors {}/{}, max_connections {}, tcp_idle_timeout_s {}, udp_idle_timeout_s {}, tcp_close_wait_s {}, host_mac {}\n",
        dp.cluster_port,
        dp.host_port,
        dp.workers,
        dp.busy_poll,
        dp.rx_descriptors,
        dp.tx_descriptors,
        dp.max_connections,
        dp.tcp_idle_timeout_s,
        dp.udp_idle_timeout_s,
        dp.tcp_close_wait_s,
        dp.host_mac.map_or("learned".to_string(), |m| m.0.to_string())
    ));
    if let Some(cl) = &c.cluster {
        out.push_str(&format!(
            "[cluster] ip {}, vips {:?}, mask {}, mode {}, mac {}, membership {}, heartbeat_period_ms {}, heartbeat_tolerance {}, connection_cleanup_delay_s {}, key {}, mask_source_mac {}, multicast_spoof {}, igmp_version {}\n",
            cl.ip,
            cl.vips,
            cl.mask,
            cl.mode.0,
            cl.cluster_mac(),
            cl.members
                .as_ref()
                .map_or("heartbeats".to_string(), |m| format!("static {m:?}")),
            cl.heartbeat_period_ms,
            cl.heartbeat_tolerance,
            cl.connection_cleanup_delay_s,
            if cl.key_file.is_some() { "set" } else { "none (unauthenticated)" },
            cl.mask_source_mac,
            cl.multicast_spoof,
            cl.igmp_version,
        ));
    }
    if let Some(h) = &c.host {
        out.push_str(&format!(
            "[host] priority {}, dedicated_ip {}\n",
            h.priority,
            h.dedicated_ip.map_or("none".to_string(), |a| a.to_string())
        ));
    }
    for (i, r) in c.effective_port_rules().iter().enumerate() {
        let rule = r.to_rule();
        out.push_str(&format!(
            "[[port_rule]] {}: vip {}, ports {}-{}, protocol {}, mode {}, affinity {}, load_weight {}, handling_priority {}\n",
            i + 1,
            match rule.vip {
                RuleVip::All => "all".to_string(),
                RuleVip::Addr(a) => a.to_string(),
            },
            rule.first_port,
            rule.last_port,
            rule.protocol.name(),
            rule.mode.name(),
            rule.affinity.name(),
            r.weight(),
            r.handling_priority.map_or("-".to_string(), |h| h.to_string()),
        ));
    }
    out.push_str(&format!(
        "[control] socket {}\n[stats] listen {}\n[remote_control] enabled {}, port {}",
        c.control.socket.display(),
        c.stats.listen,
        c.remote_control.enabled,
        c.remote_control.port
    ));
    out
}
