//! Prometheus counters per collection, served at `/metrics` (text format 0.0.4).
//!
//! Labels are bucket names from the configuration (requests to unknown buckets count under
//! `bucket=""`) and fixed words, never keys or secrets, so cardinality stays bounded.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// Counters by name and label values. Lookups compare labels in place (no formatting, no
/// allocation once a counter exists), because every request adds to a few counters.
#[derive(Default)]
pub struct Metrics {
    counters: RwLock<Vec<Counter>>,
}

struct Counter {
    name: &'static str,
    labels: Vec<(String, String)>,
    value: AtomicU64,
}

impl Counter {
    fn is(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name
            && self.labels.len() == labels.len()
            && self.labels.iter().zip(labels).all(|((k, v), (k2, v2))| k == k2 && v == v2)
    }

    fn rendered_labels(&self) -> String {
        let mut out = String::new();
        for (i, (k, v)) in self.labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let value = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let _ = write!(out, "{k}=\"{value}\"");
        }
        out
    }
}

const HELP: &[(&str, &str)] = &[
    ("zarrgate_requests_total", "Requests answered, by bucket and status class."),
    ("zarrgate_response_bytes_total", "Body bytes sent, by bucket."),
    ("zarrgate_auth_failures_total", "Requests refused by authentication or policy, by bucket and S3 code."),
    ("zarrgate_quota_rejections_total", "Requests refused by a quota, by bucket."),
    ("zarrgate_stale_sources_total", "Reads that found a source file changed since indexing, by bucket."),
    (
        "zarrgate_unavailable_sources_total",
        "Reads refused with 503 because a remote source could not be reached, by bucket.",
    ),
    (
        "zarrgate_reads_offloaded_total",
        "Ranges not in the page cache, read on the blocking pool instead of a server thread, by bucket.",
    ),
    ("zarrgate_ops_computations_total", "Operations computed (not answered from the cache), by process."),
    ("zarrgate_ops_cache_hits_total", "Operations answered from the result cache, by tier."),
    ("zarrgate_ops_cache_corrupt_total", "Cached results that failed their hash check and were recomputed."),
    ("zarrgate_ops_jobs_total", "Asynchronous jobs, by status reached."),
];

impl Metrics {
    pub fn add(&self, name: &'static str, labels: &[(&str, &str)], by: u64) {
        {
            let counters = self.counters.read().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = counters.iter().find(|c| c.is(name, labels)) {
                c.value.fetch_add(by, Ordering::Relaxed);
                return;
            }
        }
        let mut counters = self.counters.write().unwrap_or_else(|p| p.into_inner());
        match counters.iter().find(|c| c.is(name, labels)) {
            Some(c) => {
                c.value.fetch_add(by, Ordering::Relaxed);
            }
            None => counters.push(Counter {
                name,
                labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                value: AtomicU64::new(by),
            }),
        }
    }

    pub fn render(&self) -> String {
        let counters = self.counters.read().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let mut lines: Vec<(String, u64)> = counters
                .iter()
                .filter(|c| c.name == *name)
                .map(|c| (c.rendered_labels(), c.value.load(Ordering::Relaxed)))
                .collect();
            lines.sort();
            for (labels, value) in lines {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
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
    fn renders_counters_with_escaped_labels() {
        let m = Metrics::default();
        m.add("zarrgate_requests_total", &[("bucket", "a"), ("class", "2xx")], 2);
        m.add("zarrgate_requests_total", &[("bucket", "a"), ("class", "2xx")], 1);
        m.add("zarrgate_response_bytes_total", &[("bucket", "q\"b")], 10);
        let text = m.render();
        assert!(text.contains("zarrgate_requests_total{bucket=\"a\",class=\"2xx\"} 3\n"), "{text}");
        assert!(text.contains("zarrgate_response_bytes_total{bucket=\"q\\\"b\"} 10\n"));
        assert!(text.contains("# TYPE zarrgate_quota_rejections_total counter"));
    }
}
