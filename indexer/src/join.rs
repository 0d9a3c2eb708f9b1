//! Joined datasets of a data tree: found from DRS file names, `NAME.join.toml` specs and
//! `NAME.ncml` files, checked and planned by [`zarrgate_core::join`], and stored as rows of
//! the catalog database (`zarrgate export` writes them as `joins/<id>.json`). The contract is `docs/joins.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use zarrgate_core::catalog::{packed, CatalogDb, CatalogError, EntryStatus, Fingerprint, Item, JoinEntry, JoinRow};
use zarrgate_core::join::doc::{DocSource, JoinDoc, SourceFile};
use zarrgate_core::join::{parallel_map, ByteReader, CoordValue, Edit, Force, Joiner, Member, Node};

use crate::ncml::{self, NcNode};
use crate::paths::{join_path, split_dir};
use crate::{import, refs_parquet};
use zarrgate_core::ops::store::{parse_json, Attrs};
use zarrgate_core::refs::{Reference, ReferenceSet};
use zarrgate_remote::Remote;

/// Suffix of a dataset spec file.
pub const SPEC_SUFFIX: &str = ".join.toml";
pub const NCML_SUFFIX: &str = ".ncml";

/// A joined dataset to build: its id, member files (relative paths) and how to join them.
#[derive(Clone, Debug)]
pub struct Definition {
    pub id: String,
    /// Where it came from (a spec file, or "DRS"), for messages.
    pub origin: String,
    pub plan: Plan,
    /// Text of the spec, part of what decides whether a stored join is current.
    pub text: String,
}

/// How members are found and nested; resolved into a [`Node`] once members are indexed
/// (a union or a new dimension from attributes needs each file's variables and attributes).
#[derive(Clone, Debug)]
pub enum Plan {
    /// Files joined along their time dimension.
    Drs {
        files: Vec<String>,
    },
    Spec {
        dir: String,
        spec: Spec,
    },
    /// Kerchunk references made elsewhere (`NAME.kerchunk.json`, [`import`]); the definition's
    /// text is the reference file.
    Import,
    Ncml {
        dir: String,
        node: NcNode,
        edits: Vec<Edit>,
    },
}

/// A `NAME.join.toml` file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub files: OneOrMany,
    #[serde(default)]
    pub join: Option<String>,
    #[serde(default)]
    pub union: bool,
    #[serde(default)]
    pub force: Vec<String>,
    #[serde(default)]
    pub new_dim: Option<NewDim>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDim {
    pub name: String,
    #[serde(default)]
    pub from_path: Option<String>,
    #[serde(default)]
    pub from_attribute: Option<String>,
    #[serde(default)]
    pub variables: Option<Vec<String>>,
}

/// File names of ESGF/DRS datasets: `PREFIX_START-END.EXT`.
fn drs_name() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^(.+)_(\d{4,14})-(\d{4,14})\.[A-Za-z0-9]+$").expect("valid regex"))
}

/// The joined datasets of a tree. `files` are the data files (relative, sorted); spec and NcML
/// files are looked for under `root`. Definitions that cannot be read come back as errors,
/// keyed by the id they would have had.
pub fn find(root: &Path, files: &[String], drs: bool) -> Vec<Result<Definition, (String, String)>> {
    let mut out = Vec::new();
    if drs {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for rel in files {
            let (dir, name) = split_dir(rel);
            if let Some(c) = drs_name().captures(name) {
                if c[2].len() == c[3].len() {
                    groups.entry(join_path(dir, &c[1])).or_default().push(rel.clone());
                }
            }
        }
        for (id, files) in groups.into_iter().filter(|(_, f)| f.len() > 1) {
            let text = format!("drs {}", files.join(" "));
            out.push(Ok(Definition { id, origin: "DRS file names".into(), plan: Plan::Drs { files }, text }));
        }
    }
    for entry in walkdir::WalkDir::new(root).follow_links(true).sort_by_file_name().into_iter().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = if name.ends_with(SPEC_SUFFIX) {
            SPEC_SUFFIX
        } else if name.ends_with(NCML_SUFFIX) {
            NCML_SUFFIX
        } else if name.ends_with(import::SUFFIX) {
            import::SUFFIX
        } else if name.ends_with(import::PARQUET_SUFFIX) && entry.file_type().is_dir() {
            import::PARQUET_SUFFIX
        } else {
            continue;
        };
        let Ok(rel) = entry.path().strip_prefix(root) else { continue };
        let rel = rel.to_string_lossy().replace('\\', "/");
        let id = rel[..rel.len() - kind.len()].to_string();
        let (dir, _) = split_dir(&rel);
        let dir = dir.to_string();
        let read = if kind == import::PARQUET_SUFFIX {
            refs_parquet::listing(entry.path())
        } else {
            std::fs::read_to_string(entry.path()).map_err(|e| e.to_string())
        };
        let def = read.map_err(|e| format!("{rel}: {e}")).and_then(|text| {
            let plan = if kind == SPEC_SUFFIX {
                let spec: Spec = toml::from_str(&text).map_err(|e| format!("{rel}: {e}"))?;
                Plan::Spec { dir, spec }
            } else if kind == import::SUFFIX || kind == import::PARQUET_SUFFIX {
                Plan::Import
            } else {
                let (node, edits) = ncml::parse(&text, &dir, files).map_err(|e| format!("{rel}: {e}"))?;
                Plan::Ncml { dir, node, edits }
            };
            Ok(Definition { id: id.clone(), origin: rel.clone(), plan, text })
        });
        out.push(def.map_err(|e| (id, e)));
    }
    out
}

/// A glob as a regex: `**` crosses directories, `*` and `?` do not.
fn glob_regex(glob: &str) -> Result<Regex, String> {
    let mut re = String::from("^");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                if chars.peek() == Some(&'/') {
                    chars.next();
                    re.push_str("(?:.*/)?");
                } else {
                    re.push_str(".*");
                }
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    Regex::new(&re).map_err(|e| format!("glob {glob:?}: {e}"))
}

/// Data files under `dir` matching a glob relative to it.
fn matching(dir: &str, glob: &str, files: &[String]) -> Result<Vec<String>, String> {
    let re = glob_regex(glob)?;
    let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
    Ok(files.iter().filter(|f| f.strip_prefix(&prefix).is_some_and(|r| re.is_match(r))).cloned().collect())
}

/// What a join needs to know of an indexed member before joining: its data variables and
/// global attributes.
struct Summary {
    data_vars: BTreeSet<String>,
    attrs: Attrs,
}

/// The documents of a member's consolidated metadata (`.zmetadata`'s `metadata`), read as
/// Zarr writes JSON (`NaN` fill values included).
fn consolidated(refs: &ReferenceSet) -> serde_json::Map<String, Value> {
    let doc = match refs.refs.get(".zmetadata") {
        Some(Reference::Inline(b)) => parse_json(b).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    doc.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default()
}

fn summary(refs: &ReferenceSet) -> Summary {
    let meta = consolidated(refs);
    let attrs = meta.get(".zattrs").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut vars: BTreeMap<String, Attrs> = BTreeMap::new();
    for key in meta.keys() {
        if let Some(name) = key.strip_suffix("/.zarray").filter(|n| !n.contains('/')) {
            let a = meta.get(&format!("{name}/.zattrs")).and_then(Value::as_object).cloned().unwrap_or_default();
            vars.insert(name.to_string(), a);
        }
    }
    let mut coords = BTreeSet::new();
    for (name, a) in &vars {
        let dims: Vec<&str> = a
            .get("_ARRAY_DIMENSIONS")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if dims == [name.as_str()] {
            coords.insert(name.clone());
        }
        for key in ["coordinates", "bounds"] {
            if let Some(s) = a.get(key).and_then(Value::as_str) {
                coords.extend(s.split_whitespace().map(str::to_string));
            }
        }
    }
    Summary { data_vars: vars.keys().filter(|n| !coords.contains(*n)).cloned().collect(), attrs }
}

impl Definition {
    /// Member files, in a stable order.
    pub fn members(&self) -> Vec<String> {
        let mut out = BTreeSet::new();
        match &self.plan {
            Plan::Drs { files } => out.extend(files.iter().cloned()),
            Plan::Spec { .. } | Plan::Import => {}
            Plan::Ncml { node, .. } => {
                let mut files = Vec::new();
                node.files(&mut files);
                out.extend(files);
            }
        }
        out.into_iter().collect()
    }
}

/// Reads member files by position, opening each once.
pub(crate) struct Files {
    paths: Vec<PathBuf>,
    open: Vec<OnceLock<std::io::Result<std::fs::File>>>,
}

impl Files {
    pub(crate) fn new(paths: Vec<PathBuf>) -> Files {
        let open = paths.iter().map(|_| OnceLock::new()).collect();
        Files { paths, open }
    }
}

impl ByteReader for Files {
    fn read(&self, source: u32, offset: u64, length: u64) -> Result<Vec<u8>, zarrgate_core::join::array::ReadFailure> {
        use std::os::unix::fs::FileExt as _;
        let i = source as usize;
        let path = &self.paths[i];
        let file = self.open[i].get_or_init(|| std::fs::File::open(path));
        let file = file.as_ref().map_err(|e| format!("{}: {e}", path.display()))?;
        let mut buf = vec![0; length as usize];
        file.read_exact_at(&mut buf, offset).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(buf)
    }
}

/// Reads the sources of imported references: local files, and remote objects through
/// `remote`, checked against the fingerprints the import recorded.
struct ImportReader<'a> {
    doc: &'a JoinDoc,
    files: Files,
    remote: Option<&'a Remote>,
}

impl ByteReader for ImportReader<'_> {
    fn read(&self, source: u32, offset: u64, length: u64) -> Result<Vec<u8>, zarrgate_core::join::array::ReadFailure> {
        let s = &self.doc.sources[source as usize];
        if !zarrgate_remote::is_remote(&s.path) {
            return self.files.read(source, offset, length);
        }
        let remote = self.remote.ok_or_else(|| format!("{}: no [[remote]] prefix covers it", s.path))?;
        let bytes = remote.read(&s.path, s.fingerprint, offset, length, false)?;
        Ok(bytes.to_vec())
    }
}

/// A joined dataset as it should now be in the catalog.
pub struct Built {
    pub row: JoinRow,
    /// What discovery knows of it (for a changed, built join).
    pub item: Option<Item>,
    /// False when the stored row is current (its inputs did not change).
    pub changed: bool,
}

/// Builds (or keeps, when its inputs are unchanged) every joined dataset of a catalog whose
/// member files are indexed. `files` are the data files of the tree, sorted.
pub fn build_all(
    root: &Path,
    files: &[String],
    db: &CatalogDb,
    reuse: bool,
    definitions: Vec<Result<Definition, (String, String)>>,
    remote: Option<&Remote>,
) -> Result<Vec<Built>, CatalogError> {
    let mut joins = Vec::new();
    for def in definitions {
        let def = match def {
            Ok(d) => d,
            Err((id, error)) => {
                let row = JoinRow { id, entry: JoinEntry::failed(vec![], error, String::new()), doc: None };
                joins.push(Built { row, item: None, changed: true });
                continue;
            }
        };
        let built = build_one(root, files, db, reuse, &def, remote)?;
        if let Some(e) = &built.row.entry.error {
            eprintln!("zarrgate: join {}: {e}", def.id);
        }
        joins.push(built);
    }
    Ok(joins)
}

fn build_one(
    root: &Path,
    files: &[String],
    db: &CatalogDb,
    reuse: bool,
    def: &Definition,
    remote: Option<&Remote>,
) -> Result<Built, CatalogError> {
    let failed = |members, error, inputs| Built {
        row: JoinRow { id: def.id.clone(), entry: JoinEntry::failed(members, error, inputs), doc: None },
        item: None,
        changed: true,
    };
    if matches!(def.plan, Plan::Import) {
        return import_one(root, db, reuse, def, remote);
    }
    let members = match resolve_members(def, files, db)? {
        Ok(m) => m,
        Err(e) => return Ok(failed(def.members(), e, String::new())),
    };
    let inputs = inputs_key(def, &members)?;
    if reuse {
        if let Some(old) = db.join(&def.id)? {
            if old.entry.inputs == inputs {
                return Ok(Built { row: old, item: None, changed: false });
            }
        }
    }
    Ok(match build(root, db, def, &members) {
        Ok((doc, notes, item)) => {
            let members = members.into_iter().map(|(m, _)| m).collect();
            let entry = JoinEntry {
                status: EntryStatus::Ok,
                members,
                refs: Some(format!("joins/{}.json", def.id)),
                error: None,
                notes,
                inputs,
            };
            Built { row: JoinRow { id: def.id.clone(), entry, doc: Some(doc) }, item, changed: true }
        }
        Err(e) => {
            // A spec's or an NcML's refusal names its file.
            let e = if matches!(def.plan, Plan::Drs { .. }) || e.starts_with(&def.origin) {
                e
            } else {
                format!("{}: {e}", def.origin)
            };
            failed(members.into_iter().map(|(m, _)| m).collect(), e, inputs)
        }
    })
}

/// An imported reference file: checked and stored again whenever it or a file it points at
/// changed. A file or object that changed while the reference file did not is refused: the
/// references were made for its old bytes, and may no longer describe the new ones.
fn import_one(
    root: &Path,
    db: &CatalogDb,
    reuse: bool,
    def: &Definition,
    remote: Option<&Remote>,
) -> Result<Built, CatalogError> {
    let failed = |error: String, inputs: String| {
        eprintln!("zarrgate: import {}: {error}", def.id);
        let row = JoinRow { id: def.id.clone(), entry: JoinEntry::failed(vec![], error, inputs), doc: None };
        Built { row, item: None, changed: true }
    };
    // The reference file alone (its text and fingerprint): the import's inputs start with it.
    let file = Fingerprint::of_path(&root.join(&def.origin)).unwrap_or_default();
    let definition = format!("{}+", inputs_key(def, &[(def.origin.clone(), file)])?);
    let changed_mark = format!("{definition}changed");
    let old = db.join(&def.id)?;
    if let Some(old) = old.as_ref().filter(|o| o.entry.inputs == changed_mark) {
        // Refused before for a changed source; only a new reference file lifts it.
        return Ok(Built { row: old.clone(), item: None, changed: false });
    }
    let doc = match import::build(root, &def.origin, &def.text, remote) {
        Ok(doc) => doc,
        Err(e) => return Ok(failed(format!("{}: {e}", def.origin), String::new())),
    };
    let members: Vec<(String, Fingerprint)> = doc.sources.iter().map(|s| (s.path.clone(), s.fingerprint)).collect();
    let inputs = format!("{definition}{}", inputs_key(def, &members)?);
    if let Some(old) = &old {
        if reuse && old.entry.inputs == inputs && old.entry.status == EntryStatus::Ok {
            return Ok(Built { row: old.clone(), item: None, changed: false });
        }
        if old.entry.inputs.starts_with(&definition) {
            let previous =
                old.doc.as_deref().and_then(|d| packed::inflate(d).ok()).and_then(|b| JoinDoc::from_json(&b).ok());
            for before in previous.iter().flat_map(|p| p.sources.iter()) {
                let Some(now) = doc.sources.iter().find(|s| s.path == before.path) else { continue };
                if let Some(why) = before.fingerprint.changed(&now.fingerprint) {
                    let error = format!(
                        "{}: {} changed after its references were imported ({why}); they may no longer describe \
                         its bytes, so the dataset is not served until the reference file is made again",
                        def.origin, now.path
                    );
                    return Ok(failed(error, changed_mark));
                }
            }
        }
    }
    // Discovery reads the coordinates, from remote objects too (a few block reads).
    let reader =
        ImportReader { doc: &doc, files: Files::new(doc.sources.iter().map(|s| root.join(&s.path)).collect()), remote };
    let item = Item::describe(&def.id, &DocSource { doc: &doc, reader: &reader }).ok();
    let entry = JoinEntry {
        status: EntryStatus::Ok,
        members: members.into_iter().map(|(m, _)| m).collect(),
        refs: Some(format!("joins/{}.json", def.id)),
        error: None,
        notes: doc.notes.clone(),
        inputs,
    };
    let row = JoinRow { id: def.id.clone(), entry, doc: Some(packed::deflate(&doc.to_json_bytes())) };
    Ok(Built { row, item, changed: true })
}

/// The member files of a definition with their fingerprints (each must be indexed), or why
/// the definition cannot be built.
#[allow(clippy::type_complexity)]
fn resolve_members(
    def: &Definition,
    files: &[String],
    db: &CatalogDb,
) -> Result<Result<Vec<(String, Fingerprint)>, String>, CatalogError> {
    let members = match &def.plan {
        Plan::Spec { dir, spec } => {
            let globs = match &spec.files {
                OneOrMany::One(g) => vec![g.clone()],
                OneOrMany::Many(g) => g.clone(),
            };
            let mut found = BTreeSet::new();
            for g in &globs {
                match matching(dir, g, files) {
                    Ok(m) => found.extend(m),
                    Err(e) => return Ok(Err(e)),
                }
            }
            if found.is_empty() {
                return Ok(Err(format!("{}: no files match {globs:?}", def.origin)));
            }
            found.into_iter().collect()
        }
        _ => def.members(),
    };
    if members.is_empty() {
        if matches!(&def.plan, Plan::Ncml { node: NcNode::Empty, .. }) {
            return Ok(Ok(vec![])); // the NcML is the whole dataset
        }
        return Ok(Err(format!("{}: no files", def.origin)));
    }
    let mut out = Vec::new();
    for m in members {
        match db.dataset(&m)? {
            None => return Ok(Err(format!("{}: {m} is not a data file of this tree", def.origin))),
            Some(e) if e.status == EntryStatus::Failed || e.refs.is_none() => {
                return Ok(Err(format!("{m} could not be indexed: {}", e.error.as_deref().unwrap_or("no reason"))))
            }
            Some(e) => out.push((m, e.fingerprint)),
        }
    }
    Ok(Ok(out))
}

/// What decides whether a stored join is current: the definition and its members' versions.
fn inputs_key(def: &Definition, members: &[(String, Fingerprint)]) -> Result<String, CatalogError> {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    def.text.hash(&mut h);
    for (m, fingerprint) in members {
        m.hash(&mut h);
        fingerprint.hash(&mut h);
    }
    Ok(format!("{:016x}-{}", h.finish(), members.len()))
}

/// The deflated join document and the join's notes.
/// A built join: its deflated document, the notes of the join, and its discovery record.
type BuiltDoc = (Vec<u8>, Vec<String>, Option<Item>);

fn build(root: &Path, db: &CatalogDb, def: &Definition, members: &[(String, Fingerprint)]) -> Result<BuiltDoc, String> {
    let mut packed = Vec::with_capacity(members.len());
    for (m, _) in members {
        let row = db.dataset(m).map_err(|e| e.to_string())?;
        packed.push(row.and_then(|r| r.refs).ok_or_else(|| format!("{m} is no longer in the catalog"))?);
    }
    let loaded = parallel_map(members, |i, (m, _)| {
        let mut refs = packed::unpack(&packed[i]).map_err(|e| format!("{m}: {e}"))?;
        // The join reads metadata from `.zmetadata` only; the loose documents repeat it.
        refs.refs.retain(|k, _| !(k.ends_with(".zarray") || k.ends_with(".zattrs") || k.ends_with(".zgroup")));
        refs.meta = refs.meta.map(|mut m| {
            m.variables.clear();
            m
        });
        Ok::<_, String>(Member { name: m.clone(), refs })
    })?;
    let index: BTreeMap<&str, usize> = members.iter().enumerate().map(|(i, (m, _))| (m.as_str(), i)).collect();
    let (node, force, edits) = node_of(def, &loaded, &index)?;
    let reader = Files::new(members.iter().map(|(m, _)| root.join(m)).collect());
    let joiner = Joiner::new(&loaded, &reader, force).map_err(|e| e.to_string())?;
    let mut joined = joiner.join(&node).map_err(|e| e.to_string())?;
    joined.apply(&edits).map_err(|e| e.to_string())?;
    let notes = joined.notes.clone();
    let mut sources: Vec<SourceFile> =
        members.iter().map(|(m, fingerprint)| SourceFile { path: m.clone(), fingerprint: *fingerprint }).collect();
    if sources.is_empty() {
        // A dataset of the NcML alone is served from the join document; the NcML is its
        // source, so that a changed NcML is noticed like a changed file.
        let meta = std::fs::metadata(root.join(&def.origin)).map_err(|e| format!("{}: {e}", def.origin))?;
        sources.push(SourceFile { path: def.origin.clone(), fingerprint: Fingerprint::of(&meta) });
    }
    let doc = JoinDoc::new(joined, sources);
    // A join whose description fails is still served; it is only not found by search.
    let item = Item::describe(&def.id, &DocSource { doc: &doc, reader: &reader }).ok();
    Ok((packed::deflate(&doc.to_json_bytes()), notes, item))
}

/// The join tree of a definition over its loaded members.
fn node_of(
    def: &Definition,
    members: &[Member],
    index: &BTreeMap<&str, usize>,
) -> Result<(Node, Force, Vec<Edit>), String> {
    match &def.plan {
        Plan::Drs { files } => {
            let children = files.iter().map(|f| Node::File(index[f.as_str()])).collect();
            Ok((Node::Existing { dim: String::new(), children, coords: vec![] }, Force::default(), vec![]))
        }
        Plan::Spec { dir, spec } => {
            let mut force = Force::default();
            for f in &spec.force {
                match f.as_str() {
                    "drop-missing-variables" => force.drop_missing_variables = true,
                    other => return Err(format!("{}: unknown force option {other:?}", def.origin)),
                }
            }
            Ok((spec_node(def, dir, spec, members)?, force, vec![]))
        }
        Plan::Ncml { node, edits, .. } => Ok((ncml_node(node, members, index)?, Force::default(), edits.clone())),
        Plan::Import => Err("an imported reference file is not a join".into()),
    }
}

fn spec_node(def: &Definition, dir: &str, spec: &Spec, members: &[Member]) -> Result<Node, String> {
    let summaries: Vec<Summary> = members.iter().map(|m| summary(&m.refs)).collect();
    // Split by variable set (union), then by new-dimension value, then join along `join`.
    let mut by_vars: Vec<(BTreeSet<String>, Vec<usize>)> = Vec::new();
    for (i, s) in summaries.iter().enumerate() {
        let key = if spec.union { s.data_vars.clone() } else { BTreeSet::new() };
        match by_vars.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(i),
            None => by_vars.push((key, vec![i])),
        }
    }
    let mut groups = Vec::new();
    for (_, files) in by_vars {
        groups.push(new_dim_node(def, dir, spec, members, &summaries, &files)?);
    }
    Ok(if groups.len() == 1 { groups.pop().expect("one group") } else { Node::Union(groups) })
}

fn new_dim_node(
    def: &Definition,
    dir: &str,
    spec: &Spec,
    members: &[Member],
    summaries: &[Summary],
    files: &[usize],
) -> Result<Node, String> {
    let along = |files: Vec<usize>| -> Result<Node, String> {
        match &spec.join {
            Some(dim) => Ok(Node::Existing {
                dim: dim.clone(),
                children: files.into_iter().map(Node::File).collect(),
                coords: vec![],
            }),
            None if files.len() == 1 => Ok(Node::File(files[0])),
            None => Err(format!(
                "{}: {} and {} would be joined but the spec names no `join` dimension",
                def.origin, members[files[0]].name, members[files[1]].name
            )),
        }
    };
    let Some(nd) = &spec.new_dim else { return along(files.to_vec()) };
    let re = match (&nd.from_path, &nd.from_attribute) {
        (Some(p), None) => Some(Regex::new(p).map_err(|e| format!("{}: from_path: {e}", def.origin))?),
        (None, Some(_)) => None,
        _ => return Err(format!("{}: new_dim needs exactly one of from_path and from_attribute", def.origin)),
    };
    let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
    let mut by_value: Vec<(String, Vec<usize>)> = Vec::new();
    for &i in files {
        let name = &members[i].name;
        let value = match (&re, &nd.from_attribute) {
            (Some(re), _) => {
                let rel = name.strip_prefix(&prefix).unwrap_or(name);
                re.captures(rel).and_then(|c| c.get(1).or_else(|| c.get(0))).map(|m| m.as_str().to_string())
            }
            (None, Some(attr)) => summaries[i].attrs.get(attr).map(|v| match v {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            }),
            _ => None,
        };
        let value = value.ok_or_else(|| format!("{}: no value of {} for {name}", def.origin, nd.name))?;
        match by_value.iter_mut().find(|(v, _)| *v == value) {
            Some((_, f)) => f.push(i),
            None => by_value.push((value, vec![i])),
        }
    }
    let texts: Vec<String> = by_value.iter().map(|(v, _)| v.clone()).collect();
    let mut values = CoordValue::infer(&texts);
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by(|a, b| match (&values[*a], &values[*b]) {
        (CoordValue::Int(x), CoordValue::Int(y)) => x.cmp(y),
        (CoordValue::Float(x), CoordValue::Float(y)) => x.total_cmp(y),
        _ => texts[*a].cmp(&texts[*b]),
    });
    values = order.iter().map(|i| values[*i].clone()).collect();
    let children = order.iter().map(|i| along(by_value[*i].1.clone())).collect::<Result<Vec<_>, _>>()?;
    Ok(Node::New { dim: nd.name.clone(), values, variables: nd.variables.clone(), children })
}

fn ncml_node(node: &NcNode, members: &[Member], index: &BTreeMap<&str, usize>) -> Result<Node, String> {
    let kids = |c: &[NcNode]| c.iter().map(|n| ncml_node(n, members, index)).collect::<Result<Vec<_>, _>>();
    Ok(match node {
        NcNode::File(f) => Node::File(*index.get(f.as_str()).ok_or_else(|| format!("{f} is not indexed"))?),
        NcNode::Existing { dim, children, coords, ncoords } => {
            for (child, n) in children.iter().zip(ncoords) {
                if let Some(n) = n {
                    let mut files = Vec::new();
                    child.files(&mut files);
                    let found = files.first().and_then(|f| dim_length(&members[index[f.as_str()]], dim));
                    if files.len() == 1 && found != Some(*n) {
                        return Err(format!(
                            "{}: ncoords=\"{n}\", but it has {} along {dim}",
                            files[0],
                            found.map_or("no coordinate".into(), |f| f.to_string())
                        ));
                    }
                }
            }
            let coords = match coords.iter().filter(|c| c.is_some()).count() {
                0 => vec![],
                n if n == coords.len() => coords.iter().flatten().cloned().collect(),
                _ => return Err(format!("joinExisting along {dim}: coordValue is given on some members but not all")),
            };
            Node::Existing { dim: dim.clone(), children: kids(children)?, coords }
        }
        NcNode::New { dim, variables, values, children } => {
            let mut files = Vec::new();
            node.files(&mut files);
            let scalar = files.first().is_some_and(|f| has_scalar(&members[index[f.as_str()]], dim));
            let values = if values.iter().all(Option::is_none) && scalar {
                vec![] // the files' scalar `dim` becomes the coordinate
            } else {
                let texts: Vec<String> = values
                    .iter()
                    .zip(children)
                    .map(|(v, c)| match (v, c) {
                        (Some(v), _) => v.clone(),
                        (None, NcNode::File(f)) => split_dir(f).1.to_string(),
                        (None, _) => String::new(),
                    })
                    .collect();
                CoordValue::infer(&texts)
            };
            Node::New {
                dim: dim.clone(),
                values,
                variables: (!variables.is_empty()).then(|| variables.clone()),
                children: kids(children)?,
            }
        }
        NcNode::Union(children) => Node::Union(kids(children)?),
        NcNode::Edited { node, edits } => {
            Node::Edited { node: Box::new(ncml_node(node, members, index)?), edits: edits.clone() }
        }
        NcNode::Empty => Node::Empty,
    })
}

/// A variable's `.zarray` in a member's consolidated metadata.
fn zarray(m: &Member, var: &str) -> Option<Value> {
    consolidated(&m.refs).remove(&format!("{var}/.zarray"))
}

/// The length of dimension `dim` in a member (from the variable of that name).
fn dim_length(m: &Member, dim: &str) -> Option<u64> {
    zarray(m, dim)?.get("shape")?.as_array()?.first()?.as_u64()
}

/// Whether a member has a scalar variable named `name`.
fn has_scalar(m: &Member, name: &str) -> bool {
    zarray(m, name).and_then(|z| z.get("shape").and_then(Value::as_array).map(Vec::is_empty)).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drs_names_group_by_prefix_and_need_two_files() {
        let files: Vec<String> = [
            "d/tas_Amon_M_historical_r1i1p1_185001-189912.nc",
            "d/tas_Amon_M_historical_r1i1p1_190001-194912.nc",
            "d/pr_Amon_M_historical_r1i1p1_185001-189912.nc",
            "d/orog_fx_M.nc",
        ]
        .map(String::from)
        .to_vec();
        let defs = find(Path::new("/nonexistent"), &files, true);
        assert_eq!(defs.len(), 1);
        let def = defs[0].as_ref().unwrap();
        assert_eq!(def.id, "d/tas_Amon_M_historical_r1i1p1");
        assert_eq!(def.members().len(), 2);
        assert!(find(Path::new("/nonexistent"), &files, false).is_empty());
    }

    #[test]
    fn globs() {
        let files: Vec<String> = ["s/r1/a.nc", "s/r2/a.nc", "s/r2/x/b.nc", "t/a.nc"].map(String::from).to_vec();
        assert_eq!(matching("s", "r*/a.nc", &files).unwrap(), vec!["s/r1/a.nc", "s/r2/a.nc"]);
        assert_eq!(matching("s", "**/*.nc", &files).unwrap().len(), 3);
        assert_eq!(matching("", "t/*.nc", &files).unwrap(), vec!["t/a.nc"]);
    }

    #[test]
    fn ncml_aggregations_and_edits_parse() {
        let files: Vec<String> = ["n/a_1.nc", "n/a_2.nc", "n/o.nc"].map(String::from).to_vec();
        let text = r#"<netcdf xmlns="http://www.unidata.ucar.edu/namespaces/netcdf/ncml-2.2">
            <attribute name="title" value="joined"/>
            <attribute name="k" type="double" value="1.5 2"/>
            <remove name="history" type="attribute"/>
            <variable name="t2" orgName="tas"/>
            <aggregation type="union">
              <netcdf><aggregation type="joinExisting" dimName="time">
                <scan location="." suffix=".nc" regExp="a_.*"/>
              </aggregation></netcdf>
              <netcdf location="o.nc"/>
            </aggregation></netcdf>"#;
        let (node, edits) = ncml::parse(text, "n", &files).unwrap();
        let NcNode::Union(kids) = node else { panic!("union expected") };
        assert!(matches!(&kids[0], NcNode::Existing { children, .. } if children.len() == 2));
        assert!(matches!(&kids[1], NcNode::File(f) if f == "n/o.nc"));
        assert_eq!(edits.len(), 4);
        assert!(ncml::parse(r#"<netcdf><aggregation type="joinExisting" dimName="t"><netcdf location="../../x.nc"/></aggregation></netcdf>"#, "n", &files).is_err());
    }
}
