//! `wlbs filter`: runs the data plane's own verdict code over a capture, without DPDK, as a
//! given host of a given member set. Answers "which host takes this client?" and lets a user
//! check a configuration against real traffic before deploying it.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use wlbs_dataplane::conn::Timeouts;
use wlbs_dataplane::filter::classify::{Decision, Filter};
use wlbs_dataplane::filter::frag::HeldFragments;
use wlbs_dataplane::filter::{Mode, Reason, Verdict};
use wlbs_dataplane::wire::{ethernet, ipv4, ipv6, EtherType, IpProtocol};

use crate::assignment::{Assignment, Member};
use crate::cluster::ClusterView;
use crate::config::Config;
use crate::pcap::{self, Record};

/// What `wlbs filter` was asked.
pub struct Replay<'a> {
    pub config: &'a Config,
    /// Live members; `None`: the configuration's static members.
    pub members: Option<Vec<u8>>,
    /// Judge as this host; `None`: `[host] priority`.
    pub host: Option<u8>,
    pub explain: bool,
}

/// Totals of a replay.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplaySummary {
    pub frames: usize,
    pub accepted: usize,
    pub passed: usize,
    pub dropped: usize,
    /// Per-frame explanations (with `explain`).
    pub lines: Vec<String>,
}

impl Replay<'_> {
    /// Reads `input`, writes the frames this host forwards to its host side (accepted VIP
    /// traffic and passed non-VIP traffic) to `output`.
    pub fn run(&self, input: &Path, output: &Path) -> Result<ReplaySummary> {
        let records = pcap::read_all(
            std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?,
        )
        .with_context(|| format!("reading {}", input.display()))?;
        let (kept, summary) = self.judge(&records)?;
        let out = std::fs::File::create(output)
            .with_context(|| format!("creating {}", output.display()))?;
        pcap::write_all(std::io::BufWriter::new(out), &kept)
            .with_context(|| format!("writing {}", output.display()))?;
        Ok(summary)
    }

    /// The verdict of every record, in capture order (held fragments are released in place:
    /// the output keeps capture order).
    pub fn judge(&self, records: &[Record]) -> Result<(Vec<Record>, ReplaySummary)> {
        let Some(mut view) = ClusterView::from_config(self.config) else {
            bail!("the configuration has no [cluster]: nothing to filter (pass-through mode)");
        };
        if let Some(h) = self.host {
            if h == 0 || h > crate::config::MAX_HOSTS {
                bail!("--host {h}: host priorities are 1..=32");
            }
            view.priority = h;
            view.me.priority = h;
        }
        let members: Vec<Member> = match &self.members {
            Some(list) => {
                if list.iter().any(|&p| p == 0 || p > crate::config::MAX_HOSTS) {
                    bail!("--members {list:?}: host priorities are 1..=32");
                }
                let mut m = view.static_members(self.config);
                let template = m[0].clone();
                m = list
                    .iter()
                    .map(|&p| Member {
                        priority: p,
                        handling_priorities: vec![p; view.modes.len()],
                        ..template.clone()
                    })
                    .collect();
                m
            }
            None => view.static_members(self.config),
        };
        let (table, assignment) = view.table(&members, None, 1);
        let mut filter = Filter::new(1 << 20, Timeouts::default(), 0x5eed);
        let mut held: HeldFragments<usize> = HeldFragments::new(1024, 500);
        let mut verdicts: Vec<Option<Decision>> = vec![None; records.len()];
        let start = records.first().map_or(0, |r| r.timestamp_ns);
        let mut summary = ReplaySummary {
            frames: records.len(),
            ..ReplaySummary::default()
        };
        for (i, rec) in records.iter().enumerate() {
            let now_ms = (rec.timestamp_ns.saturating_sub(start) / 1_000_000) as u32;
            filter.expire(now_ms, 1024);
            let d = filter.classify(&table, &rec.data, now_ms);
            if d.verdict == Verdict::Hold {
                if held.hold(filter.held_datagram(), i, now_ms).is_err() {
                    verdicts[i] = Some(Decision::of(Verdict::Drop(Reason::FragmentOverflow)));
                }
            } else {
                verdicts[i] = Some(d);
            }
            held.release(filter.fragments(), now_ms, |j, v| {
                verdicts[j] = Some(Decision::of(follow(v)));
            });
        }
        held.drain(|j| verdicts[j] = Some(Decision::of(Verdict::Drop(Reason::FragmentTimeout))));

        let mut kept = Vec::new();
        for (i, (rec, d)) in records.iter().zip(&verdicts).enumerate() {
            let d = d.unwrap_or(Decision::of(Verdict::Drop(Reason::FragmentTimeout)));
            match d.verdict {
                Verdict::Accept(_) => summary.accepted += 1,
                Verdict::Pass(_) => summary.passed += 1,
                _ => summary.dropped += 1,
            }
            if d.verdict.forwards() {
                kept.push(rec.clone());
            }
            if self.explain {
                summary
                    .lines
                    .push(explain(i + 1, &rec.data, &d, &assignment, &view.modes));
            }
        }
        Ok((kept, summary))
    }
}

fn follow(v: Option<Verdict>) -> Verdict {
    match v {
        Some(Verdict::Accept(_)) => Verdict::Accept(Reason::Fragment),
        Some(Verdict::Pass(_)) => Verdict::Pass(Reason::Fragment),
        Some(_) => Verdict::Drop(Reason::Fragment),
        None => Verdict::Drop(Reason::FragmentTimeout),
    }
}

/// One line: frame number, flow, rule, bucket, owner, verdict.
fn explain(n: usize, frame: &[u8], d: &Decision, a: &Assignment, modes: &[Mode]) -> String {
    let mut line = format!("#{n:<5} {:<52}", describe(frame));
    match (d.rule, d.bucket) {
        (Some(r), Some(b)) => {
            let owner = a.rules[r as usize].owners[b as usize];
            let _ = write!(line, " rule {} bucket {b:>2} owner {owner:>2}", r + 1);
        }
        (Some(r), None) => {
            let _ = match modes.get(r as usize) {
                Some(Mode::Single) => write!(
                    line,
                    " rule {} single-host handler {}",
                    r + 1,
                    a.rules[r as usize]
                        .handler
                        .map_or("none".to_string(), |h| h.to_string())
                ),
                _ => write!(line, " rule {} disabled", r + 1),
            };
        }
        _ => {
            if matches!(
                d.verdict.reason(),
                Some(Reason::DefaultHost | Reason::NotDefaultHost)
            ) {
                let _ = write!(
                    line,
                    " no rule: default host {}",
                    a.default_host.map_or("none".to_string(), |h| h.to_string())
                );
            }
        }
    }
    let (kind, reason) = match d.verdict {
        Verdict::Accept(r) => ("accept", r.name()),
        Verdict::Pass(r) => ("pass", r.name()),
        Verdict::Drop(r) => ("drop", r.name()),
        Verdict::Hold => ("hold", "fragment"),
    };
    let _ = write!(line, "  {kind} ({reason})");
    line
}

/// A short human description of a frame: addresses, ports, protocol.
pub fn describe(frame: &[u8]) -> String {
    let Ok(eth) = ethernet::Frame::new_checked(frame) else {
        return format!("runt frame ({} bytes)", frame.len());
    };
    let mut ethertype = eth.ethertype();
    let mut payload = eth.payload();
    let mut vlan = String::new();
    while ethertype.is_vlan_tag() && payload.len() >= 4 {
        let _ = write!(
            vlan,
            "vlan {} ",
            u16::from_be_bytes([payload[0], payload[1]]) & 0xfff
        );
        ethertype = EtherType(u16::from_be_bytes([payload[2], payload[3]]));
        payload = &payload[4..];
    }
    let (src, dst, proto, l4, frag): (IpAddr, IpAddr, IpProtocol, &[u8], String) = match ethertype {
        EtherType::IPV4 => match ipv4::Packet::new_checked(payload) {
            Ok(ip) => (
                ip.src_addr().into(),
                ip.dst_addr().into(),
                ip.protocol(),
                if ip.frag_offset() == 0 {
                    ip.payload()
                } else {
                    &[]
                },
                if ip.is_fragment() {
                    format!(" frag id {} off {}", ip.ident(), ip.frag_offset())
                } else {
                    String::new()
                },
            ),
            Err(e) => return format!("{vlan}IPv4 ({e})"),
        },
        EtherType::IPV6 => match ipv6::Packet::new_checked(payload) {
            Ok(ip) => {
                let upper = ip.upper_layer();
                let (proto, l4, frag) = match &upper {
                    Ok(u) => (
                        u.protocol,
                        if u.fragment.is_some_and(|f| f.offset != 0) {
                            &[][..]
                        } else {
                            ip.upper_layer_payload(u)
                        },
                        u.fragment
                            .map(|f| format!(" frag id {} off {}", f.ident, f.offset))
                            .unwrap_or_default(),
                    ),
                    Err(_) => (ip.next_header(), &[][..], String::new()),
                };
                (ip.src_addr().into(), ip.dst_addr().into(), proto, l4, frag)
            }
            Err(e) => return format!("{vlan}IPv6 ({e})"),
        },
        other => return format!("{vlan}{other} {} -> {}", eth.src_addr(), eth.dst_addr()),
    };
    let with_port = |a: IpAddr, p: Option<u16>| match (a, p) {
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    };
    let ports = (l4.len() >= 4 && matches!(proto, IpProtocol::TCP | IpProtocol::UDP)).then(|| {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    });
    let name = match proto {
        IpProtocol::TCP => {
            let flags = l4.get(13).copied().unwrap_or(0);
            let mut f = String::new();
            for (bit, c) in [(0x02, 'S'), (0x10, '.'), (0x01, 'F'), (0x04, 'R')] {
                if flags & bit != 0 {
                    f.push(c);
                }
            }
            format!("tcp [{f}]")
        }
        IpProtocol::UDP => "udp".to_string(),
        IpProtocol::ICMP | IpProtocol::ICMPV6 => {
            format!("icmp type {}", l4.first().copied().unwrap_or(0))
        }
        p => format!("proto {}", p.0),
    };
    format!(
        "{vlan}{} -> {} {name}{frag}",
        with_port(src, ports.map(|p| p.0)),
        with_port(dst, ports.map(|p| p.1))
    )
}
