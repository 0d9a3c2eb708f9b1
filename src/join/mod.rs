//! Multi-file datasets: many indexed files joined into one virtual Zarr store.
//!
//! # Layout
//! - [`Node`]: what to join and how (files, along an existing dimension, along a new one, a
//!   union of variables), nested freely. Definitions (DRS directories, spec files, NcML) are
//!   turned into a `Node` by the indexer.
//! - [`Joiner::join`]: checks the files against each other and plans every variable.
//! - [`array`]: a joined variable, and how its chunks are served (by reference, or assembled).
//! - [`doc`]: the compact document a join is stored as.
//!
//! # Rules (the contract is `docs/joins.md`)
//! - Variables along a joined dimension are concatenated (existing) or stacked (new); others
//!   come from the first file, and coordinates among them must be equal in every file.
//! - Files along an existing dimension are put in order of their coordinate; overlaps are
//!   refused. Time coordinates are compared, and served, in the first file's units.
//! - Every variable's values are exactly the files' values: passed through when one reference
//!   can say so, otherwise assembled, promoted, decoded or re-encoded on the server.

pub mod array;
pub mod doc;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::cftime::{Calendar, TimeUnits};
use crate::codec::vlen_utf8_encode;
use crate::ops::store::{looks_f32, number, to_f64, Attrs, ChunkSource, SourceError, StoreView, Variable};
use crate::refs::{Reference, ReferenceSet};
use crate::zarr::{ArrayMetadataV2, Codec, DType, Endian, Kind};

pub use array::{ByteReader, ChunkRef, Encoding, JoinedArray, Mode, Part, INLINE};

/// What to join.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// A member file, by index.
    File(usize),
    /// Concatenated along an existing dimension, in the order of its coordinate.
    Existing { dim: String, children: Vec<Node> },
    /// Stacked along a new, leading dimension whose coordinate takes `values`. `variables`
    /// names what gets the dimension (default: what varies along a joined dimension, else every
    /// data variable).
    New { dim: String, values: Vec<CoordValue>, variables: Option<Vec<String>>, children: Vec<Node> },
    /// The variables of every child together.
    Union(Vec<Node>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum CoordValue {
    Int(i64),
    Float(f64),
    Text(String),
}

impl CoordValue {
    /// Integers if every text is one, else floats if every text is one, else the texts.
    pub fn infer(texts: &[String]) -> Vec<CoordValue> {
        if let Ok(v) = texts.iter().map(|t| t.trim().parse::<i64>()).collect::<Result<Vec<_>, _>>() {
            return v.into_iter().map(CoordValue::Int).collect();
        }
        if let Ok(v) = texts.iter().map(|t| t.trim().parse::<f64>()).collect::<Result<Vec<_>, _>>() {
            return v.into_iter().map(CoordValue::Float).collect();
        }
        texts.iter().cloned().map(CoordValue::Text).collect()
    }
}

/// An indexed member file.
#[derive(Clone, Debug)]
pub struct Member {
    /// Its path relative to the data root (used in messages).
    pub name: String,
    pub refs: ReferenceSet,
}

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JoinError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, JoinError> {
    Err(JoinError(msg.into()))
}

/// A planned joined dataset.
#[derive(Debug)]
pub struct Joined {
    /// Global attributes (of the first file).
    pub attrs: Attrs,
    pub variables: BTreeMap<String, JoinedVariable>,
    /// What the join left out or changed, for the catalog and the report.
    pub notes: Vec<String>,
}

#[derive(Debug)]
pub struct JoinedVariable {
    pub dims: Vec<String>,
    /// Served attributes (without `_ARRAY_DIMENSIONS`).
    pub attrs: Attrs,
    pub array: JoinedArray,
}

/// A change to a joined dataset's metadata (NcML `variable`, `remove` and `attribute`).
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    RenameVariable {
        from: String,
        to: String,
    },
    RemoveVariable(String),
    /// Of a variable, or global when `variable` is `None`.
    RemoveAttribute {
        variable: Option<String>,
        name: String,
    },
    SetAttribute {
        variable: Option<String>,
        name: String,
        value: Value,
    },
}

impl Joined {
    /// Applies edits in order; naming a variable that does not exist is an error.
    pub fn apply(&mut self, edits: &[Edit]) -> Result<(), JoinError> {
        for e in edits {
            match e {
                Edit::RenameVariable { from, to } => {
                    let v =
                        self.variables.remove(from).ok_or_else(|| JoinError(format!("rename: no variable {from}")))?;
                    self.variables.insert(to.clone(), v);
                }
                Edit::RemoveVariable(name) => {
                    self.variables.remove(name).ok_or_else(|| JoinError(format!("remove: no variable {name}")))?;
                }
                Edit::RemoveAttribute { variable, name } => {
                    self.attrs_of(variable.as_deref())?.remove(name);
                }
                Edit::SetAttribute { variable, name, value } => {
                    self.attrs_of(variable.as_deref())?.insert(name.clone(), value.clone());
                }
            }
        }
        Ok(())
    }

    fn attrs_of(&mut self, variable: Option<&str>) -> Result<&mut Attrs, JoinError> {
        match variable {
            None => Ok(&mut self.attrs),
            Some(v) => self
                .variables
                .get_mut(v)
                .map(|v| &mut v.attrs)
                .ok_or_else(|| JoinError(format!("no variable {v} to change attributes of"))),
        }
    }
}

/// Overrides of refusals.
#[derive(Clone, Debug, Default)]
pub struct Force {
    /// Leave out variables missing from some file, instead of refusing the join.
    pub drop_missing_variables: bool,
}

/// Joins members, reading what the checks need through `reader`.
pub struct Joiner<'a> {
    members: &'a [Member],
    views: Vec<StoreView>,
    reader: &'a dyn ByteReader,
    force: Force,
    notes: std::cell::RefCell<Vec<String>>,
}

/// A dataset while it is being joined.
#[derive(Clone, Debug)]
struct VDataset {
    attrs: Attrs,
    vars: BTreeMap<String, VVar>,
    /// Dimensions joined so far.
    joined: BTreeSet<String>,
    /// Member indices, in join order.
    files: Vec<usize>,
}

#[derive(Clone, Debug)]
struct VVar {
    dims: Vec<String>,
    shape: Vec<u64>,
    attrs: Attrs,
    content: Content,
}

#[derive(Clone, Debug)]
enum Content {
    Parts(Vec<VPart>),
    /// A materialized single-chunk array (uncompressed bytes).
    Values(ArrayMetadataV2, Vec<u8>),
}

#[derive(Clone, Debug)]
struct VPart {
    member: usize,
    var: String,
    lead: usize,
    origin: Vec<u64>,
}

/// A variable's encodings, its parts, and the inline bytes their chunk tables point into.
type PartsOf = (Vec<Encoding>, Vec<Part>, Vec<u8>);

/// Largest variable written into a join document at index time (bigger ones are assembled
/// when read).
const MATERIALIZE_LIMIT: u64 = 64 << 20;

/// Attributes that change decoded values.
const DECODE_ATTRS: &[&str] = &["_FillValue", "missing_value", "scale_factor", "add_offset", "_Unsigned"];

/// Reads store keys of one member's reference set.
struct RefSource<'a> {
    refs: &'a ReferenceSet,
    reader: &'a dyn ByteReader,
    source: u32,
}

impl ChunkSource for RefSource<'_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SourceError> {
        match self.refs.refs.get(key) {
            None => Ok(None),
            Some(Reference::Inline(b)) => Ok(Some(b.clone())),
            Some(Reference::Range { offset, length, .. }) => {
                self.reader.read(self.source, *offset, *length).map(Some).map_err(SourceError::Failed)
            }
            Some(Reference::Whole { .. }) => Err(SourceError::Failed(format!("{key}: whole-file references"))),
        }
    }
}

impl<'a> Joiner<'a> {
    pub fn new(members: &'a [Member], reader: &'a dyn ByteReader, force: Force) -> Result<Self, JoinError> {
        let views = parallel_map(members, |i, m| {
            let source = RefSource { refs: &m.refs, reader, source: i as u32 };
            StoreView::open(&source).map_err(|e| JoinError(format!("{}: {e}", m.name)))
        })?;
        Ok(Joiner { members, views, reader, force, notes: Default::default() })
    }

    /// Checks and plans the join of `node`.
    pub fn join(mut self, node: &Node) -> Result<Joined, JoinError> {
        let ds = self.eval(node)?;
        let mut variables = BTreeMap::new();
        for (name, v) in &ds.vars {
            let along = v.dims.iter().any(|d| ds.joined.contains(d));
            let time = time_units_of(&ds, name);
            let coordinate_like =
                ds.joined.contains(name) || bounds_owner(&ds, name).is_some_and(|c| ds.joined.contains(&c));
            let materialize = along && (coordinate_like || time.is_some());
            let (mut array, attrs) = self.plan(name, v, &ds, materialize, time)?;
            if materialize && array.parts.len() > 1 && array.meta.chunk_nbytes() <= MATERIALIZE_LIMIT {
                // One chunk, written now: opening the dataset then reads it with one request
                // instead of assembling it from every file.
                let bytes = array.assemble(&vec![0; array.meta.shape.len()], self.reader).map_err(JoinError)?;
                array = values_array(&array.meta, &bytes);
            }
            variables.insert(name.clone(), JoinedVariable { dims: v.dims.clone(), attrs, array });
        }
        Ok(Joined { attrs: ds.attrs, variables, notes: self.notes.into_inner() })
    }

    fn name(&self, member: usize) -> &str {
        &self.members[member].name
    }

    fn eval(&mut self, node: &Node) -> Result<VDataset, JoinError> {
        match node {
            Node::File(i) => self.file(*i),
            Node::Existing { dim, children } => {
                let kids = children.iter().map(|c| self.eval(c)).collect::<Result<Vec<_>, _>>()?;
                self.existing(dim, kids)
            }
            Node::New { dim, values, variables, children } => {
                let kids = children.iter().map(|c| self.eval(c)).collect::<Result<Vec<_>, _>>()?;
                self.new_dim(dim, values, variables.as_deref(), kids)
            }
            Node::Union(children) => {
                let kids = children.iter().map(|c| self.eval(c)).collect::<Result<Vec<_>, _>>()?;
                self.union(kids)
            }
        }
    }

    fn file(&mut self, i: usize) -> Result<VDataset, JoinError> {
        let view = &self.views[i];
        let mut vars = BTreeMap::new();
        for (name, v) in &view.variables {
            let mut attrs = v.attrs.clone();
            attrs.remove("_FillValue");
            let content = Content::Parts(vec![VPart {
                member: i,
                var: name.clone(),
                lead: 0,
                origin: vec![0; v.meta.shape.len()],
            }]);
            vars.insert(name.clone(), VVar { dims: v.dims.clone(), shape: v.meta.shape.clone(), attrs, content });
        }
        if let Some(meta) = &self.members[i].refs.meta {
            for name in meta.transcode.keys() {
                self.note_once(format!("{name} is left out: it needs server-side decoding, which joins do not do yet"));
            }
        }
        Ok(VDataset { attrs: view.attrs.clone(), vars, joined: BTreeSet::new(), files: vec![i] })
    }

    fn existing(&mut self, dim: &str, mut kids: Vec<VDataset>) -> Result<VDataset, JoinError> {
        if kids.is_empty() {
            return err(format!("nothing to join along {dim}"));
        }
        let found;
        let dim = if dim.is_empty() {
            found = time_dimension(&kids[0]).ok_or_else(|| {
                JoinError(format!("{} has no time coordinate to join along", self.name(kids[0].files[0])))
            })?;
            found.as_str()
        } else {
            dim
        };
        // Order the pieces by their coordinate, then check it increases throughout.
        if kids[0].vars.get(dim).is_some_and(|v| v.dims.len() == 1 && v.dims[0] == dim) {
            let values = self.coordinate_values(dim, &kids)?;
            let mut order: Vec<usize> = (0..kids.len()).collect();
            order.sort_by(|a, b| first(&values[*a]).total_cmp(&first(&values[*b])));
            let mut sorted: Vec<VDataset> = Vec::with_capacity(kids.len());
            let mut sorted_values = Vec::with_capacity(kids.len());
            for i in order {
                sorted.push(kids[i].clone());
                sorted_values.push(values[i].clone());
            }
            kids = sorted;
            self.check_increasing(dim, &kids, &sorted_values)?;
        }
        let base = kids[0].clone();
        let dims_of = |k: &VDataset| dim_lengths(k);
        let base_dims = dims_of(&base);
        for k in &kids[1..] {
            for (d, n) in dims_of(k) {
                if d != dim && base_dims.get(&d).is_some_and(|m| *m != n) {
                    return err(format!(
                        "different grids: dimension {d} has length {} in {} and {n} in {}",
                        base_dims[&d],
                        self.name(base.files[0]),
                        self.name(k.files[0])
                    ));
                }
            }
        }
        let mut out =
            VDataset { attrs: base.attrs.clone(), vars: BTreeMap::new(), joined: base.joined.clone(), files: vec![] };
        out.joined.insert(dim.to_string());
        for k in &kids {
            out.files.extend(&k.files);
            out.joined.extend(k.joined.iter().cloned());
        }
        let names: Vec<String> = union_names(&kids);
        for name in names {
            let holder = kids.iter().position(|k| k.vars.contains_key(&name)).expect("a name comes from a piece");
            let first_var = &kids[holder].vars[&name];
            let Some(axis) = first_var.dims.iter().position(|d| d == dim) else {
                self.check_same(&name, &kids)?;
                out.vars.insert(name.clone(), first_var.clone());
                continue;
            };
            let missing: Vec<&VDataset> = kids.iter().filter(|k| !k.vars.contains_key(&name)).collect();
            if let Some(k) = missing.first() {
                if self.force.drop_missing_variables {
                    self.note_once(format!(
                        "{name} is left out (drop-missing-variables): it is missing from {}",
                        self.name(k.files[0])
                    ));
                    continue;
                }
                return err(format!(
                    "variable {name} is missing from {} (it is in {})",
                    self.name(k.files[0]),
                    self.name(kids[holder].files[0])
                ));
            }
            let mut parts = Vec::new();
            let mut at = 0u64;
            for k in &kids {
                let v = &k.vars[&name];
                if v.dims != first_var.dims {
                    return err(format!(
                        "different grids: {name} has dimensions {:?} in {} and {:?} in {}",
                        first_var.dims,
                        self.name(kids[0].files[0]),
                        v.dims,
                        self.name(k.files[0])
                    ));
                }
                let Content::Parts(ps) = &v.content else {
                    return err(format!("{name}: a generated coordinate cannot be joined along {dim}"));
                };
                for p in ps {
                    let mut p = p.clone();
                    p.origin[axis] += at;
                    parts.push(p);
                }
                at += v.shape[axis];
            }
            let mut shape = first_var.shape.clone();
            shape[axis] = at;
            out.vars.insert(
                name.clone(),
                VVar {
                    dims: first_var.dims.clone(),
                    shape,
                    attrs: first_var.attrs.clone(),
                    content: Content::Parts(parts),
                },
            );
        }
        Ok(out)
    }

    fn new_dim(
        &mut self,
        dim: &str,
        values: &[CoordValue],
        variables: Option<&[String]>,
        kids: Vec<VDataset>,
    ) -> Result<VDataset, JoinError> {
        if kids.is_empty() {
            return err(format!("nothing to join along the new dimension {dim}"));
        }
        if kids.len() != values.len() {
            return err(format!("{dim}: {} values for {} pieces", values.len(), kids.len()));
        }
        let base = &kids[0];
        if base.vars.contains_key(dim) || base.vars.values().any(|v| v.dims.iter().any(|d| d == dim)) {
            return err(format!("the new dimension {dim} already exists in {}", self.name(base.files[0])));
        }
        let selected: BTreeSet<String> = match variables {
            Some(v) => v.iter().cloned().collect(),
            None if !base.joined.is_empty() => base
                .vars
                .iter()
                .filter(|(n, v)| v.dims.iter().any(|d| base.joined.contains(d)) && !is_coordinate(base, n))
                .map(|(n, _)| n.clone())
                .collect(),
            None => base.vars.keys().filter(|n| !is_coordinate(base, n)).cloned().collect(),
        };
        let mut out =
            VDataset { attrs: base.attrs.clone(), vars: BTreeMap::new(), joined: base.joined.clone(), files: vec![] };
        out.joined.insert(dim.to_string());
        for k in &kids {
            out.files.extend(&k.files);
        }
        for name in union_names(&kids) {
            let holder = kids.iter().position(|k| k.vars.contains_key(&name)).expect("a name comes from a piece");
            let first_var = kids[holder].vars[&name].clone();
            if !selected.contains(&name) {
                self.check_same(&name, &kids)?;
                out.vars.insert(name, first_var);
                continue;
            }
            let mut parts = Vec::new();
            for (i, k) in kids.iter().enumerate() {
                let Some(v) = k.vars.get(&name) else {
                    return err(format!(
                        "variable {name} is missing from {} (it is in {})",
                        self.name(k.files[0]),
                        self.name(kids[holder].files[0])
                    ));
                };
                if v.shape != first_var.shape || v.dims != first_var.dims {
                    return err(format!(
                        "different shapes: {name} is {:?} {:?} in {} and {:?} {:?} in {}",
                        first_var.dims,
                        first_var.shape,
                        self.name(kids[holder].files[0]),
                        v.dims,
                        v.shape,
                        self.name(k.files[0])
                    ));
                }
                let Content::Parts(ps) = &v.content else {
                    return err(format!("{name}: a generated coordinate cannot be stacked along {dim}"));
                };
                for p in ps {
                    let mut p = p.clone();
                    p.lead += 1;
                    p.origin.insert(0, i as u64);
                    parts.push(p);
                }
            }
            let mut dims = vec![dim.to_string()];
            dims.extend(first_var.dims.iter().cloned());
            let mut shape = vec![kids.len() as u64];
            shape.extend(&first_var.shape);
            out.vars.insert(name, VVar { dims, shape, attrs: first_var.attrs, content: Content::Parts(parts) });
        }
        for name in &selected {
            if !out.vars.contains_key(name) {
                return err(format!("{name}, named for the new dimension {dim}, is in none of the files"));
            }
        }
        out.vars.insert(dim.to_string(), coordinate_var(dim, values));
        Ok(out)
    }

    fn union(&mut self, kids: Vec<VDataset>) -> Result<VDataset, JoinError> {
        let Some(base) = kids.first() else { return err("an empty union") };
        let mut out =
            VDataset { attrs: base.attrs.clone(), vars: BTreeMap::new(), joined: BTreeSet::new(), files: vec![] };
        for k in &kids {
            out.files.extend(&k.files);
            out.joined.extend(k.joined.iter().cloned());
        }
        for name in union_names(&kids) {
            let holders: Vec<VDataset> = kids.iter().filter(|k| k.vars.contains_key(&name)).cloned().collect();
            if holders.len() > 1
                && (is_coordinate(&holders[0], &name) || holders.iter().any(|h| h.joined.contains(&name)))
            {
                self.check_same(&name, &holders)?;
            }
            out.vars.insert(name.clone(), holders[0].vars[&name].clone());
        }
        Ok(out)
    }

    /// For a variable taken from the first piece: a coordinate must be the same in every piece
    /// that has it, as xarray compares it once decoded: CF-decoded values, and for times the
    /// instants in one calendar (so the same instants in other units are the same coordinate,
    /// and the same numbers in other units are not).
    fn check_same(&self, name: &str, kids: &[VDataset]) -> Result<(), JoinError> {
        let holders: Vec<&VDataset> = kids.iter().filter(|k| k.vars.contains_key(name)).collect();
        if holders.len() < 2 || !(is_coordinate(holders[0], name) || holders[0].joined.contains(name)) {
            return Ok(());
        }
        let a = &holders[0].vars[name];
        let time = time_encoding(holders[0], name);
        let va = self.comparable(name, a, time.as_ref())?;
        for k in &holders[1..] {
            let b = &k.vars[name];
            let differ = |why: String| {
                err(format!(
                    "different grids: coordinate {name} of {} differs from {} ({why})",
                    self.name(holders[0].files[0]),
                    self.name(k.files[0])
                ))
            };
            if a.shape != b.shape {
                return differ(format!("shape {:?} and {:?}", a.shape, b.shape));
            }
            if let Some((_, cal_a)) = &time {
                let Some((_, cal_b)) = time_encoding(k, name) else {
                    return differ("times in one and plain numbers in the other".into());
                };
                if calendar_of(cal_a) != calendar_of(&cal_b) {
                    return err(format!(
                        "different calendars: {name} is {:?} in {} and {:?} in {}",
                        calendar_name(cal_a),
                        self.name(holders[0].files[0]),
                        calendar_name(&cal_b),
                        self.name(k.files[0])
                    ));
                }
            }
            let vb = self.comparable(name, b, time.as_ref())?;
            if let Some(i) = (0..va.len()).find(|i| !same_value(&va[*i], &vb[*i])) {
                let show = |c: &Cell| match (c, &time) {
                    (Cell::Number(x), Some((units, cal))) => {
                        match TimeUnits::parse(units, cal).and_then(|u| u.decode(*x)) {
                            Ok(t) => t.iso(),
                            Err(_) => x.to_string(),
                        }
                    }
                    _ => format!("{c:?}"),
                };
                return differ(format!("at index {i}: {} and {}", show(&va[i]), show(&vb[i])));
            }
        }
        Ok(())
    }

    /// The values of a coordinate as xarray compares them: times re-encoded in `time` (the
    /// first piece's units and calendar, so equal instants give equal numbers), else decoded.
    fn comparable(&self, name: &str, v: &VVar, time: Option<&(String, String)>) -> Result<Vec<Cell>, JoinError> {
        match time {
            Some((units, calendar)) => {
                let mode = Mode::Retime { units: units.clone(), calendar: calendar.clone() };
                let array = self.array(name, v, mode, None)?;
                Ok(f64_values(&array, self.reader)?.into_iter().map(Cell::Number).collect())
            }
            None => self.values(name, v),
        }
    }

    /// Values of the join coordinate of every piece, comparable across pieces: times in the
    /// first piece's units.
    fn coordinate_values(&self, dim: &str, kids: &[VDataset]) -> Result<Vec<Vec<f64>>, JoinError> {
        let attr = |k: &VDataset, a: &str| {
            k.vars.get(dim).and_then(|v| v.attrs.get(a)).and_then(Value::as_str).map(str::to_string)
        };
        let first_units = attr(&kids[0], "units").unwrap_or_default();
        let is_time = first_units.to_ascii_lowercase().contains(" since ");
        let first_cal = attr(&kids[0], "calendar").unwrap_or_default();
        let mut out = Vec::with_capacity(kids.len());
        for k in kids {
            let Some(v) = k.vars.get(dim) else {
                return err(format!("variable {dim} is missing from {}", self.name(k.files[0])));
            };
            if is_time {
                let cal = attr(k, "calendar").unwrap_or_default();
                if calendar_of(&cal) != calendar_of(&first_cal) {
                    return err(format!(
                        "different calendars: {dim} is {:?} in {} and {:?} in {}",
                        calendar_name(&first_cal),
                        self.name(kids[0].files[0]),
                        calendar_name(&cal),
                        self.name(k.files[0])
                    ));
                }
                let array =
                    self.array(dim, v, Mode::Retime { units: first_units.clone(), calendar: first_cal.clone() }, None)?;
                out.push(f64_values(&array, self.reader)?);
            } else {
                out.push(self.values_f64(dim, v)?);
            }
        }
        Ok(out)
    }

    fn check_increasing(&self, dim: &str, kids: &[VDataset], values: &[Vec<f64>]) -> Result<(), JoinError> {
        let show = |k: &VDataset, x: f64| {
            let units = k.vars[dim].attrs.get("units").and_then(Value::as_str).unwrap_or("");
            let cal = k.vars[dim].attrs.get("calendar").and_then(Value::as_str).unwrap_or("");
            match TimeUnits::parse(units, cal).and_then(|u| u.decode(x)) {
                Ok(t) if units.contains(" since ") => t.iso(),
                _ => x.to_string(),
            }
        };
        for (k, v) in kids.iter().zip(values) {
            // Not after, NaN included: `partial_cmp` is not Greater for either.
            if let Some(i) = v.windows(2).position(|w| w[1].partial_cmp(&w[0]) != Some(std::cmp::Ordering::Greater)) {
                return err(format!(
                    "overlapping or unsorted {dim}: in {} step {} ({}) is not after step {i} ({})",
                    self.name(k.files[0]),
                    i + 1,
                    show(&kids[0], v[i + 1]),
                    show(&kids[0], v[i])
                ));
            }
        }
        for i in 1..kids.len() {
            let (Some(end), Some(start)) = (values[i - 1].last(), values[i].first()) else { continue };
            if start <= end {
                return err(format!(
                    "overlapping or unsorted {dim}: {} ends at {} and {} starts at {}",
                    self.name(*kids[i - 1].files.last().expect("a piece has files")),
                    show(&kids[0], *end),
                    self.name(kids[i].files[0]),
                    show(&kids[0], *start)
                ));
            }
        }
        Ok(())
    }

    /// Every value of a variable, decoded to f64 (text as such).
    fn values(&self, name: &str, v: &VVar) -> Result<Vec<Cell>, JoinError> {
        if let Content::Values(meta, bytes) = &v.content {
            if meta.dtype.kind == Kind::VlenString {
                return Ok(bytes.iter().map(|b| Cell::Byte(*b)).collect());
            }
        }
        if let Content::Parts(parts) = &v.content {
            let view = &self.views[parts[0].member].variables[&parts[0].var];
            if matches!(view.meta.dtype.kind, Kind::Bytes | Kind::VlenString) {
                let array = self.array(name, v, Mode::Assemble, None)?;
                let bytes = array.assemble(&vec![0; v.shape.len()], self.reader).map_err(JoinError)?;
                return Ok(bytes.into_iter().map(Cell::Byte).collect());
            }
        }
        Ok(self.values_f64(name, v)?.into_iter().map(Cell::Number).collect())
    }

    fn values_f64(&self, name: &str, v: &VVar) -> Result<Vec<f64>, JoinError> {
        let array = self.array(name, v, Mode::Decode, None)?;
        f64_values(&array, self.reader)
    }

    /// A single-chunk array of `v` in `mode` (float64 unless [`Mode::Assemble`]).
    fn array(&self, name: &str, v: &VVar, mode: Mode, out: Option<DType>) -> Result<JoinedArray, JoinError> {
        let (encodings, parts, inline) = match &v.content {
            Content::Values(meta, bytes) => return Ok(values_array(meta, bytes)),
            Content::Parts(parts) => self.parts(name, parts, None)?,
        };
        let dtype = match (&mode, out) {
            (_, Some(d)) => d,
            (Mode::Assemble | Mode::Direct, None) => encodings[0].meta.dtype,
            _ => DType::new(Kind::Float, 8, Endian::Little),
        };
        let fill = if dtype.kind == Kind::Float { Value::from("NaN") } else { encodings[0].meta.fill_value.clone() };
        let meta = ArrayMetadataV2::plain(&v.shape, &v.shape, dtype, fill);
        Ok(JoinedArray { meta, mode, encodings, parts, inline })
    }

    /// The parts of a variable with their chunk tables, and the encodings they use.
    /// `units_from` names the coordinate whose `units`/`calendar` a bounds variable inherits.
    fn parts(&self, name: &str, vparts: &[VPart], units_from: Option<&str>) -> Result<PartsOf, JoinError> {
        let mut encodings: Vec<Encoding> = Vec::new();
        let mut parts = Vec::with_capacity(vparts.len());
        let mut inline = Vec::new();
        for vp in vparts {
            let view = &self.views[vp.member];
            let var = &view.variables[&vp.var];
            let mut attrs = Attrs::new();
            for a in DECODE_ATTRS.iter().chain(&["units", "calendar"]) {
                if let Some(x) = var.attrs.get(*a) {
                    attrs.insert(a.to_string(), x.clone());
                }
            }
            let f32_attrs = self.members[vp.member].refs.meta.as_ref().map(|m| &m.float32_attrs);
            let typed: Vec<Value> = ["scale_factor", "add_offset"]
                .iter()
                .filter(|a| f32_attrs.is_some_and(|s| s.contains(&format!("{}@{a}", vp.var))))
                .map(|a| Value::from(*a))
                .collect();
            if !typed.is_empty() {
                attrs.insert(FLOAT32_ATTRS.into(), Value::Array(typed));
            }
            if let Some(owner) = units_from.and_then(|c| view.variables.get(c)) {
                for a in ["units", "calendar"] {
                    if let (false, Some(x)) = (attrs.contains_key(a), owner.attrs.get(a)) {
                        attrs.insert(a.to_string(), x.clone());
                    }
                }
            }
            let mut meta = var.meta.clone();
            meta.shape = meta.chunks.clone();
            let enc = Encoding { meta, attrs };
            let e = match encodings.iter().position(|x| *x == enc) {
                Some(e) => e,
                None => {
                    encodings.push(enc);
                    encodings.len() - 1
                }
            };
            let chunks = self.chunk_table(vp, var, &mut inline).map_err(|why| JoinError(format!("{name}: {why}")))?;
            let mut shape = vec![1; vp.lead];
            shape.extend(&var.meta.shape);
            parts.push(Part {
                source: vp.member as u32,
                encoding: u16::try_from(e).map_err(|_| JoinError(format!("{name}: too many different encodings")))?,
                lead: vp.lead as u8,
                origin: vp.origin.clone(),
                shape,
                chunks,
            });
        }
        Ok((encodings, parts, inline))
    }

    fn chunk_table(&self, vp: &VPart, var: &Variable, inline: &mut Vec<u8>) -> Result<Vec<ChunkRef>, String> {
        let refs = &self.members[vp.member].refs;
        let grid = var.meta.chunk_grid();
        let mut out = Vec::new();
        for idx in ArrayMetadataV2::grid_positions(&grid) {
            let key = format!("{}/{}", vp.var, ArrayMetadataV2::chunk_key(&idx));
            out.push(match refs.refs.get(&key) {
                None => ChunkRef::NONE,
                Some(Reference::Range { offset, length, .. }) => ChunkRef {
                    offset: *offset,
                    length: u32::try_from(*length).map_err(|_| format!("chunk {key} is larger than 4 GiB"))?,
                },
                Some(Reference::Inline(b)) => {
                    let at = inline.len() as u64;
                    inline.extend_from_slice(b);
                    ChunkRef { offset: INLINE | at, length: b.len() as u32 }
                }
                Some(Reference::Whole { .. }) => return Err(format!("chunk {key} is a whole-file reference")),
            });
        }
        Ok(out)
    }

    /// Plans how a variable is served: its array and its served attributes.
    fn plan(
        &self,
        name: &str,
        v: &VVar,
        ds: &VDataset,
        materialize: bool,
        time: Option<(String, String)>,
    ) -> Result<(JoinedArray, Attrs), JoinError> {
        let mut attrs = v.attrs.clone();
        let vparts = match &v.content {
            Content::Values(meta, bytes) => return Ok((values_array(meta, bytes), attrs)),
            Content::Parts(p) => p,
        };
        let owner = bounds_owner(ds, name);
        let (encodings, parts, inline) = self.parts(name, vparts, owner.as_deref())?;
        let first = &encodings[0];
        let member_chunks = |lead: usize| {
            let mut c = vec![1; lead];
            c.extend(&first.meta.chunks);
            c
        };
        let out_chunks = if materialize { v.shape.clone() } else { member_chunks(parts[0].lead as usize) };
        let no_codecs = |dtype: DType, fill: Value| ArrayMetadataV2::plain(&v.shape, &out_chunks, dtype, fill);
        // Times in other units than the first file's are re-encoded.
        if let Some((units, calendar)) = &time {
            let same = |e: &Encoding, k: &str, want: &str| e.attrs.get(k).and_then(Value::as_str).unwrap_or("") == want;
            let cal_of = |e: &Encoding| calendar_of(e.attrs.get("calendar").and_then(Value::as_str).unwrap_or(""));
            let cal0 = calendar_of(calendar);
            if let Some(c) = encodings.iter().map(cal_of).find(|c| *c != cal0) {
                let (a, b) = self.files_with(&parts, &encodings, |e| cal_of(e) == cal0);
                return err(format!(
                    "different calendars in {name}: {:?} in {a} and {:?} in {b}",
                    calendar_name(calendar),
                    c.map(Calendar::name).unwrap_or("unknown")
                ));
            }
            if !encodings.iter().all(|e| same(e, "units", units) && same(e, "calendar", calendar)) {
                let mode = Mode::Retime { units: units.clone(), calendar: calendar.clone() };
                let meta = no_codecs(DType::new(Kind::Float, 8, Endian::Little), Value::Null);
                for a in DECODE_ATTRS {
                    attrs.remove(*a);
                }
                self.note_once(format!("{name}: times re-encoded in the first file's units ({units})"));
                return Ok((JoinedArray { meta, mode, encodings, parts, inline }, attrs));
            }
        }
        let same_encoding = encodings.iter().all(|e| {
            e.attrs_eq(first) && e.meta.dtype == first.meta.dtype && e.meta.fill_value == first.meta.fill_value
        });
        if same_encoding {
            let aligned = !materialize
                && encodings.iter().all(|e| e.meta == first.meta)
                && parts.iter().all(|p| aligned(p, &out_chunks, &v.shape));
            if aligned {
                let mut meta = first.meta.clone();
                meta.shape = v.shape.clone();
                meta.chunks = out_chunks;
                return Ok((JoinedArray { meta, mode: Mode::Direct, encodings, parts, inline }, attrs));
            }
            let meta = no_codecs(first.meta.dtype, first.meta.fill_value.clone());
            return Ok((JoinedArray { meta, mode: Mode::Assemble, encodings, parts, inline }, attrs));
        }
        let mut dtype = first.meta.dtype;
        for e in &encodings[1..] {
            dtype = promote(dtype, e.meta.dtype).ok_or_else(|| {
                let (a, b) = self.files_with(&parts, &encodings, |x| x.meta.dtype == first.meta.dtype);
                JoinError(format!(
                    "{name} cannot be promoted to one type: {} in {a} and {} in {b}",
                    first.meta.dtype.typestr(),
                    e.meta.dtype.typestr()
                ))
            })?;
        }
        if encodings.iter().all(|e| e.attrs_eq(first) && same_number(&e.meta.fill_value, &first.meta.fill_value)) {
            let meta = no_codecs(dtype, first.meta.fill_value.clone());
            return Ok((JoinedArray { meta, mode: Mode::Assemble, encodings, parts, inline }, attrs));
        }
        // Different CF encodings: serve decoded values.
        let f32 = encodings.iter().all(decodes_to_f32);
        let dtype = DType::new(Kind::Float, if f32 { 4 } else { 8 }, Endian::Little);
        for a in DECODE_ATTRS.iter().chain(&["valid_range", "valid_min", "valid_max"]) {
            attrs.remove(*a);
        }
        self.note_once(format!("{name}: served decoded ({}), the files encode it differently", dtype.typestr()));
        let meta = no_codecs(dtype, Value::from("NaN"));
        Ok((JoinedArray { meta, mode: Mode::Decode, encodings, parts, inline }, attrs))
    }

    fn note_once(&self, note: String) {
        let mut notes = self.notes.borrow_mut();
        if !notes.contains(&note) {
            notes.push(note);
        }
    }

    /// Names of a file using an encoding that matches `pred` and one that does not.
    fn files_with(&self, parts: &[Part], encs: &[Encoding], pred: impl Fn(&Encoding) -> bool) -> (String, String) {
        let a = parts.iter().find(|p| pred(&encs[p.encoding as usize])).map(|p| self.name(p.source as usize));
        let b = parts.iter().find(|p| !pred(&encs[p.encoding as usize])).map(|p| self.name(p.source as usize));
        (a.unwrap_or("?").to_string(), b.unwrap_or("?").to_string())
    }
}

impl Encoding {
    fn attrs_eq(&self, other: &Encoding) -> bool {
        DECODE_ATTRS.iter().all(|a| match (self.attrs.get(*a), other.attrs.get(*a)) {
            (Some(x), Some(y)) => same_number(x, y) || x == y,
            (None, None) => true,
            _ => false,
        })
    }
}

/// `f(index, item)` for every item, on as many threads as there are CPUs; results in order,
/// or the first error.
pub fn parallel_map<T: Sync, R: Send, E: Send>(
    items: &[T],
    f: impl Fn(usize, &T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(items.len().max(1));
    let per = items.len().div_ceil(threads).max(1);
    let f = &f;
    let pieces: Vec<Result<Vec<R>, E>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per)
            .enumerate()
            .map(|(c, chunk)| scope.spawn(move || chunk.iter().enumerate().map(|(i, x)| f(c * per + i, x)).collect()))
            .collect();
        handles.into_iter().map(|h| h.join().expect("a worker thread panicked")).collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for p in pieces {
        out.extend(p?);
    }
    Ok(out)
}

/// A value of a coordinate, for comparisons.
#[derive(Clone, Debug, PartialEq)]
enum Cell {
    Number(f64),
    Byte(u8),
}

fn same_value(a: &Cell, b: &Cell) -> bool {
    match (a, b) {
        (Cell::Number(x), Cell::Number(y)) => x == y || (x.is_nan() && y.is_nan()),
        _ => a == b,
    }
}

fn same_number(a: &Value, b: &Value) -> bool {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x == y || (x.is_nan() && y.is_nan()),
        _ => a == b,
    }
}

fn first(v: &[f64]) -> f64 {
    v.first().copied().unwrap_or(f64::INFINITY)
}

fn calendar_of(name: &str) -> Option<Calendar> {
    if name.trim().is_empty() {
        return Some(Calendar::Standard);
    }
    Calendar::parse(name)
}

fn calendar_name(name: &str) -> &str {
    if name.trim().is_empty() {
        "standard"
    } else {
        name
    }
}

/// Whether a part's chunks fall on the joined array's chunk grid.
fn aligned(p: &Part, chunks: &[u64], shape: &[u64]) -> bool {
    (0..shape.len()).all(|d| {
        let c = chunks[d];
        p.origin[d].is_multiple_of(c) && (p.shape[d].is_multiple_of(c) || p.origin[d] + p.shape[d] == shape[d])
    })
}

/// The numpy promotion of two numeric dtypes, or `None` when there is none zarrgate serves
/// exactly (text and numbers, 64-bit unsigned and signed).
fn promote(a: DType, b: DType) -> Option<DType> {
    use Kind::*;
    if a == b {
        return Some(a);
    }
    let le = |k, s| DType::new(k, s, Endian::Little);
    match (a.kind, b.kind) {
        (Float, Float) => Some(le(Float, a.size.max(b.size))),
        (Float, Int | UInt) | (Int | UInt, Float) => {
            let (f, i) = if a.kind == Float { (a, b) } else { (b, a) };
            Some(le(Float, if f.size == 4 && i.size <= 2 { 4 } else { 8 }))
        }
        (Int, Int) => Some(le(Int, a.size.max(b.size))),
        (UInt, UInt) => Some(le(UInt, a.size.max(b.size))),
        (Int, UInt) | (UInt, Int) => {
            let (i, u) = if a.kind == Int { (a, b) } else { (b, a) };
            if u.size < i.size {
                Some(le(Int, i.size))
            } else if u.size < 8 {
                Some(le(Int, u.size * 2))
            } else {
                None
            }
        }
        (Bytes, Bytes) => Some(DType::new(Bytes, a.size.max(b.size), Endian::NotApplicable)),
        _ => None,
    }
}

/// Key, in an encoding's attributes, listing which packing attributes the file stores as
/// float32 (from the index's `float32_attrs`).
const FLOAT32_ATTRS: &str = "\u{1}float32";

/// Whether xarray decodes a member with this encoding to float32 (else float64), by
/// xarray's `_choose_float_dtype`: with packing attributes, their storage type decides (an
/// integer wider than 16 bits, or an offset of another type than the scale, gives float64);
/// without, float32 data and integers up to 16 bits give float32.
fn decodes_to_f32(e: &Encoding) -> bool {
    let dtype = e.meta.dtype;
    let typed = e.attrs.get(FLOAT32_ATTRS).and_then(Value::as_array);
    let is_f32 = |a: &str| match typed {
        Some(t) => t.iter().any(|x| x == a),
        // An index from before the types were recorded: tell by the spelling.
        None => e.attrs.get(a).and_then(number).is_some_and(looks_f32),
    };
    let (scale, offset) = (e.attrs.contains_key("scale_factor"), e.attrs.contains_key("add_offset"));
    match (scale, offset) {
        (true, true) if is_f32("scale_factor") == is_f32("add_offset") => {
            is_f32("scale_factor") && !(matches!(dtype.kind, Kind::Int | Kind::UInt) && dtype.size > 2)
        }
        (_, true) => false,
        (true, false) => is_f32("scale_factor"),
        (false, false) => match dtype.kind {
            Kind::Float => dtype.size <= 4,
            _ => dtype.size <= 2,
        },
    }
}

/// A materialized single-chunk array, served from inline bytes.
fn values_array(meta: &ArrayMetadataV2, bytes: &[u8]) -> JoinedArray {
    let mut enc_meta = meta.clone();
    enc_meta.shape = enc_meta.chunks.clone();
    let part = Part {
        source: 0,
        encoding: 0,
        lead: 0,
        origin: vec![0; meta.shape.len()],
        shape: meta.shape.clone(),
        chunks: vec![ChunkRef { offset: INLINE, length: bytes.len() as u32 }],
    };
    JoinedArray {
        meta: meta.clone(),
        mode: Mode::Direct,
        encodings: vec![Encoding { meta: enc_meta, attrs: Attrs::new() }],
        parts: vec![part],
        inline: bytes.to_vec(),
    }
}

/// The coordinate variable of a new dimension.
fn coordinate_var(dim: &str, values: &[CoordValue]) -> VVar {
    let n = values.len() as u64;
    let (dtype, filters, bytes) = if values.iter().all(|v| matches!(v, CoordValue::Int(_))) {
        let b = values.iter().flat_map(|v| if let CoordValue::Int(i) = v { i.to_le_bytes() } else { [0; 8] }).collect();
        (DType::new(Kind::Int, 8, Endian::Little), None, b)
    } else if values.iter().all(|v| !matches!(v, CoordValue::Text(_))) {
        let b = values
            .iter()
            .flat_map(|v| match v {
                CoordValue::Int(i) => (*i as f64).to_le_bytes(),
                CoordValue::Float(x) => x.to_le_bytes(),
                CoordValue::Text(_) => [0; 8],
            })
            .collect();
        (DType::new(Kind::Float, 8, Endian::Little), None, b)
    } else {
        let texts: Vec<String> = values
            .iter()
            .map(|v| match v {
                CoordValue::Int(i) => i.to_string(),
                CoordValue::Float(x) => x.to_string(),
                CoordValue::Text(t) => t.clone(),
            })
            .collect();
        (
            DType::new(Kind::VlenString, 0, Endian::NotApplicable),
            Some(vec![Codec::VlenUtf8 {}]),
            vlen_utf8_encode(&texts),
        )
    };
    let mut meta = ArrayMetadataV2::plain(&[n], &[n.max(1)], dtype, Value::Null);
    meta.filters = filters;
    VVar { dims: vec![dim.to_string()], shape: vec![n], attrs: Attrs::new(), content: Content::Values(meta, bytes) }
}

/// Assembles the single chunk of `array` and reads it as f64.
fn f64_values(array: &JoinedArray, reader: &dyn ByteReader) -> Result<Vec<f64>, JoinError> {
    let idx = vec![0; array.meta.shape.len()];
    let bytes = array.assemble(&idx, reader).map_err(JoinError)?;
    let mut out = Vec::new();
    to_f64(&array.meta.dtype, &bytes, &mut out).map_err(JoinError)?;
    out.truncate(array.meta.shape.iter().product::<u64>() as usize);
    Ok(out)
}

/// Lengths of every dimension of a dataset.
fn dim_lengths(ds: &VDataset) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for v in ds.vars.values() {
        for (d, n) in v.dims.iter().zip(&v.shape) {
            out.entry(d.clone()).or_insert(*n);
        }
    }
    out
}

/// Variable names of every piece: the first piece's, then new ones in order.
fn union_names(kids: &[VDataset]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for k in kids {
        for n in k.vars.keys() {
            if seen.insert(n.clone()) {
                out.push(n.clone());
            }
        }
    }
    out
}

/// A dimension coordinate, a variable named by some `coordinates` attribute, or the `bounds`
/// of one.
fn is_coordinate(ds: &VDataset, name: &str) -> bool {
    if ds.vars.get(name).is_some_and(|v| v.dims.len() == 1 && v.dims[0] == name) {
        return true;
    }
    ds.vars.values().any(|v| {
        v.attrs.get("coordinates").and_then(Value::as_str).is_some_and(|c| c.split_whitespace().any(|n| n == name))
    })
}

/// The variable whose `bounds` attribute names `name`.
fn bounds_owner(ds: &VDataset, name: &str) -> Option<String> {
    ds.vars.iter().find(|(_, v)| v.attrs.get("bounds").and_then(Value::as_str) == Some(name)).map(|(n, _)| n.clone())
}

/// The time units and calendar a variable is encoded with (its own, or its bounds owner's),
/// when it has a joined dimension.
fn time_units_of(ds: &VDataset, name: &str) -> Option<(String, String)> {
    let v = &ds.vars[name];
    if !v.dims.iter().any(|d| ds.joined.contains(d)) {
        return None;
    }
    time_encoding(ds, name)
}

/// The CF time units and calendar of a variable (its own, or what its bounds owner lends it).
fn time_encoding(ds: &VDataset, name: &str) -> Option<(String, String)> {
    let v = ds.vars.get(name)?;
    let owner = bounds_owner(ds, name).map(|o| &ds.vars[&o]);
    let of = |v: &VVar| {
        let units = v.attrs.get("units").and_then(Value::as_str)?;
        units.to_ascii_lowercase().contains(" since ").then(|| {
            // Bounds take what they lack from their coordinate (CF 7.1).
            let cal = [Some(v), owner]
                .into_iter()
                .flatten()
                .find_map(|x| x.attrs.get("calendar").and_then(Value::as_str))
                .unwrap_or("")
                .to_string();
            (units.to_string(), cal)
        })
    };
    of(v).or_else(|| owner.and_then(of))
}

/// The dimension of a dataset's time coordinate (`axis: T`, `standard_name: time`, or CF time
/// units), for joins along "the time dimension".
fn time_dimension(ds: &VDataset) -> Option<String> {
    let str_attr = |v: &VVar, k: &str| v.attrs.get(k).and_then(Value::as_str).map(str::to_string);
    ds.vars
        .iter()
        .filter(|(n, v)| v.dims.len() == 1 && v.dims[0] == **n)
        .find(|(_, v)| {
            str_attr(v, "axis").as_deref() == Some("T")
                || str_attr(v, "standard_name").as_deref() == Some("time")
                || str_attr(v, "units").is_some_and(|u| u.to_ascii_lowercase().contains(" since "))
        })
        .map(|(n, _)| n.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zarr::consolidated_v2;

    struct NoFiles;
    impl ByteReader for NoFiles {
        fn read(&self, _: u32, _: u64, _: u64) -> Result<Vec<u8>, String> {
            Err("members of these tests are inline".into())
        }
    }

    fn array_doc(shape: &[u64], dtype: &str, fill: Value) -> Vec<u8> {
        let d = DType::parse(dtype).unwrap();
        serde_json::to_vec(&ArrayMetadataV2::plain(shape, shape, d, fill)).unwrap()
    }

    /// A file with `time` (f8, `units`, `calendar`), `lat` and `tas(time, lat)` (f4, one
    /// chunk, optional `scale_factor`), all inline.
    fn member(name: &str, times: &[f64], units: &str, calendar: &str, lat: &[f64], scale: Option<f64>) -> Member {
        let (nt, ny) = (times.len() as u64, lat.len() as u64);
        let mut set = ReferenceSet::default();
        let mut docs: Vec<(String, Vec<u8>)> = vec![
            (".zgroup".into(), br#"{"zarr_format":2}"#.to_vec()),
            (".zattrs".into(), br#"{"title":"t"}"#.to_vec()),
            ("time/.zarray".into(), array_doc(&[nt], "<f8", Value::Null)),
            (
                "time/.zattrs".into(),
                serde_json::to_vec(&serde_json::json!({"_ARRAY_DIMENSIONS": ["time"], "units": units, "calendar": calendar, "axis": "T"}))
                    .unwrap(),
            ),
            ("lat/.zarray".into(), array_doc(&[ny], "<f8", Value::Null)),
            ("lat/.zattrs".into(), br#"{"_ARRAY_DIMENSIONS":["lat"]}"#.to_vec()),
            ("tas/.zarray".into(), array_doc(&[nt, ny], "<f4", Value::from("NaN"))),
        ];
        let mut tas_attrs = serde_json::json!({"_ARRAY_DIMENSIONS": ["time", "lat"]});
        if let Some(s) = scale {
            tas_attrs["scale_factor"] = Value::from(s);
        }
        docs.push(("tas/.zattrs".into(), serde_json::to_vec(&tas_attrs).unwrap()));
        let zmeta = consolidated_v2("", docs.iter().map(|(k, v)| (k.as_str(), &v[..])));
        for (k, v) in docs {
            set.refs.insert(k, Reference::Inline(v));
        }
        set.refs.insert(".zmetadata".into(), Reference::Inline(zmeta));
        set.refs.insert("time/0".into(), Reference::Inline(times.iter().flat_map(|t| t.to_le_bytes()).collect()));
        set.refs.insert("lat/0".into(), Reference::Inline(lat.iter().flat_map(|t| t.to_le_bytes()).collect()));
        let tas: Vec<u8> = (0..nt * ny).flat_map(|i| (i as f32).to_le_bytes()).collect();
        set.refs.insert("tas/0.0".into(), Reference::Inline(tas));
        Member { name: name.into(), refs: set }
    }

    fn join(members: &[Member], node: Node) -> Result<Joined, JoinError> {
        Joiner::new(members, &NoFiles, Force::default()).unwrap().join(&node)
    }

    fn along_time(n: usize) -> Node {
        Node::Existing { dim: String::new(), children: (0..n).map(Node::File).collect() }
    }

    fn f64s(v: &JoinedVariable) -> Vec<f64> {
        let bytes = v.array.assemble(&vec![0; v.array.meta.shape.len()], &NoFiles).unwrap();
        let mut out = Vec::new();
        to_f64(&v.array.meta.dtype, &bytes, &mut out).unwrap();
        out
    }

    #[test]
    fn files_join_in_time_order_and_times_are_re_encoded_in_the_first_units() {
        let lat = [1.0, 2.0];
        let members = [
            member("b.nc", &[48.0, 72.0], "hours since 2000-01-02", "gregorian", &lat, None),
            member("a.nc", &[0.0, 1.0], "days since 2000-01-01", "standard", &lat, None),
        ];
        let j = join(&members, along_time(2)).unwrap();
        let time = &j.variables["time"];
        assert_eq!(time.array.meta.shape, vec![4]);
        // a.nc comes first; b.nc's hours after Jan 2 are days after Jan 1 in a's units.
        assert_eq!(f64s(time), vec![0.0, 1.0, 3.0, 4.0]);
        let tas = &j.variables["tas"];
        assert_eq!(tas.array.parts[0].source, 1, "a.nc is the first part");
    }

    #[test]
    fn different_packing_is_served_decoded() {
        let lat = [1.0, 2.0];
        let members = [
            member("a.nc", &[0.0], "days since 2000-01-01", "", &lat, Some(10.0)),
            member("b.nc", &[1.0], "days since 2000-01-01", "", &lat, Some(1.0)),
        ];
        let j = join(&members, along_time(2)).unwrap();
        let tas = &j.variables["tas"];
        assert_eq!(tas.array.mode, Mode::Decode);
        assert!(!tas.attrs.contains_key("scale_factor"));
        assert_eq!(tas.array.meta.chunks, vec![1, 2]);
        let row = |i: u64| {
            let b = tas.array.assemble(&[i, 0], &NoFiles).unwrap();
            b.chunks_exact(8).map(|x| f64::from_le_bytes(x.try_into().unwrap())).collect::<Vec<_>>()
        };
        // Both files store [0, 1]; a.nc scales by 10, b.nc by 1.
        assert_eq!((row(0), row(1)), (vec![0.0, 10.0], vec![0.0, 1.0]));
    }

    #[test]
    fn refusals_name_both_files() {
        let d = "days since 2000-01-01";
        let cases = [
            (member("b.nc", &[1.0], d, "", &[1.0, 3.0], None), "different grids"),
            (member("b.nc", &[1.0], d, "", &[1.0, 2.0, 3.0], None), "different grids"),
            (member("b.nc", &[0.5], d, "", &[1.0, 2.0], None), "overlapping or unsorted"),
            (member("b.nc", &[1.0], d, "360_day", &[1.0, 2.0], None), "different calendars"),
        ];
        for (b, want) in cases {
            let members = [member("a.nc", &[0.0, 0.75], d, "", &[1.0, 2.0], None), b];
            let e = join(&members, along_time(2)).unwrap_err().0;
            assert!(e.contains(want) && e.contains("a.nc") && e.contains("b.nc"), "{want}: {e}");
        }
        let mut b = member("b.nc", &[1.0], d, "", &[1.0], None);
        b.refs.refs.retain(|k, _| !k.starts_with("tas"));
        let zmeta = consolidated_v2(
            "",
            b.refs.refs.iter().filter_map(|(k, r)| match r {
                Reference::Inline(v) if k.contains(".z") && k != ".zmetadata" => Some((k.as_str(), &v[..])),
                _ => None,
            }),
        );
        b.refs.refs.insert(".zmetadata".into(), Reference::Inline(zmeta));
        let members = [member("a.nc", &[0.0], d, "", &[1.0], None), b];
        let e = join(&members, along_time(2)).unwrap_err().0;
        assert!(e.contains("tas is missing from b.nc"), "{e}");
        let forced =
            Joiner::new(&members, &NoFiles, Force { drop_missing_variables: true }).unwrap().join(&along_time(2));
        let forced = forced.unwrap();
        assert!(!forced.variables.contains_key("tas"));
        assert!(forced.notes.iter().any(|n| n.contains("tas") && n.contains("drop-missing-variables")));
    }

    #[test]
    fn a_new_dimension_stacks_the_data_variables_and_gets_a_coordinate() {
        let lat = [1.0, 2.0];
        let d = "days since 2000-01-01";
        let members = [member("r1.nc", &[0.0], d, "", &lat, None), member("r2.nc", &[0.0], d, "", &lat, None)];
        let node = Node::New {
            dim: "member".into(),
            values: CoordValue::infer(&["r1".into(), "r2".into()]),
            variables: None,
            children: vec![Node::File(0), Node::File(1)],
        };
        let j = join(&members, node).unwrap();
        assert_eq!(j.variables["tas"].dims, vec!["member", "time", "lat"]);
        assert_eq!(j.variables["tas"].array.meta.shape, vec![2, 1, 2]);
        assert_eq!(j.variables["time"].dims, vec!["time"]);
        assert_eq!(j.variables["member"].array.meta.dtype.kind, Kind::VlenString);
        assert_eq!(j.variables["tas"].array.mode, Mode::Direct);
    }

    fn members_of(a: Member, b: Member) -> (Vec<Member>, Node) {
        let node = Node::New {
            dim: "member".into(),
            values: CoordValue::infer(&["1".into(), "2".into()]),
            variables: None,
            children: vec![Node::File(0), Node::File(1)],
        };
        (vec![a, b], node)
    }

    #[test]
    fn members_compare_their_times_as_instants() {
        let lat = [1.0, 2.0];
        // The same numbers a day apart: refused, naming both files and both instants.
        let (m, node) = members_of(
            member("r1.nc", &[6.0, 60.0], "hours since 2006-01-01", "", &lat, None),
            member("r2.nc", &[6.0, 60.0], "hours since 2006-01-02", "", &lat, None),
        );
        let e = join(&m, node).unwrap_err().0;
        assert!(e.contains("different grids") && e.contains("r1.nc") && e.contains("r2.nc"), "{e}");
        assert!(e.contains("2006-01-01T06:00:00") && e.contains("2006-01-02T06:00:00"), "{e}");
        // The same instants in other units: joined, served in the first file's units.
        let (m, node) = members_of(
            member("r1.nc", &[6.0, 60.0], "hours since 2006-01-01", "", &lat, None),
            member("r2.nc", &[0.25, 2.5], "days since 2006-01-01", "", &lat, None),
        );
        let j = join(&m, node).unwrap();
        assert_eq!(f64s(&j.variables["time"]), vec![6.0, 60.0]);
        assert_eq!(j.variables["time"].attrs["units"], "hours since 2006-01-01");
        let (m, node) = members_of(
            member("r1.nc", &[6.0, 60.0], "hours since 2006-01-01", "", &lat, None),
            member("r2.nc", &[3_156_480.0 + 360.0, 3_156_480.0 + 3600.0], "minutes since 2000-01-01", "", &lat, None),
        );
        assert!(join(&m, node).is_ok(), "2006-01-01 is 2192 days after 2000-01-01");
        // Equal numbers in another calendar: refused as different calendars.
        let (m, node) = members_of(
            member("r1.nc", &[15.0], "days since 2006-01-01", "noleap", &lat, None),
            member("r2.nc", &[15.0], "days since 2006-01-01", "360_day", &lat, None),
        );
        let e = join(&m, node).unwrap_err().0;
        assert!(e.contains("different calendars") && e.contains("r1.nc") && e.contains("r2.nc"), "{e}");
    }

    #[test]
    fn union_parts_compare_their_times_as_instants() {
        let lat = [1.0, 2.0];
        let members = [
            member("tas.nc", &[0.0, 1.0], "days since 2006-01-01", "", &lat, None),
            member("pr.nc", &[24.0 * 365.0, 24.0 * 366.0], "hours since 2005-01-01", "", &lat, None),
        ];
        let node = Node::Union(vec![Node::File(0), Node::File(1)]);
        let j = join(&members, node).unwrap();
        assert_eq!(f64s(&j.variables["time"]), vec![0.0, 1.0]);
        let shifted = [
            member("tas.nc", &[0.0, 1.0], "days since 2006-01-01", "", &lat, None),
            member("pr.nc", &[0.0, 1.0], "days since 2006-01-02", "", &lat, None),
        ];
        let e = join(&shifted, Node::Union(vec![Node::File(0), Node::File(1)])).unwrap_err().0;
        assert!(e.contains("coordinate time of tas.nc differs from pr.nc"), "{e}");
    }
}
