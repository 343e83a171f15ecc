//! The appliance's side of the operator verbs: what `query`, `stop`, `start` and `drainstop`
//! do to the membership core and what they answer, in NLB's words and codes.

use serde_json::json;

use crate::cluster::ClusterView;
use crate::consistency::describe;
use crate::ctl::{Request, Response};
use crate::diagnostics::Diagnostics;
use crate::membership::{HostState, Membership, Refusal};
use crate::peers::Peers;

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
}

/// Carries out `request`. `membership` is `None` in pass-through and static modes. `metrics`
/// renders the Prometheus text (for `stats`).
pub fn answer(
    request: Request,
    membership: Option<&mut Membership>,
    facts: &Facts,
    metrics: impl FnOnce() -> String,
) -> Response {
    match request {
        Request::Stats => return Response::ok(metrics(), serde_json::Value::Null),
        Request::Reload => unreachable!("the appliance reloads itself"),
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
                    join(&members)
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
        Request::Stats | Request::Reload => unreachable!("answered above"),
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

fn join(priorities: &[u8]) -> String {
    priorities
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
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
        join(&members),
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
