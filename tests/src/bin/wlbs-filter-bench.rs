//! The filter alone, without DPDK: the worker's two steps (triage the burst, then finish
//! each frame in order) over the frames of a capture, looped, as host `P` of the
//! configuration's static members. Prints nanoseconds per frame. For finding where the
//! per-packet time goes; `scripts/bench.sh` is the benchmark of record (ratios against
//! testpmd).
//!
//! ```text
//! wlbs-filter-bench --config FILE --host P --pcap FILE [--seconds N]
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wlbs_control::cluster::ClusterView;
use wlbs_control::config::Config;
use wlbs_control::pcap;
use wlbs_dataplane::conn::Timeouts;
use wlbs_dataplane::filter::classify::{Filter, Tally, Triaged};

const BURST: usize = 32;

fn main() -> Result<()> {
    let mut it = std::env::args().skip(1);
    let (mut config, mut host, mut capture, mut seconds) = (None, None, None, 3.0f64);
    while let Some(a) = it.next() {
        let mut v = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--config" => config = Some(PathBuf::from(v()?)),
            "--host" => host = Some(v()?.parse::<u8>()?),
            "--pcap" => capture = Some(PathBuf::from(v()?)),
            "--seconds" => seconds = v()?.parse()?,
            _ => bail!(
                "unknown argument {a}; usage: --config FILE --host P --pcap FILE [--seconds N]"
            ),
        }
    }
    let config_path = config.context("--config is required")?;
    let config = Config::load(&config_path)?;
    let Some(mut view) = ClusterView::from_config(&config) else {
        bail!("{} has no [cluster]", config_path.display());
    };
    view.priority = host.context("--host is required")?;
    let members = view.static_members(&config);
    let (table, _) = view.table(&members, None, 1);
    let capture = capture.context("--pcap is required")?;
    let file = std::fs::File::open(&capture).with_context(|| capture.display().to_string())?;
    let frames: Vec<Vec<u8>> = pcap::read_all(std::io::BufReader::new(file))?
        .into_iter()
        .map(|r| r.data)
        .collect();
    if frames.is_empty() {
        bail!("{} holds no frames", capture.display());
    }
    let max_connections = config.dataplane.max_connections as usize;
    let mut filter = Filter::new(max_connections, Timeouts::default(), 1);
    let counters = filter.counters();
    let mut tally = Tally::default();
    let mut triage = [Triaged::default(); BURST];
    let started = Instant::now();
    let mut judged = 0u64;
    let mut accepted = 0u64;
    while started.elapsed() < Duration::from_secs_f64(seconds) {
        let now_ms = started.elapsed().as_millis() as u32;
        for burst in frames.chunks(BURST) {
            for (f, t) in burst.iter().zip(triage.iter_mut()) {
                filter.triage(&table, f, t);
            }
            for (f, t) in burst.iter().zip(triage.iter()) {
                let d = filter.finish(&table, f, t, now_ms);
                accepted += d.verdict.forwards() as u64;
                tally.add(&counters, &d);
            }
            counters.flush(&mut tally);
        }
        judged += frames.len() as u64;
    }
    let ns = started.elapsed().as_nanos() as f64 / judged as f64;
    println!(
        "{judged} frames judged, {accepted} forwarded: {ns:.2} ns per frame ({:.2} Mpps)",
        1e3 / ns
    );
    Ok(())
}
