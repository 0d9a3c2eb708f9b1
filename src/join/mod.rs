//! Multi-file datasets: many indexed files joined into one virtual Zarr store.
//!
//! # Layout
//! - [`Node`]: what to join and how (files, along an existing dimension, along a new one, a
//!   union of variables), nested freely. Definitions (DRS directories, spec files, NcML) are
//!   turned into a `Node` by the indexer.
//! - [`Joiner::join`]: evaluates the node, checks the files against each other (`compare`)
//!   and plans every variable (`plan`).
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
mod compare;
pub mod doc;
mod edit;
mod plan;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::cftime::{Calendar, TimeUnits};
use crate::codec::vlen_utf8_encode;
use crate::ops::store::{looks_f32, number, to_f64, Attrs, ChunkSource, SourceError, StoreView, Variable};
use crate::refs::{Reference, ReferenceSet};
use crate::zarr::{ArrayMetadataV2, Codec, DType, Endian, Kind};

pub use array::{ByteReader, ChunkRef, Encoding, JoinedArray, Mode, Part, INLINE};
pub use edit::{ncml_dtype, Edit, Given};
use plan::values_array;

/// What to join.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// A member file, by index.
    File(usize),
    /// Concatenated along an existing dimension, in the order of its coordinate; or, when
    /// `coords` gives each child's coordinate values (NcML `coordValue`), in the order given,
    /// with those values.
    Existing { dim: String, children: Vec<Node>, coords: Vec<Vec<String>> },
    /// Stacked along a new, leading dimension whose coordinate takes `values`. `variables`
    /// names what gets the dimension (default: what varies along a joined dimension, else every
    /// data variable).
    New { dim: String, values: Vec<CoordValue>, variables: Option<Vec<String>>, children: Vec<Node> },
    /// The variables of every child together.
    Union(Vec<Node>),
    /// A child with names and attributes changed before it is joined (a nested NcML
    /// `<netcdf>`).
    Edited { node: Box<Node>, edits: Vec<Edit> },
    /// No file: a dataset made by edits alone (NcML without a location).
    Empty,
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
pub enum JoinError {
    /// The members cannot be joined faithfully; the message names the files.
    #[error("{0}")]
    Refused(String),
    /// A member could not be opened, read or decoded; the message names it.
    #[error("{0}")]
    Unreadable(String),
    /// An edit (NcML `variable`/`attribute`/`remove`) names what the join does not have.
    #[error("{0}")]
    Edit(String),
}

fn err<T>(msg: impl Into<String>) -> Result<T, JoinError> {
    Err(JoinError::Refused(msg.into()))
}

/// A planned joined dataset.
#[derive(Debug)]
pub struct Joined {
    /// Global attributes (of the first file).
    pub attrs: Attrs,
    pub variables: BTreeMap<String, JoinedVariable>,
    /// What the join left out or changed, for the catalog and the report.
    pub notes: Vec<String>,
    /// Variables whose values the NcML gave (`coordValue`, `<values>`).
    pub given: BTreeSet<String>,
    /// Sub-groups (`a/b`) with their attributes; their variables are named `a/b/NAME`.
    pub groups: BTreeMap<String, Attrs>,
}

#[derive(Debug)]
pub struct JoinedVariable {
    pub dims: Vec<String>,
    /// Served attributes (without `_ARRAY_DIMENSIONS`).
    pub attrs: Attrs,
    pub array: JoinedArray,
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
    /// Variables whose values the NcML gave.
    given: BTreeSet<String>,
}

impl VDataset {
    /// A dataset with `attrs` and no variable, files or given values yet.
    fn with_attrs(attrs: Attrs, joined: BTreeSet<String>) -> VDataset {
        VDataset { attrs, vars: BTreeMap::new(), joined, files: vec![], given: BTreeSet::new() }
    }
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
pub struct RefSource<'a> {
    pub refs: &'a ReferenceSet,
    pub reader: &'a dyn ByteReader,
    pub source: u32,
}

impl ChunkSource for RefSource<'_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SourceError> {
        match self.refs.refs.get(key) {
            None => Ok(None),
            Some(Reference::Inline(b)) => Ok(Some(b.clone())),
            Some(Reference::Range { offset, length, .. }) => self
                .reader
                .read(self.source, *offset, *length)
                .map(Some)
                .map_err(|e| SourceError::Failed(e.to_string())),
            Some(Reference::Whole { .. }) => Err(SourceError::Failed(format!("{key}: whole-file references"))),
        }
    }
}

impl<'a> Joiner<'a> {
    pub fn new(members: &'a [Member], reader: &'a dyn ByteReader, force: Force) -> Result<Self, JoinError> {
        let views = parallel_map(members, |i, m| {
            let source = RefSource { refs: &m.refs, reader, source: i as u32 };
            StoreView::open(&source).map_err(|e| JoinError::Unreadable(format!("{}: {e}", m.name)))
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
                let bytes = array
                    .assemble(&vec![0; array.meta.shape.len()], self.reader)
                    .map_err(|e| JoinError::Unreadable(e.to_string()))?;
                array = values_array(&array.meta, &bytes);
            }
            variables.insert(name.clone(), JoinedVariable { dims: v.dims.clone(), attrs, array });
        }
        Ok(Joined {
            attrs: ds.attrs,
            variables,
            notes: self.notes.into_inner(),
            given: ds.given,
            groups: BTreeMap::new(),
        })
    }

    fn name(&self, member: usize) -> &str {
        &self.members[member].name
    }

    fn eval(&mut self, node: &Node) -> Result<VDataset, JoinError> {
        match node {
            Node::File(i) => self.file(*i),
            Node::Existing { dim, children, coords } => {
                let kids = children.iter().map(|c| self.eval(c)).collect::<Result<Vec<_>, _>>()?;
                self.existing(dim, kids, coords)
            }
            Node::New { dim, values, variables, children } => {
                let kids = children.iter().map(|c| self.eval(c)).collect::<Result<Vec<_>, _>>()?;
                self.new_dim(dim, values, variables.as_deref(), kids)
            }
            Node::Union(children) => {
                let kids = children.iter().map(|c| self.eval(c)).collect::<Result<Vec<_>, _>>()?;
                self.union(kids)
            }
            Node::Edited { node, edits } => {
                let mut ds = self.eval(node)?;
                edit::apply_to_piece(&mut ds, edits)?;
                Ok(ds)
            }
            Node::Empty => Ok(VDataset::with_attrs(Attrs::new(), BTreeSet::new())),
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
        Ok(VDataset {
            attrs: view.attrs.clone(),
            vars,
            joined: BTreeSet::new(),
            files: vec![i],
            given: BTreeSet::new(),
        })
    }

    /// Joins pieces along an existing dimension (time when `dim` is empty): in the order of
    /// their coordinate, on one grid, each variable along `dim` concatenated and the others
    /// taken from the first piece once checked the same in all.
    fn existing(&mut self, dim: &str, kids: Vec<VDataset>, coords: &[Vec<String>]) -> Result<VDataset, JoinError> {
        if kids.is_empty() {
            return err(format!("nothing to join along {dim}"));
        }
        let found;
        let dim = if dim.is_empty() {
            found = time_dimension(&kids[0]).ok_or_else(|| {
                JoinError::Refused(format!("{} has no time coordinate to join along", self.name(kids[0].files[0])))
            })?;
            found.as_str()
        } else {
            dim
        };
        let kids = if coords.is_empty() { self.in_coordinate_order(dim, kids)? } else { kids };
        self.check_one_grid(dim, &kids)?;
        let base = &kids[0];
        let mut out = VDataset::with_attrs(base.attrs.clone(), base.joined.clone());
        out.joined.insert(dim.to_string());
        for k in &kids {
            out.files.extend(&k.files);
            out.joined.extend(k.joined.iter().cloned());
        }
        for name in union_names(&kids) {
            let holder = kids.iter().position(|k| k.vars.contains_key(&name)).expect("a name comes from a piece");
            let first_var = &kids[holder].vars[&name];
            let Some(axis) = first_var.dims.iter().position(|d| d == dim) else {
                self.check_same(&name, &kids)?;
                out.vars.insert(name.clone(), first_var.clone());
                continue;
            };
            if let Some(joined) = self.concatenate(&name, dim, axis, holder, &kids)? {
                out.vars.insert(name, joined);
            }
        }
        if !coords.is_empty() {
            let coordinate = self.given_coordinate(dim, &kids, coords)?;
            out.vars.insert(dim.to_string(), coordinate);
            out.given.insert(dim.to_string());
        }
        Ok(out)
    }

    /// The coordinate of a join along `dim` whose values the NcML gives for each piece
    /// (`coordValue`, as many values as the piece's length along `dim`): of the type of the
    /// files' coordinate (float64 without one), with the first file's attributes.
    fn given_coordinate(&self, dim: &str, kids: &[VDataset], coords: &[Vec<String>]) -> Result<VVar, JoinError> {
        if coords.len() != kids.len() {
            return err(format!("{dim}: coordValue is given for {} of {} pieces", coords.len(), kids.len()));
        }
        let mut texts = Vec::new();
        for (k, c) in kids.iter().zip(coords) {
            let n = dim_lengths(k).get(dim).copied().unwrap_or(0);
            if c.len() as u64 != n {
                return err(format!(
                    "{}: coordValue gives {} values ({}) for {n} along {dim}",
                    self.name(k.files[0]),
                    c.len(),
                    c.join(" ")
                ));
            }
            texts.extend(c.iter().cloned());
        }
        let file_var = kids[0].vars.get(dim).filter(|v| v.dims.len() == 1 && v.dims[0] == dim);
        let dtype = match file_var.map(|v| &v.content) {
            Some(Content::Parts(p)) => self.views[p[0].member].variables[&p[0].var].meta.dtype,
            _ => DType::new(Kind::Float, 8, Endian::Little),
        };
        let dtype = if matches!(dtype.kind, Kind::Int | Kind::UInt | Kind::Float) {
            DType::new(dtype.kind, dtype.size, Endian::Little)
        } else {
            DType::new(Kind::Float, 8, Endian::Little)
        };
        let n = texts.len() as u64;
        let mut bytes = vec![0u8; texts.len() * dtype.size];
        for (t, out) in texts.iter().zip(bytes.chunks_mut(dtype.size)) {
            let x: f64 = t.trim().parse().map_err(|_| {
                JoinError::Refused(format!("{dim}: coordValue {t:?} is not a number (the coordinate holds numbers)"))
            })?;
            array::write_element(&dtype, x, out);
        }
        let meta = ArrayMetadataV2::plain(&[n], &[n.max(1)], dtype, Value::Null);
        let attrs = file_var.map(|v| v.attrs.clone()).unwrap_or_default();
        Ok(VVar { dims: vec![dim.to_string()], shape: vec![n], attrs, content: Content::Values(meta, bytes) })
    }

    /// The pieces in the order of their coordinate along `dim` (when they have one), checked to
    /// increase throughout.
    fn in_coordinate_order(&self, dim: &str, kids: Vec<VDataset>) -> Result<Vec<VDataset>, JoinError> {
        if !kids[0].vars.get(dim).is_some_and(|v| v.dims.len() == 1 && v.dims[0] == dim) {
            return Ok(kids);
        }
        let values = self.coordinate_values(dim, &kids)?;
        let mut order: Vec<usize> = (0..kids.len()).collect();
        order.sort_by(|a, b| first(&values[*a]).total_cmp(&first(&values[*b])));
        let sorted: Vec<VDataset> = order.iter().map(|&i| kids[i].clone()).collect();
        let sorted_values: Vec<Vec<f64>> = order.iter().map(|&i| values[i].clone()).collect();
        self.check_increasing(dim, &sorted, &sorted_values)?;
        Ok(sorted)
    }

    /// Every dimension but `dim` has one length in all pieces.
    fn check_one_grid(&self, dim: &str, kids: &[VDataset]) -> Result<(), JoinError> {
        let base = &kids[0];
        let base_dims = dim_lengths(base);
        for k in &kids[1..] {
            for (d, n) in dim_lengths(k) {
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
        Ok(())
    }

    /// Variable `name` of every piece, end to end along `axis` (dimension `dim`); `None` when
    /// it is left out because a piece lacks it (with `drop_missing_variables`).
    fn concatenate(
        &self,
        name: &str,
        dim: &str,
        axis: usize,
        holder: usize,
        kids: &[VDataset],
    ) -> Result<Option<VVar>, JoinError> {
        let first_var = &kids[holder].vars[name];
        if let Some(k) = kids.iter().find(|k| !k.vars.contains_key(name)) {
            if self.force.drop_missing_variables {
                self.note_once(format!(
                    "{name} is left out (drop-missing-variables): it is missing from {}",
                    self.name(k.files[0])
                ));
                return Ok(None);
            }
            return err(format!(
                "variable {name} is missing from {} (it is in {})",
                self.name(k.files[0]),
                self.name(kids[holder].files[0])
            ));
        }
        let mut parts = Vec::new();
        let mut at = 0u64;
        for k in kids {
            let v = &k.vars[name];
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
        Ok(Some(VVar {
            dims: first_var.dims.clone(),
            shape,
            attrs: first_var.attrs.clone(),
            content: Content::Parts(parts),
        }))
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
        // Without values, each piece's scalar variable named `dim` is promoted to the
        // coordinate (as THREDDS does).
        let promote = values.is_empty();
        if kids.len() != values.len() && !promote {
            return err(format!("{dim}: {} values for {} pieces", values.len(), kids.len()));
        }
        let base = &kids[0];
        let scalar = base.vars.get(dim).is_some_and(|v| v.dims.is_empty());
        if promote && !scalar {
            return err(format!("{dim}: no coordinate values, and {} has no scalar {dim}", self.name(base.files[0])));
        }
        if (base.vars.contains_key(dim) && !scalar) || base.vars.values().any(|v| v.dims.iter().any(|d| d == dim)) {
            return err(format!("the new dimension {dim} already exists in {}", self.name(base.files[0])));
        }
        let mut selected: BTreeSet<String> = match variables {
            Some(v) => v.iter().cloned().collect(),
            None if !base.joined.is_empty() => base
                .vars
                .iter()
                .filter(|(n, v)| v.dims.iter().any(|d| base.joined.contains(d)) && !is_coordinate(base, n))
                .map(|(n, _)| n.clone())
                .collect(),
            None => base.vars.keys().filter(|n| !is_coordinate(base, n)).cloned().collect(),
        };
        selected.remove(dim);
        if promote {
            selected.insert(dim.to_string());
        }
        let mut out = VDataset::with_attrs(base.attrs.clone(), base.joined.clone());
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
        if !promote {
            out.vars.insert(dim.to_string(), coordinate_var(dim, values));
        }
        Ok(out)
    }

    fn union(&mut self, kids: Vec<VDataset>) -> Result<VDataset, JoinError> {
        let Some(base) = kids.first() else { return err("an empty union") };
        let mut out = VDataset::with_attrs(base.attrs.clone(), BTreeSet::new());
        for k in &kids {
            out.files.extend(&k.files);
            out.joined.extend(k.joined.iter().cloned());
            out.given.extend(k.given.iter().cloned());
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

    fn note_once(&self, note: String) {
        let mut notes = self.notes.borrow_mut();
        if !notes.contains(&note) {
            notes.push(note);
        }
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

fn first(v: &[f64]) -> f64 {
    v.first().copied().unwrap_or(f64::INFINITY)
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
    let bytes = array.assemble(&idx, reader).map_err(|e| JoinError::Unreadable(e.to_string()))?;
    let mut out = Vec::new();
    to_f64(&array.meta.dtype, &bytes, &mut out).map_err(|e| JoinError::Unreadable(e.to_string()))?;
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
        fn read(&self, _: u32, _: u64, _: u64) -> Result<Vec<u8>, array::ReadFailure> {
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
        Node::Existing { dim: String::new(), children: (0..n).map(Node::File).collect(), coords: vec![] }
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
    fn new_time_units_without_their_values_are_refused() {
        let lat = [1.0, 2.0];
        let members = [
            member("a.nc", &[0.0, 3600.0], "seconds since 1970-01-01", "standard", &lat, None),
            member("b.nc", &[7200.0], "seconds since 1970-01-01", "standard", &lat, None),
        ];
        let set = |name: &str, value: &str| Edit::SetAttribute {
            variable: Some("time".into()),
            name: name.into(),
            value: Value::from(value),
        };
        // THREDDS's test case: the files' seconds read as hours since 2006 would be the year 133161.
        let mut j = join(&members, along_time(2)).unwrap();
        let e = j.apply(&[set("units", "hours since 2006-06-16 00:00")]).unwrap_err().to_string();
        assert!(e.contains("time holds times in units \"seconds since 1970-01-01\"") && e.contains("refused"), "{e}");
        let e = j.apply(&[set("calendar", "noleap")]).unwrap_err().to_string();
        assert!(e.contains("calendar"), "{e}");
        // The same units in other words, the same calendar, and other attributes are fine.
        j.apply(&[
            set("units", "seconds since 1970-1-1 00:00:00"),
            set("calendar", "gregorian"),
            set("long_name", "t"),
        ])
        .unwrap();
        assert_eq!(j.variables["time"].attrs["long_name"], "t");
        // Units given to a variable that holds no times are the author's to give.
        j.apply(&[Edit::SetAttribute { variable: Some("tas".into()), name: "units".into(), value: Value::from("K") }])
            .unwrap();
        // Another fill value would mask other values.
        let fill =
            Edit::SetAttribute { variable: Some("tas".into()), name: "_FillValue".into(), value: Value::from(0) };
        assert!(j.apply(&[fill]).unwrap_err().to_string().contains("_FillValue"));
    }

    #[test]
    fn coord_values_give_the_joined_coordinate_and_allow_new_units() {
        let lat = [1.0, 2.0];
        let members = [
            member("a.nc", &[1.15e9], "seconds since 1970-01-01", "standard", &lat, None),
            member("b.nc", &[1.15e9 + 3600.0], "seconds since 1970-01-01", "standard", &lat, None),
        ];
        // In the order written, with the given values, whatever the files hold.
        let node = Node::Existing {
            dim: "time".into(),
            children: vec![Node::File(1), Node::File(0)],
            coords: vec![vec!["12".into()], vec!["13".into()]],
        };
        let mut j = join(&members, node).unwrap();
        assert_eq!(f64s(&j.variables["time"]), vec![12.0, 13.0]);
        assert_eq!(j.variables["tas"].array.parts[0].source, 1);
        let units = Value::from("hours since 2006-06-16 00:00");
        j.apply(&[Edit::SetAttribute { variable: Some("time".into()), name: "units".into(), value: units.clone() }])
            .unwrap();
        assert_eq!(j.variables["time"].attrs["units"], units);
        // As many values as steps, or refused.
        let node = Node::Existing {
            dim: "time".into(),
            children: vec![Node::File(0), Node::File(1)],
            coords: vec![vec!["12".into(), "13".into()], vec!["14".into()]],
        };
        assert!(join(&members, node).unwrap_err().to_string().contains("coordValue gives 2 values"));
    }

    #[test]
    fn values_replace_add_and_declare_variables() {
        let members = [member("a.nc", &[0.0, 1.0], "days since 2000-01-01", "standard", &[1.0, 2.0], None)];
        let mut j = join(&members, Node::File(0)).unwrap();
        let le = |k, s| DType::new(k, s, Endian::Little);
        j.apply(&[
            Edit::Values {
                name: "time".into(),
                dims: None,
                dtype: None,
                values: Given::Range { start: 10.0, increment: 0.5, npts: None },
            },
            Edit::Dimension { name: "n".into(), length: 3 },
            Edit::Values {
                name: "w".into(),
                dims: Some(vec!["n".into()]),
                dtype: Some(le(Kind::Int, 2)),
                values: Given::List(vec!["1".into(), "-2".into(), "3".into()]),
            },
            // A declaration of what the files have changes nothing.
            Edit::Values {
                name: "lat".into(),
                dims: Some(vec!["lat".into()]),
                dtype: Some(le(Kind::Float, 8)),
                values: Given::Missing,
            },
        ])
        .unwrap();
        assert_eq!(f64s(&j.variables["time"]), vec![10.0, 10.5]);
        assert_eq!(f64s(&j.variables["w"]), vec![1.0, -2.0, 3.0]);
        assert_eq!(f64s(&j.variables["lat"]), vec![1.0, 2.0]);
        let bad =
            Edit::Values { name: "lat".into(), dims: None, dtype: Some(le(Kind::Int, 4)), values: Given::Missing };
        assert!(j.apply(&[bad]).unwrap_err().to_string().contains("changing a type or shape is refused"));
        let short = Edit::Values { name: "lat".into(), dims: None, dtype: None, values: Given::List(vec!["1".into()]) };
        assert!(j.apply(&[short]).unwrap_err().to_string().contains("1 values for 2 elements"));
        // What the NcML gives stays small: a huge axis belongs in a file.
        let huge = [
            Edit::Dimension { name: "big".into(), length: 10_000_000_000 },
            Edit::Values {
                name: "b".into(),
                dims: Some(vec!["big".into()]),
                dtype: Some(le(Kind::Float, 8)),
                values: Given::Range { start: 0.0, increment: 1.0, npts: None },
            },
        ];
        assert!(j.apply(&huge).unwrap_err().to_string().contains("more than it may hold"));
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
            let e = join(&members, along_time(2)).unwrap_err().to_string();
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
        let e = join(&members, along_time(2)).unwrap_err().to_string();
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
        let e = join(&m, node).unwrap_err().to_string();
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
        let e = join(&m, node).unwrap_err().to_string();
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
        let e = join(&shifted, Node::Union(vec![Node::File(0), Node::File(1)])).unwrap_err().to_string();
        assert!(e.contains("coordinate time of tas.nc differs from pr.nc"), "{e}");
    }
}
