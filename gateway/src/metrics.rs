//! Prometheus counters per collection, served at `/metrics` (text format 0.0.4).
//!
//! Labels are bucket names from the configuration (requests to unknown buckets count under
//! `bucket=""`) and fixed words, never keys or secrets, so cardinality stays bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, String), u64>>,
}

const HELP: &[(&str, &str)] = &[
    ("zarrgate_requests_total", "Requests answered, by bucket and status class."),
    ("zarrgate_response_bytes_total", "Body bytes sent, by bucket."),
    ("zarrgate_auth_failures_total", "Requests refused by authentication or policy, by bucket and S3 code."),
    ("zarrgate_quota_rejections_total", "Requests refused by a quota, by bucket."),
    ("zarrgate_stale_sources_total", "Reads that found a source file changed since indexing, by bucket."),
    ("zarrgate_ops_computations_total", "Operations computed (not answered from the cache), by process."),
    ("zarrgate_ops_cache_hits_total", "Operations answered from the result cache, by tier."),
    ("zarrgate_ops_cache_corrupt_total", "Cached results that failed their hash check and were recomputed."),
    ("zarrgate_ops_jobs_total", "Asynchronous jobs, by status reached."),
];

impl Metrics {
    pub fn add(&self, name: &'static str, labels: &[(&str, &str)], by: u64) {
        let mut rendered = String::new();
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                rendered.push(',');
            }
            let value = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let _ = write!(rendered, "{k}=\"{value}\"");
        }
        *self.counters.lock().unwrap_or_else(|p| p.into_inner()).entry((name, rendered)).or_insert(0) += by;
    }

    pub fn render(&self) -> String {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((n, labels), value) in counters.iter() {
                if n == name && labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else if n == name {
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
