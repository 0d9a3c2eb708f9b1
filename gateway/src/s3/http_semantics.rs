//! Range requests and conditional requests, as RFC 9110 and S3 define them.
//!
//! # Rules
//! - One range (`bytes=a-b`, `bytes=a-`, `bytes=-n`). A malformed header or several ranges are
//!   ignored: the whole object is sent with 200, as RFC 9110 allows and S3 does.
//! - A range that starts at or past the end, or an empty suffix, is unsatisfiable (416). A
//!   suffix longer than the object is the whole object, sent as 206.
//! - Preconditions are evaluated in RFC 9110 §13.2.2 order: `If-Match`, else
//!   `If-Unmodified-Since`; then `If-None-Match`, else `If-Modified-Since`. An invalid date is
//!   ignored. `*` matches any existing object.

use std::time::{SystemTime, UNIX_EPOCH};

/// A single byte range as requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// `a-b` (inclusive).
    FromTo(u64, u64),
    /// `a-`.
    From(u64),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// A range applied to an object of known size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Bytes `start..end` (end exclusive).
    Part {
        start: u64,
        end: u64,
    },
    Unsatisfiable,
}

/// Parses a `Range` header. `None` means "ignore it and send the whole object".
pub fn parse_range(header: &str) -> Option<RangeSpec> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    // Positions past u64 are still positions (past any object's end), not malformed.
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(s.parse().unwrap_or(u64::MAX))
    };
    match (first.trim(), last.trim()) {
        ("", n) => number(n).map(RangeSpec::Suffix),
        (a, "") => number(a).map(RangeSpec::From),
        (a, b) => {
            let (a, b) = (number(a)?, number(b)?);
            (a <= b).then_some(RangeSpec::FromTo(a, b))
        }
    }
}

impl RangeSpec {
    pub fn resolve(self, size: u64) -> Resolved {
        match self {
            RangeSpec::FromTo(a, _) | RangeSpec::From(a) if a >= size => Resolved::Unsatisfiable,
            RangeSpec::FromTo(a, b) => Resolved::Part { start: a, end: b.saturating_add(1).min(size) },
            RangeSpec::From(a) => Resolved::Part { start: a, end: size },
            RangeSpec::Suffix(0) => Resolved::Unsatisfiable,
            RangeSpec::Suffix(_) if size == 0 => Resolved::Unsatisfiable,
            RangeSpec::Suffix(n) => Resolved::Part { start: size.saturating_sub(n), end: size },
        }
    }
}

/// The precondition headers of a request.
#[derive(Clone, Debug, Default)]
pub struct Conditions<'a> {
    pub if_match: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub if_unmodified_since: Option<&'a str>,
}

/// What the preconditions decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Proceed,
    NotModified,
    PreconditionFailed,
}

impl Conditions<'_> {
    /// Evaluates against an object with quoted `etag`, modified at `modified`.
    pub fn evaluate(&self, etag: &str, modified: SystemTime) -> Verdict {
        let modified_s = seconds(modified);
        if let Some(list) = self.if_match {
            if !etag_list_matches(list, etag, false) {
                return Verdict::PreconditionFailed;
            }
        } else if let Some(since) = self.if_unmodified_since.and_then(parse_date) {
            if modified_s > since {
                return Verdict::PreconditionFailed;
            }
        }
        if let Some(list) = self.if_none_match {
            if etag_list_matches(list, etag, true) {
                return Verdict::NotModified;
            }
        } else if let Some(since) = self.if_modified_since.and_then(parse_date) {
            if modified_s <= since {
                return Verdict::NotModified;
            }
        }
        Verdict::Proceed
    }
}

fn seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    }
}

fn parse_date(text: &str) -> Option<i64> {
    httpdate::parse_http_date(text.trim()).ok().map(seconds)
}

/// Whether an `If-Match`/`If-None-Match` list names `etag`. Weak comparison ignores `W/`;
/// strong comparison never matches a weak tag.
fn etag_list_matches(list: &str, etag: &str, weak: bool) -> bool {
    let list = list.trim();
    if list == "*" {
        return true;
    }
    let bare = |t: &str| t.trim().trim_matches('"').to_string();
    list.split(',').map(str::trim).filter(|t| !t.is_empty()).any(|candidate| {
        let (is_weak, tag) = match candidate.strip_prefix("W/") {
            Some(t) => (true, t),
            None => (false, candidate),
        };
        (weak || !is_weak) && bare(tag) == bare(etag)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn range_forms() {
        assert_eq!(parse_range("bytes=0-9"), Some(RangeSpec::FromTo(0, 9)));
        assert_eq!(parse_range("bytes=5-"), Some(RangeSpec::From(5)));
        assert_eq!(parse_range("bytes=-3"), Some(RangeSpec::Suffix(3)));
        let huge = "1000000000000000000000000000000";
        assert_eq!(parse_range(&format!("bytes=0-{huge}")), Some(RangeSpec::FromTo(0, u64::MAX)));
        assert_eq!(parse_range(&format!("bytes={huge}-")), Some(RangeSpec::From(u64::MAX)));
        assert_eq!(parse_range(&format!("bytes=-{huge}")), Some(RangeSpec::Suffix(u64::MAX)));
        for ignored in ["bytes=abc", "bytes=0-1,3-4", "items=0-1", "bytes=5-2", "bytes=-", "bytes=1-x", "bytes=+1-2"] {
            assert_eq!(parse_range(ignored), None, "{ignored}");
        }
    }

    #[test]
    fn ranges_against_a_size() {
        let part = |start, end| Resolved::Part { start, end };
        assert_eq!(RangeSpec::FromTo(0, 9).resolve(5), part(0, 5));
        assert_eq!(RangeSpec::FromTo(5, 9).resolve(5), Resolved::Unsatisfiable);
        assert_eq!(RangeSpec::From(4).resolve(5), part(4, 5));
        assert_eq!(RangeSpec::Suffix(2).resolve(5), part(3, 5));
        assert_eq!(RangeSpec::Suffix(50).resolve(5), part(0, 5));
        assert_eq!(RangeSpec::Suffix(0).resolve(5), Resolved::Unsatisfiable);
        assert_eq!(RangeSpec::FromTo(0, u64::MAX).resolve(5), part(0, 5));
    }

    /// Every single range over every small size, against a direct reading of RFC 9110 §14.1.2.
    #[test]
    fn ranges_match_the_rfc_for_every_small_case() {
        for size in 0..12u64 {
            for a in 0..14u64 {
                for b in 0..14u64 {
                    let got = parse_range(&format!("bytes={a}-{b}")).map(|r| r.resolve(size));
                    let want = if a > b {
                        None // invalid: ignored
                    } else if a >= size {
                        Some(Resolved::Unsatisfiable)
                    } else {
                        Some(Resolved::Part { start: a, end: (b + 1).min(size) })
                    };
                    assert_eq!(got, want, "bytes={a}-{b} of {size}");
                }
                let open = parse_range(&format!("bytes={a}-")).unwrap().resolve(size);
                assert_eq!(
                    open,
                    if a >= size { Resolved::Unsatisfiable } else { Resolved::Part { start: a, end: size } }
                );
                let suffix = parse_range(&format!("bytes=-{a}")).unwrap().resolve(size);
                let want = if a == 0 || size == 0 {
                    Resolved::Unsatisfiable
                } else {
                    Resolved::Part { start: size.saturating_sub(a), end: size }
                };
                assert_eq!(suffix, want, "bytes=-{a} of {size}");
            }
        }
    }

    #[test]
    fn preconditions_follow_rfc_9110_order() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let before = "Mon, 13 Nov 2023 22:00:00 GMT"; // earlier than t
        let after = "Wed, 15 Nov 2023 00:00:00 GMT";
        let c =
            |m, n, ms, us| Conditions { if_match: m, if_none_match: n, if_modified_since: ms, if_unmodified_since: us };
        let etag = "\"abc\"";
        assert_eq!(c(Some("\"abc\""), None, None, None).evaluate(etag, t), Verdict::Proceed);
        assert_eq!(c(Some("\"x\", \"abc\""), None, None, None).evaluate(etag, t), Verdict::Proceed);
        assert_eq!(c(Some("W/\"abc\""), None, None, None).evaluate(etag, t), Verdict::PreconditionFailed);
        assert_eq!(c(Some("*"), None, None, None).evaluate(etag, t), Verdict::Proceed);
        assert_eq!(c(Some("\"x\""), None, None, None).evaluate(etag, t), Verdict::PreconditionFailed);
        assert_eq!(c(None, Some("W/\"abc\""), None, None).evaluate(etag, t), Verdict::NotModified);
        assert_eq!(c(None, Some("*"), None, None).evaluate(etag, t), Verdict::NotModified);
        assert_eq!(c(None, None, Some(after), None).evaluate(etag, t), Verdict::NotModified);
        assert_eq!(c(None, None, Some(before), None).evaluate(etag, t), Verdict::Proceed);
        assert_eq!(c(None, None, None, Some(before)).evaluate(etag, t), Verdict::PreconditionFailed);
        assert_eq!(c(None, None, None, Some(after)).evaluate(etag, t), Verdict::Proceed);
        // If-Match wins over If-Unmodified-Since; If-None-Match over If-Modified-Since.
        assert_eq!(c(Some(etag), None, None, Some(before)).evaluate(etag, t), Verdict::Proceed);
        assert_eq!(c(None, Some("\"x\""), Some(after), None).evaluate(etag, t), Verdict::Proceed);
        // Invalid dates are ignored.
        assert_eq!(c(None, None, Some("yesterday"), Some("soon")).evaluate(etag, t), Verdict::Proceed);
    }

    proptest::proptest! {
        /// Any header text parses or is ignored, never panics; a parsed range resolves, against
        /// any object size, to bytes inside the object or to 416.
        #[test]
        fn any_range_header_resolves_inside_the_object(header in ".{0,40}", size in proptest::prelude::any::<u64>()) {
            if let Some(spec) = parse_range(&header) {
                match spec.resolve(size) {
                    Resolved::Part { start, end } => proptest::prop_assert!(start < end && end <= size),
                    Resolved::Unsatisfiable => {}
                }
            }
        }

        /// The three forms read back as written, with any spacing S3 clients send.
        #[test]
        fn written_ranges_read_back(a in proptest::prelude::any::<u64>(), b in proptest::prelude::any::<u64>(), form in 0u8..3) {
            let (text, want) = match form {
                0 => (format!("bytes={a}-{b}"), (a <= b).then_some(RangeSpec::FromTo(a, b))),
                1 => (format!("bytes= {a}-"), Some(RangeSpec::From(a))),
                _ => (format!("bytes=-{b} "), Some(RangeSpec::Suffix(b))),
            };
            proptest::prop_assert_eq!(parse_range(&text), want);
        }
    }
}
