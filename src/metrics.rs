//! Prometheus metrics in the text exposition format (version 0.0.4).
//!
//! Owns a small registry of counters, gauges and histograms keyed by name and label set.
//! Services record into it with `inc`, `set` and `observe`; `/metrics` renders it. Label
//! values are escaped as the format requires (they may come from the network).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Help text and kind of each metric stemcell exports.
const CATALOG: &[(&str, Kind, &str)] = &[
    (
        "stemcell_http_requests_total",
        Kind::Counter,
        "HTTP requests by route and status.",
    ),
    (
        "stemcell_installs_total",
        Kind::Counter,
        "Finished installs by outcome (done, failed).",
    ),
    (
        "stemcell_install_duration_seconds",
        Kind::Histogram,
        "Time from install script served to done or failed.",
    ),
    (
        "stemcell_inventory_reloads_total",
        Kind::Counter,
        "Inventory reloads attempted.",
    ),
    (
        "stemcell_inventory_reload_errors_total",
        Kind::Counter,
        "Inventory reloads refused because the edit was invalid.",
    ),
    (
        "stemcell_inventory_machines",
        Kind::Gauge,
        "Machines in the inventory in use.",
    ),
    (
        "stemcell_machines",
        Kind::Gauge,
        "Machines by lifecycle state.",
    ),
    (
        "stemcell_dhcp_packets_total",
        Kind::Counter,
        "DHCP packets by message type and outcome.",
    ),
    (
        "stemcell_dhcp_datagrams_total",
        Kind::Counter,
        "DHCP datagrams by what became of them (received, malformed, ignored, sent, send_error, journal_error: an ACK withheld because its lease could not be written, rate_limited).",
    ),
    (
        "stemcell_dhcp_leases_active",
        Kind::Gauge,
        "Active DHCP leases by subnet.",
    ),
    (
        "stemcell_dhcp_pool_size",
        Kind::Gauge,
        "Addresses in each subnet's dynamic pool.",
    ),
    (
        "stemcell_journal_write_errors_total",
        Kind::Counter,
        "Journal writes or syncs that failed (a full disk), by journal; each retry counts.",
    ),
    (
        "stemcell_journal_backlog_bytes",
        Kind::Gauge,
        "Journal lines waiting in memory because the disk refused them, by journal.",
    ),
    (
        "stemcell_journal_dropped_lines_total",
        Kind::Counter,
        "Journal lines dropped because the backlog was full (a snapshot replaces them).",
    ),
    (
        "stemcell_tftp_transfers_total",
        Kind::Counter,
        "TFTP transfers by outcome.",
    ),
    (
        "stemcell_tftp_bytes_total",
        Kind::Counter,
        "Bytes sent by TFTP.",
    ),
];

const BUCKETS: &[f64] = &[10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0];

#[derive(Default)]
struct Hist {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    values: BTreeMap<(&'static str, String), f64>,
    hists: BTreeMap<(&'static str, String), Hist>,
}

#[derive(Default)]
pub(crate) struct Metrics {
    inner: Mutex<Inner>,
}

fn escape(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

fn labels(l: &[(&str, &str)]) -> String {
    if l.is_empty() {
        return String::new();
    }
    // Written into one string: this runs for every counted request.
    let mut out =
        String::with_capacity(2 + l.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>());
    out.push('{');
    for (i, (k, v)) in l.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        out.push_str(&escape(v));
        out.push('"');
    }
    out.push('}');
    out
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn inc(&self, name: &'static str, l: &[(&str, &str)], by: f64) {
        *self.lock().values.entry((name, labels(l))).or_default() += by;
    }

    pub(crate) fn set(&self, name: &'static str, l: &[(&str, &str)], v: f64) {
        self.lock().values.insert((name, labels(l)), v);
    }

    /// Drop every series of a gauge (before setting the current ones).
    pub(crate) fn clear(&self, name: &'static str) {
        self.lock().values.retain(|(n, _), _| *n != name);
    }

    pub(crate) fn observe(&self, name: &'static str, l: &[(&str, &str)], v: f64) {
        let mut inner = self.lock();
        let h = inner
            .hists
            .entry((name, labels(l)))
            .or_insert_with(|| Hist {
                buckets: vec![0; BUCKETS.len()],
                ..Hist::default()
            });
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                h.buckets[i] += 1;
            }
        }
        h.sum += v;
        h.count += 1;
    }

    pub(crate) fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        for (name, kind, help) in CATALOG {
            let _ = writeln!(out, "# HELP {name} {help}");
            let t = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# TYPE {name} {t}");
            if *kind == Kind::Histogram {
                for ((n, l), h) in inner.hists.iter().filter(|((n, _), _)| n == name) {
                    let inner_l = l.trim_start_matches('{').trim_end_matches('}');
                    let sep = if inner_l.is_empty() { "" } else { "," };
                    for (i, b) in BUCKETS.iter().enumerate() {
                        let _ = writeln!(
                            out,
                            "{n}_bucket{{{inner_l}{sep}le=\"{b}\"}} {}",
                            h.buckets[i]
                        );
                    }
                    let _ = writeln!(out, "{n}_bucket{{{inner_l}{sep}le=\"+Inf\"}} {}", h.count);
                    let _ = writeln!(out, "{n}_sum{l} {}", h.sum);
                    let _ = writeln!(out, "{n}_count{l} {}", h.count);
                }
            } else {
                for ((n, l), v) in inner.values.iter().filter(|((n, _), _)| n == name) {
                    let _ = writeln!(out, "{n}{l} {v}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let m = Metrics::default();
        m.inc(
            "stemcell_http_requests_total",
            &[("route", "/boot/{file}"), ("status", "200")],
            1.0,
        );
        m.inc(
            "stemcell_http_requests_total",
            &[("route", "/boot/{file}"), ("status", "200")],
            1.0,
        );
        m.inc(
            "stemcell_dhcp_packets_total",
            &[("type", "discover"), ("vendor", "a\"b\\c\nd")],
            1.0,
        );
        m.observe("stemcell_install_duration_seconds", &[], 45.0);
        let t = m.render();
        assert!(
            t.contains("stemcell_http_requests_total{route=\"/boot/{file}\",status=\"200\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("vendor=\"a\\\"b\\\\c\\nd\""), "{t}");
        assert!(
            t.contains("stemcell_install_duration_seconds_bucket{le=\"30\"} 0\n"),
            "{t}"
        );
        assert!(
            t.contains("stemcell_install_duration_seconds_bucket{le=\"60\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("stemcell_install_duration_seconds_count 1\n"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE stemcell_tftp_bytes_total counter\n"),
            "{t}"
        );
    }
}
