//! The checks of a join: a coordinate that is not joined must be the same in every piece, as
//! xarray compares it once decoded; a joined coordinate must increase from piece to piece.

use serde_json::Value;

use super::*;

impl Joiner<'_> {
    /// For a variable taken from the first piece: a coordinate must be the same in every piece
    /// that has it, as xarray compares it once decoded: CF-decoded values, and for times the
    /// instants in one calendar (so the same instants in other units are the same coordinate,
    /// and the same numbers in other units are not).
    pub(super) fn check_same(&self, name: &str, kids: &[VDataset]) -> Result<(), JoinError> {
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
    pub(super) fn comparable(
        &self,
        name: &str,
        v: &VVar,
        time: Option<&(String, String)>,
    ) -> Result<Vec<Cell>, JoinError> {
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
    pub(super) fn coordinate_values(&self, dim: &str, kids: &[VDataset]) -> Result<Vec<Vec<f64>>, JoinError> {
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

    pub(super) fn check_increasing(&self, dim: &str, kids: &[VDataset], values: &[Vec<f64>]) -> Result<(), JoinError> {
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
    pub(super) fn values(&self, name: &str, v: &VVar) -> Result<Vec<Cell>, JoinError> {
        if let Content::Values(meta, bytes) = &v.content {
            if meta.dtype.kind == Kind::VlenString {
                return Ok(bytes.iter().map(|b| Cell::Byte(*b)).collect());
            }
        }
        if let Content::Parts(parts) = &v.content {
            let view = &self.views[parts[0].member].variables[&parts[0].var];
            if matches!(view.meta.dtype.kind, Kind::Bytes | Kind::VlenString) {
                let array = self.array(name, v, Mode::Assemble, None)?;
                let bytes = array
                    .assemble(&vec![0; v.shape.len()], self.reader)
                    .map_err(|e| JoinError::Unreadable(e.to_string()))?;
                return Ok(bytes.into_iter().map(Cell::Byte).collect());
            }
        }
        Ok(self.values_f64(name, v)?.into_iter().map(Cell::Number).collect())
    }

    pub(super) fn values_f64(&self, name: &str, v: &VVar) -> Result<Vec<f64>, JoinError> {
        let array = self.array(name, v, Mode::Decode, None)?;
        f64_values(&array, self.reader)
    }
}

/// A value of a coordinate, for comparisons.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Cell {
    Number(f64),
    Byte(u8),
}

pub(super) fn same_value(a: &Cell, b: &Cell) -> bool {
    match (a, b) {
        (Cell::Number(x), Cell::Number(y)) => x == y || (x.is_nan() && y.is_nan()),
        _ => a == b,
    }
}

pub(super) fn same_number(a: &Value, b: &Value) -> bool {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x == y || (x.is_nan() && y.is_nan()),
        _ => a == b,
    }
}

pub(super) fn calendar_of(name: &str) -> Option<Calendar> {
    if name.trim().is_empty() {
        return Some(Calendar::Standard);
    }
    Calendar::parse(name)
}

pub(super) fn calendar_name(name: &str) -> &str {
    if name.trim().is_empty() {
        "standard"
    } else {
        name
    }
}
