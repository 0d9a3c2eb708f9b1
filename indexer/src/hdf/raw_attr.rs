//! Enum-typed attributes, read through netCDF-C directly.
//!
//! HDF5 booleans are enums, and netCDF-C exposes enum attributes, but the netcdf crate rejects
//! user-defined types. netCDF4-python shows an enum attribute as its base integers, so that is
//! what we read here, with a second, read-only handle on the file.

use std::ffi::CString;
use std::path::Path;

use netcdf_sys as nc;
use zarrgate_core::attrs::AttrValue;
// netCDF-C returns native-endian values, little-endian on the targets we build for.
use zarrgate_core::fill::{sign_extend, zero_extend};

/// Reads attribute `name` of variable `var` (or of the group, if `None`) in group `group`
/// (`""` for the root) when its type is an enum. `None` for anything else or on any error.
pub fn enum_attr(path: &Path, group: &str, var: Option<&str>, name: &str) -> Option<AttrValue> {
    let cpath = CString::new(path.to_str()?).ok()?;
    let cgroup = CString::new(format!("/{group}")).ok()?;
    let cvar = var.map(CString::new).transpose().ok()?;
    let cname = CString::new(name).ok()?;
    let _guard = nc::libnetcdf_lock.lock();
    let mut ncid = 0;
    // SAFETY: every pointer is to a live local; the file handle is closed before returning.
    unsafe {
        if nc::nc_open(cpath.as_ptr(), nc::NC_NOWRITE, &mut ncid) != nc::NC_NOERR {
            return None;
        }
        let value = read(ncid, &cgroup, cvar.as_deref(), &cname);
        nc::nc_close(ncid);
        value
    }
}

/// SAFETY: `ncid` must be an open netCDF file and the lock held.
unsafe fn read(ncid: i32, group: &CString, var: Option<&std::ffi::CStr>, name: &CString) -> Option<AttrValue> {
    let ok = |status: i32| (status == nc::NC_NOERR).then_some(());
    let mut gid = ncid;
    if group.as_bytes() != b"/" {
        ok(unsafe { nc::nc_inq_grp_full_ncid(ncid, group.as_ptr(), &mut gid) })?;
    }
    let mut varid = nc::NC_GLOBAL;
    if let Some(v) = var {
        ok(unsafe { nc::nc_inq_varid(gid, v.as_ptr(), &mut varid) })?;
    }
    let (mut xtype, mut len) = (0, 0usize);
    ok(unsafe { nc::nc_inq_att(gid, varid, name.as_ptr(), &mut xtype, &mut len) })?;
    let (mut size, mut base, mut nfields, mut class) = (0usize, 0, 0usize, 0);
    let mut tname = [0 as std::ffi::c_char; nc::NC_MAX_NAME as usize + 1];
    ok(unsafe {
        nc::nc_inq_user_type(gid, xtype, tname.as_mut_ptr(), &mut size, &mut base, &mut nfields, &mut class)
    })?;
    if class != nc::NC_ENUM || !(1..=8).contains(&size) {
        return None;
    }
    let mut buf = vec![0u8; len * size];
    ok(unsafe { nc::nc_get_att(gid, varid, name.as_ptr(), buf.as_mut_ptr().cast()) })?;
    let signed = matches!(base, nc::NC_BYTE | nc::NC_SHORT | nc::NC_INT | nc::NC_INT64);
    let words = buf.chunks_exact(size);
    Some(if signed {
        AttrValue::Ints(words.map(sign_extend).collect())
    } else {
        AttrValue::UInts(words.map(zero_extend).collect())
    })
}
