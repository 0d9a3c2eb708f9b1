//! Attributes that HDF5 holds and h5netcdf shows but netCDF-C leaves out without a word:
//! booleans (h5py writes `np.bool_` as the enum `{FALSE: 0, TRUE: 1}`). They are added to the
//! model as JSON booleans. Complex-valued attributes are named in the report instead: JSON, and
//! so Zarr's `.zattrs`, has no complex numbers.

use hdf5::types::TypeDescriptor;
use zarrgate_core::attrs::{AttrValue, Attributes};

use super::model::NcModel;
use super::storage;

/// Adds what netCDF-C hid to every group and variable of `model`.
pub fn extend(file: &hdf5::File, model: &mut NcModel) {
    let mut problems = Vec::new();
    for g in &mut model.groups {
        let group = if g.path.is_empty() { file.group("/") } else { file.group(&g.path) };
        if let Ok(group) = group {
            add(&group, &mut g.attrs, &g.path, &mut problems);
        }
    }
    for v in &mut model.vars {
        if let Some(ds) = storage::find(file, &v.group, &v.name) {
            add(&ds, &mut v.attrs, &v.path, &mut problems);
        }
    }
    model.attribute_problems.extend(problems);
}

fn add(location: &hdf5::Location, attrs: &mut Attributes, owner: &str, problems: &mut Vec<(String, String)>) {
    for name in location.attr_names().unwrap_or_default() {
        if attrs.get(&name).is_some() {
            continue;
        }
        let Ok(attr) = location.attr(&name) else { continue };
        match attr.dtype().and_then(|t| t.to_descriptor()) {
            Ok(TypeDescriptor::Boolean) => {
                if let Ok(values) = attr.read_raw::<bool>() {
                    attrs.push(name, AttrValue::Bools(values));
                }
            }
            Ok(TypeDescriptor::Compound(c)) if is_complex(&c) => problems.push((
                format!("{owner}@{name}"),
                "a complex number: JSON, and so Zarr attributes, cannot hold one (h5netcdf shows it)".into(),
            )),
            _ => {}
        }
    }
}

fn is_complex(c: &hdf5::types::CompoundType) -> bool {
    matches!(c.fields.as_slice(), [r, i] if r.name == "r" && i.name == "i"
        && matches!(r.ty, TypeDescriptor::Float(_)) && r.ty == i.ty)
}
