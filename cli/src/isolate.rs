//! Indexes each file in a child process (`zarrgate index FILE -o - --worker [--url URL]`).
//!
//! netCDF-C and HDF5 call `abort()` on some malformed files, and can loop for a long time on
//! others. A child process turns both into an error for that one file, and lets several files
//! be indexed at once although each library serializes its calls behind a process-wide lock.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zarrgate_core::refs::ReferenceSet;
use zarrgate_indexer::tree::FileIndexer;

pub struct Isolated {
    exe: PathBuf,
    timeout: Duration,
}

impl Isolated {
    pub fn new(timeout: Duration) -> anyhow::Result<Self> {
        Ok(Isolated { exe: std::env::current_exe()?, timeout })
    }

    fn run(&self, path: &Path, url: Option<String>) -> Result<Vec<u8>, String> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("index").arg(path).args(["-o", "-", "--worker"]);
        if let Some(url) = url {
            cmd.arg("--url").arg(url);
        }
        limit_memory(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start an indexing worker: {e}"))?;
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let out = std::thread::spawn(move || {
            let mut buf = Vec::new();
            stdout.read_to_end(&mut buf).map(|_| buf)
        });
        let err = std::thread::spawn(move || {
            let mut buf = String::new();
            let _ = stderr.read_to_string(&mut buf);
            buf
        });
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{}: gave up after {} s", path.display(), self.timeout.as_secs()));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("lost the indexing worker: {e}")),
            }
        };
        let stdout = out.join().expect("reader thread").map_err(|e| e.to_string())?;
        let stderr = err.join().expect("reader thread");
        if status.success() {
            return Ok(stdout);
        }
        let msg = stderr.trim().trim_start_matches("zarrgate: ").to_string();
        Err(match std::os::unix::process::ExitStatusExt::signal(&status) {
            Some(sig) => {
                format!("{}: the HDF5/netCDF-C library crashed on this file (signal {sig}) {msg}", path.display())
            }
            None => msg,
        })
    }
}

impl FileIndexer for Isolated {
    fn index(&self, path: &Path, url: Option<String>) -> Result<ReferenceSet, String> {
        let bytes = self.run(path, url)?;
        let doc: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("worker wrote invalid JSON: {e}"))?;
        ReferenceSet::from_json(&doc).map_err(|e| format!("worker wrote invalid references: {e}"))
    }
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
