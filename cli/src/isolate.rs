//! Indexes files in child processes (`zarrgate index-worker`), each serving many files.
//!
//! netCDF-C and HDF5 call `abort()` on some malformed files, and can loop for a long time on
//! others. A child process turns both into an error for that one file, and lets several files
//! be indexed at once although each library serializes its calls behind a process-wide lock.

use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zarrgate_core::refs::ReferenceSet;
use zarrgate_indexer::hdf::View;
use zarrgate_indexer::tree::{FileIndexer, InProcess};

/// Files a worker process indexes before it is replaced (bounds what a leak in the C libraries
/// can accumulate).
const FILES_PER_WORKER: usize = 2000;

/// Indexes files in long-lived child processes (`zarrgate index-worker`), one request at a time
/// per child. Starting a process per file cost ~13 ms, most of the time of a small file.
pub struct Isolated {
    exe: PathBuf,
    /// Passed to the workers, for requests that name remote objects.
    remote_config: Option<PathBuf>,
    timeout: Duration,
    idle: Mutex<Vec<Worker>>,
}

/// A running worker: requests go to its stdin as `PATH\0URL\0VIEW\n` (`VIEW` empty for
/// netCDF-C's, `h5netcdf` for HDF5 alone); answers come back on stdout
/// as one status byte (`O` references JSON, `E` error message), a little-endian `u64` length
/// and the payload.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    frames: Receiver<Option<(u8, Vec<u8>)>>,
    stderr: Arc<Mutex<String>>,
    served: usize,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Worker {
    fn start(exe: &Path, remote_config: Option<&Path>) -> Result<Worker, String> {
        let mut cmd = Command::new(exe);
        cmd.arg("index-worker");
        if let Some(config) = remote_config {
            cmd.arg("--remote-config").arg(config);
        }
        limit_memory(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start an indexing worker: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let mut errout = child.stderr.take().expect("piped");
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut head = [0u8; 9];
            if stdout.read_exact(&mut head).is_err() {
                let _ = tx.send(None);
                return;
            }
            let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes")) as usize;
            let mut payload = vec![0; len];
            if stdout.read_exact(&mut payload).is_err() || tx.send(Some((head[0], payload))).is_err() {
                let _ = tx.send(None);
                return;
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = errout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                if s.len() < 16_384 {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Ok(Worker { child, stdin, frames, stderr, served: 0 })
    }

    fn send(&mut self, path: &Path, url: Option<&str>, view: View) -> std::io::Result<()> {
        let mut line = path.as_os_str().as_encoded_bytes().to_vec();
        line.push(0);
        line.extend_from_slice(url.unwrap_or("").as_bytes());
        line.push(0);
        if view == View::H5netcdf {
            line.extend_from_slice(H5NETCDF.as_bytes());
        }
        line.push(b'\n');
        self.stdin.write_all(&line)?;
        self.stdin.flush()
    }
}

impl Isolated {
    pub fn new(timeout: Duration) -> anyhow::Result<Self> {
        Ok(Isolated { exe: std::env::current_exe()?, remote_config: None, timeout, idle: Mutex::new(Vec::new()) })
    }

    /// Workers that also index remote objects (a request whose path is a URL), reading them
    /// through the `[[remote]]` sources of `config`.
    pub fn reading_remote(mut self, config: &Path) -> Self {
        self.remote_config = Some(config.to_path_buf());
        self
    }

    fn start_worker(&self) -> Result<Worker, String> {
        Worker::start(&self.exe, self.remote_config.as_deref())
    }

    fn take(&self) -> Result<Worker, String> {
        match self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            Some(w) => Ok(w),
            None => self.start_worker(),
        }
    }

    fn give_back(&self, worker: Worker) {
        if worker.served < FILES_PER_WORKER {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(worker);
        }
    }

    /// Indexes one file. When netCDF-C crashes the worker on it, the file is tried once more,
    /// in a fresh worker, as plain HDF5 with h5netcdf's view (xarray's `engine="h5netcdf"`
    /// opens such files).
    fn run(&self, path: &Path, url: Option<String>) -> Result<Vec<u8>, String> {
        match self.run_as(path, url.clone(), View::Netcdf) {
            Err(Failure::Crashed(first)) => self.run_as(path, url, View::H5netcdf).map_err(|second| {
                format!("{first}; read as plain HDF5 with h5netcdf's model, it fails too: {}", second.message())
            }),
            other => other.map_err(Failure::into_message),
        }
    }

    fn run_as(&self, path: &Path, url: Option<String>, view: View) -> Result<Vec<u8>, Failure> {
        let text = path.as_os_str().as_encoded_bytes();
        if text.contains(&b'\n') || text.contains(&0) || url.as_deref().is_some_and(|u| u.contains('\n')) {
            return Err(Failure::Error(format!("{}: a path with a newline cannot be indexed", path.display())));
        }
        let mut worker = self.take().map_err(Failure::Error)?;
        worker.stderr.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if worker.send(path, url.as_deref(), view).is_err() {
            // An idle worker that died since its last file: start afresh once.
            worker = self.start_worker().map_err(Failure::Error)?;
            worker
                .send(path, url.as_deref(), view)
                .map_err(|e| Failure::Error(format!("cannot reach an indexing worker: {e}")))?;
        }
        match worker.frames.recv_timeout(self.timeout) {
            Ok(Some((status, payload))) => {
                worker.served += 1;
                if status == b'O' {
                    self.give_back(worker);
                    Ok(payload)
                } else {
                    // After an error (an allocation the memory cap refused, an HDF5 error
                    // stack half unwound) the libraries' global state is not to be trusted:
                    // seen failing the next files of the same worker with "Unknown file
                    // format". The worker is replaced; it costs one process start.
                    drop(worker);
                    Err(Failure::Error(String::from_utf8_lossy(&payload).into_owned()))
                }
            }
            Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                let status = worker.child.wait();
                let msg = worker.stderr.lock().unwrap_or_else(|p| p.into_inner()).trim().to_string();
                let signal = status.ok().and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s));
                Err(Failure::Crashed(format!(
                    "{}: the HDF5/netCDF-C library crashed on this file (signal {}) {msg}",
                    path.display(),
                    signal.map_or("none".to_string(), |s| s.to_string())
                )))
            }
            Err(RecvTimeoutError::Timeout) => {
                drop(worker);
                Err(Failure::Error(format!("{}: gave up after {} s", path.display(), self.timeout.as_secs())))
            }
        }
    }
}

/// Why a worker gave no references.
enum Failure {
    /// The file's own error, or a timeout.
    Error(String),
    /// The worker died on the file.
    Crashed(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Error(m) | Failure::Crashed(m) => m,
        }
    }

    fn into_message(self) -> String {
        match self {
            Failure::Error(m) | Failure::Crashed(m) => m,
        }
    }
}

const H5NETCDF: &str = "h5netcdf";

impl FileIndexer for Isolated {
    fn index(&self, path: &Path, url: Option<String>) -> Result<ReferenceSet, String> {
        let bytes = self.run(path, url)?;
        let doc: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("worker wrote invalid JSON: {e}"))?;
        ReferenceSet::from_json(&doc).map_err(|e| format!("worker wrote invalid references: {e}"))
    }
}

/// The worker side: answers requests from stdin until it closes. A path that is a remote URL
/// is read through `remote`.
pub fn worker_loop(remote: Option<&zarrgate_remote::Remote>) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut out = std::io::stdout().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line)).into_owned();
        let mut fields = text.split('\0');
        let path = fields.next().unwrap_or_default();
        let url = fields.next().filter(|u| !u.is_empty()).map(str::to_string);
        let view = if fields.next() == Some(H5NETCDF) { View::H5netcdf } else { View::Netcdf };
        let indexed = if zarrgate_remote::is_remote(path) {
            index_remote(path, remote, view)
        } else {
            InProcess.index_as(Path::new(path), url, view)
        };
        let (status, payload) = match indexed {
            Ok(set) => (b'O', set.to_json_bytes()),
            Err(e) => (b'E', e.into_bytes()),
        };
        out.write_all(&[status])?;
        out.write_all(&(payload.len() as u64).to_le_bytes())?;
        out.write_all(&payload)?;
        out.flush()?;
    }
}

/// A remote object, by ranged reads.
fn index_remote(url: &str, remote: Option<&zarrgate_remote::Remote>, view: View) -> Result<ReferenceSet, String> {
    let Some(remote) = remote else { return Err(format!("{url}: no --remote-config was given to read it")) };
    zarrgate_indexer::index_remote(url, remote, view).map_err(|e| zarrgate_core::error_chain(&e))
}

/// Address space a worker may map. Indexing reads metadata only; netCDF-C on a malformed file
/// (`h5ex_g_visit.h5`) was seen taking 18 GB before it aborted, which could starve a gateway
/// on the same machine. With the cap its allocation fails at once.
const WORKER_ADDRESS_SPACE: u64 = 4 << 30;

fn limit_memory(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: WORKER_ADDRESS_SPACE, rlim_max: WORKER_ADDRESS_SPACE };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
