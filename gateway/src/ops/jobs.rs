//! The persisted job store: one JSON file per asynchronous job, `{id}.json`.
//!
//! A job is on disk before the gateway answers `201`/`202` for it, so a restart never loses one:
//! [`JobStore::unfinished`] gives the jobs a previous process left accepted or running, to be run
//! again. A save writes a temporary file, fsyncs it, renames it over the old one and fsyncs the
//! directory. At open, a file that cannot be read or parsed is skipped with a message, never
//! fatal, and temporary leftovers of an interrupted save are deleted.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::util::{at, hex, remove_quietly};

const TMP_SUFFIX: &str = ".tmp";

/// Tells apart temporary files, and ids made without `/dev/urandom`.
static COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Accepted,
    Running,
    Successful,
    Failed,
    Dismissed,
}

impl Status {
    pub fn is_final(self) -> bool {
        matches!(self, Status::Successful | Status::Failed | Status::Dismissed)
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct JobRecord {
    /// 32 lowercase hex characters.
    pub id: String,
    /// `subset` or `average`.
    pub process: String,
    /// The canonical request, opaque here.
    pub request: serde_json::Value,
    /// `nc`, `zarr`, `json` or `csv`.
    pub format: String,
    /// Who submitted it ([`crate::auth::Principal::owner_name`]): only they see it.
    pub owner: String,
    pub status: Status,
    /// 0 to 100.
    pub progress: u8,
    /// Unix seconds.
    pub created: i64,
    pub updated: i64,
    /// The result's cache key (hex) once successful.
    pub result_key: Option<String>,
    /// A problem document once failed.
    pub error: Option<serde_json::Value>,
    /// With a shared store: the replica running the job, and when it last said so (unix
    /// seconds). A job whose heartbeat stops is taken over by another replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<i64>,
}

impl JobRecord {
    /// The collection the job reads (from its canonical request, `"dataset": "BUCKET/ID"`).
    pub fn bucket(&self) -> Option<&str> {
        let dataset = self.request.get("canonical")?.get("dataset")?.as_str()?;
        dataset.split_once('/').map(|(bucket, _)| bucket)
    }
}

/// Why a file in the job directory was skipped at open.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("not a job file name")]
    Name,
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    #[error("not a job record: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("it holds job {0:?}")]
    WrongId(String),
}

pub struct JobStore {
    dir: PathBuf,
    jobs: Mutex<HashMap<String, JobRecord>>,
    /// Serializes renames, deletions and their directory fsyncs, so that the map and the files
    /// agree, without making readers wait for a disk.
    writer: Mutex<()>,
    /// Serializes read-modify-write updates (see [`JobStore::update`]).
    updates: Mutex<()>,
}

impl JobStore {
    /// Opens (creating, mode 0700) the directory and loads every job file in it.
    pub fn open(dir: &Path) -> std::io::Result<JobStore> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| at(dir, e))?;
        let mut jobs = HashMap::new();
        for item in std::fs::read_dir(dir).map_err(|e| at(dir, e))? {
            let path = item.map_err(|e| at(dir, e))?.path();
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(TMP_SUFFIX)) {
                remove_quietly(&path);
                continue;
            }
            match load(&path) {
                Ok(job) => {
                    jobs.insert(job.id.clone(), job);
                }
                Err(e) => tracing::warn!("skipping {} in the job directory: {e}", path.display()),
            }
        }
        Ok(JobStore { dir: dir.to_path_buf(), jobs: Mutex::new(jobs), writer: Mutex::new(()), updates: Mutex::new(()) })
    }

    /// A fresh random job id: 32 lowercase hex characters.
    pub fn new_id() -> String {
        let mut raw = [0u8; 16];
        if File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut raw)).is_err() {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
            let mut hasher = blake3::Hasher::new();
            hasher.update(&now.to_le_bytes());
            hasher.update(&std::process::id().to_le_bytes());
            hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
            raw.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        }
        hex(&raw)
    }

    /// Writes the record durably and atomically, then updates the map. When this returns `Ok`
    /// the record is on disk.
    pub fn save(&self, job: &JobRecord) -> std::io::Result<()> {
        if !is_id(&job.id) {
            let why = format!("not a job id: {:?}", job.id);
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
        }
        let bytes = serde_json::to_vec_pretty(job).map_err(std::io::Error::other)?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{}.{}.{n}{TMP_SUFFIX}", job.id, std::process::id()));
        write_synced(&tmp, &bytes)?;
        let path = self.path_of(&job.id);
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = std::fs::rename(&tmp, &path) {
            remove_quietly(&tmp);
            return Err(at(&path, e));
        }
        // The map mirrors the files, even if the directory fsync below fails.
        self.lock().insert(job.id.clone(), job.clone());
        sync_dir(&self.dir)
    }

    /// Changes a job under one lock, so that concurrent changes (a dismissal and the job's own
    /// progress) never undo each other. `change` returns false to leave the job as it is.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut JobRecord) -> bool) -> std::io::Result<Option<JobRecord>> {
        let _one = self.updates.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut job) = self.get(id) else { return Ok(None) };
        if change(&mut job) {
            self.save(&job)?;
        }
        Ok(Some(job))
    }

    /// `None` for anything that is not a job id, without touching the disk.
    pub fn get(&self, id: &str) -> Option<JobRecord> {
        if !is_id(id) {
            return None;
        }
        self.lock().get(id).cloned()
    }

    /// Every job, newest first.
    pub fn list(&self) -> Vec<JobRecord> {
        let mut jobs: Vec<JobRecord> = self.lock().values().cloned().collect();
        jobs.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.id.cmp(&a.id)));
        jobs
    }

    /// Jobs left accepted or running by a previous process, oldest first, to be run again.
    pub fn unfinished(&self) -> Vec<JobRecord> {
        let mut jobs: Vec<JobRecord> = self.lock().values().filter(|j| !j.status.is_final()).cloned().collect();
        jobs.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        jobs
    }

    /// Deletes final jobs last updated before `cutoff` (unix seconds) and returns how many.
    pub fn prune(&self, cutoff: i64) -> usize {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let stale: Vec<String> =
            self.lock().values().filter(|j| j.status.is_final() && j.updated < cutoff).map(|j| j.id.clone()).collect();
        let mut pruned = 0;
        for id in stale {
            let path = self.path_of(&id);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!("cannot delete job file {}: {e}", path.display());
                    continue;
                }
                _ => {}
            }
            self.lock().remove(&id);
            pruned += 1;
        }
        if pruned > 0 {
            if let Err(e) = sync_dir(&self.dir) {
                tracing::warn!("{e}");
            }
        }
        pruned
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, JobRecord>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The job in `path`, whose name must be `{id}.json` with the id it holds.
fn load(path: &Path) -> Result<JobRecord, LoadError> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or(LoadError::Name)?;
    let id = name.strip_suffix(".json").filter(|id| is_id(id)).ok_or(LoadError::Name)?;
    let bytes = std::fs::read(path).map_err(LoadError::Read)?;
    let job: JobRecord = serde_json::from_slice(&bytes).map_err(LoadError::Parse)?;
    if job.id != id {
        return Err(LoadError::WrongId(job.id));
    }
    Ok(job)
}

/// Writes a new file (mode 0600) and fsyncs it; a failed write leaves no file behind.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| at(path, e))?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written {
        remove_quietly(path);
        return Err(at(path, e));
    }
    Ok(())
}

/// Makes a rename or deletion in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| at(dir, e))
}

fn is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn id(n: u8) -> String {
        format!("{n:032x}")
    }

    fn job(n: u8, status: Status, created: i64) -> JobRecord {
        JobRecord {
            id: id(n),
            process: "subset".into(),
            request: serde_json::json!({"dataset": "demo/a.nc", "var": "tas", "time": "2000"}),
            format: "nc".into(),
            owner: "alice".into(),
            status,
            progress: 0,
            created,
            updated: created,
            result_key: None,
            error: None,
            runner: None,
            heartbeat: None,
        }
    }

    fn ids(jobs: &[JobRecord]) -> Vec<String> {
        jobs.iter().map(|j| j.id.clone()).collect()
    }

    fn file_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    #[test]
    fn status_words_and_finality() {
        let table = [
            (Status::Accepted, "accepted", false),
            (Status::Running, "running", false),
            (Status::Successful, "successful", true),
            (Status::Failed, "failed", true),
            (Status::Dismissed, "dismissed", true),
        ];
        for (status, word, is_final) in table {
            assert_eq!(serde_json::to_value(status).unwrap(), word);
            assert_eq!(status.is_final(), is_final, "{word}");
        }
    }

    #[test]
    fn jobs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        let mut done = job(3, Status::Successful, 300);
        done.result_key = Some("ab".repeat(32));
        done.progress = 100;
        let mut failed = job(4, Status::Failed, 400);
        failed.error = Some(serde_json::json!({"status": 422, "title": "Empty selection"}));
        for j in [job(1, Status::Accepted, 100), job(2, Status::Accepted, 200), done.clone(), failed.clone()] {
            store.save(&j).unwrap();
        }
        let mut running = job(2, Status::Running, 200);
        running.progress = 40;
        running.updated = 250;
        store.save(&running).unwrap();
        assert_eq!(store.get(&id(2)).unwrap().status, Status::Running);
        drop(store);

        let store = JobStore::open(dir.path()).unwrap();
        assert_eq!(ids(&store.list()), [id(4), id(3), id(2), id(1)]);
        assert_eq!(ids(&store.unfinished()), [id(1), id(2)]);
        let value = |j: Option<JobRecord>| serde_json::to_value(j.unwrap()).unwrap();
        assert_eq!(value(store.get(&id(2))), serde_json::to_value(&running).unwrap());
        assert_eq!(value(store.get(&id(3))), serde_json::to_value(&done).unwrap());
        assert_eq!(value(store.get(&id(4))), serde_json::to_value(&failed).unwrap());
        assert_eq!(file_names(dir.path()).len(), 4, "no temporary files left");
    }

    #[test]
    fn bad_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        store.save(&job(1, Status::Accepted, 1)).unwrap();
        let upper = id(1).replace('0', "A");
        let bad =
            [String::new(), "../etc/passwd".into(), id(1)[..31].into(), format!("{}0", id(1)), upper, "g".repeat(32)];
        for bad in &bad {
            assert!(store.get(bad).is_none(), "{bad:?}");
        }
        let mut escape = job(2, Status::Accepted, 1);
        escape.id = "../escape".into();
        let err = store.save(&escape).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert_eq!(file_names(dir.path()), [format!("{}.json", id(1))]);
    }

    #[test]
    fn garbage_files_are_skipped_and_leftovers_deleted() {
        let dir = tempfile::tempdir().unwrap();
        JobStore::open(dir.path()).unwrap().save(&job(1, Status::Running, 1)).unwrap();
        let other = serde_json::to_vec(&job(9, Status::Accepted, 1)).unwrap();
        std::fs::write(dir.path().join(format!("{}.json", id(2))), b"{not json").unwrap();
        std::fs::write(dir.path().join(format!("{}.json", id(3))), other).unwrap();
        std::fs::write(dir.path().join(format!("{}.json", id(4))), b"").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
        std::fs::write(dir.path().join(format!(".{}.1.0.tmp", id(5))), b"{").unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        assert_eq!(ids(&store.list()), [id(1)]);
        assert_eq!(ids(&store.unfinished()), [id(1)]);
        assert!(store.get(&id(9)).is_none());
        assert!(!file_names(dir.path()).iter().any(|n| n.ends_with(".tmp")));
        assert!(dir.path().join("notes.txt").exists(), "files that are not ours stay");
    }

    #[test]
    fn prune_deletes_only_old_final_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        let jobs = [
            job(1, Status::Successful, 100),
            job(2, Status::Failed, 100),
            job(3, Status::Dismissed, 100),
            job(4, Status::Running, 100),
            job(5, Status::Accepted, 100),
            job(6, Status::Successful, 1000),
        ];
        for j in &jobs {
            store.save(j).unwrap();
        }
        assert_eq!(store.prune(500), 3);
        assert_eq!(store.prune(500), 0);
        assert_eq!(ids(&store.list()), [id(6), id(5), id(4)]);
        drop(store);
        assert_eq!(ids(&JobStore::open(dir.path()).unwrap().list()), [id(6), id(5), id(4)]);
    }

    #[test]
    fn new_ids_are_random_hex() {
        let made: std::collections::HashSet<String> = (0..200).map(|_| JobStore::new_id()).collect();
        assert_eq!(made.len(), 200);
        assert!(made.iter().all(|id| is_id(id)));
    }

    #[test]
    fn the_directory_is_private_and_concurrent_saves_all_land() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state/jobs");
        let store = JobStore::open(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let store = &store;
                s.spawn(move || {
                    for i in 0..10u8 {
                        let n = t * 10 + i;
                        store.save(&job(n, Status::Accepted, i64::from(n))).unwrap();
                        store.save(&job(n, Status::Running, i64::from(n))).unwrap();
                    }
                });
            }
        });
        assert_eq!(store.unfinished().len(), 40);
        drop(store);
        let store = JobStore::open(&dir).unwrap();
        assert_eq!(store.list().len(), 40);
        assert!(store.list().iter().all(|j| j.status == Status::Running));
    }
}
