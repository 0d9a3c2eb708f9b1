//! Cross-origin reads from browsers (zarr.js, JupyterLite, Neuroglancer, Vizarr): which origins
//! a collection admits, the headers of an admitted answer, and the answer to a preflight.
//!
//! The store is read-only, so the methods are GET and HEAD. Requested headers are admitted as
//! asked (`Authorization`, `Range`, `x-amz-*`): CORS decides which pages may read the answers,
//! while each request still passes the collection's read policy. No cookies are used, so
//! `Access-Control-Allow-Credentials` is never sent.

use hyper::header::{HeaderMap, HeaderValue};

/// Response headers a page may read (besides the CORS-safelisted ones).
const EXPOSED: &str =
    "ETag, Content-Length, Content-Range, Accept-Ranges, Last-Modified, x-amz-request-id, X-Zarrgate-Cache";
/// How long a browser may keep a preflight answer.
const MAX_AGE: &str = "3600";

/// The origins a collection admits: `*` for any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cors {
    origins: Vec<String>,
}

impl Cors {
    pub fn new(origins: Vec<String>) -> Self {
        Cors { origins: origins.into_iter().map(|o| o.trim_end_matches('/').to_string()).collect() }
    }

    pub fn any(&self) -> bool {
        self.origins.iter().any(|o| o == "*")
    }

    pub fn allows(&self, origin: &str) -> bool {
        self.any() || self.origins.iter().any(|o| o == origin)
    }

    /// Adds the headers of an answer to a page of `origin`, if it is admitted.
    pub fn annotate(&self, origin: &str, headers: &mut HeaderMap) {
        if !self.allows(origin) {
            return;
        }
        let allowed = if self.any() { "*" } else { origin };
        if let Ok(v) = HeaderValue::from_str(allowed) {
            headers.insert("access-control-allow-origin", v);
        }
        headers.insert("access-control-expose-headers", HeaderValue::from_static(EXPOSED));
        if !self.any() {
            headers.append("vary", HeaderValue::from_static("Origin"));
        }
    }

    /// The headers of a preflight answer, or `None` when the origin or the method is not
    /// admitted (the caller answers 403).
    pub fn preflight(&self, origin: &str, method: &str, requested: Option<&str>) -> Option<HeaderMap> {
        if !self.allows(origin) || !matches!(method, "GET" | "HEAD") {
            return None;
        }
        let mut h = HeaderMap::new();
        self.annotate(origin, &mut h);
        h.insert("access-control-allow-methods", HeaderValue::from_static("GET, HEAD"));
        if let Some(v) = requested.and_then(|r| HeaderValue::from_str(r).ok()) {
            h.insert("access-control-allow-headers", v);
        }
        h.insert("access-control-max-age", HeaderValue::from_static(MAX_AGE));
        Some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_methods_and_headers() {
        let listed = Cors::new(vec!["https://lab.example.org/".into()]);
        assert!(listed.allows("https://lab.example.org") && !listed.allows("https://evil.example"));
        let mut h = HeaderMap::new();
        listed.annotate("https://lab.example.org", &mut h);
        assert_eq!(h["access-control-allow-origin"], "https://lab.example.org");
        assert_eq!(h["vary"], "Origin");
        let any = Cors::new(vec!["*".into()]);
        let pre = any.preflight("https://x.example", "GET", Some("authorization, range")).unwrap();
        assert_eq!(pre["access-control-allow-origin"], "*");
        assert_eq!(pre["access-control-allow-headers"], "authorization, range");
        assert!(any.preflight("https://x.example", "PUT", None).is_none());
        assert!(listed.preflight("https://evil.example", "GET", None).is_none());
        assert!(!Cors::default().allows("https://x.example"));
    }
}
