//! ListObjects semantics over any sorted key space.
//!
//! # Rules
//! - Keys come in ascending byte order; only those after `after` and under `prefix` count.
//! - With a delimiter, keys whose rest (after the prefix) contains it roll up into one common
//!   prefix, which counts toward `max_keys` like a key. A common prefix is emitted once, and
//!   never when it sorts at or before `after` (so a marker that names a common prefix resumes
//!   past all its keys instead of repeating it).
//! - `max_keys == 0` returns nothing and is not truncated.
//! - The continuation cursor is the last entry returned.

use std::ops::Bound;

/// A sorted key space that can be read from any point.
pub trait KeySpace {
    type Entry;
    /// Entries with keys in `(from, ∞)` or `[from, ∞)`, ascending.
    fn scan<'a>(&'a self, from: Bound<&str>) -> Box<dyn Iterator<Item = (String, Self::Entry)> + 'a>;
}

/// Any sorted map is a key space (a small bucket, or one result's files).
impl<E: Clone> KeySpace for std::collections::BTreeMap<String, E> {
    type Entry = E;

    fn scan<'a>(&'a self, from: Bound<&str>) -> Box<dyn Iterator<Item = (String, E)> + 'a> {
        Box::new(self.range::<str, _>((from, Bound::Unbounded)).map(|(k, v)| (k.clone(), v.clone())))
    }
}

#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub prefix: String,
    /// `None` or empty: no delimiter.
    pub delimiter: Option<String>,
    pub max_keys: usize,
    /// Exclusive lower bound (start-after, marker or continuation).
    pub after: Option<String>,
}

#[derive(Debug)]
pub struct ListPage<E> {
    pub contents: Vec<(String, E)>,
    pub common_prefixes: Vec<String>,
    pub truncated: bool,
    /// The last key or common prefix returned (to continue from).
    pub last: Option<String>,
}

/// A key past every key that starts with `prefix` (keys never hold U+10FFFF).
fn past_prefix(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

pub fn list<S: KeySpace>(space: &S, query: &ListQuery) -> ListPage<S::Entry> {
    let mut page = ListPage { contents: Vec::new(), common_prefixes: Vec::new(), truncated: false, last: None };
    if query.max_keys == 0 {
        return page;
    }
    let delimiter = query.delimiter.as_deref().filter(|d| !d.is_empty());
    let after = query.after.as_deref().filter(|a| a >= &query.prefix.as_str());
    let mut from: (String, bool) = match after {
        Some(a) => (a.to_string(), false),
        None => (query.prefix.clone(), true),
    };
    'scan: loop {
        let bound = if from.1 { Bound::Included(from.0.as_str()) } else { Bound::Excluded(from.0.as_str()) };
        let mut skip_to = None;
        for (key, entry) in space.scan(bound) {
            if !key.starts_with(&query.prefix) {
                break 'scan;
            }
            let rolled = delimiter.and_then(|d| {
                key[query.prefix.len()..].find(d).map(|i| key[..query.prefix.len() + i + d.len()].to_string())
            });
            match rolled {
                Some(cp) => {
                    let seen = after.is_some_and(|a| cp.as_str() <= a);
                    if !seen && page.contents.len() + page.common_prefixes.len() == query.max_keys {
                        page.truncated = true;
                        break 'scan;
                    }
                    skip_to = Some(past_prefix(&cp));
                    if !seen {
                        page.last = Some(cp.clone());
                        page.common_prefixes.push(cp);
                    }
                    break;
                }
                None => {
                    if page.contents.len() + page.common_prefixes.len() == query.max_keys {
                        page.truncated = true;
                        break 'scan;
                    }
                    page.last = Some(key.clone());
                    page.contents.push((key, entry));
                }
            }
        }
        match skip_to.take() {
            Some(next) => from = (next, false),
            None => break,
        }
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    type Keys = BTreeMap<String, ()>;

    fn keys(list: &[&str]) -> Keys {
        list.iter().map(|k| (k.to_string(), ())).collect()
    }

    fn run(
        space: &Keys,
        prefix: &str,
        delimiter: Option<&str>,
        max_keys: usize,
        after: Option<&str>,
    ) -> (Vec<String>, Vec<String>, bool) {
        let q = ListQuery {
            prefix: prefix.into(),
            delimiter: delimiter.map(Into::into),
            max_keys,
            after: after.map(Into::into),
        };
        let page = list(space, &q);
        (page.contents.into_iter().map(|(k, _)| k).collect(), page.common_prefixes, page.truncated)
    }

    #[test]
    fn prefix_and_delimiter_roll_up() {
        let s = keys(&["a.nc/.zgroup", "a.nc/t/.zarray", "a.nc/t/0", "a.nc/t/1", "b.nc/.zgroup", "sub/c.nc/.zgroup"]);
        let (k, p, t) = run(&s, "", Some("/"), 1000, None);
        assert!(k.is_empty() && !t);
        assert_eq!(p, vec!["a.nc/", "b.nc/", "sub/"]);
        let (k, p, _) = run(&s, "a.nc/", Some("/"), 1000, None);
        assert_eq!(k, vec!["a.nc/.zgroup"]);
        assert_eq!(p, vec!["a.nc/t/"]);
        let (k, p, _) = run(&s, "a.nc/t", None, 1000, None);
        assert_eq!(k, vec!["a.nc/t/.zarray", "a.nc/t/0", "a.nc/t/1"]);
        assert!(p.is_empty());
    }

    #[test]
    fn pagination_counts_prefixes_and_resumes_past_them() {
        let s = keys(&["a/1", "a/2", "b", "c/1", "d"]);
        let mut after = None;
        let mut seen = Vec::new();
        loop {
            let q = ListQuery { prefix: String::new(), delimiter: Some("/".into()), max_keys: 1, after: after.clone() };
            let page = list(&s, &q);
            seen.extend(page.contents.iter().map(|(k, _)| k.clone()));
            seen.extend(page.common_prefixes.iter().cloned());
            if !page.truncated {
                break;
            }
            after = page.last;
        }
        assert_eq!(seen, vec!["a/", "b", "c/", "d"]);
    }

    #[test]
    fn max_keys_zero_and_start_after() {
        let s = keys(&["a", "b", "c"]);
        assert_eq!(run(&s, "", None, 0, None), (vec![], vec![], false));
        assert_eq!(run(&s, "", None, 2, Some("a")), (vec!["b".into(), "c".into()], vec![], false));
        assert_eq!(run(&s, "", None, 1, Some("a")), (vec!["b".into()], vec![], true));
        assert_eq!(run(&s, "", None, 5, Some("zzz")).0.len(), 0);
    }

    #[test]
    fn multi_character_delimiter() {
        let s = keys(&["x--1", "x--2", "y"]);
        assert_eq!(run(&s, "", Some("--"), 10, None), (vec!["y".into()], vec!["x--".into()], false));
    }
}
