//! Quick-look pictures: one PNG that shows at a glance what a request returned, so that a
//! person can check a selection before downloading it. It is not a plotting library. It draws
//! one data variable, as readers see it (masked and unpacked), in one of two ways:
//! - a **map** when two dimensions are longer than one: each cell a block of colour (viridis,
//!   from the smallest to the largest finite value, with a colour bar), larger y coordinates at
//!   the top and larger x coordinates on the right whatever the stored order, missing cells
//!   transparent;
//! - a **line** when one is: the values against their coordinate (dates for times), with gaps
//!   where values are missing.
//!
//! A title names the variable and its units; a second line names the dimensions of length one
//! and their value. Text uses a public-domain 8×8 bitmap font, so no system font is needed.

use font8x8::legacy::BASIC_LEGACY;
use serde_json::Value;

use super::kernel::{strides, Decoded};
use super::output::{OutVar, Output};
use super::request::Problem;
use crate::cftime::{DateTime, TimeUnits};
use crate::zarr::Kind;

/// Width and height of a quick-look when the request names none.
pub const DEFAULT_SIZE: (u32, u32) = (800, 500);

/// The smallest picture (width, height), and the largest side of one.
pub const MIN_SIZE: (u32, u32) = (200, 150);
pub const MAX_SIDE: u32 = 4096;

type Rgba = [u8; 4];
const BACKGROUND: Rgba = [255, 255, 255, 255];
const CLEAR: Rgba = [255, 255, 255, 0];
const INK: Rgba = [51, 51, 51, 255];
const GRID: Rgba = [228, 228, 228, 255];
const LINE: Rgba = [24, 56, 150, 255];

/// Blank space at the edges of the image, the glyph size, tick length and colour bar width.
const PAD: i64 = 8;
const GLYPH: i64 = 8;
const TICK: i64 = 4;
const BAR: i64 = 14;

/// Matplotlib's viridis at 0, 0.1, …, 1 (0xRRGGBB); the colours between are interpolated.
const VIRIDIS: [u32; 11] =
    [0x440154, 0x482475, 0x414487, 0x355f8d, 0x2a788e, 0x21918c, 0x22a884, 0x44bf70, 0x7ad151, 0xbddf26, 0xfde725];

/// Renders `out` (one data variable: `out.data_vars[0]`) as a PNG of exactly `width`×`height` pixels.
pub fn to_png(out: &Output, width: u32, height: u32) -> Result<Vec<u8>, Problem> {
    check_size(width, height)?;
    let var = out
        .data_vars
        .first()
        .and_then(|n| out.var(n))
        .ok_or_else(|| Problem::unprocessable(Some("format"), "the result has no data variable to draw"))?;
    let field = Field::new(out, var)?;
    let kept: Vec<usize> = (0..var.dims.len()).filter(|&d| field.shape[d] > 1).collect();
    let mut canvas = Canvas::new(width as i64, height as i64);
    let header = Header::of(out, &field);
    match kept[..] {
        [d] => draw_series(&mut canvas, &header, &field, &Axis::new(out, &field, d)),
        [a, b] => {
            let (x, y) = map_axes(Axis::new(out, &field, a), Axis::new(out, &field, b));
            draw_map(&mut canvas, &header, &field, &x, &y);
        }
        _ => return Err(shape_problem(out, &field, &kept)),
    }
    canvas.encode()
}

fn check_size(width: u32, height: u32) -> Result<(), Problem> {
    if width < MIN_SIZE.0 || height < MIN_SIZE.1 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(Problem::invalid(
            "size",
            format!("a picture is {}x{} to {MAX_SIDE}x{MAX_SIDE} pixels, not {width}x{height}", MIN_SIZE.0, MIN_SIZE.1),
        ));
    }
    Ok(())
}

/// Why a variable with no dimension, or more than two, longer than one cannot be drawn.
fn shape_problem(out: &Output, field: &Field, kept: &[usize]) -> Problem {
    let name = &field.var.name;
    let intro = "a PNG shows one 2-D field or one series";
    if kept.is_empty() {
        return Problem::unprocessable(
            Some("format"),
            format!("{intro}; {name} is a single value here: use json or csv"),
        );
    }
    let axes: Vec<Axis> = kept.iter().map(|&d| Axis::new(out, field, d)).collect();
    let x = axes.iter().position(|a| a.is_x);
    let y = axes.iter().position(|a| a.is_y);
    let mut extra: Vec<&str> =
        (0..axes.len()).filter(|i| Some(*i) != x && Some(*i) != y).map(|i| axes[i].dim.as_str()).collect();
    extra.truncate(kept.len() - 2);
    let all: Vec<&str> = axes.iter().map(|a| a.dim.as_str()).collect();
    Problem::unprocessable(
        Some("format"),
        format!(
            "{intro}; {name} varies along {} dimensions ({}): select one index of {} with isel, e.g. isel={}=0:1",
            all.len(),
            all.join(", "),
            extra.join(" and "),
            extra[0]
        ),
    )
}

/// The data variable's values, decoded, with its shape.
struct Field<'a> {
    var: &'a OutVar,
    read: fn(&[u8]) -> f64,
    decoded: Decoded,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

impl<'a> Field<'a> {
    fn new(out: &Output, var: &'a OutVar) -> Result<Field<'a>, Problem> {
        let Some(read) = reader(var) else {
            return Err(Problem::unprocessable(
                Some("format"),
                format!("{} holds {:?} values; a PNG draws numbers only", var.name, var.dtype.kind),
            ));
        };
        let shape: Vec<usize> = var.dims.iter().map(|d| out.dim_len(d)).collect();
        if let Some(d) = var.dims.iter().zip(&shape).find(|(_, n)| **n == 0).map(|(d, _)| d) {
            return Err(Problem::unprocessable(Some("format"), format!("nothing to draw: {d} is empty")));
        }
        if shape.iter().product::<usize>() != var.len() {
            return Err(Problem::internal(format!("{} has {} values for shape {shape:?}", var.name, var.len())));
        }
        let strides = strides(&shape);
        Ok(Field { var, read, decoded: Decoded::new(var.dtype, &var.attrs), shape, strides })
    }

    #[inline]
    fn get(&self, i: usize) -> f64 {
        let size = self.var.dtype.size;
        self.decoded.apply((self.read)(&self.var.data[i * size..(i + 1) * size]))
    }

    /// The smallest and largest finite values.
    fn range(&self) -> Option<(f64, f64)> {
        let values = self.var.data.chunks_exact(self.var.dtype.size);
        finite_range(values.map(|b| self.decoded.apply((self.read)(b))))
    }
}

/// How to read one element as a float, chosen once per variable: a whole field is scanned
/// for its range, and `OutVar::value` works out the type at every element. None for what is
/// not a number.
fn reader(v: &OutVar) -> Option<fn(&[u8]) -> f64> {
    fn le<const N: usize>(b: &[u8]) -> [u8; N] {
        b.try_into().expect("one element")
    }
    Some(match (v.dtype.kind, v.dtype.size) {
        (Kind::Float, 4) => |b| f32::from_le_bytes(le(b)) as f64,
        (Kind::Float, 8) => |b| f64::from_le_bytes(le(b)),
        (Kind::Int, 1) => |b| b[0] as i8 as f64,
        (Kind::Int, 2) => |b| i16::from_le_bytes(le(b)) as f64,
        (Kind::Int, 4) => |b| i32::from_le_bytes(le(b)) as f64,
        (Kind::Int, 8) => |b| i64::from_le_bytes(le(b)) as f64,
        (Kind::UInt | Kind::Bool, 1) => |b| b[0] as f64,
        (Kind::UInt, 2) => |b| u16::from_le_bytes(le(b)) as f64,
        (Kind::UInt, 4) => |b| u32::from_le_bytes(le(b)) as f64,
        (Kind::UInt, 8) => |b| u64::from_le_bytes(le(b)) as f64,
        _ => return None,
    })
}

fn finite_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |r, v| match r {
        None => Some((v, v)),
        Some((lo, hi)) => Some((v.min(lo), v.max(hi))),
    })
}

/// The decoded values of a dimension's coordinate variable, if it has a usable one.
fn coordinate<'a>(out: &'a Output, dim: &str) -> Option<&'a OutVar> {
    out.var(dim).filter(|c| c.dims.len() == 1 && c.dims[0] == dim && reader(c).is_some())
}

fn decoded(c: &OutVar) -> Vec<f64> {
    let d = Decoded::new(c.dtype, &c.attrs);
    (0..c.len()).map(|i| d.apply(c.value(i))).collect()
}

fn attr<'a>(v: Option<&'a OutVar>, name: &str) -> &'a str {
    v.and_then(|v| v.attrs.get(name)).and_then(Value::as_str).unwrap_or("")
}

fn time_units(c: Option<&OutVar>) -> Option<TimeUnits> {
    let units = attr(c, "units");
    units.contains(" since ").then(|| TimeUnits::parse(units, attr(c, "calendar")).ok()).flatten()
}

/// One dimension as an axis: its coordinate values (indices when it has none) and their kind.
struct Axis {
    dim: String,
    title: String,
    values: Vec<f64>,
    time: Option<TimeUnits>,
    stride: usize,
    longitude: bool,
    is_x: bool,
    is_y: bool,
}

impl Axis {
    fn new(out: &Output, field: &Field, d: usize) -> Axis {
        let dim = field.var.dims[d].clone();
        let n = field.shape[d];
        // A coordinate that cannot place the cells (missing values, all equal) is ignored.
        let values = coordinate(out, &dim).filter(|c| c.len() == n).map(|c| (c, decoded(c)));
        let (c, values) = values.filter(|(_, v)| v.iter().all(|x| x.is_finite()) && v[0] != v[n - 1]).unzip();
        let (standard, units, axis) = (attr(c, "standard_name"), attr(c, "units"), attr(c, "axis"));
        let lower = dim.to_ascii_lowercase();
        let longitude = standard == "longitude"
            || (units.starts_with("degree") && (units.ends_with("east") || units.ends_with('E')));
        let is_x = longitude || axis.eq_ignore_ascii_case("x") || matches!(lower.as_str(), "lon" | "longitude" | "x");
        let is_y = standard == "latitude"
            || (units.starts_with("degree") && (units.ends_with("north") || units.ends_with('N')))
            || axis.eq_ignore_ascii_case("y")
            || matches!(lower.as_str(), "lat" | "latitude" | "y");
        let mut values: Vec<f64> = values.unwrap_or_else(|| (0..n).map(|i| i as f64).collect());
        if longitude {
            unwrap_longitudes(&mut values);
        }
        let time = time_units(c);
        let title = if units.is_empty() || time.is_some() { dim.clone() } else { format!("{dim} [{units}]") };
        Axis { dim, title, values, time, stride: field.strides[d], longitude, is_x: is_x && !is_y, is_y }
    }

    fn increasing(&self) -> bool {
        self.values[self.values.len() - 1] > self.values[0]
    }

    /// The stored index of the `k`-th cell counted from the smallest coordinate.
    fn stored(&self, k: usize) -> usize {
        if self.increasing() {
            k
        } else {
            self.values.len() - 1 - k
        }
    }

    /// The values covered by the cells, half a cell beyond the first and last centres.
    fn extent(&self) -> (f64, f64) {
        let (a, b) = (self.values[0], self.values[self.values.len() - 1]);
        let (lo, hi) = (a.min(b), a.max(b));
        let half = (hi - lo) / (self.values.len() - 1) as f64 / 2.0;
        (lo - half, hi + half)
    }

    /// Ticks (value, label) between `lo` and `hi`, at most `max` of them.
    fn ticks(&self, lo: f64, hi: f64, max: usize) -> Vec<(f64, String)> {
        match &self.time {
            Some(tu) => time_ticks(tu, lo, hi, max),
            None => number_ticks(lo, hi, max, self.longitude),
        }
    }
}

/// Makes longitudes read in stored order continuous across the seam (350, 355, 0 → …, 360).
fn unwrap_longitudes(values: &mut [f64]) {
    for i in 1..values.len() {
        while values[i] < values[i - 1] - 180.0 {
            values[i] += 360.0;
        }
    }
}

/// Picks (x, y): longitude-like to x, latitude-like to y, else y is the first dimension.
fn map_axes(a: Axis, b: Axis) -> (Axis, Axis) {
    if (a.is_x && !b.is_x) || (b.is_y && !a.is_y) {
        (a, b)
    } else {
        (b, a)
    }
}

/// Multiples of a round step (1, 2, 2.5 or 5 × 10^k) in [lo, hi]: the finest with at most
/// `max`, which is at least 3 when `max` is 6. Returns the values and the step.
fn ticks(lo: f64, hi: f64, max: usize) -> (Vec<f64>, f64) {
    if hi <= lo || !lo.is_finite() || !hi.is_finite() {
        return (vec![lo], 1.0);
    }
    let mut magnitude = 10f64.powf(((hi - lo) / max.max(1) as f64).log10().floor() - 1.0);
    loop {
        for m in [1.0, 2.0, 2.5, 5.0] {
            let step = m * magnitude;
            let (first, last) = ((lo / step - 1e-9).ceil(), (hi / step + 1e-9).floor());
            if last - first + 1.0 <= max as f64 {
                return ((first as i64..=last as i64).map(|i| i as f64 * step).collect(), step);
            }
        }
        magnitude *= 10.0;
    }
}

fn number_ticks(lo: f64, hi: f64, max: usize, longitude: bool) -> Vec<(f64, String)> {
    let (values, step) = ticks(lo, hi, max);
    let wrap = |v: f64| if longitude && v >= 360.0 { v - 360.0 } else { v };
    values.into_iter().map(|v| (v, number_label(wrap(v), step))).collect()
}

/// Decimals needed to write multiples of `step` exactly (up to 6).
fn decimals(step: f64) -> usize {
    (0..6)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.abs().max(1.0)
        })
        .unwrap_or(6)
}

/// A compact label for a multiple of `step`: `-45`, `12.5`, `1e+05`, `2.5e-04`.
fn number_label(v: f64, step: f64) -> String {
    let a = v.abs();
    if a < step * 1e-6 {
        return "0".into();
    }
    if !(1e-3..1e5).contains(&a) {
        let mut e = a.log10().floor();
        // log10 of a power of ten may land just below it (999999.99… for 1e6): round first.
        if (a / 10f64.powf(e) * 1e3).round() >= 1e4 {
            e += 1.0;
        }
        let mantissa = format!("{:.*}", decimals(step / 10f64.powf(e)).min(3), v / 10f64.powf(e));
        let sign = if e < 0.0 { '-' } else { '+' };
        return format!("{}e{sign}{:02}", trim_zeros(&mantissa), e.abs() as i64);
    }
    format!("{v:.*}", decimals(step))
}

/// A value with four significant digits, trailing zeros dropped.
fn general_label(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let text = number_label(v, 10f64.powf(v.abs().log10().floor() - 3.0));
    if text.contains('e') {
        text
    } else {
        trim_zeros(&text).to_string()
    }
}

fn trim_zeros(number: &str) -> &str {
    if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        number
    }
}

/// An instant as ISO 8601, without the time of day at midnight.
fn short_iso(t: &DateTime) -> String {
    let iso = t.iso();
    iso.strip_suffix("T00:00:00").map_or(iso.clone(), str::to_string)
}

/// `YYYY-MM-DD`.
fn date_text(t: &DateTime) -> String {
    let iso = t.iso();
    iso.split_once('T').map_or(iso.as_str(), |(date, _)| date).to_string()
}

/// `YYYY-MM`.
fn month_text(t: &DateTime) -> String {
    let date = date_text(t);
    date.rsplit_once('-').map_or(date.as_str(), |(month, _)| month).to_string()
}

/// Ticks for a time axis: month starts labelled `YYYY-MM` when it spans months, else days.
fn time_ticks(tu: &TimeUnits, lo: f64, hi: f64, max: usize) -> Vec<(f64, String)> {
    let (Ok(a), Ok(b)) = (tu.decode(lo), tu.decode(hi)) else { return number_ticks(lo, hi, max, false) };
    let month = |t: &DateTime| t.year * 12 + i64::from(t.month) - 1;
    if month(&b) - month(&a) >= 3 {
        for step in [1, 2, 3, 6, 12, 24, 60, 120, 240, 600, 1200, 2400, 6000] {
            let first = (month(&a) + step - 1).div_euclid(step) * step;
            let starts: Vec<(f64, String)> = (first..=month(&b))
                .step_by(step as usize)
                .filter_map(|m| {
                    let t = DateTime::date(m.div_euclid(12), (m.rem_euclid(12) + 1) as u32, 1);
                    let v = tu.encode(&t).ok().filter(|v| (lo..=hi).contains(v))?;
                    Some((v, month_text(&t)))
                })
                .collect();
            if starts.len() <= max {
                return starts;
            }
        }
    }
    let per_day = tu.unit.micros() as f64 / 86_400e6;
    let (days, step) = ticks(lo * per_day, hi * per_day, max);
    let label = |t: DateTime| if step >= 1.0 { date_text(&t) } else { short_iso(&t) };
    days.into_iter().filter_map(|d| tu.decode(d / per_day).ok().map(|t| (d / per_day, label(t)))).collect()
}

/// The most ticks (up to 6) whose labels fit along `length` pixels.
fn fitted(length: i64, horizontal: bool, make: impl Fn(usize) -> Vec<(f64, String)>) -> Vec<(f64, String)> {
    let fits = |t: &[(f64, String)]| {
        let room: i64 =
            if horizontal { t.iter().map(|(_, l)| text_width(l, 1) + 16).sum() } else { t.len() as i64 * (GLYPH + 10) };
        room <= length
    };
    (2..=6).rev().map(&make).find(|t| fits(t)).unwrap_or_else(|| make(2))
}

/// The title (long name or name, and units) and the values of the dimensions of length one.
struct Header {
    title: String,
    subtitle: String,
}

impl Header {
    fn of(out: &Output, field: &Field) -> Header {
        let var = field.var;
        let name = Some(attr(Some(var), "long_name")).filter(|n| !n.is_empty()).unwrap_or(&var.name);
        let units = attr(Some(var), "units");
        let title = if units.is_empty() { name.to_string() } else { format!("{name} [{units}]") };
        let squeezed: Vec<String> = var
            .dims
            .iter()
            .zip(&field.shape)
            .filter(|(_, n)| **n == 1)
            .map(|(d, _)| match coordinate(out, d).filter(|c| c.len() == 1) {
                Some(c) => format!("{d}={}", coordinate_text(c)),
                None => format!("{d}[0]"),
            })
            .collect();
        Header { title, subtitle: squeezed.join(" ") }
    }

    /// Draws the header and returns the first row below it.
    fn draw(&self, canvas: &mut Canvas) -> i64 {
        let room = canvas.width - 2 * PAD;
        let scale = if text_width(&self.title, 2) <= room { 2 } else { 1 };
        canvas.text(PAD, PAD, &fit(&self.title, room, scale), scale, INK);
        let mut y = PAD + GLYPH * scale + 6;
        if !self.subtitle.is_empty() {
            canvas.text(PAD, y, &fit(&self.subtitle, room, 1), 1, INK);
            y += GLYPH + 6;
        }
        y + 6
    }
}

fn coordinate_text(c: &OutVar) -> String {
    let v = decoded(c)[0];
    match time_units(Some(c)).and_then(|tu| tu.decode(v).ok()) {
        Some(t) => short_iso(&t),
        None => general_label(v),
    }
}

/// The plot area, in pixels.
#[derive(Clone, Copy)]
struct Frame {
    left: i64,
    top: i64,
    width: i64,
    height: i64,
}

/// Space under the plot: ticks, their labels and the axis title.
const BOTTOM: i64 = TICK + 4 + GLYPH + 8 + GLYPH + PAD;

fn plot_height(canvas: &Canvas, top: i64) -> i64 {
    (canvas.height - top - BOTTOM).max(1)
}

/// The plot area once the widest y label and the space on the right are known.
fn frame(canvas: &Canvas, top: i64, y_labels: &[(f64, String)], right: i64) -> Frame {
    let widest = y_labels.iter().map(|(_, l)| text_width(l, 1)).max().unwrap_or(0);
    let left = (PAD + GLYPH + 6 + widest + TICK + 4).min(canvas.width - 1);
    let top = top.min(canvas.height - 1);
    let width = (canvas.width - left - right).clamp(1, canvas.width - left);
    Frame { left, top, width, height: plot_height(canvas, top).min(canvas.height - top) }
}

/// A linear map from values to pixel positions along one side of the plot.
#[derive(Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
    start: f64,
    length: f64,
    /// Larger values at smaller positions (a y axis).
    flip: bool,
}

impl Scale {
    fn at(&self, v: f64) -> f64 {
        let f = (v - self.lo) / (self.hi - self.lo);
        self.start + if self.flip { 1.0 - f } else { f } * self.length
    }
}

/// One side of the plot: where values go, the ticks with their labels, and the title.
struct Side {
    scale: Scale,
    ticks: Vec<(f64, String)>,
    title: String,
}

/// The frame, ticks, labels and axis titles; grid lines at the ticks when asked.
fn draw_axes(canvas: &mut Canvas, f: Frame, x: &Side, y: &Side, grid: bool) {
    let bottom = f.top + f.height;
    for (v, label) in &x.ticks {
        let px = x.scale.at(*v).round() as i64;
        if grid {
            canvas.fill(px, f.top, 1, f.height, GRID);
        }
        canvas.fill(px, bottom, 1, TICK, INK);
        canvas.text(px - text_width(label, 1) / 2, bottom + TICK + 4, label, 1, INK);
    }
    for (v, label) in &y.ticks {
        let py = y.scale.at(*v).round() as i64;
        if grid {
            canvas.fill(f.left, py, f.width, 1, GRID);
        }
        canvas.fill(f.left - TICK, py, TICK, 1, INK);
        canvas.text(f.left - TICK - 3 - text_width(label, 1), py - GLYPH / 2, label, 1, INK);
    }
    canvas.outline(f.left - 1, f.top - 1, f.width + 2, f.height + 2, INK);
    let x_title = fit(&x.title, canvas.width - 2 * PAD, 1);
    canvas.text(f.left + (f.width - text_width(&x_title, 1)) / 2, bottom + TICK + 4 + GLYPH + 8, &x_title, 1, INK);
    let y_title = fit(&y.title, f.height, 1);
    canvas.text_up(PAD, f.top + (f.height + text_width(&y_title, 1)) / 2, &y_title, INK);
}

fn draw_map(canvas: &mut Canvas, header: &Header, field: &Field, x: &Axis, y: &Axis) {
    let top = header.draw(canvas);
    let height = plot_height(canvas, top);
    let range = field.range();
    let (ylo, yhi) = y.extent();
    let y_ticks = fitted(height, false, |max| y.ticks(ylo, yhi, max));
    let bar_ticks = range.map_or(Vec::new(), |(lo, hi)| {
        if lo < hi {
            fitted(height, false, |max| number_ticks(lo, hi, max.min(5), false))
        } else {
            vec![(lo, general_label(lo))]
        }
    });
    let bar_labels = bar_ticks.iter().map(|(_, l)| text_width(l, 1)).max().unwrap_or(0);
    let f = frame(canvas, top, &y_ticks, 16 + BAR + TICK + 4 + bar_labels + PAD);
    let (xlo, xhi) = x.extent();
    let x_ticks = fitted(f.width, true, |max| x.ticks(xlo, xhi, max));
    let colours = range.map(Colours::new);
    draw_raster(canvas, f, field, x, y, colours.as_ref());
    let xs = Scale { lo: xlo, hi: xhi, start: f.left as f64, length: f.width as f64, flip: false };
    let ys = Scale { lo: ylo, hi: yhi, start: f.top as f64, length: f.height as f64, flip: true };
    let x_side = Side { scale: xs, ticks: x_ticks, title: x.title.clone() };
    draw_axes(canvas, f, &x_side, &Side { scale: ys, ticks: y_ticks, title: y.title.clone() }, false);
    match (&colours, range) {
        (Some(c), Some(r)) => draw_colour_bar(canvas, f, c, r, &bar_ticks),
        _ => note(canvas, f, "no finite values"),
    }
}

/// Fills the plot area cell by cell (nearest neighbour), north up; rows that show the same
/// stored row are copied.
fn draw_raster(canvas: &mut Canvas, f: Frame, field: &Field, x: &Axis, y: &Axis, colours: Option<&Colours>) {
    let Some(colours) = colours else { return canvas.fill(f.left, f.top, f.width, f.height, CLEAR) };
    let (nx, ny) = (x.values.len(), y.values.len());
    let (fw, fh) = (f.width as usize, f.height as usize);
    let columns: Vec<usize> = (0..fw).map(|px| x.stored(px * nx / fw) * x.stride).collect();
    let mut previous: Option<(usize, usize)> = None;
    for py in 0..fh {
        let row = y.stored(ny - 1 - py * ny / fh) * y.stride;
        let start = canvas.offset(f.left, f.top + py as i64);
        match previous {
            Some((r, from)) if r == row => canvas.pixels.copy_within(from..from + 4 * fw, start),
            _ => {
                let line = &mut canvas.pixels[start..start + 4 * fw];
                for (pixel, col) in line.chunks_exact_mut(4).zip(&columns) {
                    pixel.copy_from_slice(&colours.of(field.get(row + col)));
                }
                previous = Some((row, start));
            }
        }
    }
}

fn draw_colour_bar(canvas: &mut Canvas, f: Frame, colours: &Colours, (lo, hi): (f64, f64), ticks: &[(f64, String)]) {
    let x = f.left + f.width + 16;
    for r in 0..f.height {
        let v = if hi > lo { hi - (hi - lo) * r as f64 / (f.height - 1).max(1) as f64 } else { lo };
        canvas.fill(x, f.top + r, BAR, 1, colours.of(v));
    }
    canvas.outline(x - 1, f.top - 1, BAR + 2, f.height + 2, INK);
    let scale = Scale { lo, hi, start: f.top as f64, length: (f.height - 1) as f64, flip: true };
    for (v, label) in ticks {
        let py = if hi > lo { scale.at(*v).round() as i64 } else { f.top + f.height / 2 };
        canvas.fill(x + BAR, py, TICK, 1, INK);
        canvas.text(x + BAR + TICK + 3, py - GLYPH / 2, label, 1, INK);
    }
}

fn note(canvas: &mut Canvas, f: Frame, text: &str) {
    canvas.text(f.left + (f.width - text_width(text, 1)) / 2, f.top + (f.height - GLYPH) / 2, text, 1, INK);
}

fn draw_series(canvas: &mut Canvas, header: &Header, field: &Field, x: &Axis) {
    let top = header.draw(canvas);
    let height = plot_height(canvas, top);
    let values: Vec<f64> = (0..x.values.len()).map(|i| field.get(i * x.stride)).collect();
    let range = finite_range(values.iter().copied());
    let (ylo, yhi) = match range {
        Some((lo, hi)) if hi > lo => (lo - (hi - lo) * 0.05, hi + (hi - lo) * 0.05),
        Some((v, _)) => (v - v.abs().max(1.0) * 0.1, v + v.abs().max(1.0) * 0.1),
        None => (0.0, 1.0),
    };
    let y_ticks = fitted(height, false, |max| number_ticks(ylo, yhi, max, false));
    let f = frame(canvas, top, &y_ticks, PAD + 8);
    let (xlo, xhi) = finite_range(x.values.iter().copied()).expect("axis values are finite");
    let x_ticks = fitted(f.width, true, |max| x.ticks(xlo, xhi, max));
    let xs = Scale { lo: xlo, hi: xhi, start: f.left as f64, length: (f.width - 1) as f64, flip: false };
    let ys = Scale { lo: ylo, hi: yhi, start: f.top as f64, length: (f.height - 1) as f64, flip: true };
    let units = attr(Some(field.var), "units");
    let title = if units.is_empty() { field.var.name.clone() } else { format!("{} [{units}]", field.var.name) };
    draw_axes(
        canvas,
        f,
        &Side { scale: xs, ticks: x_ticks, title: x.title.clone() },
        &Side { scale: ys, ticks: y_ticks, title },
        true,
    );
    let points: Vec<Option<(f64, f64)>> =
        x.values.iter().zip(&values).map(|(a, b)| b.is_finite().then(|| (xs.at(*a), ys.at(*b)))).collect();
    draw_line(canvas, &points);
    if range.is_none() {
        note(canvas, f, "no finite values");
    }
}

/// A 2-pixel line through consecutive points; a missing point breaks it, and a point with no
/// neighbour is drawn as a dot.
fn draw_line(canvas: &mut Canvas, points: &[Option<(f64, f64)>]) {
    for (i, p) in points.iter().enumerate() {
        let Some(a) = *p else { continue };
        let next = points.get(i + 1).copied().flatten();
        let previous = i.checked_sub(1).and_then(|j| points[j]);
        match next {
            Some(b) => segment(canvas, a, b),
            None if previous.is_none() => canvas.fill(a.0.round() as i64 - 1, a.1.round() as i64 - 1, 3, 3, LINE),
            None => {}
        }
    }
}

fn segment(canvas: &mut Canvas, (x0, y0): (f64, f64), (x1, y1): (f64, f64)) {
    let steps = (x1 - x0).abs().max((y1 - y0).abs()).ceil().max(1.0) as usize * 2;
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
        canvas.fill(x.round() as i64, y.round() as i64, 2, 2, LINE);
    }
}

/// Colours of values: a 256-entry viridis table over the finite range; NaN is transparent.
struct Colours {
    table: [Rgba; 256],
    lo: f64,
    per_unit: f64,
    base: f64,
}

impl Colours {
    fn new((lo, hi): (f64, f64)) -> Colours {
        let table = std::array::from_fn(|i| viridis(i as f64 / 255.0));
        let (per_unit, base) = if hi > lo { (255.0 / (hi - lo), 0.5) } else { (0.0, 128.0) };
        Colours { table, lo, per_unit, base }
    }

    #[inline]
    fn of(&self, v: f64) -> Rgba {
        if v.is_nan() {
            return CLEAR;
        }
        // An infinity in a constant field makes NaN here, which casts to 0.
        self.table[(self.base + (v - self.lo) * self.per_unit).clamp(0.0, 255.0) as usize]
    }
}

fn viridis(t: f64) -> Rgba {
    let at = t.clamp(0.0, 1.0) * (VIRIDIS.len() - 1) as f64;
    let i = (at.floor() as usize).min(VIRIDIS.len() - 2);
    let f = at - i as f64;
    let channel = |rgb: u32, c: u32| (rgb >> (16 - 8 * c) & 0xff) as f64;
    let mix = |c| (channel(VIRIDIS[i], c) * (1.0 - f) + channel(VIRIDIS[i + 1], c) * f).round() as u8;
    [mix(0), mix(1), mix(2), 255]
}

fn text_width(text: &str, scale: i64) -> i64 {
    text.chars().count() as i64 * GLYPH * scale
}

/// `text`, cut with "..." to fit `width` pixels.
fn fit(text: &str, width: i64, scale: i64) -> String {
    if text_width(text, scale) <= width {
        return text.to_string();
    }
    let keep = (width / (GLYPH * scale) - 3).max(0) as usize;
    text.chars().take(keep).chain("...".chars()).collect()
}

fn glyph(c: char) -> [u8; 8] {
    BASIC_LEGACY.get(c as usize).copied().unwrap_or(BASIC_LEGACY['?' as usize])
}

/// An RGBA image being drawn; drawing outside it is clipped.
struct Canvas {
    width: i64,
    height: i64,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: i64, height: i64) -> Canvas {
        Canvas { width, height, pixels: BACKGROUND.repeat((width * height) as usize) }
    }

    fn offset(&self, x: i64, y: i64) -> usize {
        ((y * self.width + x) * 4) as usize
    }

    fn fill(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgba) {
        let (x0, x1) = (x.max(0), (x + w).min(self.width));
        for row in y.max(0)..(y + h).min(self.height) {
            if x0 < x1 {
                let (a, b) = (self.offset(x0, row), self.offset(x1, row));
                self.pixels[a..b].chunks_exact_mut(4).for_each(|p| p.copy_from_slice(&c));
            }
        }
    }

    fn outline(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgba) {
        self.fill(x, y, w, 1, c);
        self.fill(x, y + h - 1, w, 1, c);
        self.fill(x, y, 1, h, c);
        self.fill(x + w - 1, y, 1, h, c);
    }

    /// Text with its top-left corner at (x, y), each font pixel drawn `scale`×`scale`.
    fn text(&mut self, x: i64, y: i64, text: &str, scale: i64, c: Rgba) {
        for (i, ch) in text.chars().enumerate() {
            let gx = x + i as i64 * GLYPH * scale;
            for (r, bits) in glyph(ch).iter().enumerate() {
                for b in (0..8).filter(|b| bits & (1 << b) != 0) {
                    self.fill(gx + b * scale, y + r as i64 * scale, scale, scale, c);
                }
            }
        }
    }

    /// Text read bottom to top, starting at the bottom-left corner (x, y).
    fn text_up(&mut self, x: i64, y: i64, text: &str, c: Rgba) {
        for (i, ch) in text.chars().enumerate() {
            let base = y - i as i64 * GLYPH;
            for (r, bits) in glyph(ch).iter().enumerate() {
                for b in (0..8).filter(|b| bits & (1 << b) != 0) {
                    self.fill(x + r as i64, base - 1 - b, 1, 1, c);
                }
            }
        }
    }

    fn encode(&self) -> Result<Vec<u8>, Problem> {
        let failed = |e: png::EncodingError| Problem::internal(format!("PNG encoding failed: {e}"));
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fastest);
        let mut writer = encoder.write_header().map_err(failed)?;
        writer.write_image_data(&self.pixels).map_err(failed)?;
        writer.finish().map_err(failed)?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::store::Attrs;
    use crate::zarr::{DType, Endian};
    use serde_json::json;

    fn attrs(pairs: &[(&str, Value)]) -> Attrs {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    fn coord(name: &str, values: &[f64], units: &str) -> OutVar {
        OutVar::from_f64(name, vec![name.into()], values, false, attrs(&[("units", json!(units))]))
    }

    /// A field on (lat, lon), `value(lat, lon)`, with latitudes stored in the order given.
    fn map(lats: &[f64], lons: &[f64], value: impl Fn(f64, f64) -> f64) -> Output {
        let data: Vec<f64> = lats.iter().flat_map(|la| lons.iter().map(|lo| value(*la, *lo))).collect();
        let time = attrs(&[("units", json!("days since 2000-01-01"))]);
        Output {
            dims: vec![("time".into(), 1), ("lat".into(), lats.len()), ("lon".into(), lons.len())],
            vars: vec![
                OutVar::from_f64("time", vec!["time".into()], &[15.5], false, time),
                coord("lat", lats, "degrees_north"),
                coord("lon", lons, "degrees_east"),
                OutVar::from_f64(
                    "tas",
                    vec!["time".into(), "lat".into(), "lon".into()],
                    &data,
                    true,
                    attrs(&[("units", json!("K")), ("long_name", json!("Near-Surface Air Temperature"))]),
                ),
            ],
            attrs: Attrs::new(),
            data_vars: vec!["tas".into()],
        }
    }

    fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgba, png::BitDepth::Eight));
        (info.width, info.height, buf)
    }

    fn pixel(img: &(u32, u32, Vec<u8>), x: u32, y: u32) -> Rgba {
        let i = ((y * img.0 + x) * 4) as usize;
        img.2[i..i + 4].try_into().unwrap()
    }

    #[test]
    fn maps_are_exactly_the_size_asked_and_missing_cells_are_transparent() {
        let lats = [-45.0, -15.0, 15.0, 45.0];
        let lons = [0.0, 60.0, 120.0, 180.0, 240.0, 300.0];
        // Missing: the south-west cell only.
        let out = map(&lats, &lons, |la, lo| if la < -30.0 && lo < 30.0 { f64::NAN } else { la + lo });
        let img = decode(&to_png(&out, 400, 300).unwrap());
        assert_eq!((img.0, img.1), (400, 300));
        let clear: Vec<(u32, u32)> =
            (0..300).flat_map(|y| (0..400).map(move |x| (x, y))).filter(|&(x, y)| pixel(&img, x, y)[3] == 0).collect();
        assert!(!clear.is_empty());
        assert!(clear.len() < 400 * 300 / 24, "{} transparent pixels", clear.len());
        assert!(clear.iter().all(|&(x, y)| x > 40 && x < 200 && y > 150 && y < 280), "{clear:?}");
        // One cell: a solid rectangle.
        let (x0, x1) = (clear.iter().map(|p| p.0).min().unwrap(), clear.iter().map(|p| p.0).max().unwrap());
        let (y0, y1) = (clear.iter().map(|p| p.1).min().unwrap(), clear.iter().map(|p| p.1).max().unwrap());
        assert_eq!(clear.len() as u32, (x1 - x0 + 1) * (y1 - y0 + 1));
        assert!(img.2.chunks(4).filter(|p| p[3] != 0).all(|p| p[3] == 255));
    }

    #[test]
    fn packed_integers_are_decoded_and_fill_values_masked() {
        let mut out = map(&[-45.0, 45.0], &[0.0, 180.0], |_, _| 0.0);
        let raw: Vec<u8> = [-999i16, 10, 20, 30].iter().flat_map(|v| v.to_le_bytes()).collect();
        let packing = attrs(&[("_FillValue", json!(-999)), ("scale_factor", json!(0.5)), ("add_offset", json!(270))]);
        out.vars[3] =
            OutVar::from_raw("tas", out.vars[3].dims.clone(), DType::new(Kind::Int, 2, Endian::Little), raw, packing);
        let img = decode(&to_png(&out, 400, 300).unwrap());
        assert!(img.2.chunks(4).any(|p| p[3] == 0));
        assert!(img.2.chunks(4).any(|p| *p == INK));

        let none = map(&[-45.0, 45.0], &[0.0, 180.0], |_, _| f64::NAN);
        let img = decode(&to_png(&none, 400, 300).unwrap());
        assert!(img.2.chunks(4).filter(|p| p[3] == 0).count() > 400 * 300 / 3);
        assert!(img.2.chunks(4).any(|p| *p == INK));
    }

    #[test]
    fn maps_are_north_up_whatever_the_stored_order() {
        let lats: Vec<f64> = (0..6).map(|i| -75.0 + 30.0 * i as f64).collect();
        let lons: Vec<f64> = (0..8).map(|i| 22.5 + 45.0 * i as f64).collect();
        let south_first = to_png(&map(&lats, &lons, |la, _| la), 500, 300).unwrap();
        let img = decode(&south_first);
        let table = Colours::new((0.0, 1.0)).table;
        let column: Vec<Rgba> = (0..300).map(|y| pixel(&img, 200, y)).collect();
        let top_yellow = column.iter().position(|p| *p == table[255]).unwrap();
        let bottom_purple = column.iter().rposition(|p| *p == table[0]).unwrap();
        assert!(top_yellow < bottom_purple, "yellow at {top_yellow}, purple at {bottom_purple}");
        assert!(top_yellow < 120 && bottom_purple > 180, "yellow at {top_yellow}, purple at {bottom_purple}");

        let north_first: Vec<f64> = lats.iter().rev().copied().collect();
        assert_eq!(to_png(&map(&north_first, &lons, |la, _| la), 500, 300).unwrap(), south_first);
        let mut transposed = map(&lats, &lons, |la, _| la);
        let data: Vec<f64> = (0..lons.len()).flat_map(|_| lats.iter().copied()).collect();
        transposed.vars[3] = OutVar::from_f64("tas", vec!["time".into(), "lon".into(), "lat".into()], &data, true, {
            transposed.vars[3].attrs.clone()
        });
        assert_eq!(to_png(&transposed, 500, 300).unwrap(), south_first);
    }

    #[test]
    fn series_draw_a_line_with_gaps() {
        let days: Vec<f64> = (0..12).map(|m| 15.0 + 30.4 * m as f64).collect();
        let values: Vec<f64> =
            (0..12).map(|m| if m == 5 { f64::NAN } else { 280.0 + 10.0 * (m as f64 / 2.0).sin() }).collect();
        let out = Output {
            dims: vec![("time".into(), 12)],
            vars: vec![
                coord("time", &days, "days since 2000-01-01 00:00:00"),
                OutVar::from_f64("tas", vec!["time".into()], &values, true, attrs(&[("units", json!("K"))])),
            ],
            attrs: Attrs::new(),
            data_vars: vec!["tas".into()],
        };
        let img = decode(&to_png(&out, DEFAULT_SIZE.0, DEFAULT_SIZE.1).unwrap());
        assert_eq!((img.0, img.1), DEFAULT_SIZE);
        assert!(img.2.chunks(4).all(|p| p[3] == 255));
        assert!(img.2.chunks(4).filter(|p| *p == LINE).count() > 500);
        let tu = TimeUnits::parse("days since 2000-01-01", "").unwrap();
        let labels: Vec<String> = time_ticks(&tu, days[0], days[11], 6).into_iter().map(|(_, l)| l).collect();
        assert_eq!(labels, ["2000-03", "2000-05", "2000-07", "2000-09", "2000-11"]);
    }

    #[test]
    fn shapes_that_are_not_a_field_or_a_series_are_refused() {
        let lats = [-45.0, 45.0];
        let mut out = map(&lats, &[0.0, 90.0, 180.0], |la, lo| la + lo);
        out.dims[0].1 = 2;
        out.vars[0] = coord("time", &[0.0, 31.0], "days since 2000-01-01");
        let data = out.vars[3].data.clone();
        out.vars[3].data.extend(data);
        let e = to_png(&out, 400, 300).unwrap_err();
        assert_eq!(e.status, 422);
        assert!(e.detail.contains("one index of time with isel"), "{}", e.detail);

        let single = Output {
            dims: vec![],
            vars: vec![OutVar::from_f64("tas", vec![], &[1.0], false, Attrs::new())],
            attrs: Attrs::new(),
            data_vars: vec!["tas".into()],
        };
        assert_eq!(to_png(&single, 400, 300).unwrap_err().status, 422);
    }

    #[test]
    fn sizes_out_of_bounds_are_invalid() {
        let out = map(&[0.0, 1.0], &[0.0, 1.0], |la, _| la);
        assert_eq!(to_png(&out, 199, 300).unwrap_err().status, 400);
        assert_eq!(to_png(&out, 400, 149).unwrap_err().status, 400);
        assert_eq!(to_png(&out, 4097, 300).unwrap_err().status, 400);
        assert!(to_png(&out, 200, 150).is_ok());
    }

    #[test]
    fn ticks_are_round_and_labels_compact() {
        assert_eq!(ticks(-90.0, 90.0, 6).0, [-50.0, 0.0, 50.0]);
        assert_eq!(ticks(0.0, 10.0, 6).0, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let cases = [
            (-45.0, 5.0, "-45"),
            (12.5, 2.5, "12.5"),
            (1e5, 5e4, "1e+05"),
            (2.5e-4, 5e-5, "2.5e-04"),
            (999_999.999_999_9, 5e5, "1e+06"),
        ];
        for (v, step, text) in cases {
            assert_eq!(number_label(v, step), text);
        }
        assert_eq!(number_label(-1e-17, 0.1), "0");
        assert_eq!(general_label(85000.0), "85000");
        assert_eq!(general_label(273.15), "273.1");
    }
}
