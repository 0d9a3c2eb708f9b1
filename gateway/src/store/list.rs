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

/// What a scan yields: a key, or a group of keys read only if the listing needs them.
pub enum Item<E> {
    Key(String, E),
    /// Every key that starts with this prefix (at least one; none elsewhere in the scan). A
    /// listing whose delimiter rolls the prefix up into a common prefix never reads them.
    Group(String),
}

/// A sorted key space that can be read from any point.
pub trait KeySpace {
    type Entry;
    /// Keys in `(from, ∞)` or `[from, ∞)`, ascending. A [`Item::Group`] is yielded only when
    /// all its keys are in that range.
    fn scan<'a>(&'a self, from: Bound<&str>) -> Box<dyn Iterator<Item = Item<Self::Entry>> + 'a>;

    /// The keys of a group the scan yielded, ascending.
    fn expand<'a>(&'a self, _group: &str) -> Box<dyn Iterator<Item = (String, Self::Entry)> + 'a> {
        Box::new(std::iter::empty())
    }
}

/// Any sorted map is a key space (a small bucket, or one result's files).
impl<E: Clone> KeySpace for std::collections::BTreeMap<String, E> {
    type Entry = E;

    fn scan<'a>(&'a self, from: Bound<&str>) -> Box<dyn Iterator<Item = Item<E>> + 'a> {
        Box::new(self.range::<str, _>((from, Bound::Unbounded)).map(|(k, v)| Item::Key(k.clone(), v.clone())))
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

/// What the listing does after one key or group.
enum Step {
    Next,
    Stop,
    /// Scan again from past this common prefix.
    SkipTo(String),
}

pub fn list<S: KeySpace>(space: &S, query: &ListQuery) -> ListPage<S::Entry> {
    let mut page = ListPage { contents: Vec::new(), common_prefixes: Vec::new(), truncated: false, last: None };
    if query.max_keys == 0 {
        return page;
    }
    let after = query.after.as_deref().filter(|a| a >= &query.prefix.as_str());
    let mut lister =
        Lister { query, delimiter: query.delimiter.as_deref().filter(|d| !d.is_empty()), after, page: &mut page };
    let mut from: (String, bool) = match after {
        Some(a) => (a.to_string(), false),
        None => (query.prefix.clone(), true),
    };
    'scan: loop {
        let bound = if from.1 { Bound::Included(from.0.as_str()) } else { Bound::Excluded(from.0.as_str()) };
        let mut step = Step::Stop;
        'items: for item in space.scan(bound) {
            step = match item {
                Item::Key(key, entry) => lister.key(key, Some(entry)),
                Item::Group(group) => match lister.group(&group) {
                    Some(step) => step,
                    None => {
                        for (key, entry) in space.expand(&group) {
                            match lister.key(key, Some(entry)) {
                                Step::Next => continue,
                                other => {
                                    step = other;
                                    break 'items;
                                }
                            }
                        }
                        Step::Next
                    }
                },
            };
            if !matches!(step, Step::Next) {
                break;
            }
            step = Step::Stop;
        }
        match step {
            Step::SkipTo(next) => from = (next, false),
            _ => break 'scan,
        }
    }
    page
}

struct Lister<'q, 'p, E> {
    query: &'q ListQuery,
    delimiter: Option<&'q str>,
    after: Option<&'q str>,
    page: &'p mut ListPage<E>,
}

impl<E> Lister<'_, '_, E> {
    fn full(&self) -> bool {
        self.page.contents.len() + self.page.common_prefixes.len() == self.query.max_keys
    }

    /// The common prefix `key` rolls up into, if any.
    fn rolled(&self, key: &str) -> Option<String> {
        let p = self.query.prefix.len();
        self.delimiter.and_then(|d| key[p..].find(d).map(|i| key[..p + i + d.len()].to_string()))
    }

    fn key(&mut self, key: String, entry: Option<E>) -> Step {
        if !key.starts_with(&self.query.prefix) {
            return Step::Stop;
        }
        match self.rolled(&key) {
            Some(cp) => self.common_prefix(cp),
            None => {
                if self.full() {
                    self.page.truncated = true;
                    return Step::Stop;
                }
                self.page.last = Some(key.clone());
                if let Some(entry) = entry {
                    self.page.contents.push((key, entry));
                }
                Step::Next
            }
        }
    }

    /// A group rolled up whole, or `None` when its keys must be read.
    fn group(&mut self, group: &str) -> Option<Step> {
        if !group.starts_with(&self.query.prefix) {
            return Some(Step::Stop);
        }
        let cp = self.rolled(group)?;
        Some(self.common_prefix(cp))
    }

    fn common_prefix(&mut self, cp: String) -> Step {
        let seen = self.after.is_some_and(|a| cp.as_str() <= a);
        if !seen && self.full() {
            self.page.truncated = true;
            return Step::Stop;
        }
        let next = past_prefix(&cp);
        if !seen {
            self.page.last = Some(cp.clone());
            self.page.common_prefixes.push(cp);
        }
        Step::SkipTo(next)
    }
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

    /// The same keys, with each `dataset/` prefix yielded as a group (as a collection does).
    struct Grouped(BTreeMap<String, Vec<String>>);

    impl KeySpace for Grouped {
        type Entry = ();

        fn scan<'a>(&'a self, from: Bound<&str>) -> Box<dyn Iterator<Item = Item<()>> + 'a> {
            let (text, inclusive) = match from {
                Bound::Included(s) => (s.to_string(), true),
                Bound::Excluded(s) => (s.to_string(), false),
                Bound::Unbounded => (String::new(), true),
            };
            let after = move |k: &str| if inclusive { k >= text.as_str() } else { k > text.as_str() };
            let mut out = Vec::new();
            for (group, keys) in &self.0 {
                let all: Vec<String> = keys.iter().map(|k| format!("{group}{k}")).collect();
                if all.iter().all(|k| after(k)) {
                    out.push(Item::Group(group.clone()));
                } else {
                    out.extend(all.into_iter().filter(|k| after(k)).map(|k| Item::Key(k, ())));
                }
            }
            Box::new(out.into_iter())
        }

        fn expand<'a>(&'a self, group: &str) -> Box<dyn Iterator<Item = (String, ())> + 'a> {
            let group = group.to_string();
            Box::new(self.0[&group].iter().map(move |k| (format!("{group}{k}"), ())))
        }
    }

    proptest::proptest! {
        #[test]
        fn groups_list_exactly_as_their_keys(
            datasets in proptest::collection::btree_map("[ab]{1,2}(/[ab]{1,2})?\\.nc/", proptest::collection::btree_set("[.ab]{1,2}(/[01]{1,2})?", 1..4), 1..6),
            prefix in "[ab/.]{0,4}",
            delimiter in proptest::option::of(proptest::sample::select(vec!["/", ".", "b/"])),
            max_keys in 0usize..6,
            after in proptest::option::of("[ab/.]{0,6}"),
        ) {
            let flat: Keys = datasets.iter().flat_map(|(g, ks)| ks.iter().map(move |k| (format!("{g}{k}"), ()))).collect();
            let grouped = Grouped(datasets.iter().map(|(g, ks)| (g.clone(), ks.iter().cloned().collect())).collect());
            let q = ListQuery { prefix, delimiter: delimiter.map(Into::into), max_keys, after };
            let (a, b) = (list(&flat, &q), list(&grouped, &q));
            let keys = |p: &ListPage<()>| p.contents.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
            proptest::prop_assert_eq!(keys(&a), keys(&b));
            proptest::prop_assert_eq!(&a.common_prefixes, &b.common_prefixes);
            proptest::prop_assert_eq!(a.truncated, b.truncated);
            proptest::prop_assert_eq!(a.last, b.last);
        }
    }
}
