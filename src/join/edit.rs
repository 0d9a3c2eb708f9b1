//! NcML changes to a dataset (`docs/joins.md`, "NcML"): renames, removals, attributes, values
//! the NcML gives, and `<explicit/>`.
//!
//! Top-level changes apply to the planned join ([`Joined::apply`]), so they change what is
//! served and never how the files' values are read. Changes inside a nested `<netcdf>` apply to
//! that piece before it is joined ([`Joiner`]'s `Node::Edited`), and are limited to names and
//! attributes that do not change values.
//!
//! The rule that keeps values right: new `units` or `calendar` on a variable holding times, or
//! a new `_FillValue`, would read the stored numbers as something else; they are accepted only
//! when the NcML also gives the values (`<values>`, or `coordValue` on a `joinExisting`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::compare::same_number;
use super::plan::values_array;
use super::{JoinError, Joined, JoinedVariable, VDataset, DECODE_ATTRS};
use crate::cftime::{Calendar, TimeUnits};
use crate::codec::vlen_utf8_encode;
use crate::ops::store::Attrs;
use crate::zarr::{ArrayMetadataV2, Codec, DType, Endian, Kind};

/// A change to a dataset's metadata or values.
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
    RenameAttribute {
        variable: Option<String>,
        from: String,
        to: String,
    },
    /// `<dimension name="new" orgName="old"/>`: every variable along `from` is along `to`.
    RenameDimension {
        from: String,
        to: String,
    },
    /// `<dimension name length/>`: a dimension for the NcML's own variables (an existing one
    /// must have that length).
    Dimension {
        name: String,
        length: u64,
    },
    /// A `<variable>` whose values the NcML gives (`<values>`), or a new one without values
    /// (read as missing values). `dims` and `dtype` are the `shape` and `type` attributes.
    Values {
        name: String,
        dims: Option<Vec<String>>,
        dtype: Option<DType>,
        values: Given,
    },
    /// `<explicit/>`: only the variables named in the NcML (by their names in the files), and
    /// no attribute but those the NcML sets.
    Explicit {
        keep: Vec<String>,
    },
    /// A `<group>` (path `a/b`) of a dataset of the NcML alone; its variables and dimensions
    /// are named `a/b/NAME`.
    Group {
        path: String,
    },
    GroupAttribute {
        group: String,
        name: String,
        value: Value,
    },
}

/// The `<values>` of a variable.
#[derive(Clone, Debug, PartialEq)]
pub enum Given {
    /// No `<values>`: every value is missing.
    Missing,
    /// Values as written (numbers or text).
    List(Vec<String>),
    /// `start`, `increment` and optionally `npts`.
    Range { start: f64, increment: f64, npts: Option<u64> },
}

/// What a dataset needs to be edited: its global attributes and variables by name.
pub(super) trait Editable {
    fn global(&mut self) -> &mut Attrs;
    fn names(&self) -> Vec<String>;
    fn dims_mut(&mut self, name: &str) -> Option<&mut Vec<String>>;
    fn attrs_mut(&mut self, name: &str) -> Option<&mut Attrs>;
    fn rename(&mut self, from: &str, to: &str) -> bool;
    fn remove(&mut self, name: &str) -> bool;
    /// Variables whose values the NcML gave.
    fn given(&mut self) -> &mut BTreeSet<String>;
}

/// Renames, removals and attribute changes, the same for a piece and for the join. `Ok(false)`
/// when the edit is not one of these.
pub(super) fn apply_names(ds: &mut dyn Editable, edit: &Edit) -> Result<bool, JoinError> {
    let no_var = |what: &str, v: &str| JoinError::Edit(format!("{what}: no variable {v}"));
    match edit {
        Edit::RenameVariable { from, to } => {
            if from != to && ds.names().contains(to) {
                return Err(JoinError::Edit(format!("rename {from} to {to}: {to} exists already")));
            }
            if !ds.rename(from, to) {
                return Err(no_var("rename", from));
            }
            if ds.given().remove(from) {
                ds.given().insert(to.clone());
            }
        }
        Edit::RemoveVariable(name) => {
            if !ds.remove(name) {
                return Err(no_var("remove", name));
            }
            ds.given().remove(name);
        }
        Edit::RemoveAttribute { variable, name } => {
            fill_unchanged(ds, variable.as_deref(), name, None)?;
            attrs_of(ds, variable.as_deref())?.remove(name);
        }
        Edit::SetAttribute { variable, name, value } => {
            let given = variable.as_ref().is_some_and(|v| ds.given().contains(v));
            if name == "_FillValue" {
                fill_unchanged(ds, variable.as_deref(), name, Some(value))?;
                if given {
                    attrs_of(ds, variable.as_deref())?.insert(FILL.into(), value.clone());
                }
                return Ok(true);
            }
            let attrs = attrs_of(ds, variable.as_deref())?;
            if !given {
                if let Some(why) = reinterprets_times(attrs, name, value) {
                    return Err(JoinError::Edit(format!("{} {why}", variable.as_deref().unwrap_or("(global)"))));
                }
            }
            attrs.insert(name.clone(), value.clone());
        }
        Edit::RenameAttribute { variable, from, to } => {
            let attrs = attrs_of(ds, variable.as_deref())?;
            let value = attrs.remove(from).ok_or_else(|| {
                JoinError::Edit(format!(
                    "rename attribute: {} has no attribute {from}",
                    variable.as_deref().unwrap_or("the dataset")
                ))
            })?;
            attrs.insert(to.clone(), value);
        }
        Edit::RenameDimension { from, to } => {
            let mut found = false;
            for n in ds.names() {
                let dims = ds.dims_mut(&n).expect("a listed variable");
                if dims.contains(to) && from != to {
                    return Err(JoinError::Edit(format!("rename dimension {from} to {to}: {to} exists already")));
                }
                for d in dims.iter_mut().filter(|d| *d == from) {
                    *d = to.clone();
                    found = true;
                }
            }
            if !found {
                return Err(JoinError::Edit(format!("rename dimension: no variable is along {from}")));
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn attrs_of<'a>(ds: &'a mut dyn Editable, variable: Option<&str>) -> Result<&'a mut Attrs, JoinError> {
    match variable {
        None => Ok(ds.global()),
        Some(v) => ds.attrs_mut(v).ok_or_else(|| JoinError::Edit(format!("no variable {v} to change attributes of"))),
    }
}

/// A variable's `_FillValue` is the files' (it decides which stored values are missing); the
/// NcML may repeat it, not change or remove it. Its served attributes never hold it: it is
/// the array's fill value.
fn fill_unchanged(
    ds: &mut dyn Editable,
    variable: Option<&str>,
    name: &str,
    value: Option<&Value>,
) -> Result<(), JoinError> {
    let Some(v) = variable.filter(|_| name == "_FillValue") else { return Ok(()) };
    attrs_of(ds, Some(v))?;
    let current = ds.fill_of(v);
    let same = match (value, &current) {
        (Some(new), Some(old)) => same_number(new, old) || new == old,
        (None, None) => true,
        _ => false,
    };
    if same || ds.given().contains(v) && value.is_some() {
        return Ok(());
    }
    Err(JoinError::Edit(format!(
        "{v}: the NcML {} _FillValue (stored {}), which would change which values are missing (refused; \
         repeat the files' _FillValue or leave it out)",
        if value.is_some() { "sets another" } else { "removes" },
        current.map_or("none".into(), |c| c.to_string())
    )))
}

impl dyn Editable + '_ {
    fn fill_of(&mut self, v: &str) -> Option<Value> {
        self.attrs_mut(v).and_then(|a| a.get(FILL).cloned()).filter(|f| !f.is_null())
    }
}

/// Key under which an editable variable's attributes carry its fill value while edited.
pub(super) const FILL: &str = "\u{1}fill";

/// Why setting attribute `name` to `value` would read a variable's stored times as other
/// instants than they are: its values are time numbers in its current units and calendar (the
/// files', or the first file's when the join re-encoded them), and new units or a new calendar
/// would not change the numbers, only what they are read as (THREDDS takes new numbers from
/// `coordValue` or `<values>` then, which must be given too).
fn reinterprets_times(attrs: &Attrs, name: &str, value: &Value) -> Option<String> {
    let current = attrs.get("units").and_then(Value::as_str)?;
    if !current.to_ascii_lowercase().contains(" since ") || !matches!(name, "units" | "calendar") {
        return None;
    }
    let old = attrs.get(name).and_then(Value::as_str).unwrap_or(if name == "calendar" { "standard" } else { "" });
    let new = value.as_str().unwrap_or_default();
    let same = match name {
        "units" => TimeUnits::parse(old, "").ok().zip(TimeUnits::parse(new, "").ok()).is_some_and(|(a, b)| a == b),
        _ => Calendar::parse(old).is_some() && Calendar::parse(old) == Calendar::parse(new),
    };
    (!same).then(|| {
        format!(
            "holds times in {name} {old:?}: the NcML sets {name} to {new:?} without the values that go with it, \
             which would read every stored time as another instant (refused; give the values with <values> or \
             coordValue, give the files' {name}, or leave the attribute out)"
        )
    })
}

/// Changes a piece before it is joined (inside a nested `<netcdf>`): names and attributes
/// that do not change how values are read.
pub(super) fn apply_to_piece(ds: &mut VDataset, edits: &[Edit]) -> Result<(), JoinError> {
    for e in edits {
        let decoding = match e {
            Edit::SetAttribute { variable: Some(_), name, .. }
            | Edit::RemoveAttribute { variable: Some(_), name }
            | Edit::RenameAttribute { variable: Some(_), from: name, .. } => {
                DECODE_ATTRS.contains(&name.as_str()) || matches!(name.as_str(), "units" | "calendar")
            }
            _ => false,
        };
        if decoding {
            return Err(JoinError::Edit(format!(
                "{e:?}: inside a nested <netcdf>, attributes that change how values are read (units, calendar, \
                 _FillValue, missing_value, scale_factor, add_offset, _Unsigned) cannot be changed; change them at \
                 the top level"
            )));
        }
        if !apply_names(ds, e)? {
            return Err(JoinError::Edit(format!(
                "{}: inside a nested <netcdf>, NcML may rename and remove variables, dimensions and attributes and \
                 set attributes; <values>, new variables and <explicit/> are supported at the top level only",
                describe(e)
            )));
        }
    }
    Ok(())
}

impl Editable for VDataset {
    fn global(&mut self) -> &mut Attrs {
        &mut self.attrs
    }
    fn names(&self) -> Vec<String> {
        self.vars.keys().cloned().collect()
    }
    fn dims_mut(&mut self, name: &str) -> Option<&mut Vec<String>> {
        self.vars.get_mut(name).map(|v| &mut v.dims)
    }
    fn attrs_mut(&mut self, name: &str) -> Option<&mut Attrs> {
        self.vars.get_mut(name).map(|v| &mut v.attrs)
    }
    fn rename(&mut self, from: &str, to: &str) -> bool {
        let Some(v) = self.vars.remove(from) else { return false };
        if self.joined.remove(from) {
            self.joined.insert(to.to_string());
        }
        self.vars.insert(to.to_string(), v);
        true
    }
    fn remove(&mut self, name: &str) -> bool {
        self.vars.remove(name).is_some()
    }
    fn given(&mut self) -> &mut BTreeSet<String> {
        &mut self.given
    }
}

impl Editable for Joined {
    fn global(&mut self) -> &mut Attrs {
        &mut self.attrs
    }
    fn names(&self) -> Vec<String> {
        self.variables.keys().cloned().collect()
    }
    fn dims_mut(&mut self, name: &str) -> Option<&mut Vec<String>> {
        self.variables.get_mut(name).map(|v| &mut v.dims)
    }
    fn attrs_mut(&mut self, name: &str) -> Option<&mut Attrs> {
        self.variables.get_mut(name).map(|v| &mut v.attrs)
    }
    fn rename(&mut self, from: &str, to: &str) -> bool {
        let Some(v) = self.variables.remove(from) else { return false };
        self.variables.insert(to.to_string(), v);
        true
    }
    fn remove(&mut self, name: &str) -> bool {
        self.variables.remove(name).is_some()
    }
    fn given(&mut self) -> &mut BTreeSet<String> {
        &mut self.given
    }
}

fn describe(e: &Edit) -> String {
    match e {
        Edit::Values { name, .. } => format!("<values> of {name}"),
        Edit::Explicit { .. } => "<explicit/>".into(),
        Edit::Dimension { name, .. } => format!("<dimension name={name:?}> with a length"),
        Edit::Group { path } | Edit::GroupAttribute { group: path, .. } => format!("<group name={path:?}>"),
        other => format!("{other:?}"),
    }
}

impl Joined {
    /// Applies top-level NcML edits in order; naming a variable that does not exist is an
    /// error, and so is anything that would read stored values as other values.
    pub fn apply(&mut self, edits: &[Edit]) -> Result<(), JoinError> {
        // While edited, each variable's fill value sits among its attributes (see `FILL`).
        for v in self.variables.values_mut() {
            v.attrs.insert(FILL.into(), v.array.meta.fill_value.clone());
        }
        let result = self.apply_all(edits);
        for v in self.variables.values_mut() {
            if let Some(fill) = v.attrs.remove(FILL) {
                v.array.meta.fill_value = fill;
            }
        }
        result
    }

    fn apply_all(&mut self, edits: &[Edit]) -> Result<(), JoinError> {
        let mut declared: BTreeMap<String, u64> = BTreeMap::new();
        // With <explicit/>: the attributes as the files had them, by (variable, name).
        let mut explicit: Option<Explicit> = None;
        for e in edits {
            match e {
                Edit::Dimension { name, length } => {
                    if let Some(n) = self.dim_lengths().get(name).filter(|n| *n != length) {
                        return Err(JoinError::Edit(format!("dimension {name} has length {n}, not {length}")));
                    }
                    declared.insert(name.clone(), *length);
                }
                Edit::Values { name, dims, dtype, values } => {
                    self.set_values(name, dims.as_deref(), *dtype, values, &declared)?
                }
                Edit::Explicit { keep } => explicit = Some(self.keep_only(keep)),
                Edit::Group { path } => {
                    let mut at = String::new();
                    for part in path.split('/') {
                        at = if at.is_empty() { part.to_string() } else { format!("{at}/{part}") };
                        self.groups.entry(at.clone()).or_default();
                    }
                }
                Edit::GroupAttribute { group, name, value } => {
                    let attrs = self
                        .groups
                        .get_mut(group)
                        .ok_or_else(|| JoinError::Edit(format!("no group {group} to set attribute {name} of")))?;
                    attrs.insert(name.clone(), value.clone());
                }
                Edit::SetAttribute { variable, name, value } if value.is_null() => {
                    // An attribute without a value keeps (or, with <explicit/>, takes) the files'.
                    let Some(x) = &explicit else { continue };
                    if let Some(v) = x.original(variable.as_deref(), name) {
                        let set = Edit::SetAttribute { variable: variable.clone(), name: name.clone(), value: v };
                        apply_names(self, &set)?;
                    }
                    if let (Some(x), Some(var)) = (explicit.as_mut(), variable) {
                        x.declared.insert((var.clone(), name.clone()));
                    }
                }
                e => {
                    if let (Some(x), Edit::SetAttribute { variable: Some(var), name, .. }) = (explicit.as_mut(), e) {
                        x.declared.insert((var.clone(), name.clone()));
                    }
                    if let (Some(x), Edit::RenameVariable { from, to }) = (explicit.as_mut(), e) {
                        x.rename(from, to);
                    }
                    apply_names(self, e)?;
                }
            }
        }
        match explicit {
            Some(x) => x.check(self),
            None => Ok(()),
        }
    }

    fn dim_lengths(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for v in self.variables.values() {
            for (d, n) in v.dims.iter().zip(&v.array.meta.shape) {
                out.entry(d.clone()).or_insert(*n);
            }
        }
        out
    }

    /// `<explicit/>`: drops every variable not in `keep` and every attribute, remembering the
    /// files' attributes.
    fn keep_only(&mut self, keep: &[String]) -> Explicit {
        let mut x = Explicit { global: std::mem::take(&mut self.attrs), ..Default::default() };
        self.variables.retain(|n, _| keep.contains(n));
        for (name, v) in self.variables.iter_mut() {
            let fill = v.attrs.remove(FILL);
            x.vars.insert(name.clone(), std::mem::take(&mut v.attrs));
            if let Some(f) = fill {
                v.attrs.insert(FILL.into(), f.clone());
                x.vars.get_mut(name).expect("just inserted").insert(FILL.into(), f);
            }
        }
        x
    }

    /// A variable whose values the NcML gives: new, or new values of an existing one.
    fn set_values(
        &mut self,
        name: &str,
        dims: Option<&[String]>,
        dtype: Option<DType>,
        values: &Given,
        declared: &BTreeMap<String, u64>,
    ) -> Result<(), JoinError> {
        let lengths = self.dim_lengths();
        let existing = self.variables.get(name);
        if let (Given::Missing, Some(v)) = (values, existing) {
            // A declaration of a variable the files have: it must be what they have.
            let m = v.array.meta.dtype;
            if dims.is_some_and(|d| d != v.dims.as_slice())
                || dtype.is_some_and(|d| d.kind != m.kind || d.size != m.size)
            {
                return Err(JoinError::Edit(format!(
                    "{name}: the NcML declares it {} {:?}, the files have {} {:?} (changing a type or shape is refused)",
                    dtype.map_or("?".into(), |d| d.typestr()),
                    dims.unwrap_or_default(),
                    v.array.meta.dtype.typestr(),
                    v.dims
                )));
            }
            return Ok(());
        }
        let dims: Vec<String> = match (dims, existing) {
            (Some(d), _) => d.to_vec(),
            (None, Some(v)) => v.dims.clone(),
            (None, None) => return Err(JoinError::Edit(format!("the new variable {name} needs a shape"))),
        };
        // A dimension is looked for in the variable's group, then in each group above it.
        let scoped = |d: &str| {
            let mut group = name.rsplit_once('/').map(|(g, _)| g.to_string());
            while let Some(g) = group {
                if let Some(n) = declared.get(&format!("{g}/{d}")) {
                    return Some(*n);
                }
                group = g.rsplit_once('/').map(|(g, _)| g.to_string());
            }
            declared.get(d).or_else(|| lengths.get(d)).copied()
        };
        let shape = dims
            .iter()
            .map(|d| {
                scoped(d).ok_or_else(|| {
                    JoinError::Edit(format!("{name}: dimension {d} is neither in the files nor declared in the NcML"))
                })
            })
            .collect::<Result<Vec<u64>, _>>()?;
        if let Some(v) = existing {
            if v.array.meta.shape != shape {
                return Err(JoinError::Edit(format!(
                    "{name}: the NcML gives shape {shape:?}, the variable has {:?}",
                    v.array.meta.shape
                )));
            }
        }
        let dtype = match (dtype, existing) {
            (Some(d), _) => d,
            (None, Some(v)) => v.array.meta.dtype,
            (None, None) => return Err(JoinError::Edit(format!("the new variable {name} needs a type"))),
        };
        let n = shape.iter().try_fold(1u64, |a, b| a.checked_mul(*b)).unwrap_or(u64::MAX);
        let count = match values {
            Given::Range { npts: Some(p), .. } => (*p).max(n),
            _ => n,
        };
        if count.saturating_mul(dtype.size.max(8) as u64) > super::MATERIALIZE_LIMIT {
            return Err(JoinError::Edit(format!(
                "{name}: {count} values given by the NcML are more than it may hold ({} MiB); \
                 such a variable belongs in a file",
                super::MATERIALIZE_LIMIT >> 20
            )));
        }
        let fill = match existing {
            Some(v) if v.array.meta.dtype == dtype => v.attrs.get(FILL).cloned().unwrap_or(Value::Null),
            _ => Value::Null,
        };
        let texts: Vec<String> = match values {
            Given::Missing => {
                // No values: an array without chunks, read as its (netCDF default) fill value.
                let fill = default_fill(dtype);
                let mut meta = ArrayMetadataV2::plain(&shape, &shape, dtype, fill.clone());
                if dtype.kind == Kind::VlenString {
                    meta.filters = Some(vec![Codec::VlenUtf8 {}]);
                }
                let mut array = values_array(&meta, &[]);
                array.parts[0].chunks[0] = super::ChunkRef::NONE;
                return self.put_given(name, dims, array, fill);
            }
            Given::List(t) => t.clone(),
            Given::Range { start, increment, npts } => {
                let count = npts.unwrap_or(n);
                (0..count).map(|i| (start + i as f64 * increment).to_string()).collect()
            }
        };
        if texts.len() as u64 != n {
            return Err(JoinError::Edit(format!("{name}: {} values for {n} elements (shape {shape:?})", texts.len())));
        }
        let (bytes, filters) = encode(dtype, &texts).map_err(|e| JoinError::Edit(format!("{name}: {e}")))?;
        let mut meta = ArrayMetadataV2::plain(&shape, &shape, dtype, fill.clone());
        meta.filters = filters;
        let array = values_array(&meta, &bytes);
        self.put_given(name, dims, array, fill)
    }

    fn put_given(
        &mut self,
        name: &str,
        dims: Vec<String>,
        array: super::JoinedArray,
        fill: Value,
    ) -> Result<(), JoinError> {
        let mut attrs = self.variables.remove(name).map(|v| v.attrs).unwrap_or_default();
        attrs.insert(FILL.into(), fill);
        self.variables.insert(name.to_string(), JoinedVariable { dims, attrs, array });
        self.given.insert(name.to_string());
        Ok(())
    }
}

/// What `<explicit/>` dropped, and what the NcML declared since.
#[derive(Default)]
struct Explicit {
    global: Attrs,
    /// Each kept variable's attributes in the files (its fill value under `FILL`), by its
    /// current name.
    vars: BTreeMap<String, Attrs>,
    /// (variable, attribute) pairs the NcML declared.
    declared: BTreeSet<(String, String)>,
}

impl Explicit {
    fn original(&self, variable: Option<&str>, name: &str) -> Option<Value> {
        match variable {
            None => self.global.get(name).cloned(),
            Some(v) => self.vars.get(v).and_then(|a| a.get(name)).cloned(),
        }
    }

    fn rename(&mut self, from: &str, to: &str) {
        if let Some(a) = self.vars.remove(from) {
            self.vars.insert(to.to_string(), a);
        }
        let renamed: Vec<_> = self.declared.iter().filter(|(v, _)| v == from).cloned().collect();
        for (v, a) in renamed {
            self.declared.remove(&(v.clone(), a.clone()));
            self.declared.insert((to.to_string(), a));
        }
    }

    /// Every kept variable whose stored values need decoding attributes or a fill value to
    /// read right has them declared, with the files' values.
    fn check(&self, joined: &Joined) -> Result<(), JoinError> {
        for (name, original) in &self.vars {
            let Some(v) = joined.variables.get(name).filter(|_| !joined.given.contains(name)) else { continue };
            for (k, x) in original {
                let needed = DECODE_ATTRS.contains(&k.as_str()) || k == FILL && !x.is_null() && !is_nan(x);
                let attr = if k == FILL { "_FillValue" } else { k.as_str() };
                let declared = self.declared.contains(&(name.clone(), attr.to_string()));
                let same = k == FILL || v.attrs.get(k).is_some_and(|y| same_number(x, y) || x == y);
                if needed && !(declared && same) {
                    return Err(JoinError::Edit(format!(
                        "<explicit/>: the stored values of {name} need {attr} = {x}, which the NcML does not declare; \
                         without it they would be read as other values (refused; declare it)"
                    )));
                }
            }
        }
        Ok(())
    }
}

fn is_nan(v: &Value) -> bool {
    v.as_str() == Some("NaN") || v.as_f64().is_some_and(f64::is_nan)
}

/// The netCDF default fill value of a type (what netCDF returns for values never written).
fn default_fill(dtype: DType) -> Value {
    match (dtype.kind, dtype.size) {
        (Kind::Int, 1) => Value::from(-127),
        (Kind::Int, 2) => Value::from(-32767),
        (Kind::Int, 4) => Value::from(-2147483647),
        (Kind::Int, 8) => Value::from(-9223372036854775806i64),
        (Kind::UInt, 1) => Value::from(255),
        (Kind::UInt, 2) => Value::from(65535),
        (Kind::UInt, 4) => Value::from(4294967295u64),
        (Kind::UInt, 8) => Value::from(18446744073709551614u64),
        (Kind::Float, 4) => Value::from(9.969_209_968_386_869e36),
        (Kind::Float, 8) => Value::from(9.969_209_968_386_869e36),
        _ => Value::Null,
    }
}

/// The uncompressed bytes of `texts` as `dtype` (little-endian), and the filters a text array
/// needs.
fn encode(dtype: DType, texts: &[String]) -> Result<(Vec<u8>, Option<Vec<Codec>>), String> {
    if dtype.kind == Kind::VlenString {
        return Ok((vlen_utf8_encode(texts), Some(vec![Codec::VlenUtf8 {}])));
    }
    let mut out = Vec::with_capacity(texts.len() * dtype.size);
    for t in texts {
        let t = t.trim();
        let bad = || format!("{t:?} is not a {}", dtype.typestr());
        match (dtype.kind, dtype.size) {
            (Kind::Float, 4) => out.extend(t.parse::<f32>().map_err(|_| bad())?.to_le_bytes()),
            (Kind::Float, 8) => out.extend(t.parse::<f64>().map_err(|_| bad())?.to_le_bytes()),
            (Kind::Int, size) => {
                let x: i64 = t.parse().map_err(|_| bad())?;
                let b = x.to_le_bytes();
                if size < 8 && (x >> (size * 8 - 1) != 0 && x >> (size * 8 - 1) != -1) {
                    return Err(bad());
                }
                out.extend(&b[..size]);
            }
            (Kind::UInt, size) => {
                let x: u64 = t.parse().map_err(|_| bad())?;
                if size < 8 && x >> (size * 8) != 0 {
                    return Err(bad());
                }
                out.extend(&x.to_le_bytes()[..size]);
            }
            _ => return Err(format!("values of type {} are not supported", dtype.typestr())),
        }
    }
    Ok((out, None))
}

/// The dtype of an NcML `type` (little-endian), or why it is not served.
pub fn ncml_dtype(name: &str) -> Result<DType, String> {
    let le = |k, s| DType::new(k, s, Endian::Little);
    Ok(match name {
        "byte" | "enum1" => le(Kind::Int, 1),
        "short" | "enum2" => le(Kind::Int, 2),
        "int" | "enum4" => le(Kind::Int, 4),
        "long" => le(Kind::Int, 8),
        "ubyte" => le(Kind::UInt, 1),
        "ushort" => le(Kind::UInt, 2),
        "uint" => le(Kind::UInt, 4),
        "ulong" => le(Kind::UInt, 8),
        "float" => le(Kind::Float, 4),
        "double" => le(Kind::Float, 8),
        "String" | "string" => DType::new(Kind::VlenString, 0, Endian::NotApplicable),
        other => return Err(format!("type {other:?} is not supported (char, opaque and Structure are refused)")),
    })
}
