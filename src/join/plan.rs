//! Planning a joined variable: its pieces become one array, served by reference where the
//! members' encodings agree and chunks align, otherwise assembled, promoted, decoded or
//! re-encoded on the server.

use serde_json::Value;

use super::compare::{calendar_name, calendar_of, same_number};
use super::*;

impl Joiner<'_> {
    /// A single-chunk array of `v` in `mode` (float64 unless [`Mode::Assemble`]).
    pub(super) fn array(&self, name: &str, v: &VVar, mode: Mode, out: Option<DType>) -> Result<JoinedArray, JoinError> {
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
    pub(super) fn parts(&self, name: &str, vparts: &[VPart], units_from: Option<&str>) -> Result<PartsOf, JoinError> {
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
            let chunks =
                self.chunk_table(vp, var, &mut inline).map_err(|why| JoinError::Refused(format!("{name}: {why}")))?;
            let mut shape = vec![1; vp.lead];
            shape.extend(&var.meta.shape);
            parts.push(Part {
                source: vp.member as u32,
                encoding: u16::try_from(e)
                    .map_err(|_| JoinError::Refused(format!("{name}: too many different encodings")))?,
                lead: vp.lead as u8,
                origin: vp.origin.clone(),
                shape,
                chunks,
            });
        }
        Ok((encodings, parts, inline))
    }

    pub(super) fn chunk_table(
        &self,
        vp: &VPart,
        var: &Variable,
        inline: &mut Vec<u8>,
    ) -> Result<Vec<ChunkRef>, String> {
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
    pub(super) fn plan(
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
                JoinError::Refused(format!(
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

    /// Names of a file using an encoding that matches `pred` and one that does not.
    pub(super) fn files_with(
        &self,
        parts: &[Part],
        encs: &[Encoding],
        pred: impl Fn(&Encoding) -> bool,
    ) -> (String, String) {
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

/// Whether a part's chunks fall on the joined array's chunk grid.
pub(super) fn aligned(p: &Part, chunks: &[u64], shape: &[u64]) -> bool {
    (0..shape.len()).all(|d| {
        let c = chunks[d];
        p.origin[d].is_multiple_of(c) && (p.shape[d].is_multiple_of(c) || p.origin[d] + p.shape[d] == shape[d])
    })
}

/// The numpy promotion of two numeric dtypes, or `None` when there is none zarrgate serves
/// exactly (text and numbers, 64-bit unsigned and signed).
pub(super) fn promote(a: DType, b: DType) -> Option<DType> {
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
pub(super) const FLOAT32_ATTRS: &str = "\u{1}float32";

/// Whether xarray decodes a member with this encoding to float32 (else float64), by
/// xarray's `_choose_float_dtype`: with packing attributes, their storage type decides (an
/// integer wider than 16 bits, or an offset of another type than the scale, gives float64);
/// without, float32 data and integers up to 16 bits give float32.
pub(super) fn decodes_to_f32(e: &Encoding) -> bool {
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
pub(super) fn values_array(meta: &ArrayMetadataV2, bytes: &[u8]) -> JoinedArray {
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
