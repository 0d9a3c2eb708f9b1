//! Byte ranges of local source files, through cached open handles, with a staleness check.
//!
//! Every read first stats the path and compares it with the fingerprint taken at indexing:
//! size, modification time, inode, device and status-change time (see
//! [`Fingerprint::changed`]). A changed, truncated, deleted or replaced file is
//! [`ReadError::Stale`], also when it was given its old size and modification time back: its
//! bytes are never served. A handle is reused only while the path still names the same inode.
//!
//! Reads on a server thread use [`Wait::CachedOnly`]: a range that is not all in the page cache
//! is refused at once instead of stalling every connection of that thread on the disk, and the
//! caller reads it again on the blocking pool.
//!
//! A source whose path is a URL (`s3://`, `https://`, …) is an object of an object store or an
//! HTTP server, read through [`zarrgate_remote::Remote`] with the same checks: its fingerprint
//! holds the object's size, `Last-Modified` and `ETag`.

use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zarrgate_core::catalog::Fingerprint;
use zarrgate_remote::{Remote, RemoteError};

/// At most this many files stay open.
const MAX_OPEN: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the source file {path} changed since it was indexed ({why})")]
    Stale { path: PathBuf, why: String },
    #[error("{path}: the range is not in the page cache")]
    NotCached { path: PathBuf },
    /// A remote source cannot be reached now (after retries); a later request may succeed.
    #[error("{0}")]
    Unavailable(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether a read may wait for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    Block,
    /// Only what the page cache holds (`preadv2` with `RWF_NOWAIT`); anything else, or a file
    /// system without that flag, is [`ReadError::NotCached`].
    CachedOnly,
}

/// An open source file, shared by the requests that read it.
pub struct OpenFile {
    file: File,
    dev: u64,
    ino: u64,
}

impl OpenFile {
    /// Exactly `length` bytes at `offset`; a short file is an error.
    ///
    /// The buffer is filled by `pread(2)` without being zeroed first: for multi-megabyte chunks
    /// zeroing is a whole extra pass over memory.
    pub fn read(&self, offset: u64, length: u64) -> std::io::Result<Vec<u8>> {
        self.read_waiting(offset, length, Wait::Block)
    }

    /// As [`OpenFile::read`]; with [`Wait::CachedOnly`], bytes that are not in the page cache
    /// give an error of kind `WouldBlock`.
    fn read_waiting(&self, offset: u64, length: u64, wait: Wait) -> std::io::Result<Vec<u8>> {
        use std::os::fd::AsRawFd as _;
        let len = usize::try_from(length).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        while buf.len() < len {
            let at = offset + buf.len() as u64;
            let at = libc::off_t::try_from(at).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
            let spare = buf.spare_capacity_mut();
            let iov = libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() };
            let flags = if wait == Wait::CachedOnly { libc::RWF_NOWAIT } else { 0 };
            // SAFETY: the kernel writes at most `iov_len` bytes into the spare capacity, and
            // only the `n` bytes it reports written become part of the vector.
            let n = unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, at, flags) };
            match n {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n if n < 0 => {
                    let e = std::io::Error::last_os_error();
                    let unsupported = e.raw_os_error() == Some(libc::EOPNOTSUPP);
                    if wait == Wait::CachedOnly && (e.kind() == std::io::ErrorKind::WouldBlock || unsupported) {
                        return Err(std::io::ErrorKind::WouldBlock.into());
                    }
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                // SAFETY: `n` bytes past the old length were just initialized by pread.
                n => unsafe { buf.set_len(buf.len() + n as usize) },
            }
        }
        Ok(buf)
    }

    /// Sends up to `len` bytes at `offset` to the socket `sock` with `sendfile(2)`; 0 means the
    /// file ends before `offset`.
    pub fn send_to(&self, sock: std::os::fd::RawFd, offset: u64, len: usize) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd as _;
        loop {
            let mut at =
                libc::off_t::try_from(offset).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
            // SAFETY: both descriptors are open for the duration of the call; `at` is a valid
            // offset variable the kernel updates.
            let n = unsafe { libc::sendfile(sock, self.file.as_raw_fd(), &mut at, len) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Open handles of source files, most recently used kept (a bounded cache: an archive of
/// millions of files never holds more than [`MAX_OPEN`] descriptors).
pub struct Sources {
    open: moka::sync::Cache<PathBuf, Arc<OpenFile>>,
    /// Reads sources named by URL, when the configuration allows any.
    remote: Option<Arc<Remote>>,
}

impl Default for Sources {
    fn default() -> Self {
        Sources::new(None)
    }
}

/// The URL of a remote source, if `path` names one.
pub fn remote_url(path: &Path) -> Option<&str> {
    path.to_str().filter(|p| zarrgate_remote::is_remote(p))
}

impl Sources {
    pub fn new(remote: Option<Arc<Remote>>) -> Self {
        Sources { open: moka::sync::Cache::new(MAX_OPEN), remote }
    }

    /// Fails unless the source `path` (a file or a remote object) still has the fingerprint
    /// it had when indexed.
    pub fn verify(&self, path: &Path, expected: Fingerprint) -> Result<(), ReadError> {
        match remote_url(path) {
            Some(url) => self.remote(url)?.check(url, expected).map_err(from_remote),
            None => Self::check(path, expected).map(|_| ()),
        }
    }

    fn remote(&self, url: &str) -> Result<&Remote, ReadError> {
        self.remote.as_deref().ok_or_else(|| {
            ReadError::Unavailable(format!("{url}: this gateway has no [[remote]] configuration to read it with"))
        })
    }

    /// Fails unless `path` still has the fingerprint it had when indexed.
    pub fn check(path: &Path, expected: Fingerprint) -> Result<std::fs::Metadata, ReadError> {
        let stale = |why: String| ReadError::Stale { path: path.to_path_buf(), why };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(stale("it was deleted".into())),
            Err(source) => return Err(ReadError::Io { path: path.to_path_buf(), source }),
        };
        match expected.changed(&Fingerprint::of(&meta)) {
            Some(why) => Err(stale(why)),
            None => Ok(meta),
        }
    }

    /// An open handle of `path`, after checking its fingerprint.
    pub fn open(&self, path: &Path, expected: Fingerprint) -> Result<Arc<OpenFile>, ReadError> {
        let meta = Self::check(path, expected)?;
        self.handle(path, &meta).map_err(|source| ReadError::Io { path: path.to_path_buf(), source })
    }

    /// Reads `length` bytes at `offset` of `path`, then checks the fingerprint, so bytes of a
    /// file that changed before the check are never returned. One `stat` per read: the check
    /// after the read also tells whether the cached handle still names the file at `path`; if
    /// the file was replaced, it is opened anew and read again.
    pub fn read(&self, path: &Path, expected: Fingerprint, offset: u64, length: u64) -> Result<Vec<u8>, ReadError> {
        self.read_waiting(path, expected, offset, length, Wait::Block)
    }

    /// As [`Sources::read`], waiting for the disk or not.
    pub fn read_waiting(
        &self,
        path: &Path,
        expected: Fingerprint,
        offset: u64,
        length: u64,
        wait: Wait,
    ) -> Result<Vec<u8>, ReadError> {
        if let Some(url) = remote_url(path) {
            let bytes = self.remote(url)?.read(url, expected, offset, length, wait == Wait::CachedOnly);
            return bytes.map(Vec::from).map_err(from_remote);
        }
        let cached = self.open.get(path);
        let handle = match cached {
            Some(h) => h,
            None => self.open(path, expected)?,
        };
        let bytes = Self::read_at(&handle, path, offset, length, wait)?;
        let meta = Self::check(path, expected)?;
        if handle.dev == meta.dev() && handle.ino == meta.ino() {
            return Ok(bytes);
        }
        let handle = self.handle(path, &meta).map_err(|source| ReadError::Io { path: path.to_path_buf(), source })?;
        let bytes = Self::read_at(&handle, path, offset, length, wait)?;
        Self::check(path, expected)?;
        Ok(bytes)
    }

    fn read_at(handle: &OpenFile, path: &Path, offset: u64, length: u64, wait: Wait) -> Result<Vec<u8>, ReadError> {
        handle.read_waiting(offset, length, wait).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                ReadError::Stale { path: path.to_path_buf(), why: "it is shorter than its references".into() }
            }
            std::io::ErrorKind::WouldBlock if wait == Wait::CachedOnly => {
                ReadError::NotCached { path: path.to_path_buf() }
            }
            _ => ReadError::Io { path: path.to_path_buf(), source: e },
        })
    }

    fn handle(&self, path: &Path, meta: &std::fs::Metadata) -> std::io::Result<Arc<OpenFile>> {
        if let Some(h) = self.open.get(path) {
            if h.dev == meta.dev() && h.ino == meta.ino() {
                return Ok(h);
            }
        }
        let file = File::open(path)?;
        let fmeta = file.metadata()?;
        let handle = Arc::new(OpenFile { file, dev: fmeta.dev(), ino: fmeta.ino() });
        self.open.insert(path.to_path_buf(), handle.clone());
        Ok(handle)
    }
}

fn from_remote(e: RemoteError) -> ReadError {
    match e {
        RemoteError::Stale { url, why } => ReadError::Stale { path: url.into(), why },
        RemoteError::Missing { url } => ReadError::Stale { path: url.into(), why: "it was deleted".into() },
        RemoteError::NotCached { url } => ReadError::NotCached { path: url.into() },
        e @ (RemoteError::Unavailable { .. } | RemoteError::NotConfigured { .. } | RemoteError::BadConfig { .. }) => {
            ReadError::Unavailable(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ranges_and_catches_every_kind_of_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"0123456789").unwrap();
        let fp = Fingerprint::of_path(&path).unwrap();
        let sources = Sources::default();
        assert_eq!(sources.read(&path, fp, 2, 3).unwrap(), b"234");

        // Truncated: caught by size.
        std::fs::write(&path, b"01234").unwrap();
        assert!(matches!(sources.read(&path, fp, 2, 3), Err(ReadError::Stale { .. })));

        // Replaced by a new file given the old size and mtime (`mv`, `rsync -a`): another inode.
        std::fs::write(&path, b"0123456789").unwrap();
        let fp = Fingerprint::of_path(&path).unwrap();
        assert_eq!(sources.read(&path, fp, 2, 3).unwrap(), b"234");
        let other = dir.path().join("g.bin");
        std::fs::write(&other, b"abcdefghij").unwrap();
        let f = File::options().write(true).open(&other).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(fp.mtime_ns as u64)).unwrap();
        std::fs::rename(&other, &path).unwrap();
        let err = sources.read(&path, fp, 2, 3).unwrap_err();
        assert!(err.to_string().contains("replaced"), "{err}");

        // Rewritten in place with the old size and mtime restored (`cp -p` onto it): the
        // status-change time moved, which no user can set back.
        let fp = Fingerprint::of_path(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"ABCDEFGHIJ").unwrap();
        let f = File::options().write(true).open(&path).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(fp.mtime_ns as u64)).unwrap();
        assert_eq!(Fingerprint::of_path(&path).unwrap().mtime_ns, fp.mtime_ns);
        let err = sources.read(&path, fp, 2, 3).unwrap_err();
        assert!(err.to_string().contains("changed"), "{err}");

        // Deleted.
        std::fs::remove_file(&path).unwrap();
        let err = sources.read(&path, fp, 2, 3).unwrap_err();
        assert!(err.to_string().contains("deleted"), "{err}");
    }

    #[test]
    fn a_read_that_does_not_wait_takes_what_the_page_cache_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"0123456789").unwrap(); // just written: in the page cache
        let fp = Fingerprint::of_path(&path).unwrap();
        let sources = Sources::default();
        assert_eq!(sources.read_waiting(&path, fp, 2, 3, Wait::CachedOnly).unwrap(), b"234");
        // Past the end is still a stale file, not a cache miss.
        let err = sources.read_waiting(&path, fp, 8, 5, Wait::CachedOnly).unwrap_err();
        assert!(matches!(err, ReadError::Stale { .. }), "{err}");
    }
}
