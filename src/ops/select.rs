//! From arguments to index selections: finding a dataset's axes by CF conventions, and turning
//! `time`, `area`, `level` and `isel` into the positions to read along each dimension.

use std::collections::BTreeMap;

use super::kernel::{read_all, Decoded};
use super::request::{Axis, Level, Problem, Request};
use super::store::{ChunkSource, StoreView, Variable};
use crate::cftime;

/// The positions to read along each named dimension (absent: all), and for curvilinear grids
/// the points of the index box that lie outside the requested area.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub positions: BTreeMap<String, Vec<usize>>,
    pub mask: Option<Mask>,
}

/// Points to mask, over the selected `(y, x)` box of a curvilinear grid (row-major, `true` =
/// outside the area).
#[derive(Clone, Debug)]
pub struct Mask {
    pub y: String,
    pub x: String,
    pub outside: Vec<bool>,
}

impl Selection {
    /// The positions along each dimension of `var`.
    pub fn for_var(&self, var: &Variable) -> Vec<Vec<usize>> {
        var.dims
            .iter()
            .zip(&var.meta.shape)
            .map(|(d, n)| self.positions.get(d).cloned().unwrap_or_else(|| (0..*n as usize).collect()))
            .collect()
    }
}

/// The axes of a variable's dimensions, and its 2-D latitude/longitude when it has them.
#[derive(Clone, Debug, Default)]
pub struct Axes {
    pub by_dim: BTreeMap<String, Axis>,
    /// (latitude, longitude) variable names of a curvilinear grid.
    pub curvilinear: Option<(String, String)>,
}

impl Axes {
    pub fn dim(&self, axis: Axis) -> Option<&str> {
        self.by_dim.iter().find(|(_, a)| **a == axis).map(|(d, _)| d.as_str())
    }
}

fn is_lat(v: &Variable) -> bool {
    let units = v.attr_str("units").unwrap_or("");
    matches!(units, "degrees_north" | "degree_north" | "degrees_N" | "degree_N" | "degreesN" | "degreeN")
        || v.attr_str("standard_name") == Some("latitude")
}

fn is_lon(v: &Variable) -> bool {
    let units = v.attr_str("units").unwrap_or("");
    matches!(units, "degrees_east" | "degree_east" | "degrees_E" | "degree_E" | "degreesE" | "degreeE")
        || v.attr_str("standard_name") == Some("longitude")
}

/// The axis of a 1-D coordinate variable, or of a bare dimension by its name.
fn axis_of(dim: &str, coord: Option<&Variable>) -> Option<Axis> {
    if let Some(c) = coord {
        match c.attr_str("axis").map(str::to_ascii_uppercase).as_deref() {
            Some("T") => return Some(Axis::Time),
            Some("Z") => return Some(Axis::Level),
            Some("Y") => return Some(Axis::Latitude),
            Some("X") => return Some(Axis::Longitude),
            Some("E") => return Some(Axis::Realization),
            _ => {}
        }
        let sn = c.attr_str("standard_name").unwrap_or("");
        match sn {
            "time" => return Some(Axis::Time),
            // Projected coordinates in metres are not latitude and longitude.
            "latitude" | "grid_latitude" => return Some(Axis::Latitude),
            "longitude" | "grid_longitude" => return Some(Axis::Longitude),
            "realization" => return Some(Axis::Realization),
            "air_pressure" | "height" | "depth" | "altitude" | "model_level_number" => return Some(Axis::Level),
            s if s.starts_with("atmosphere_") || s.starts_with("ocean_") => return Some(Axis::Level),
            _ => {}
        }
        if c.attr_str("units").is_some_and(|u| u.contains(" since ")) {
            return Some(Axis::Time);
        }
        if is_lat(c) {
            return Some(Axis::Latitude);
        }
        if is_lon(c) {
            return Some(Axis::Longitude);
        }
        if c.attr_str("positive").is_some() {
            return Some(Axis::Level);
        }
    }
    match dim.to_ascii_lowercase().as_str() {
        "time" | "t" => Some(Axis::Time),
        "lat" | "latitude" => Some(Axis::Latitude),
        "lon" | "longitude" => Some(Axis::Longitude),
        "lev" | "plev" | "level" | "depth" | "height" | "z" | "alt" => Some(Axis::Level),
        "member" | "realization" | "ensemble" | "ens" | "number" => Some(Axis::Realization),
        _ => None,
    }
}

/// The 1-D coordinate variable of a dimension.
pub fn coordinate<'a>(view: &'a StoreView, dim: &str) -> Option<&'a Variable> {
    view.variables.get(dim).filter(|c| c.dims.len() == 1 && c.dims[0] == dim)
}

/// Finds the axes of `var` by CF conventions.
pub fn axes(view: &StoreView, var: &Variable) -> Axes {
    let mut out = Axes::default();
    for d in &var.dims {
        if let Some(axis) = axis_of(d, coordinate(view, d)) {
            if out.dim(axis).is_none() {
                out.by_dim.insert(d.clone(), axis);
            }
        }
    }
    let named = var.attr_str("coordinates").unwrap_or("").split_whitespace();
    let two_d: Vec<&Variable> = named.filter_map(|n| view.variables.get(n)).filter(|v| v.dims.len() == 2).collect();
    let lat = two_d.iter().find(|v| is_lat(v));
    let lon = two_d.iter().find(|v| is_lon(v));
    if let (Some(lat), Some(lon)) = (lat, lon) {
        if lat.dims == lon.dims && lat.dims.iter().all(|d| var.dims.contains(d)) {
            out.by_dim.retain(|_, a| !matches!(a, Axis::Latitude | Axis::Longitude));
            out.by_dim.insert(lat.dims[0].clone(), Axis::Latitude);
            out.by_dim.insert(lat.dims[1].clone(), Axis::Longitude);
            out.curvilinear = Some((lat.name.clone(), lon.name.clone()));
        }
    }
    out
}

/// Whether longitude `lon` lies in the arc from `west` eastwards to `east`, and how far east of
/// `west` it is.
pub fn east_of(lon: f64, west: f64, east: f64) -> Option<f64> {
    let width = east - west;
    let offset = (lon - west).rem_euclid(360.0);
    if width >= 360.0 || (width <= -360.0) {
        return Some(offset);
    }
    let span = width.rem_euclid(360.0);
    (offset <= span + 1e-9 || offset >= 360.0 - 1e-9).then_some(if offset >= 360.0 - 1e-9 { 0.0 } else { offset })
}

/// Builds the selection of `req` for `var`.
pub fn select(
    view: &StoreView,
    source: &dyn ChunkSource,
    var: &Variable,
    req: &Request,
    axes: &Axes,
) -> Result<Selection, Problem> {
    let s = Selecting { view, source, var, axes };
    let mut sel = Selection::default();
    for r in &req.isel {
        let i = var.dims.iter().position(|d| *d == r.dim).ok_or_else(|| {
            Problem::not_one_of("isel", &r.dim, &var.dims.iter().map(String::as_str).collect::<Vec<_>>())
        })?;
        let positions: Vec<usize> = r.positions(var.meta.shape[i] as usize).collect();
        sel.positions.insert(r.dim.clone(), nonempty(positions, "isel")?);
    }
    if let Some((start, end)) = &req.time {
        s.by_time(&mut sel, start, end)?;
    }
    if let Some(level) = &req.level {
        s.by_level(&mut sel, level)?;
    }
    if let Some(area) = req.area {
        s.by_area(&mut sel, area)?;
    }
    Ok(sel)
}

/// What selecting on one variable works with. Each criterion narrows the positions the ones
/// before it left (`isel`, then time, level, area).
struct Selecting<'a> {
    view: &'a StoreView,
    source: &'a dyn ChunkSource,
    var: &'a Variable,
    axes: &'a Axes,
}

impl Selecting<'_> {
    /// The positions of `dim` still selected (all of them, if nothing selected on it yet).
    fn candidates(&self, sel: &Selection, dim: &str) -> Vec<usize> {
        let var = self.var;
        let n = var.dims.iter().position(|d| d == dim).map_or(0, |i| var.meta.shape[i] as usize);
        sel.positions.get(dim).cloned().unwrap_or_else(|| (0..n).collect())
    }

    /// The dimension of `axis`, or 422 naming the argument that needs it.
    fn need(&self, axis: Axis, arg: &str) -> Result<String, Problem> {
        self.axes.dim(axis).map(str::to_string).ok_or_else(|| {
            Problem::unprocessable(Some(arg), format!("{} has no {} axis to select on", self.var.name, axis.name()))
        })
    }

    /// `time=start/end`: steps at or after `start`, before `end` (bounds in the calendar of
    /// the time coordinate; an empty bound is open).
    fn by_time(&self, sel: &mut Selection, start: &str, end: &str) -> Result<(), Problem> {
        let dim = self.need(Axis::Time, "time")?;
        let coord = coordinate(self.view, &dim)
            .ok_or_else(|| Problem::unprocessable(Some("time"), "the time dimension has no coordinate variable"))?;
        let units =
            cftime::TimeUnits::parse(coord.attr_str("units").unwrap_or(""), coord.attr_str("calendar").unwrap_or(""))
                .map_err(|e| Problem::unprocessable(Some("time"), format!("time units: {e}")))?;
        let bound = |text: &str, is_end: bool| -> Result<Option<f64>, Problem> {
            if text.is_empty() {
                return Ok(None);
            }
            let t = cftime::parse_bound(text, is_end, units.calendar).map_err(|e| Problem::invalid("time", e))?;
            units.encode(&t).map(Some).map_err(|e| Problem::invalid("time", e))
        };
        let (lo, hi) = (bound(start, false)?, bound(end, true)?);
        let values = read_coordinate(self.source, coord)?;
        let keep: Vec<usize> = self
            .candidates(sel, &dim)
            .into_iter()
            .filter(|&i| lo.is_none_or(|lo| values[i] >= lo) && hi.is_none_or(|hi| values[i] < hi))
            .collect();
        sel.positions.insert(dim, nonempty(keep, "time")?);
        Ok(())
    }

    /// `level=a/b` (an inclusive range) or `level=v1,v2` (exact values, in the order given).
    fn by_level(&self, sel: &mut Selection, level: &Level) -> Result<(), Problem> {
        let dim = self.need(Axis::Level, "level")?;
        let coord = coordinate(self.view, &dim).ok_or_else(|| {
            Problem::unprocessable(Some("level"), "the vertical dimension has no coordinate variable")
        })?;
        let values = read_coordinate(self.source, coord)?;
        let cands = self.candidates(sel, &dim);
        let keep: Vec<usize> = match level {
            Level::Range(a, b) => cands.into_iter().filter(|&i| values[i] >= *a && values[i] <= *b).collect(),
            Level::Values(wanted) => {
                let mut keep = Vec::new();
                for w in wanted {
                    let close = |v: f64| (v - w).abs() <= 1e-9 * w.abs().max(1.0);
                    let i = cands.iter().copied().find(|&i| close(values[i])).ok_or_else(|| {
                        Problem::unprocessable(Some("level"), format!("level {w} is not a value of {dim}"))
                    })?;
                    keep.push(i);
                }
                keep
            }
        };
        sel.positions.insert(dim, nonempty(keep, "level")?);
        Ok(())
    }

    /// `area=west,south,east,north`, bounds included; longitudes in the order east of `west`
    /// (across the dateline when it lies inside).
    fn by_area(&self, sel: &mut Selection, area: [f64; 4]) -> Result<(), Problem> {
        let (view, source) = (self.view, self.source);
        if let Some((lat, lon)) = &self.axes.curvilinear {
            let candidates = |sel: &Selection, dim: &str| self.candidates(sel, dim);
            return select_curvilinear(view, source, sel, area, lat, lon, &candidates);
        }
        let [west, south, east, north] = area;
        let dim = self.need(Axis::Latitude, "area")?;
        let values = read_coordinate(source, coordinate_of(view, &dim, "area")?)?;
        let keep =
            self.candidates(sel, &dim).into_iter().filter(|&i| values[i] >= south && values[i] <= north).collect();
        sel.positions.insert(dim, nonempty(keep, "area")?);
        let dim = self.need(Axis::Longitude, "area")?;
        let values = read_coordinate(source, coordinate_of(view, &dim, "area")?)?;
        let mut keep: Vec<(f64, usize)> = self
            .candidates(sel, &dim)
            .into_iter()
            .filter_map(|i| east_of(values[i], west, east).map(|o| (o, i)))
            .collect();
        if (east - west).abs() < 360.0 {
            keep.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        }
        sel.positions.insert(dim, nonempty(keep.into_iter().map(|(_, i)| i).collect(), "area")?);
        Ok(())
    }
}

fn nonempty(keep: Vec<usize>, argument: &str) -> Result<Vec<usize>, Problem> {
    if keep.is_empty() {
        return Err(Problem::unprocessable(
            Some(argument),
            format!("the {argument} selection is empty: no data lies in it"),
        ));
    }
    Ok(keep)
}

/// The coordinate variable of a dimension an argument selects on, or a 422 naming the argument.
fn coordinate_of<'a>(view: &'a StoreView, dim: &str, argument: &str) -> Result<&'a Variable, Problem> {
    coordinate(view, dim).ok_or_else(|| {
        Problem::unprocessable(Some(argument), format!("the dimension {dim} has no coordinate variable to select on"))
    })
}

/// A whole coordinate variable as floats (decoded: packed coordinates are unpacked).
pub fn read_coordinate(source: &dyn ChunkSource, coord: &Variable) -> Result<Vec<f64>, Problem> {
    let all: Vec<Vec<usize>> = coord.meta.shape.iter().map(|n| (0..*n as usize).collect()).collect();
    read_decoded(source, coord, &all)
}

/// The selected elements of a small variable (coordinates, weights) as decoded floats, read on
/// the calling thread.
pub fn read_decoded(source: &dyn ChunkSource, var: &Variable, sel: &[Vec<usize>]) -> Result<Vec<f64>, Problem> {
    let raw = read_all(source, var, sel).map_err(|e| e.problem())?;
    let mut values = Vec::new();
    super::store::to_f64(&var.meta.dtype, &raw, &mut values).map_err(|e| Problem::internal(e.to_string()))?;
    let decoded = Decoded::of(var);
    Ok(values.into_iter().map(|v| decoded.apply(v)).collect())
}

/// Crops a curvilinear grid to the index box of the points inside `area`, and masks the rest.
fn select_curvilinear(
    view: &StoreView,
    source: &dyn ChunkSource,
    sel: &mut Selection,
    [west, south, east, north]: [f64; 4],
    lat: &str,
    lon: &str,
    candidates: &dyn Fn(&Selection, &str) -> Vec<usize>,
) -> Result<(), Problem> {
    let (lat, lon) = (&view.variables[lat], &view.variables[lon]);
    let (ydim, xdim) = (lat.dims[0].clone(), lat.dims[1].clone());
    let nx = lat.meta.shape[1] as usize;
    let (lats, lons) = (read_coordinate(source, lat)?, read_coordinate(source, lon)?);
    let (ys, xs) = (candidates(sel, &ydim), candidates(sel, &xdim));
    let inside = |y: usize, x: usize| {
        let (la, lo) = (lats[y * nx + x], lons[y * nx + x]);
        la >= south && la <= north && east_of(lo, west, east).is_some()
    };
    let (mut ybox, mut xbox) = ((usize::MAX, 0), (usize::MAX, 0));
    for (yi, &y) in ys.iter().enumerate() {
        for (xi, &x) in xs.iter().enumerate() {
            if inside(y, x) {
                ybox = (ybox.0.min(yi), ybox.1.max(yi));
                xbox = (xbox.0.min(xi), xbox.1.max(xi));
            }
        }
    }
    if ybox.0 == usize::MAX {
        return Err(Problem::unprocessable(Some("area"), "the area selection is empty: no grid point lies in it"));
    }
    let ys = ys[ybox.0..=ybox.1].to_vec();
    let xs = xs[xbox.0..=xbox.1].to_vec();
    let outside = ys.iter().flat_map(|&y| xs.iter().map(move |&x| (y, x))).map(|(y, x)| !inside(y, x)).collect();
    sel.positions.insert(ydim.clone(), ys);
    sel.positions.insert(xdim.clone(), xs);
    sel.mask = Some(Mask { y: ydim, x: xdim, outside });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longitudes_read_west_to_east_across_the_dateline() {
        assert_eq!(east_of(175.0, 170.0, -170.0), Some(5.0));
        assert_eq!(east_of(-175.0, 170.0, -170.0), Some(15.0));
        assert_eq!(east_of(185.0, 170.0, -170.0), Some(15.0));
        assert_eq!(east_of(0.0, 170.0, -170.0), None);
        assert_eq!(east_of(-170.0, 170.0, -170.0), Some(20.0));
        assert_eq!(east_of(10.0, 0.0, 360.0), Some(10.0));
        assert_eq!(east_of(350.0, -20.0, 20.0), Some(10.0));
        assert_eq!(east_of(30.0, -20.0, 20.0), None);
    }
}
