//! The chunk kernels: gathering selected elements, and weighted sums, over many chunks in
//! parallel.
//!
//! A selection is a list of source positions per dimension. Positions are grouped by the chunk
//! that holds them, so each needed chunk is fetched and decoded once, by one worker thread.
//! Workers never allocate per element: each keeps one decoded chunk and its own accumulators.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use serde_json::Value;

use super::request::Problem;
use super::store::{decode_chunk, fill_bytes, number, numbers, to_f64, Attrs, ChunkSource, SourceError, Variable};
use crate::zarr::{ArrayMetadataV2, DType, Kind};

/// Shared state of one computation: its thread budget, progress and cancellation.
#[derive(Debug)]
pub struct Run {
    pub threads: usize,
    pub chunks_total: AtomicU64,
    pub chunks_done: AtomicU64,
    pub cancelled: AtomicBool,
}

impl Run {
    pub fn new(threads: usize) -> Run {
        Run {
            threads: threads.max(1),
            chunks_total: AtomicU64::new(0),
            chunks_done: AtomicU64::new(0),
            cancelled: AtomicBool::new(false),
        }
    }

    /// Percent of the planned chunks done.
    pub fn progress(&self) -> u8 {
        let total = self.chunks_total.load(Ordering::Relaxed).max(1);
        (self.chunks_done.load(Ordering::Relaxed) * 100 / total).min(100) as u8
    }
}

/// Why a kernel stopped.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("chunk {key}: {why}")]
    Decode { key: String, why: super::store::ChunkError },
    #[error("the job was dismissed")]
    Cancelled,
}

impl KernelError {
    pub fn problem(&self) -> Problem {
        match self {
            KernelError::Source(SourceError::Stale(why)) => {
                Problem::new(503, "source-changed", "Source changed", why.clone())
            }
            KernelError::Cancelled => Problem::new(409, "dismissed", "Dismissed", self.to_string()),
            _ => Problem::internal(self.to_string()),
        }
    }
}

/// CF decoding of one variable: `_Unsigned` honoured, `_FillValue` and `missing_value` masked,
/// then packing undone.
#[derive(Clone, Debug)]
pub struct Decoded {
    fills: Vec<f64>,
    scale: f64,
    offset: f64,
    /// Add this to negative raw values (`_Unsigned = "true"` on a signed type: 2^bits).
    unsigned_wrap: f64,
}

impl Decoded {
    pub fn of(var: &Variable) -> Decoded {
        Decoded::new(var.meta.dtype, &var.attrs)
    }

    /// The decoding of elements of `dtype` with attributes `attrs`.
    pub fn new(dtype: DType, attrs: &Attrs) -> Decoded {
        let unsigned = dtype.kind == Kind::Int
            && attrs.get("_Unsigned").and_then(Value::as_str).is_some_and(|u| u.eq_ignore_ascii_case("true"));
        let unsigned_wrap = if unsigned { 2f64.powi(8 * dtype.size as i32) } else { 0.0 };
        // Compare in the variable's own precision, as numpy does after casting the fill.
        let exact = |x: f64| if dtype.kind == Kind::Float && dtype.size == 4 { x as f32 as f64 } else { x };
        let wrap = |x: f64| if x < 0.0 { x + unsigned_wrap } else { x };
        let mut fills: Vec<f64> = numbers(attrs, "_FillValue");
        fills.extend(numbers(attrs, "missing_value"));
        let fills = fills.into_iter().filter(|f| !f.is_nan()).map(exact).map(wrap).collect();
        Decoded {
            fills,
            scale: attrs.get("scale_factor").and_then(number).unwrap_or(1.0),
            offset: attrs.get("add_offset").and_then(number).unwrap_or(0.0),
            unsigned_wrap,
        }
    }

    /// The decoded value of a raw element; NaN when masked.
    #[inline]
    pub fn apply(&self, raw: f64) -> f64 {
        let raw = if raw < 0.0 { raw + self.unsigned_wrap } else { raw };
        for f in &self.fills {
            if raw == *f {
                return f64::NAN;
            }
        }
        raw * self.scale + self.offset
    }

    pub fn is_packed(&self) -> bool {
        self.scale != 1.0 || self.offset != 0.0
    }

    /// Neither masked nor packed: values decode to themselves.
    pub fn masks_nothing(&self) -> bool {
        self.fills.is_empty() && !self.is_packed() && self.unsigned_wrap == 0.0
    }
}

/// One chunk along a dimension: its index and the (output position, position within the
/// chunk) pairs that fall in it.
type ChunkGroup = (u64, Vec<(usize, usize)>);

/// Positions grouped by chunk, per dimension: chunk index → [(output position, position within
/// the chunk)].
fn chunk_groups(meta: &ArrayMetadataV2, sel: &[Vec<usize>]) -> Vec<Vec<ChunkGroup>> {
    sel.iter()
        .zip(&meta.chunks)
        .map(|(positions, &c)| {
            let mut by: BTreeMap<u64, Vec<(usize, usize)>> = BTreeMap::new();
            for (out, &p) in positions.iter().enumerate() {
                by.entry(p as u64 / c).or_default().push((out, (p as u64 % c) as usize));
            }
            by.into_iter().collect()
        })
        .collect()
}

/// Every combination of one group per dimension (the chunks to read).
fn combinations(groups: &[Vec<ChunkGroup>]) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new()];
    for g in groups {
        out =
            out.into_iter().flat_map(|prefix| (0..g.len()).map(move |i| [prefix.clone(), vec![i]].concat())).collect();
    }
    if groups.iter().any(Vec::is_empty) {
        out.clear();
    }
    out
}

/// Row-major strides of a shape, in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The raw bytes of one chunk: fetched and decoded, or the fill value when absent.
fn chunk_bytes(source: &dyn ChunkSource, var: &Variable, idx: &[u64]) -> Result<Vec<u8>, KernelError> {
    let key = format!("{}/{}", var.name, ArrayMetadataV2::chunk_key(idx));
    match source.get(&key)? {
        Some(stored) => decode_chunk(&var.meta, stored).map_err(|why| KernelError::Decode { key, why }),
        None => {
            Ok(fill_bytes(&var.meta.dtype, &var.meta.fill_value)
                .repeat(var.meta.chunks.iter().product::<u64>() as usize))
        }
    }
}

/// Calls `work(state, chunk)` for every chunk on `run.threads` threads, each with its own state.
fn parallel<S: Send>(
    run: &Run,
    n: usize,
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, usize) -> Result<(), KernelError> + Sync,
) -> Result<Vec<S>, KernelError> {
    run.chunks_total.fetch_add(n as u64, Ordering::Relaxed);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let threads = run.threads.min(n).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<S, KernelError> {
                    let mut state = init();
                    loop {
                        if failed.load(Ordering::Relaxed) {
                            return Ok(state);
                        }
                        if run.cancelled.load(Ordering::Relaxed) {
                            return Err(KernelError::Cancelled);
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(state);
                        }
                        if let Err(e) = work(&mut state, i) {
                            failed.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                        run.chunks_done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("kernel workers do not panic")).collect()
    })
}

/// Visits every selected row of one chunk: `f(positions along the outer dimensions, offset of
/// the row within the chunk)`. The caller walks the last dimension's list itself, which keeps
/// per-element work to a few additions.
fn visit_rows(lists: &[&[(usize, usize)]], chunk_strides: &[usize], mut f: impl FnMut(&[usize], usize)) {
    let outer = lists.len().saturating_sub(1);
    let mut idx = vec![0usize; outer];
    let mut pos = vec![0usize; outer];
    loop {
        let mut base = 0;
        for d in 0..outer {
            let (p, w) = lists[d][idx[d]];
            pos[d] = p;
            base += w * chunk_strides[d];
        }
        f(&pos, base);
        let mut d = outer;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < lists[d].len() {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// The last dimension's list of a chunk (one element for a scalar).
const SCALAR: &[(usize, usize)] = &[(0, 0)];

fn inner<'a>(lists: &[&'a [(usize, usize)]]) -> &'a [(usize, usize)] {
    lists.last().copied().unwrap_or(SCALAR)
}

/// Output buffer written by several workers at disjoint elements.
struct Shared(*mut u8);
// SAFETY: every output element belongs to exactly one source position, hence to exactly one
// chunk, and each chunk is handled by one worker; writes never overlap.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// The selected elements of `var`, raw, row-major over the selection.
pub fn gather(run: &Run, source: &dyn ChunkSource, var: &Variable, sel: &[Vec<usize>]) -> Result<Vec<u8>, KernelError> {
    let esize = var.meta.dtype.size();
    let shape: Vec<usize> = sel.iter().map(Vec::len).collect();
    let out_strides = strides(&shape);
    let chunk_strides = strides(&var.meta.chunks.iter().map(|c| *c as usize).collect::<Vec<_>>());
    let mut out = vec![0u8; shape.iter().product::<usize>() * esize];
    let groups = chunk_groups(&var.meta, sel);
    let chunks = combinations(&groups);
    let shared = Shared(out.as_mut_ptr());
    let shared = &shared;
    parallel(
        run,
        chunks.len(),
        || (),
        |_, i| {
            let idx: Vec<u64> = chunks[i].iter().enumerate().map(|(d, &g)| groups[d][g].0).collect();
            let bytes = chunk_bytes(source, var, &idx)?;
            let lists: Vec<&[(usize, usize)]> =
                chunks[i].iter().enumerate().map(|(d, &g)| groups[d][g].1.as_slice()).collect();
            let last = inner(&lists);
            let last_stride = out_strides.last().copied().unwrap_or(1);
            visit_rows(&lists, &chunk_strides, |pos, base| {
                let row: usize = pos.iter().zip(&out_strides).map(|(p, s)| p * s).sum();
                for &(p, within) in last {
                    let dst = (row + p * last_stride) * esize;
                    let src = (base + within) * esize;
                    // SAFETY: `dst` is inside `out` (positions are below the selection's shape)
                    // and no other worker writes this element (see `Shared`).
                    unsafe {
                        std::ptr::copy_nonoverlapping(bytes[src..src + esize].as_ptr(), shared.0.add(dst), esize)
                    };
                }
            });
            Ok(())
        },
    )?;
    Ok(out)
}

/// Reads whole selections on the calling thread (coordinates, weights).
pub fn read_all(source: &dyn ChunkSource, var: &Variable, sel: &[Vec<usize>]) -> Result<Vec<u8>, KernelError> {
    gather(&Run::new(1), source, var, sel)
}

/// Where each element of a selection goes: per dimension, the offset its position adds.
#[derive(Clone, Debug)]
pub struct Layout {
    pub tables: Vec<Vec<usize>>,
    pub len: usize,
}

/// How the innermost selected run of a chunk maps to cells, for the fast paths.
#[derive(Clone, Copy)]
enum RowShape {
    /// Consecutive elements `start..start + len` of the row, one weight, and cells stepping by
    /// `acc_step` (1, or 0 for a single cell).
    Contiguous {
        start: usize,
        len: usize,
        acc_step: usize,
    },
    General,
}

impl RowShape {
    fn of(last: &[(usize, usize)], acc_last: &[usize], w_last: &[usize]) -> RowShape {
        let Some(&(p0, start)) = last.first() else { return RowShape::General };
        let consecutive = last.iter().enumerate().all(|(i, &(p, w))| p == p0 + i && w == start + i);
        let one_weight = last.iter().all(|&(p, _)| w_last[p] == w_last[p0]);
        let step = |s: usize| last.iter().enumerate().all(|(i, &(p, _))| acc_last[p] == acc_last[p0] + i * s);
        match (consecutive && one_weight, step(1), step(0)) {
            (true, true, _) => RowShape::Contiguous { start, len: last.len(), acc_step: 1 },
            (true, _, true) => RowShape::Contiguous { start, len: last.len(), acc_step: 0 },
            _ => RowShape::General,
        }
    }
}

/// Sums `Σ w·x` and `Σ w` of the valid decoded elements into the cells of `acc`, with weights
/// from `weights` (cells of the weight field).
pub struct WeightedSum<'a> {
    pub acc: &'a Layout,
    pub weight_cells: &'a Layout,
    pub weights: &'a [f64],
}

impl WeightedSum<'_> {
    pub fn run(
        &self,
        run: &Run,
        source: &dyn ChunkSource,
        var: &Variable,
        sel: &[Vec<usize>],
    ) -> Result<(Vec<f64>, Vec<f64>), KernelError> {
        let decoded = Decoded::of(var);
        let chunk_strides = strides(&var.meta.chunks.iter().map(|c| *c as usize).collect::<Vec<_>>());
        let groups = chunk_groups(&var.meta, sel);
        let chunks = combinations(&groups);
        let dtype: DType = var.meta.dtype;
        let nd = sel.len();
        let states = parallel(
            run,
            chunks.len(),
            || (vec![0.0f64; self.acc.len], vec![0.0f64; self.acc.len], Vec::<f64>::new()),
            |(num, den, values), i| {
                let idx: Vec<u64> = chunks[i].iter().enumerate().map(|(d, &g)| groups[d][g].0).collect();
                let bytes = chunk_bytes(source, var, &idx)?;
                to_f64(&dtype, &bytes, values).map_err(|why| KernelError::Decode { key: var.name.clone(), why })?;
                let lists: Vec<&[(usize, usize)]> =
                    chunks[i].iter().enumerate().map(|(d, &g)| groups[d][g].1.as_slice()).collect();
                let (acc_t, w_t) = (&self.acc.tables, &self.weight_cells.tables);
                let last = inner(&lists);
                let (acc_last, w_last): (&[usize], &[usize]) =
                    if nd == 0 { (&[0], &[0]) } else { (&acc_t[nd - 1], &w_t[nd - 1]) };
                let row = RowShape::of(last, acc_last, w_last);
                visit_rows(&lists, &chunk_strides, |pos, base| {
                    let (mut a0, mut w0) = (0, 0);
                    for (d, p) in pos.iter().enumerate() {
                        a0 += acc_t[d][*p];
                        w0 += w_t[d][*p];
                    }
                    match row {
                        // One weight for the row, and cells that follow the elements (a mean
                        // over outer dimensions) or a single cell (a mean over this one).
                        RowShape::Contiguous { start, len, acc_step } => {
                            let w = self.weights[w0 + w_last[last[0].0]];
                            if w == 0.0 {
                                return;
                            }
                            let xs = &values[base + start..base + start + len];
                            let a = a0 + acc_last[last[0].0];
                            if acc_step == 1 {
                                for ((x, n), d) in xs.iter().zip(&mut num[a..a + len]).zip(&mut den[a..a + len]) {
                                    let x = decoded.apply(*x);
                                    if !x.is_nan() {
                                        *n += w * x;
                                        *d += w;
                                    }
                                }
                            } else {
                                let (mut sum, mut count) = (0.0, 0.0);
                                for x in xs {
                                    let x = decoded.apply(*x);
                                    if !x.is_nan() {
                                        sum += x;
                                        count += 1.0;
                                    }
                                }
                                num[a] += w * sum;
                                den[a] += w * count;
                            }
                        }
                        RowShape::General => {
                            for &(p, within) in last {
                                let x = decoded.apply(values[base + within]);
                                let w = self.weights[w0 + w_last[p]];
                                if !x.is_nan() && w != 0.0 {
                                    let a = a0 + acc_last[p];
                                    num[a] += w * x;
                                    den[a] += w;
                                }
                            }
                        }
                    }
                });
                Ok(())
            },
        )?;
        let mut states = states.into_iter();
        let (mut num, mut den, _) =
            states.next().unwrap_or_else(|| (vec![0.0; self.acc.len], vec![0.0; self.acc.len], Vec::new()));
        for (n, d, _) in states {
            num.iter_mut().zip(&n).for_each(|(a, b)| *a += b);
            den.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
        Ok((num, den))
    }
}

/// `fill_value` of a variable as a number (for masks in raw data).
pub fn fill_number(var: &Variable) -> Option<f64> {
    number(&var.meta.fill_value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::store::SourceError;
    use std::collections::HashMap;

    /// A 5×4 int16 array in 2×3 chunks (partial chunks at both edges), values 10·row + col.
    struct Grid(HashMap<String, Vec<u8>>);

    fn grid() -> (Grid, Variable) {
        let meta: ArrayMetadataV2 = serde_json::from_str(
            r#"{"zarr_format":2,"shape":[5,4],"chunks":[2,3],"dtype":"<i2","compressor":null,"fill_value":-1,"order":"C","filters":null}"#,
        )
        .unwrap();
        let mut chunks = HashMap::new();
        for ci in 0..3u64 {
            for cj in 0..2u64 {
                if (ci, cj) == (2, 1) {
                    continue; // unwritten: reads as fill
                }
                let mut bytes = Vec::new();
                for r in 0..2 {
                    for c in 0..3 {
                        let v = (10 * (ci * 2 + r) + cj * 3 + c) as i16;
                        bytes.extend_from_slice(&v.to_le_bytes());
                    }
                }
                chunks.insert(format!("v/{ci}.{cj}"), bytes);
            }
        }
        let var = Variable { name: "v".into(), meta, dims: vec!["y".into(), "x".into()], attrs: Default::default() };
        (Grid(chunks), var)
    }

    impl ChunkSource for Grid {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SourceError> {
            Ok(self.0.get(key).cloned())
        }
    }

    fn as_i16(bytes: &[u8]) -> Vec<i16> {
        bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
    }

    #[test]
    fn gather_follows_the_selection_order_across_chunks() {
        let (src, var) = grid();
        let sel = vec![vec![4, 1, 2], vec![3, 0]];
        for threads in [1, 3] {
            let out = gather(&Run::new(threads), &src, &var, &sel).unwrap();
            assert_eq!(as_i16(&out), vec![-1, 40, 13, 10, 23, 20]);
        }
    }

    #[test]
    fn weighted_sums_skip_fill_and_apply_weights() {
        let (src, mut var) = grid();
        var.attrs.insert("_FillValue".into(), serde_json::json!(-1));
        // Sum over x into one cell per row; weight 2 for column 0, 1 elsewhere.
        let acc = Layout { tables: vec![(0..5).collect(), vec![0; 4]], len: 5 };
        let cells = Layout { tables: vec![vec![0; 5], vec![0, 1, 1, 1]], len: 2 };
        let sum = WeightedSum { acc: &acc, weight_cells: &cells, weights: &[2.0, 1.0] };
        let sel = vec![(0..5).collect(), (0..4).collect()];
        let (num, den) = sum.run(&Run::new(2), &src, &var, &sel).unwrap();
        assert_eq!(num[1], 2.0 * 10.0 + 11.0 + 12.0 + 13.0);
        assert_eq!(den[1], 5.0);
        assert_eq!((num[4], den[4]), (2.0 * 40.0 + 41.0 + 42.0, 4.0), "the unwritten chunk is fill, skipped");
    }

    #[test]
    fn fast_row_paths_agree_with_element_sums() {
        let (src, mut var) = grid();
        var.attrs.insert("_FillValue".into(), serde_json::json!(-1));
        let sel: Vec<Vec<usize>> = vec![(0..5).collect(), (1..4).collect()];
        let value = |y: usize, x: usize| if y == 4 && x == 3 { None } else { Some((10 * y + x) as f64) };
        // Per column (cells follow the row): weight 3 for every element.
        let acc = Layout { tables: vec![vec![0; 5], (0..3).collect()], len: 3 };
        let one = Layout { tables: vec![vec![0; 5], vec![0; 3]], len: 1 };
        let (num, den) =
            WeightedSum { acc: &acc, weight_cells: &one, weights: &[3.0] }.run(&Run::new(2), &src, &var, &sel).unwrap();
        for (c, x) in (1..4).enumerate() {
            let vals: Vec<f64> = (0..5).filter_map(|y| value(y, x)).collect();
            assert_eq!(num[c], 3.0 * vals.iter().sum::<f64>());
            assert_eq!(den[c], 3.0 * vals.len() as f64);
        }
        // Per row (one cell per row), weights by row.
        let acc = Layout { tables: vec![(0..5).collect(), vec![0; 3]], len: 5 };
        let rows = Layout { tables: vec![(0..5).collect(), vec![0; 3]], len: 5 };
        let w = [1.0, 2.0, 0.0, 4.0, 5.0];
        let (num, den) =
            WeightedSum { acc: &acc, weight_cells: &rows, weights: &w }.run(&Run::new(1), &src, &var, &sel).unwrap();
        for y in 0..5 {
            let vals: Vec<f64> = (1..4).filter_map(|x| value(y, x)).collect();
            assert_eq!((num[y], den[y]), (w[y] * vals.iter().sum::<f64>(), w[y] * vals.len() as f64), "row {y}");
        }
    }

    #[test]
    fn unsigned_bytes_and_their_fill_decode_as_xarray_does() {
        let (_, mut var) = grid();
        var.meta.dtype = crate::zarr::DType::new(Kind::Int, 1, crate::zarr::Endian::NotApplicable);
        var.attrs.insert("_Unsigned".into(), serde_json::json!("true"));
        var.attrs.insert("_FillValue".into(), serde_json::json!(-1));
        let d = Decoded::of(&var);
        assert_eq!(d.apply(-56.0), 200.0);
        assert!(d.apply(-1.0).is_nan(), "the fill -1 is 255 once unsigned");
        assert!(!d.masks_nothing());
    }

    #[test]
    fn cancelled_runs_stop() {
        let (src, var) = grid();
        let run = Run::new(1);
        run.cancelled.store(true, Ordering::Relaxed);
        assert!(matches!(gather(&run, &src, &var, &[vec![0], vec![0]]), Err(KernelError::Cancelled)));
    }
}
