//! Prometheus text exposition (format 0.0.4): metric families with `# HELP` and `# TYPE`,
//! counters ending in `_total`, base units (seconds, bytes), histograms with cumulative
//! `le` buckets, `_sum` and `_count`. Labels are bounded: port, direction, queue/worker, rule,
//! bucket, peer priority, reason, kind; never a client address.

use std::fmt::Write;

use hdrhistogram::Histogram;

/// One label set's value.
pub type Labels<'a> = &'a [(&'a str, String)];

/// Builds the exposition text, one family at a time.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: Labels, value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    /// A counter family (`name` ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, samples: &[(Labels, u64)]) {
        debug_assert!(name.ends_with("_total"), "{name}");
        self.header(name, "counter", help);
        for (labels, v) in samples {
            self.sample(name, labels, *v as f64);
        }
    }

    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(Labels, f64)]) {
        self.header(name, "gauge", help);
        for (labels, v) in samples {
            self.sample(name, labels, *v);
        }
    }

    /// A histogram family from hdrhistograms recorded in `unit`s (e.g. 1e-3 for milliseconds)
    /// with Prometheus buckets at `bounds` (in base units, ascending). `_sum` is the
    /// histogram's mean times its count (hdrhistogram keeps no exact sum).
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        bounds: &[f64],
        unit: f64,
        samples: &[(Labels, &Histogram<u64>)],
    ) {
        self.header(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (labels, h) in samples {
            for &le in bounds {
                let raw = (le / unit).floor().max(0.0) as u64;
                let count = if h.is_empty() {
                    0
                } else {
                    h.count_between(0, raw)
                };
                let mut l: Vec<(&str, String)> = labels.to_vec();
                l.push(("le", number(le)));
                self.sample(&bucket, &l, count as f64);
            }
            let mut l: Vec<(&str, String)> = labels.to_vec();
            l.push(("le", "+Inf".into()));
            self.sample(&bucket, &l, h.len() as f64);
            self.sample(
                &format!("{name}_sum"),
                labels,
                h.mean() * h.len() as f64 * unit,
            );
            self.sample(&format!("{name}_count"), labels, h.len() as f64);
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_histograms_are_written_as_prometheus_reads_them() {
        let mut e = Exposition::new();
        e.counter(
            "wlbs_port_packets_total",
            "Packets per port and direction.",
            &[(
                &[("port", "cluster".into()), ("direction", "rx".into())],
                42,
            )],
        );
        e.gauge("wlbs_members", "Live members.", &[(&[], 3.0)]);
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000, 2).unwrap();
        for ms in [1, 1, 3, 40] {
            h.record(ms).unwrap();
        }
        e.histogram(
            "wlbs_heartbeat_send_delay_seconds",
            "How late heartbeats left.",
            &[0.002, 0.01, 0.1],
            1e-3,
            &[(&[], &h)],
        );
        let text = e.finish();
        assert!(text.contains("# TYPE wlbs_port_packets_total counter\nwlbs_port_packets_total{port=\"cluster\",direction=\"rx\"} 42\n"), "{text}");
        assert!(text.contains("wlbs_members 3\n"), "{text}");
        assert!(
            text.contains("wlbs_heartbeat_send_delay_seconds_bucket{le=\"0.002\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("wlbs_heartbeat_send_delay_seconds_bucket{le=\"0.01\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("wlbs_heartbeat_send_delay_seconds_bucket{le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("wlbs_heartbeat_send_delay_seconds_count 4\n"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::new();
        e.gauge("x", "a \\ help\nline", &[(&[("v", "a\"b\\c".into())], 1.5)]);
        let text = e.finish();
        assert!(text.contains("# HELP x a \\\\ help\\nline\n"), "{text}");
        assert!(text.contains("x{v=\"a\\\"b\\\\c\"} 1.5\n"), "{text}");
    }
}
