//! HDF5 reads of a remote object: a virtual file driver over [`zarrgate_remote::Remote`].
//!
//! netCDF-C opens a NetCDF-4 file by name, with a file-access property list it makes itself
//! from HDF5's defaults, so a driver cannot be handed to it. For the span of one remote
//! translation ([`with_standin`]) this module therefore:
//! - writes a sparse local stand-in at a temporary path: as long as the object, with its
//!   first bytes (up to and including the HDF5 signature) in place, because netCDF-C tells the
//!   format by reading those bytes with plain stdio;
//! - makes its driver HDF5's default, so that the `H5Fopen` of netCDF-C and of the hdf5
//!   crate both use it. HDF5 takes its default driver from `HDF5_DRIVER`; its package
//!   function `H5P__facc_set_def_driver` reads that variable again, and is called with the
//!   variable set to this driver's name, then to what it was before (`sec2` if unset);
//! - serves every read HDF5 makes of the stand-in's name through the driver from the object,
//!   by ranged reads (small reads become cached block reads), each checked against the
//!   object's fingerprint. netCDF-C's own probes of the name (the magic number by stdio, and
//!   `H5Fis_accessible` with sec2, which looks for the signature) find the first bytes in
//!   place; nothing reads the rest of the stand-in.
//!
//! All of it happens under the one lock that serializes libhdf5 and libnetcdf, so no other
//! thread opens a file while the default is ours. The driver opens nothing but registered
//! stand-ins, read-only. A file that HDF5 leaves open after a translation (netCDF-C does,
//! after refusing some files, with any driver) is never shared with a later window: `cmp`
//! tells windows apart, so HDF5 never reads through it again.
//!
//! The switch sets an environment variable, which is not safe while another thread of the
//! process reads the environment from C (`getenv`). It happens only between remote reads: the
//! remote reader's runtime threads are then idle, and the callers are the indexing worker
//! processes, which index one file at a time.

use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void, CStr};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use hdf5_sys::h5::{haddr_t, herr_t, hsize_t};
use hdf5_sys::h5i::hid_t;
use zarrgate_core::catalog::Fingerprint;
use zarrgate_remote::{Remote, RemoteError};

const DRIVER_NAME: &CStr = c"zarrgate-remote";
/// A value in the range HDF5 leaves to drivers outside the library (256..=65535).
const DRIVER_VALUE: c_int = 0x7a67;
/// `H5FD_CLASS_VERSION` of HDF5 1.14 and 2.x, whose class layout is mirrored below.
const CLASS_VERSION: c_uint = 1;
const MAXADDR: haddr_t = (1 << 63) - 1;
/// `H5F_CLOSE_WEAK`, as sec2.
const CLOSE_WEAK: c_int = 1;
/// `H5FD_FEAT_ACCUMULATE_METADATA | H5FD_FEAT_DATA_SIEVE`: HDF5 may gather small reads.
const FEATURES: c_ulong = 0x2 | 0x4 | 0x8;
/// Any of `H5F_ACC_RDWR | H5F_ACC_TRUNC | H5F_ACC_EXCL | H5F_ACC_CREAT`.
const WRITE_FLAGS: c_uint = 0x1 | 0x2 | 0x4 | 0x10;

/// `H5FD_mem_t`, a C enum.
type Mem = c_int;

extern "C" {
    /// Sets the default driver of file-access property lists from `HDF5_DRIVER`.
    fn H5P__facc_set_def_driver() -> herr_t;
    fn H5FDregister(cls: *const Class) -> hid_t;
    fn H5get_libversion(major: *mut c_uint, minor: *mut c_uint, release: *mut c_uint) -> herr_t;
}

/// Runs `f` with the path of a stand-in whose HDF5 reads come from `url`. `head` is the
/// object's first bytes, through its HDF5 signature. A remote read that failed on the way
/// is returned as the error, whatever HDF5 or netCDF-C made of it.
pub fn with_standin<T>(
    remote: &Remote,
    url: &str,
    fingerprint: Fingerprint,
    head: &[u8],
    f: impl FnOnce(&Path) -> T,
) -> Result<T, StandinError> {
    hdf5::sync::sync(|| {
        let driver = registered()?;
        let file = tempfile::Builder::new().prefix("zarrgate-remote-").suffix(".nc").tempfile()?;
        file.as_file().set_len(fingerprint.size)?;
        file.as_file().write_all(head)?;
        let path = file.path().to_string_lossy().into_owned();
        let failure = Arc::new(Mutex::new(None));
        static WINDOWS: AtomicU64 = AtomicU64::new(0);
        let window = WINDOWS.fetch_add(1, Ordering::Relaxed);
        let source = Source { remote, url: url.into(), fingerprint, window, failure: failure.clone() };
        let _window = Window::open(driver, path, source)?;
        let out = f(file.path());
        let failed = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
        match failed {
            Some(e) => Err(StandinError::Remote(e)),
            None => Ok(out),
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    #[error(transparent)]
    Remote(RemoteError),
    #[error("cannot make a local stand-in for the object")]
    Io(#[from] std::io::Error),
    #[error("cannot read HDF5 through a driver of zarrgate: {0}")]
    Driver(String),
}

/// What a stand-in's reads come from.
#[derive(Clone)]
struct Source {
    /// Valid while the [`Window`] that registered it is open: `with_standin` borrows it.
    remote: *const Remote,
    url: String,
    fingerprint: Fingerprint,
    /// Which [`with_standin`] call registered it.
    window: u64,
    failure: Arc<Mutex<Option<RemoteError>>>,
}

// SAFETY: `remote` points to a `Remote` (which is Sync) that outlives the registration.
unsafe impl Send for Source {}

/// The stand-in's path and its source while its window is open. Windows never overlap (each
/// holds HDF5's lock), so there is at most one.
static STANDIN: Mutex<Option<(String, Source)>> = Mutex::new(None);

fn standin() -> std::sync::MutexGuard<'static, Option<(String, Source)>> {
    STANDIN.lock().unwrap_or_else(|p| p.into_inner())
}

/// The span in which a stand-in is registered and the driver is HDF5's default. Closing it
/// (on drop, also when unwinding) puts the previous default back.
struct Window {
    restore: String,
}

impl Window {
    fn open(driver: &'static str, path: String, source: Source) -> Result<Self, StandinError> {
        // HDF5 ignores an empty HDF5_DRIVER, as unset: its default is sec2.
        let restore = std::env::var("HDF5_DRIVER").ok().filter(|d| !d.is_empty()).unwrap_or_else(|| "sec2".into());
        *standin() = Some((path, source));
        let window = Window { restore };
        set_default_driver(driver)?;
        Ok(window)
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        *standin() = None;
        // Failing to put sec2 back would leave later local opens refused by this driver,
        // never served wrong bytes; there is nothing better to do with the error here.
        let _ = set_default_driver(&self.restore);
    }
}

/// Makes `name` the default driver of new file-access property lists. The caller holds
/// HDF5's lock.
fn set_default_driver(name: &str) -> Result<(), StandinError> {
    let before = std::env::var_os("HDF5_DRIVER");
    std::env::set_var("HDF5_DRIVER", name);
    // SAFETY: the library is initialized (hdf5::sync) and its lock is held; the function
    // only reads the environment and sets the default property of the file-access class.
    let status = unsafe { H5P__facc_set_def_driver() };
    match before {
        Some(v) => std::env::set_var("HDF5_DRIVER", v),
        None => std::env::remove_var("HDF5_DRIVER"),
    }
    if status < 0 {
        return Err(StandinError::Driver(format!("HDF5 refused {name:?} as its default driver")));
    }
    Ok(())
}

/// Registers the driver once per process. Libraries older than 1.14 are refused: their class
/// struct has another layout than the one mirrored here.
fn registered() -> Result<&'static str, StandinError> {
    static DRIVER: OnceLock<Result<(), String>> = OnceLock::new();
    let done = DRIVER.get_or_init(|| {
        let (mut major, mut minor, mut release) = (0, 0, 0);
        // SAFETY: three out-parameters on the stack.
        unsafe { H5get_libversion(&mut major, &mut minor, &mut release) };
        if (major, minor) < (1, 14) {
            return Err(format!("HDF5 {major}.{minor}.{release} has another driver interface than 1.14 and 2.x"));
        }
        // SAFETY: CLASS is a static with every required method; HDF5 copies it.
        if unsafe { H5FDregister(&CLASS.0) } < 0 {
            return Err("H5FDregister failed".into());
        }
        Ok(())
    });
    done.clone().map_err(StandinError::Driver)?;
    Ok(DRIVER_NAME.to_str().expect("ASCII name"))
}

/// `H5FD_t`: the fields HDF5 keeps for every open file, first in each driver's own struct.
#[repr(C)]
struct Public {
    driver_id: hid_t,
    cls: *const Class,
    fileno: c_ulong,
    access_flags: c_uint,
    feature_flags: c_ulong,
    maxaddr: haddr_t,
    base_addr: haddr_t,
    threshold: hsize_t,
    alignment: hsize_t,
    paged_aggr: bool,
}

/// One open stand-in.
#[repr(C)]
struct File {
    public: Public,
    eoa: haddr_t,
    source: Source,
}

type Unused = Option<unsafe extern "C" fn()>;

/// `H5FD_class_t` of HDF5 1.14 and 2.x (`H5FDdevelop.h`), field for field.
#[repr(C)]
struct Class {
    version: c_uint,
    value: c_int,
    name: *const c_char,
    maxaddr: haddr_t,
    fc_degree: c_int,
    terminate: Unused,
    sb_size: Unused,
    sb_encode: Unused,
    sb_decode: Unused,
    fapl_size: usize,
    fapl_get: Unused,
    fapl_copy: Unused,
    fapl_free: Unused,
    dxpl_size: usize,
    dxpl_copy: Unused,
    dxpl_free: Unused,
    open: Option<unsafe extern "C" fn(*const c_char, c_uint, hid_t, haddr_t) -> *mut Public>,
    close: Option<unsafe extern "C" fn(*mut Public) -> herr_t>,
    cmp: Option<unsafe extern "C" fn(*const Public, *const Public) -> c_int>,
    query: Option<unsafe extern "C" fn(*const Public, *mut c_ulong) -> herr_t>,
    get_type_map: Unused,
    alloc: Unused,
    free: Unused,
    get_eoa: Option<unsafe extern "C" fn(*const Public, Mem) -> haddr_t>,
    set_eoa: Option<unsafe extern "C" fn(*mut Public, Mem, haddr_t) -> herr_t>,
    get_eof: Option<unsafe extern "C" fn(*const Public, Mem) -> haddr_t>,
    get_handle: Unused,
    read: Option<unsafe extern "C" fn(*mut Public, Mem, hid_t, haddr_t, usize, *mut c_void) -> herr_t>,
    write: Option<unsafe extern "C" fn(*mut Public, Mem, hid_t, haddr_t, usize, *const c_void) -> herr_t>,
    read_vector: Unused,
    write_vector: Unused,
    read_selection: Unused,
    write_selection: Unused,
    flush: Option<unsafe extern "C" fn(*mut Public, hid_t, bool) -> herr_t>,
    truncate: Option<unsafe extern "C" fn(*mut Public, hid_t, bool) -> herr_t>,
    lock: Unused,
    unlock: Unused,
    del: Unused,
    ctl: Unused,
    /// `H5FD_FLMAP_DEFAULT`: one free list (the files are never written).
    fl_map: [Mem; 7],
}

struct SyncClass(Class);
// SAFETY: the class is immutable; its pointers are to static data and functions.
unsafe impl Sync for SyncClass {}

static CLASS: SyncClass = SyncClass(Class {
    version: CLASS_VERSION,
    value: DRIVER_VALUE,
    name: DRIVER_NAME.as_ptr(),
    maxaddr: MAXADDR,
    fc_degree: CLOSE_WEAK,
    terminate: None,
    sb_size: None,
    sb_encode: None,
    sb_decode: None,
    fapl_size: 0,
    fapl_get: None,
    fapl_copy: None,
    fapl_free: None,
    dxpl_size: 0,
    dxpl_copy: None,
    dxpl_free: None,
    open: Some(open),
    close: Some(close),
    cmp: Some(cmp),
    query: Some(query),
    get_type_map: None,
    alloc: None,
    free: None,
    get_eoa: Some(get_eoa),
    set_eoa: Some(set_eoa),
    get_eof: Some(get_eof),
    get_handle: None,
    read: Some(read),
    write: Some(write),
    read_vector: None,
    write_vector: None,
    read_selection: None,
    write_selection: None,
    flush: Some(no_op),
    truncate: Some(no_op),
    lock: None,
    unlock: None,
    del: None,
    ctl: None,
    fl_map: [0; 7],
});

/// Opens a registered stand-in, read-only; anything else is refused (null).
unsafe extern "C" fn open(name: *const c_char, flags: c_uint, _fapl: hid_t, _maxaddr: haddr_t) -> *mut Public {
    if name.is_null() || flags & WRITE_FLAGS != 0 {
        return std::ptr::null_mut();
    }
    // SAFETY: HDF5 passes a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
    let found = standin().as_ref().filter(|(path, _)| *path == name).map(|(_, source)| source.clone());
    let Some(source) = found else {
        return std::ptr::null_mut();
    };
    // SAFETY: Public is plain integers, pointers and a bool, for which zero is valid; HDF5
    // fills the fields it owns after `open` returns.
    let public = unsafe { std::mem::zeroed::<Public>() };
    Box::into_raw(Box::new(File { public, eoa: 0, source })).cast()
}

/// SAFETY (for every method below): HDF5 passes a pointer that `open` returned.
unsafe fn file<'a>(f: *const Public) -> &'a File {
    unsafe { &*f.cast::<File>() }
}

unsafe extern "C" fn close(f: *mut Public) -> herr_t {
    drop(unsafe { Box::from_raw(f.cast::<File>()) });
    0
}

/// Two opens are the same file only within one window.
unsafe extern "C" fn cmp(a: *const Public, b: *const Public) -> c_int {
    let (a, b) = unsafe { (&file(a).source, &file(b).source) };
    (a.window, &a.url).cmp(&(b.window, &b.url)) as c_int
}

unsafe extern "C" fn query(_f: *const Public, flags: *mut c_ulong) -> herr_t {
    if !flags.is_null() {
        unsafe { *flags = FEATURES };
    }
    0
}

unsafe extern "C" fn get_eoa(f: *const Public, _type: Mem) -> haddr_t {
    unsafe { file(f) }.eoa
}

unsafe extern "C" fn set_eoa(f: *mut Public, _type: Mem, addr: haddr_t) -> herr_t {
    unsafe { (*f.cast::<File>()).eoa = addr };
    0
}

unsafe extern "C" fn get_eof(f: *const Public, _type: Mem) -> haddr_t {
    unsafe { file(f) }.source.fingerprint.size
}

/// Reads `size` bytes at `addr`; past the object's end reads zeros, as sec2 does.
unsafe extern "C" fn read(
    f: *mut Public,
    _type: Mem,
    _dxpl: hid_t,
    addr: haddr_t,
    size: usize,
    buf: *mut c_void,
) -> herr_t {
    if size == 0 {
        return 0;
    }
    let source = &unsafe { file(f) }.source;
    // SAFETY: HDF5 passes a buffer of `size` bytes.
    let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), size) };
    let have = source.fingerprint.size.saturating_sub(addr).min(size as u64) as usize;
    if have > 0 {
        // SAFETY: see `Source::remote`.
        let remote = unsafe { &*source.remote };
        match remote.read(&source.url, source.fingerprint, addr, have as u64, false) {
            Ok(bytes) if bytes.len() == have => out[..have].copy_from_slice(&bytes),
            Ok(_) => {
                return fail(
                    source,
                    RemoteError::Stale { url: source.url.clone(), why: "a read came back short".into() },
                )
            }
            Err(e) => return fail(source, e),
        }
    }
    out[have..].fill(0);
    0
}

/// Keeps the first remote failure for [`with_standin`] to report, and fails the read.
fn fail(source: &Source, e: RemoteError) -> herr_t {
    source.failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
    -1
}

unsafe extern "C" fn write(
    _f: *mut Public,
    _t: Mem,
    _dxpl: hid_t,
    _addr: haddr_t,
    _size: usize,
    _buf: *const c_void,
) -> herr_t {
    -1
}

unsafe extern "C" fn no_op(_f: *mut Public, _dxpl: hid_t, _closing: bool) -> herr_t {
    0
}
