//! Planning and running `subset` and `average` on one dataset.

use serde_json::{json, Value};

use super::kernel::{gather, strides, Decoded, KernelError, Layout, Run, WeightedSum};
use super::output::{OutVar, Output};
use super::request::{Axis, Format, Problem, Process, Request, Weights};
use super::select::{axes, coordinate, read_coordinate, read_decoded, select, Axes, Mask, Selection};
use super::store::{looks_f32, Attrs, ChunkSource, StoreView, Variable, NAN};
use crate::cftime;
use crate::zarr::{DType, Kind};

/// A request checked against a dataset, ready to run.
#[derive(Debug)]
pub struct Plan {
    pub request: Request,
    pub view: StoreView,
    vars: Vec<(Variable, Axes, Selection)>,
    /// Decoded bytes of every chunk the computation reads.
    pub read_bytes: u64,
    /// Bytes of the result's arrays.
    pub output_bytes: u64,
    /// Accumulator bytes of one worker thread (averages keep a cell per time step when time is
    /// averaged after space).
    pub work_bytes: u64,
}

/// Attributes that describe a variable's stored encoding, not its decoded values.
const ENCODING_ATTRS: [&str; 8] =
    ["_FillValue", "missing_value", "scale_factor", "add_offset", "valid_range", "valid_min", "valid_max", "_Unsigned"];

fn unknown_variable(view: &StoreView, name: &str) -> Problem {
    let names: Vec<&str> = view.variables.keys().map(String::as_str).collect();
    Problem {
        allowed: names.iter().map(|s| s.to_string()).collect(),
        argument: Some("var".into()),
        ..Problem::not_found(format!("the dataset has no variable {name:?}"))
    }
}

/// Element types the operations read and write: float16, complex and opaque values are served
/// by the S3 gateway but never computed on.
fn computable(dtype: &DType) -> bool {
    match dtype.kind {
        Kind::Float => matches!(dtype.size, 4 | 8),
        Kind::Complex | Kind::Void => false,
        _ => true,
    }
}

/// Checks `request` against the dataset and works out what it will read and write.
pub fn plan(view: StoreView, source: &dyn ChunkSource, request: Request) -> Result<Plan, Problem> {
    let request = if request.format == Format::Png { picture_defaults(&view, request)? } else { request };
    let mut vars = Vec::new();
    let mut read_bytes = 0u64;
    let mut output_bytes = 0u64;
    let mut work_bytes = 0u64;
    for name in &request.vars {
        let var = view.variables.get(name).ok_or_else(|| unknown_variable(&view, name))?.clone();
        if matches!(var.meta.dtype.kind, Kind::VlenString)
            || (request.process == Process::Average && var.meta.dtype.kind == Kind::Bytes)
        {
            return Err(Problem::unprocessable(
                Some("var"),
                format!("{name} holds strings, which cannot be {}d", request.process.id()),
            ));
        }
        if !computable(&var.meta.dtype) {
            return Err(Problem::unprocessable(
                Some("var"),
                format!(
                    "{name} holds {} values; the operations compute on integers, float32 and float64",
                    var.meta.dtype.typestr()
                ),
            ));
        }
        let ax = axes(&view, &var);
        let sel = select(&view, source, &var, &request, &ax)?;
        let positions = sel.for_var(&var);
        let chunks: u64 = positions
            .iter()
            .zip(&var.meta.chunks)
            .map(|(p, c)| {
                let mut ids: Vec<u64> = p.iter().map(|i| *i as u64 / c).collect();
                ids.sort_unstable();
                ids.dedup();
                ids.len() as u64
            })
            .product();
        read_bytes += chunks * var.meta.chunk_nbytes();
        let elements = positions.iter().try_fold(1u64, |n, p| n.checked_mul(p.len() as u64)).unwrap_or(u64::MAX);
        match request.process {
            Process::Subset => {
                output_bytes = output_bytes.saturating_add(elements.saturating_mul(var.meta.dtype.size() as u64))
            }
            Process::Average => {
                // Weights the dataset cannot give are refused now, not when the job runs.
                weight_source(&view, &var, request.weights, &ax)?;
                let (out, work) = average_sizes(&request, &ax, &var, &positions);
                output_bytes = output_bytes.saturating_add(out.saturating_mul(8));
                work_bytes = work_bytes.max(work.saturating_mul(16));
            }
        }
        vars.push((var, ax, sel));
    }
    Ok(Plan { request, view, vars, read_bytes, output_bytes, work_bytes })
}

/// What a picture shows unless the request says otherwise: a map takes the first index of
/// every dimension that is not horizontal (the first time and level); a series (its horizontal
/// dimensions reduced to a point by `isel`, or averaged over) keeps time and takes the first
/// index of the rest. Dimensions the request selects or averages are left as asked.
fn picture_defaults(view: &StoreView, mut request: Request) -> Result<Request, Problem> {
    let Some(var) = request.vars.first().and_then(|n| view.variables.get(n)) else { return Ok(request) };
    let ax = axes(view, var);
    let mut horizontal: Vec<&String> =
        var.dims.iter().filter(|d| matches!(ax.by_dim.get(*d), Some(Axis::Latitude | Axis::Longitude))).collect();
    if horizontal.is_empty() {
        horizontal = var.dims.iter().rev().take(2).collect();
    }
    let point = |d: &String| {
        request.isel.iter().any(|r| &r.dim == d && matches!((r.start, r.stop), (Some(a), Some(b)) if b - a == 1))
    };
    let averaged = |d: &String| ax.by_dim.get(d).is_some_and(|a| request.dims.contains(a));
    let series = horizontal.iter().all(|d| point(d) || averaged(d));
    let mut defaults = Vec::new();
    for d in &var.dims {
        let axis = ax.by_dim.get(d);
        let chosen = request.isel.iter().any(|r| &r.dim == d)
            || averaged(d)
            || (axis == Some(&Axis::Time) && (request.time.is_some() || series))
            || (axis == Some(&Axis::Level) && request.level.is_some())
            || horizontal.contains(&d);
        if !chosen {
            defaults.push(super::request::IndexRange { dim: d.clone(), start: Some(0), stop: Some(1) });
        }
    }
    request.isel.extend(defaults);
    request.isel.sort_by(|a, b| a.dim.cmp(&b.dim));
    Ok(request)
}

/// Cells of an average's result and of its accumulators: the dimensions that are not
/// averaged, with time counted per step while space is averaged first.
fn average_sizes(req: &Request, ax: &Axes, var: &Variable, positions: &[Vec<usize>]) -> (u64, u64) {
    let averaged = |d: &String| ax.by_dim.get(d).is_some_and(|a| req.dims.contains(a));
    let is_time = |d: &String| ax.by_dim.get(d) == Some(&Axis::Time);
    let spatial = var.dims.iter().any(|d| averaged(d) && !is_time(d));
    let (mut out, mut work) = (1u64, 1u64);
    for (d, p) in var.dims.iter().zip(positions) {
        let n = p.len() as u64;
        if is_time(d) && (req.freq.is_some() || averaged(d)) {
            out = out.saturating_mul(if req.freq.is_some() { n } else { 1 });
            work = work.saturating_mul(if spatial || req.freq.is_some() { n } else { 1 });
        } else if !averaged(d) {
            out = out.saturating_mul(n);
            work = work.saturating_mul(n);
        }
    }
    (out, work)
}

/// Runs a plan.
pub fn execute(plan: &Plan, source: &dyn ChunkSource, run: &Run) -> Result<Output, Problem> {
    let mut out = Output { attrs: plan.view.attrs.clone(), ..Output::default() };
    for (var, ax, sel) in &plan.vars {
        match plan.request.process {
            Process::Subset => subset_var(&mut out, &plan.view, source, run, var, sel)?,
            Process::Average => average_var(&mut out, &plan.view, source, run, &plan.request, var, ax, sel)?,
        }
        out.data_vars.push(var.name.clone());
    }
    let note = format!("zarrgate {}: {}", plan.request.process.id(), plan.request.canonical());
    let history = match out.attrs.get("history").and_then(Value::as_str) {
        Some(h) if !h.is_empty() => format!("{h}\n{note}"),
        _ => note,
    };
    out.attrs.insert("history".into(), json!(history));
    Ok(out)
}

fn kernel(e: KernelError) -> Problem {
    e.problem()
}

/// Copies `name` (selected along its dimensions) into the output, once.
fn copy_var(
    out: &mut Output,
    view: &StoreView,
    source: &dyn ChunkSource,
    run: &Run,
    name: &str,
    sel: &Selection,
) -> Result<(), Problem> {
    if out.var(name).is_some() {
        return Ok(());
    }
    let Some(v) = view.variables.get(name) else { return Ok(()) };
    if v.meta.dtype.kind == Kind::VlenString || !computable(&v.meta.dtype) {
        return Ok(());
    }
    let positions = sel.for_var(v);
    let raw = gather(run, source, v, &positions).map_err(kernel)?;
    for (d, p) in v.dims.iter().zip(&positions) {
        out.add_dim(d, p.len());
    }
    out.vars.push(OutVar::from_raw(name, v.dims.clone(), v.meta.dtype, raw, v.attrs.clone()));
    Ok(())
}

/// The coordinates and bounds that travel with `var`: 1-D coordinates of its dimensions, the
/// variables its `coordinates` attribute names (when their dimensions are `var`'s), and their
/// `bounds`.
fn companions(view: &StoreView, var: &Variable, keep_dim: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut names: Vec<String> =
        var.dims.iter().filter(|d| keep_dim(d)).filter(|d| coordinate(view, d).is_some()).cloned().collect();
    for n in var.attr_str("coordinates").unwrap_or("").split_whitespace() {
        if let Some(c) = view.variables.get(n) {
            // Its dimensions are kept ones, or its own (like the string length of a label).
            if c.dims.iter().all(|d| !var.dims.contains(d) || keep_dim(d)) && !names.contains(&c.name) {
                names.push(c.name.clone());
            }
        }
    }
    let bounds: Vec<String> = names
        .iter()
        .filter_map(|n| view.variables[n].attr_str("bounds").map(str::to_string))
        .filter(|b| {
            view.variables.get(b).is_some_and(|bv| bv.dims.iter().all(|d| !var.dims.contains(d) || keep_dim(d)))
        })
        .collect();
    names.extend(bounds);
    names
}

/// NetCDF's default fill for a type, used when a masked integer variable has no `_FillValue`.
fn default_fill(kind: Kind, size: usize) -> Value {
    match (kind, size) {
        (Kind::Int, 1) => json!(-127),
        (Kind::Int, 2) => json!(-32767),
        (Kind::Int, 4) => json!(-2147483647),
        (Kind::Int, _) => json!(-9223372036854775806i64),
        (Kind::UInt, 1) => json!(255),
        (Kind::UInt, 2) => json!(65535),
        (Kind::UInt, 4) => json!(4294967295u32),
        (Kind::UInt, _) => json!(18446744073709551614u64),
        _ => json!(9.969_209_968_386_869e36),
    }
}

fn subset_var(
    out: &mut Output,
    view: &StoreView,
    source: &dyn ChunkSource,
    run: &Run,
    var: &Variable,
    sel: &Selection,
) -> Result<(), Problem> {
    copy_var(out, view, source, run, &var.name, sel)?;
    if let Some(mask) = &sel.mask {
        let (Some(yi), Some(xi)) =
            (var.dims.iter().position(|d| *d == mask.y), var.dims.iter().position(|d| *d == mask.x))
        else {
            return Ok(());
        };
        let v = out.vars.iter_mut().find(|v| v.name == var.name).expect("copied above");
        // The fill as JSON, so that 64-bit integers keep every digit.
        let fill: Value = match v.attrs.get("_FillValue") {
            Some(f) if super::store::number(f).is_some() => f.clone(),
            _ if v.dtype.kind == Kind::Float => {
                v.attrs.insert("_FillValue".into(), json!(NAN));
                json!("NaN")
            }
            _ => {
                let f = default_fill(v.dtype.kind, v.dtype.size);
                v.attrs.insert("_FillValue".into(), f.clone());
                f
            }
        };
        let fill_bytes = super::store::fill_bytes(&v.dtype, &fill);
        let shape: Vec<usize> =
            v.dims.iter().map(|d| out.dims.iter().find(|(n, _)| n == d).map_or(1, |(_, l)| *l)).collect();
        let st = strides(&shape);
        let nx = shape[xi];
        let esize = v.dtype.size;
        for i in 0..v.len() {
            let (y, x) = (i / st[yi] % shape[yi], i / st[xi] % shape[xi]);
            if mask.outside[y * nx + x] {
                v.data[i * esize..(i + 1) * esize].copy_from_slice(&fill_bytes);
            }
        }
    }
    for name in companions(view, var, &|_| true) {
        copy_var(out, view, source, run, &name, sel)?;
    }
    Ok(())
}

/// Whether xarray decodes `var` to float32 (else float64).
fn decodes_to_f32(var: &Variable) -> bool {
    let dtype = var.meta.dtype;
    let decoded = Decoded::of(var);
    let f32_factors = ["scale_factor", "add_offset"].iter().all(|a| var.attr_f64(a).is_none_or(looks_f32));
    match dtype.kind {
        Kind::Float => dtype.size == 4 && (!decoded.is_packed() || f32_factors),
        _ if decoded.is_packed() => dtype.size <= 2 && f32_factors,
        // Integers decode to floats only when masked (xarray: float32 for 1-2 byte types);
        // their plain mean is float64.
        _ => dtype.size <= 2 && !decoded.masks_nothing(),
    }
}

/// The range a coordinate covers over the selected positions: from its bounds when it has them.
/// Longitudes are unwrapped in selection order (west to east), so a range across the seam of
/// the data's frame comes out as, say, [-10, 30] and not [0, 360].
fn covered(
    view: &StoreView,
    source: &dyn ChunkSource,
    coord: &Variable,
    positions: &[usize],
    longitude: bool,
) -> Result<(f64, f64), Problem> {
    let values = read_coordinate(source, coord)?;
    let bounds = coord.attr_str("bounds").and_then(|b| view.variables.get(b)).filter(|b| b.dims.len() == 2);
    let bounds = match bounds {
        Some(b) => Some((read_coordinate(source, b)?, b.meta.shape[1] as usize)),
        None => None,
    };
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut shift = 0.0;
    let mut previous: Option<f64> = None;
    for &p in positions {
        if longitude {
            if let Some(prev) = previous {
                while values[p] + shift < prev - 180.0 {
                    shift += 360.0;
                }
            }
            previous = Some(values[p] + shift);
        }
        let cell: &[f64] = match &bounds {
            Some((bv, nv)) => &bv[p * nv..(p + 1) * nv],
            None => std::slice::from_ref(&values[p]),
        };
        for x in cell {
            // A bound lies next to its cell's centre, not across the seam from it.
            let mut x = *x + shift;
            if longitude {
                while x < values[p] + shift - 180.0 {
                    x += 360.0;
                }
                while x > values[p] + shift + 180.0 {
                    x -= 360.0;
                }
            }
            lo = lo.min(x);
            hi = hi.max(x);
        }
    }
    Ok((lo, hi))
}

/// Appends `entry` to a `cell_methods` text.
fn append_method(attrs: &mut super::store::Attrs, entry: &str) {
    let text = match attrs.get("cell_methods").and_then(Value::as_str) {
        Some(m) if !m.trim().is_empty() => format!("{} {entry}", m.trim()),
        _ => entry.to_string(),
    };
    attrs.insert("cell_methods".into(), json!(text));
}

/// What averaging one variable works with: the dataset, the request, and the variable's axes
/// and selection.
struct Averaging<'a> {
    view: &'a StoreView,
    source: &'a dyn ChunkSource,
    run: &'a Run,
    req: &'a Request,
    var: &'a Variable,
    ax: &'a Axes,
    sel: &'a Selection,
}

/// Averages one variable into `out`, in stages: which dimensions are averaged; the time groups
/// (one, or one per calendar period); the weighted spatial mean (per time step when time is
/// averaged too); the plain mean over each time group; then the result's dimensions,
/// attributes and coordinates.
#[allow(clippy::too_many_arguments)]
fn average_var(
    out: &mut Output,
    view: &StoreView,
    source: &dyn ChunkSource,
    run: &Run,
    req: &Request,
    var: &Variable,
    ax: &Axes,
    sel: &Selection,
) -> Result<(), Problem> {
    Averaging { view, source, run, req, var, ax, sel }.write(out)
}

impl Averaging<'_> {
    fn write(&self, out: &mut Output) -> Result<(), Problem> {
        let (var, req) = (self.var, self.req);
        let (spatial, time_dim) = self.averaged_dims()?;
        let positions = self.sel.for_var(var);
        let ti = time_dim
            .as_ref()
            .map(|t| var.dims.iter().position(|d| d == t).expect("axes are dimensions of the variable"));

        // Time groups: every selected step in one group, or one group per calendar period.
        let (groups, periods) = time_groups(self.view, self.source, var, req, ti, &positions)?;
        let n_groups = periods.as_ref().map_or(1, Vec::len);

        // Intermediate array: the variable's dimensions without the spatially reduced ones;
        // time has one cell per selected step (weighted stage first) or per group (time-only
        // average).
        let weighted_stage = !spatial.is_empty();
        let kept: Vec<usize> = (0..var.dims.len()).filter(|i| !spatial.contains(&var.dims[*i])).collect();
        let cell_len = |i: usize| if Some(i) == ti && !weighted_stage { n_groups } else { positions[i].len() };
        let inter_shape: Vec<usize> = kept.iter().map(|&i| cell_len(i)).collect();
        let inter_strides = strides(&inter_shape);
        let mut tables = vec![Vec::new(); var.dims.len()];
        for (k, &i) in kept.iter().enumerate() {
            tables[i] = if Some(i) == ti && !weighted_stage {
                groups.iter().map(|g| g * inter_strides[k]).collect()
            } else {
                (0..positions[i].len()).map(|p| p * inter_strides[k]).collect()
            };
        }
        for (i, t) in tables.iter_mut().enumerate() {
            if t.is_empty() {
                *t = vec![0; positions[i].len()];
            }
        }
        let acc = Layout { tables, len: inter_shape.iter().product() };
        let (cells, weights) = self.weight_field(&positions, weighted_stage)?;
        let (num, den) = WeightedSum { acc: &acc, weight_cells: &cells, weights: &weights }
            .run(self.run, self.source, var, &positions)
            .map_err(kernel)?;
        let mut values: Vec<f64> = num.iter().zip(&den).map(|(n, d)| if *d > 0.0 { n / d } else { f64::NAN }).collect();

        // Time stage after a weighted stage: plain mean of the steps of each group.
        let mut out_shape = inter_shape.clone();
        if let (true, Some(ti)) = (weighted_stage, ti) {
            let k = kept.iter().position(|&i| i == ti).expect("time is kept by the weighted stage");
            values = group_means(&values, &inter_shape, k, &groups, n_groups);
            out_shape[k] = n_groups;
        }

        // Dimensions of the result: kept ones, and time when resampled.
        let mut dims = Vec::new();
        for (k, &i) in kept.iter().enumerate() {
            if Some(i) == ti && periods.is_none() {
                continue;
            }
            dims.push(var.dims[i].clone());
            out.add_dim(&var.dims[i], out_shape[k]);
        }
        let mut attrs = self.result_attrs(&spatial, time_dim.as_deref(), weighted_stage);
        let averaged: Vec<String> =
            spatial.iter().cloned().chain(time_dim.iter().filter(|_| periods.is_none()).cloned()).collect();
        let resampled = time_dim.clone().filter(|_| periods.is_some());
        let coords = self.add_coordinates(out, &averaged, &positions, &dims, resampled.as_deref())?;
        if let (Some(periods), Some(t)) = (&periods, &time_dim) {
            add_periods(out, self.view, t, periods)?;
        }
        let two_d = var.attr_str("coordinates").unwrap_or("").split_whitespace().filter(|n| out.var(n).is_some());
        let coords: Vec<String> = coords.into_iter().chain(two_d.map(str::to_string)).collect();
        if !coords.is_empty() {
            attrs.insert("coordinates".into(), json!(coords.join(" ")));
        }
        out.vars.push(OutVar::from_f64(&var.name, dims, &values, decodes_to_f32(var), attrs));
        Ok(())
    }

    /// The dimensions averaged in space (`dims` other than time), and the time dimension when
    /// time is averaged or resampled.
    fn averaged_dims(&self) -> Result<(Vec<String>, Option<String>), Problem> {
        let (var, req, ax) = (self.var, self.req, self.ax);
        let need = |axis: Axis| {
            ax.dim(axis).map(str::to_string).ok_or_else(|| {
                Problem::unprocessable(
                    Some("dims"),
                    format!("{} has no {} axis to average over", var.name, axis.name()),
                )
            })
        };
        let mut spatial: Vec<String> = Vec::new();
        for a in req.dims.iter().filter(|a| **a != Axis::Time) {
            spatial.push(need(*a)?);
        }
        let time_dim = if req.dims.contains(&Axis::Time) || req.freq.is_some() {
            Some(ax.dim(Axis::Time).map(str::to_string).ok_or_else(|| {
                Problem::unprocessable(
                    Some(if req.freq.is_some() { "freq" } else { "dims" }),
                    format!("{} has no time axis", var.name),
                )
            })?)
        } else {
            None
        };
        Ok((spatial, time_dim))
    }

    /// The variable's attributes, less its encoding, with the cell methods and the weights that
    /// were applied.
    fn result_attrs(&self, spatial: &[String], time_dim: Option<&str>, weighted_stage: bool) -> Attrs {
        let mut attrs = self.var.attrs.clone();
        for a in ENCODING_ATTRS.iter().chain(["coordinates"].iter()) {
            attrs.remove(*a);
        }
        attrs.insert("_FillValue".into(), json!(NAN));
        if weighted_stage {
            append_method(&mut attrs, &format!("{}: mean", spatial.join(": ")));
        }
        if let Some(t) = time_dim {
            append_method(&mut attrs, &format!("{t}: mean"));
        }
        let applied = applied_weights(self.view, self.var, self.req, self.ax, spatial);
        attrs.insert("zarrgate_weights".into(), json!(super::request::Weights::NAMES[applied as usize]));
        attrs
    }

    /// Coordinates of the result: a scalar one with bounds for each averaged dimension that has
    /// a coordinate variable, and the companions along kept dimensions (not the resampled time,
    /// which gets its periods). Gives the scalar coordinates' names.
    fn add_coordinates(
        &self,
        out: &mut Output,
        averaged: &[String],
        positions: &[Vec<usize>],
        kept: &[String],
        resampled: Option<&str>,
    ) -> Result<Vec<String>, Problem> {
        let (view, var) = (self.view, self.var);
        let mut scalar_coords = Vec::new();
        for d in averaged {
            if let Some(c) = coordinate(view, d) {
                let i = var.dims.iter().position(|x| x == d).expect("averaged dims are the variable's");
                let longitude = self.ax.by_dim.get(d) == Some(&Axis::Longitude);
                let (lo, hi) = covered(view, self.source, c, &positions[i], longitude)?;
                add_scalar(out, c, (lo + hi) / 2.0, (lo, hi));
                scalar_coords.push(c.name.clone());
            }
        }
        for name in companions(view, var, &|d| kept.iter().any(|k| k == d) && resampled != Some(d)) {
            copy_var(out, view, self.source, self.run, &name, self.sel)?;
        }
        Ok(scalar_coords)
    }
}

/// The plain mean, skipping NaN, of the time steps of each group: `values` has `shape`, time on
/// axis `k`; each step's group is `groups[t]`.
fn group_means(values: &[f64], shape: &[usize], k: usize, groups: &[usize], n_groups: usize) -> Vec<f64> {
    let (outer, n_t, inner) =
        (shape[..k].iter().product::<usize>(), shape[k], shape[k + 1..].iter().product::<usize>());
    let mut sums = vec![0.0; outer * n_groups * inner];
    let mut counts = vec![0usize; outer * n_groups * inner];
    for o in 0..outer {
        for t in 0..n_t {
            for i in 0..inner {
                let x = values[(o * n_t + t) * inner + i];
                if !x.is_nan() {
                    let c = (o * n_groups + groups[t]) * inner + i;
                    sums[c] += x;
                    counts[c] += 1;
                }
            }
        }
    }
    sums.iter().zip(&counts).map(|(s, c)| if *c > 0 { s / *c as f64 } else { f64::NAN }).collect()
}

/// For each selected time step, its group; and the periods when resampling.
/// A calendar period: its first instant and the first instant of the next.
type Period = (cftime::DateTime, cftime::DateTime);

fn time_groups(
    view: &StoreView,
    source: &dyn ChunkSource,
    var: &Variable,
    req: &Request,
    ti: Option<usize>,
    positions: &[Vec<usize>],
) -> Result<(Vec<usize>, Option<Vec<Period>>), Problem> {
    let Some(ti) = ti else { return Ok((Vec::new(), None)) };
    let n_t = positions[ti].len();
    let Some(freq) = req.freq else { return Ok((vec![0; n_t], None)) };
    let coord = coordinate(view, &var.dims[ti])
        .ok_or_else(|| Problem::unprocessable(Some("freq"), "the time dimension has no coordinate variable"))?;
    let units =
        cftime::TimeUnits::parse(coord.attr_str("units").unwrap_or(""), coord.attr_str("calendar").unwrap_or(""))
            .map_err(|e| Problem::unprocessable(Some("freq"), format!("time units: {e}")))?;
    let values = read_coordinate(source, coord)?;
    let mut starts = Vec::with_capacity(n_t);
    for &p in &positions[ti] {
        let t = units
            .decode(values[p])
            .map_err(|e| Problem::unprocessable(Some("freq"), format!("time value {}: {e}", values[p])))?;
        starts.push(cftime::period_start(&t, freq));
    }
    let mut periods: Vec<cftime::DateTime> = starts.clone();
    periods.sort();
    periods.dedup();
    let groups = starts.iter().map(|s| periods.binary_search(s).expect("every start is a period")).collect();
    let periods = periods.into_iter().map(|s| (s, cftime::next_period_start(&s, freq, units.calendar))).collect();
    Ok((groups, Some(periods)))
}

/// The time coordinate of resampled periods (labelled by their start) and its bounds.
fn add_periods(
    out: &mut Output,
    view: &StoreView,
    t: &str,
    periods: &[(cftime::DateTime, cftime::DateTime)],
) -> Result<(), Problem> {
    if out.var(t).is_some() {
        return Ok(()); // another variable of the request has the same periods
    }
    let coord = &view.variables[t];
    let units =
        cftime::TimeUnits::parse(coord.attr_str("units").unwrap_or(""), coord.attr_str("calendar").unwrap_or(""))
            .map_err(Problem::internal)?;
    let enc = |d: &cftime::DateTime| units.encode(d).map_err(Problem::internal);
    let mut values = Vec::new();
    let mut bounds = Vec::new();
    for (s, e) in periods {
        values.push(enc(s)?);
        bounds.extend([enc(s)?, enc(e)?]);
    }
    let bname = coord.attr_str("bounds").unwrap_or(&format!("{t}_bnds")).to_string();
    let mut attrs = coord.attrs.clone();
    for a in ENCODING_ATTRS {
        attrs.remove(a);
    }
    attrs.insert("bounds".into(), json!(bname));
    out.add_dim("bnds", 2);
    out.vars.push(OutVar::from_f64(t, vec![t.to_string()], &values, false, attrs));
    out.vars.push(OutVar::from_f64(&bname, vec![t.to_string(), "bnds".into()], &bounds, false, Default::default()));
    Ok(())
}

/// A scalar coordinate for an averaged dimension, with its bounds.
fn add_scalar(out: &mut Output, coord: &Variable, value: f64, (lo, hi): (f64, f64)) {
    if out.var(&coord.name).is_some() {
        return;
    }
    let bname = format!("{}_bnds", coord.name);
    let mut attrs = coord.attrs.clone();
    for a in ENCODING_ATTRS {
        attrs.remove(a);
    }
    attrs.insert("bounds".into(), json!(bname));
    out.add_dim("bnds", 2);
    out.vars.push(OutVar::from_f64(&coord.name, Vec::new(), &[value], false, attrs));
    out.vars.push(OutVar::from_f64(&bname, vec!["bnds".into()], &[lo, hi], false, Default::default()));
}

/// The weight of each element, as cells over some of the variable's dimensions. Masked points
/// of a curvilinear area weigh 0. Without a weighted stage only the mask applies.
/// The variable the weights come from and the dimensions they vary along: the latitude for
/// `coslat`, the cell areas that `cell_measures` names for `area`; none for `none`. An error
/// (422) when the dataset cannot give them, whatever the request averages.
fn weight_source(
    view: &StoreView,
    var: &Variable,
    weights: Weights,
    ax: &Axes,
) -> Result<Option<(Variable, Vec<String>)>, Problem> {
    match weights {
        Weights::None => Ok(None),
        Weights::Coslat => match &ax.curvilinear {
            Some((lat, _)) => Ok(Some((view.variables[lat].clone(), view.variables[lat].dims.clone()))),
            None => {
                let d = ax.dim(Axis::Latitude).ok_or_else(|| {
                    Problem::unprocessable(
                        Some("weights"),
                        format!("coslat weights need a latitude, and {} has none", var.name),
                    )
                })?;
                let c = coordinate(view, d).ok_or_else(|| {
                    Problem::unprocessable(Some("weights"), "the latitude dimension has no coordinate variable")
                })?;
                Ok(Some((c.clone(), vec![d.to_string()])))
            }
        },
        Weights::Area => {
            let measures = var.attr_str("cell_measures").unwrap_or("");
            let name = measures
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .find(|w| w[0] == "area:")
                .map(|w| w[1].to_string())
                .ok_or_else(|| {
                    Problem::unprocessable(
                        Some("weights"),
                        format!("area weights need cell_measures = \"area: NAME\" on {}", var.name),
                    )
                })?;
            let cell = view.variables.get(&name).ok_or_else(|| {
                Problem::unprocessable(
                    Some("weights"),
                    format!("{} names the cell areas {name:?}, which this dataset does not hold", var.name),
                )
            })?;
            if !cell.dims.iter().all(|d| var.dims.contains(d)) {
                return Err(Problem::unprocessable(
                    Some("weights"),
                    format!("the cell areas {name} are not on the grid of {}", var.name),
                ));
            }
            Ok(Some((cell.clone(), cell.dims.clone())))
        }
    }
}

/// The weighting an average of `var` over `spatial` really applies: the requested one when its
/// weights vary along an averaged dimension, else none (weights along kept dimensions cancel
/// out cell by cell, so the result is the unweighted mean and says so).
fn applied_weights(view: &StoreView, var: &Variable, req: &Request, ax: &Axes, spatial: &[String]) -> Weights {
    match weight_source(view, var, req.weights, ax) {
        Ok(Some((_, dims))) if dims.iter().any(|d| spatial.contains(d)) => req.weights,
        _ => Weights::None,
    }
}

impl Averaging<'_> {
    /// The weight of every cell the weighted stage sums: the field's layout over the
    /// variable's selected positions, and its values (1 everywhere without weights). Points
    /// outside a curvilinear area weigh nothing.
    fn weight_field(&self, positions: &[Vec<usize>], weighted_stage: bool) -> Result<(Layout, Vec<f64>), Problem> {
        let var = self.var;
        let (mut fdims, mut values) = self.weight_values(weighted_stage)?;
        let field_shape = |fdims: &[String]| -> Vec<usize> {
            fdims
                .iter()
                .map(|d| positions[var.dims.iter().position(|x| x == d).expect("field dims are the variable's")].len())
                .collect()
        };
        if let Some(mask) = self.sel.mask.as_ref().filter(|m| var.dims.contains(&m.y) && var.dims.contains(&m.x)) {
            if fdims.is_empty() {
                fdims = vec![mask.y.clone(), mask.x.clone()];
                values = vec![1.0; mask.outside.len()];
            }
            mask_outside(&fdims, &field_shape(&fdims), mask, &mut values)?;
        }
        let fstrides = strides(&field_shape(&fdims));
        let tables = var
            .dims
            .iter()
            .enumerate()
            .map(|(i, d)| match fdims.iter().position(|f| f == d) {
                Some(k) => (0..positions[i].len()).map(|p| p * fstrides[k]).collect(),
                None => vec![0; positions[i].len()],
            })
            .collect();
        Ok((Layout { tables, len: values.len() }, values))
    }

    /// The weights the request asks for, over their dimensions' selected positions: cos(lat),
    /// or the cell measure; no dimensions and one value when there are none. A missing value
    /// (land fill of an ocean grid) weighs nothing.
    fn weight_values(&self, weighted_stage: bool) -> Result<(Vec<String>, Vec<f64>), Problem> {
        let weights = if weighted_stage { self.req.weights } else { Weights::None };
        let Some((wvar, dims)) = weight_source(self.view, self.var, weights, self.ax)? else {
            return Ok((Vec::new(), vec![1.0]));
        };
        let raw = read_decoded(self.source, &wvar, &self.sel.for_var(&wvar))?;
        let values = match weights {
            Weights::Coslat => raw.into_iter().map(|x| x.to_radians().cos()).collect::<Vec<_>>(),
            _ => raw,
        };
        Ok((dims, values.into_iter().map(|w| if w.is_finite() { w } else { 0.0 }).collect()))
    }
}

/// Zeroes the weights of points outside a curvilinear area, whatever the order of the field's
/// dimensions (`fdims`, of `shape`).
fn mask_outside(fdims: &[String], shape: &[usize], mask: &Mask, values: &mut [f64]) -> Result<(), Problem> {
    let (Some(yk), Some(xk)) = (fdims.iter().position(|d| *d == mask.y), fdims.iter().position(|d| *d == mask.x))
    else {
        return Err(Problem::unprocessable(
            Some("weights"),
            "the weights do not cover the curvilinear grid the area selects on",
        ));
    };
    let st = strides(shape);
    let nx = shape[xk];
    for (i, w) in values.iter_mut().enumerate() {
        if mask.outside[(i / st[yk] % shape[yk]) * nx + i / st[xk] % shape[xk]] {
            *w = 0.0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float32_attributes_are_recognised_by_their_spelling() {
        assert!(looks_f32(0.1f32 as f64));
        assert!(!looks_f32(0.1));
        assert!(!looks_f32(0.5), "exact in both: JSON gives a Python float");
    }
}
