//! The two-tier result cache of server-side operations.
//!
//! Results live in memory (moka, weighed by byte length) and on disk, one file per key named
//! `{key hex}.zgr`:
//!
//! ```text
//! b"ZGRES001" | blake3 of the payload (32 bytes) | payload
//! ```
//!
//! A file is written under a temporary name, fsynced and renamed, so a reader sees a whole old
//! file, a whole new file or none. Every disk read checks the hash: a file that fails is deleted
//! and reported as [`Lookup::Corrupt`], and the caller recomputes. The disk tier is bounded by
//! evicting the least recently used files. Last use is also written to each file's mtime, so the
//! order survives a restart.
//!
//! Renames, deletions and index updates happen under one lock: the slow part of a write (the
//! data and its fsync) does not, and the index always agrees with the directory.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::util::{at, hex, remove_quietly};

const MAGIC: &[u8; 8] = b"ZGRES001";
const HEADER: usize = 8 + 32;
const TMP_SUFFIX: &str = ".tmp";

/// Tells apart the temporary files of concurrent writers in this process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A cache key: blake3 of the canonical request and source fingerprints (computed by the caller).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// 64 lowercase hex characters.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }

    /// Exactly 64 hex characters, in either case.
    pub fn from_hex(s: &str) -> Option<Key> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Key(out))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Disk,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit(Bytes, Tier),
    Miss,
    /// The disk file failed its hash check and was deleted.
    Corrupt,
}

/// One file of the disk tier. `size` counts the header.
struct Entry {
    size: u64,
    last_use: u64,
    hash: [u8; 32],
}

/// The disk tier's bookkeeping. `order` maps each last-use stamp to its key, oldest first.
#[derive(Default)]
struct Index {
    entries: HashMap<Key, Entry>,
    order: BTreeMap<u64, Key>,
    total: u64,
    clock: u64,
}

impl Index {
    /// A last-use stamp: nanoseconds since the epoch, kept strictly increasing so that each
    /// stamp names one use even when the clock is coarse or steps back.
    fn tick(&mut self) -> u64 {
        self.clock = now_ns().max(self.clock + 1);
        self.clock
    }

    fn insert(&mut self, key: Key, entry: Entry) {
        self.remove(&key);
        self.total += entry.size;
        self.order.insert(entry.last_use, key);
        self.entries.insert(key, entry);
    }

    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.order.remove(&entry.last_use);
        self.total -= entry.size;
        Some(entry)
    }

    /// Marks a use of `key`, if it is on disk, and returns the new stamp.
    fn touch(&mut self, key: &Key) -> Option<u64> {
        if !self.entries.contains_key(key) {
            return None;
        }
        let stamp = self.tick();
        let entry = self.entries.get_mut(key)?;
        self.order.remove(&entry.last_use);
        entry.last_use = stamp;
        self.order.insert(stamp, *key);
        Some(stamp)
    }

    /// Forgets least recently used entries other than `keep` until the total fits `bound`.
    fn evict(&mut self, bound: u64, keep: Option<&Key>) -> Vec<Key> {
        let mut victims = Vec::new();
        while self.total > bound {
            let Some(victim) = self.order.values().find(|k| Some(*k) != keep).copied() else { break };
            self.remove(&victim);
            victims.push(victim);
        }
        victims
    }
}

pub struct ResultCache {
    dir: PathBuf,
    disk_bytes: u64,
    /// The largest result kept in memory.
    memory_limit: u64,
    memory: moka::sync::Cache<Key, Bytes>,
    index: Mutex<Index>,
}

impl ResultCache {
    /// Opens (creating) `dir` and keeps the files already there, evicting down to `disk_bytes`.
    /// Temporary leftovers of a crash and files with a bad header are deleted.
    pub fn open(dir: &Path, memory_bytes: u64, disk_bytes: u64) -> std::io::Result<ResultCache> {
        // Results of restricted collections are as private as the collections' files: only the
        // service user reads this directory and its files.
        crate::util::private_dir(dir)?;
        let memory = moka::sync::Cache::builder()
            .max_capacity(memory_bytes)
            .weigher(|_key: &Key, value: &Bytes| u32::try_from(value.len()).unwrap_or(u32::MAX))
            .build();
        let cache = ResultCache {
            dir: dir.to_path_buf(),
            disk_bytes,
            memory_limit: memory_bytes / 4,
            memory,
            index: Mutex::new(Index::default()),
        };
        let found = cache.scan()?;
        {
            let mut index = cache.lock();
            for (key, mut entry) in found {
                // Equal mtimes (coarse file systems) still get distinct, ordered stamps.
                entry.last_use = entry.last_use.max(index.clock + 1);
                index.clock = entry.last_use;
                index.insert(key, entry);
            }
            let victims = index.evict(disk_bytes, None);
            cache.delete(&victims);
        }
        Ok(cache)
    }

    /// Memory first, then disk. A disk hit is verified, promoted to memory and its use recorded.
    pub fn get(&self, key: &Key) -> Lookup {
        if let Some(bytes) = self.memory.get(key) {
            // Only the index learns of a memory hit: no file I/O on the hot path.
            self.lock().touch(key);
            return Lookup::Hit(bytes, Tier::Memory);
        }
        let path = self.path_of(key);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) => return self.read_failed(key, &path, e),
        };
        let len = file.metadata().map_or(0, |m| m.len());
        let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        if let Err(e) = file.read_to_end(&mut data) {
            return self.read_failed(key, &path, e);
        }
        let Some(payload) = verify(Bytes::from(data)) else {
            self.delete_corrupt(key, &path, &file);
            return Lookup::Corrupt;
        };
        self.remember(key, &payload);
        let stamp = self.lock().touch(key);
        if let Some(stamp) = stamp {
            // Best effort: the mtime only orders eviction after a restart.
            let _ = file.set_modified(time_of(stamp));
        }
        Lookup::Hit(payload, Tier::Disk)
    }

    /// Stores a result in both tiers, then evicts least recently used files beyond the bound.
    pub fn put(&self, key: &Key, bytes: Bytes) -> std::io::Result<()> {
        self.remember(key, &bytes);
        let hash = *blake3::hash(&bytes).as_bytes();
        let size = (HEADER + bytes.len()) as u64;
        if size > self.disk_bytes {
            let mut index = self.lock();
            if index.remove(key).is_some() {
                remove_quietly(&self.path_of(key));
            }
            return Ok(());
        }
        let stamp = self.lock().tick();
        let tmp = self.write_temp(key, &hash, &bytes, stamp)?;
        let path = self.path_of(key);
        let mut index = self.lock();
        if let Err(e) = std::fs::rename(&tmp, &path) {
            remove_quietly(&tmp);
            return Err(at(&path, e));
        }
        index.insert(*key, Entry { size, last_use: stamp, hash });
        let victims = index.evict(self.disk_bytes, Some(key));
        self.delete(&victims);
        Ok(())
    }

    /// The blake3 hex of a stored payload, for ETags.
    pub fn etag(&self, key: &Key) -> Option<String> {
        if let Some(entry) = self.lock().entries.get(key) {
            return Some(hex(&entry.hash));
        }
        self.memory.get(key).map(|bytes| blake3::hash(&bytes).to_hex().to_string())
    }

    /// Bytes currently on disk, headers included.
    pub fn disk_usage(&self) -> u64 {
        self.lock().total
    }

    pub fn path_of(&self, key: &Key) -> PathBuf {
        self.dir.join(format!("{}.zgr", key.hex()))
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, key: &Key, bytes: &Bytes) {
        if self.memory_limit > 0 && bytes.len() as u64 <= self.memory_limit {
            self.memory.insert(*key, bytes.clone());
        }
    }

    /// The entries already in the directory, least recently used first.
    fn scan(&self) -> std::io::Result<Vec<(Key, Entry)>> {
        let mut found = Vec::new();
        for item in std::fs::read_dir(&self.dir).map_err(|e| at(&self.dir, e))? {
            let path = item.map_err(|e| at(&self.dir, e))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if name.ends_with(TMP_SUFFIX) {
                remove_quietly(&path);
            } else if let Some(key) = name.strip_suffix(".zgr").and_then(Key::from_hex) {
                match read_header(&path) {
                    Ok(Some(entry)) => found.push((key, entry)),
                    Ok(None) => {
                        tracing::warn!("deleting corrupt cache file {}", path.display());
                        remove_quietly(&path);
                    }
                    Err(e) => tracing::warn!("skipping cache file {}: {e}", path.display()),
                }
            }
        }
        found.sort_by_key(|(key, entry)| (entry.last_use, key.0));
        Ok(found)
    }

    fn write_temp(&self, key: &Key, hash: &[u8; 32], payload: &[u8], stamp: u64) -> std::io::Result<PathBuf> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{}.{}.{n}{TMP_SUFFIX}", key.hex(), std::process::id()));
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(|e| at(&tmp, e))?;
        match write_entry(&mut file, hash, payload, stamp) {
            Ok(()) => Ok(tmp),
            Err(e) => {
                remove_quietly(&tmp);
                Err(at(&tmp, e))
            }
        }
    }

    /// Treats a failed read as a miss. A vanished file is forgotten, unless a writer has put a
    /// new one there since (checked under the lock, which renames also hold).
    fn read_failed(&self, key: &Key, path: &Path, e: std::io::Error) -> Lookup {
        if e.kind() == std::io::ErrorKind::NotFound {
            let mut index = self.lock();
            if !path.exists() {
                index.remove(key);
            }
        } else {
            tracing::warn!("cannot read cache file {}: {e}", path.display());
        }
        Lookup::Miss
    }

    fn delete_corrupt(&self, key: &Key, path: &Path, file: &File) {
        tracing::warn!("deleting corrupt cache file {}", path.display());
        let mut index = self.lock();
        // A writer may have replaced the file since it was read: only the bad one goes.
        let same = match (std::fs::metadata(path), file.metadata()) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if same {
            remove_quietly(path);
            index.remove(key);
        }
    }

    /// Deletes the files of evicted entries; the caller holds the lock.
    fn delete(&self, victims: &[Key]) {
        for key in victims {
            remove_quietly(&self.path_of(key));
        }
    }
}

fn write_entry(file: &mut File, hash: &[u8; 32], payload: &[u8], stamp: u64) -> std::io::Result<()> {
    file.write_all(MAGIC)?;
    file.write_all(hash)?;
    file.write_all(payload)?;
    // After the writes, which would move the mtime again; a rename keeps it.
    file.set_modified(time_of(stamp))?;
    file.sync_all()
}

/// The payload of a whole file, if its magic and hash are right.
/// A payload with the header of the cache's files (magic and blake3), as the shared store
/// keeps it too.
pub(crate) fn frame(payload: &Bytes) -> Bytes {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(blake3::hash(payload).as_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// The payload of a framed blob whose hash checks, else `None`.
pub(crate) fn verify(data: Bytes) -> Option<Bytes> {
    if data.len() < HEADER || !data.starts_with(MAGIC) {
        return None;
    }
    let payload = data.slice(HEADER..);
    (blake3::hash(&payload).as_bytes()[..] == data[MAGIC.len()..HEADER]).then_some(payload)
}

/// The index entry of a file, or `None` if its header is short or has the wrong magic.
fn read_header(path: &Path) -> std::io::Result<Option<Entry>> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    let mut header = [0u8; HEADER];
    match file.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if !header.starts_with(MAGIC) {
        return Ok(None);
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&header[MAGIC.len()..]);
    let last_use = meta.modified().map_or(0, ns_since_epoch);
    Ok(Some(Entry { size: meta.len(), last_use, hash }))
}

fn ns_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn now_ns() -> u64 {
    ns_since_epoch(SystemTime::now())
}

fn time_of(stamp: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        Key([n; 32])
    }

    fn payload(n: u8, len: usize) -> Bytes {
        Bytes::from(vec![n; len])
    }

    /// The size on disk of a payload of `len` bytes.
    fn on_disk(len: usize) -> u64 {
        (HEADER + len) as u64
    }

    fn file_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    #[test]
    fn key_hex_round_trip() {
        let k = Key(*blake3::hash(b"request").as_bytes());
        let h = k.hex();
        assert_eq!(h.len(), 64);
        assert!(h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert_eq!(Key::from_hex(&h), Some(k));
        assert_eq!(Key::from_hex(&h.to_uppercase()), Some(k));
        let bad = [
            String::new(),
            h[..63].to_string(),
            format!("{h}0"),
            format!("+{}", &h[1..]),
            format!("g{}", &h[1..]),
            format!("é{}", &h[2..]),
        ];
        for b in &bad {
            assert_eq!(Key::from_hex(b), None, "{b:?}");
        }
    }

    #[test]
    fn hits_memory_then_disk_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(cache.get(&key(1)), Lookup::Miss);
        cache.put(&key(1), payload(7, 1000)).unwrap();
        assert_eq!(cache.get(&key(1)), Lookup::Hit(payload(7, 1000), Tier::Memory));
        assert_eq!(cache.disk_usage(), on_disk(1000));
        let etag = blake3::hash(&payload(7, 1000)).to_hex().to_string();
        assert_eq!(cache.etag(&key(1)).as_deref(), Some(etag.as_str()));
        drop(cache);

        let cache = ResultCache::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(cache.disk_usage(), on_disk(1000));
        assert_eq!(cache.etag(&key(1)), Some(etag));
        assert_eq!(cache.get(&key(1)), Lookup::Hit(payload(7, 1000), Tier::Disk));
        assert_eq!(cache.get(&key(1)), Lookup::Hit(payload(7, 1000), Tier::Memory), "promoted");
        assert_eq!(cache.etag(&key(2)), None);
    }

    #[test]
    fn large_results_stay_out_of_memory() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::open(dir.path(), 4000, 1 << 20).unwrap();
        cache.put(&key(1), payload(1, 1001)).unwrap();
        cache.put(&key(2), payload(2, 1000)).unwrap();
        for _ in 0..2 {
            assert_eq!(cache.get(&key(1)), Lookup::Hit(payload(1, 1001), Tier::Disk));
        }
        assert_eq!(cache.get(&key(2)), Lookup::Hit(payload(2, 1000), Tier::Memory));
    }

    #[test]
    fn a_result_larger_than_the_disk_bound_is_not_kept_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::open(dir.path(), 0, 500).unwrap();
        cache.put(&key(1), payload(1, 100)).unwrap();
        cache.put(&key(2), payload(2, 600)).unwrap();
        assert_eq!(cache.disk_usage(), on_disk(100));
        assert!(!cache.path_of(&key(2)).exists());
        assert_eq!(cache.get(&key(2)), Lookup::Miss);
        assert_eq!(cache.get(&key(1)), Lookup::Hit(payload(1, 100), Tier::Disk));
    }

    #[test]
    fn damaged_files_are_corrupt_then_gone() {
        type Damage = (&'static str, fn(&mut Vec<u8>));
        let damages: [Damage; 4] = [
            ("flipped payload byte", |d| d[HEADER + 50] ^= 1),
            ("one byte short", |d| d.truncate(d.len() - 1)),
            ("shorter than the header", |d| d.truncate(10)),
            ("wrong magic", |d| d[0] = b'X'),
        ];
        for (what, damage) in damages {
            let dir = tempfile::tempdir().unwrap();
            let cache = ResultCache::open(dir.path(), 0, 1 << 20).unwrap();
            cache.put(&key(3), payload(3, 100)).unwrap();
            let path = cache.path_of(&key(3));
            let mut data = std::fs::read(&path).unwrap();
            damage(&mut data);
            std::fs::write(&path, &data).unwrap();
            assert_eq!(cache.get(&key(3)), Lookup::Corrupt, "{what}");
            assert!(!path.exists(), "{what}");
            assert_eq!(cache.get(&key(3)), Lookup::Miss, "{what}");
            assert_eq!(cache.disk_usage(), 0, "{what}");
        }
    }

    #[test]
    fn open_drops_leftovers_and_bad_headers_and_leaves_other_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("{}.zgr", key(1).hex())), b"short").unwrap();
        std::fs::write(dir.path().join(format!(".{}.1.0.tmp", key(2).hex())), b"ZGRES001").unwrap();
        std::fs::write(dir.path().join("README"), b"not ours").unwrap();
        let cache = ResultCache::open(dir.path(), 0, 1 << 20).unwrap();
        assert_eq!(cache.disk_usage(), 0);
        assert_eq!(file_names(dir.path()), ["README"]);
        assert_eq!(cache.get(&key(1)), Lookup::Miss);
    }

    #[test]
    fn eviction_drops_the_least_recently_used_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::open(dir.path(), 0, 3 * on_disk(100)).unwrap();
        for n in 1..=3 {
            cache.put(&key(n), payload(n, 100)).unwrap();
        }
        assert_eq!(cache.get(&key(1)), Lookup::Hit(payload(1, 100), Tier::Disk));
        cache.put(&key(4), payload(4, 100)).unwrap();
        assert_eq!(cache.disk_usage(), 3 * on_disk(100));
        assert!(!cache.path_of(&key(2)).exists());
        drop(cache);

        // Use order is now 3, 1, 4: only the file mtimes carry it across the restart.
        let cache = ResultCache::open(dir.path(), 0, 2 * on_disk(100)).unwrap();
        assert_eq!(cache.disk_usage(), 2 * on_disk(100));
        assert!(!cache.path_of(&key(3)).exists());
        for n in [1, 4] {
            assert_eq!(cache.get(&key(n)), Lookup::Hit(payload(n, 100), Tier::Disk));
        }
        assert_eq!(cache.get(&key(2)), Lookup::Miss);
        assert_eq!(cache.get(&key(3)), Lookup::Miss);
    }

    #[test]
    fn concurrent_puts_and_gets_never_see_torn_results() {
        let dir = tempfile::tempdir().unwrap();
        let bound = 6 * on_disk(1200);
        let cache = ResultCache::open(dir.path(), 2000, bound).unwrap();
        let size = |n: u8| 200 + usize::from(n) * 100;
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let cache = &cache;
                s.spawn(move || {
                    for i in 0..60u8 {
                        let n = i % 11;
                        if (i + t) % 2 == 0 {
                            cache.put(&key(n), payload(n, size(n))).unwrap();
                        }
                        match cache.get(&key(n)) {
                            Lookup::Hit(bytes, _) => assert_eq!(bytes, payload(n, size(n))),
                            Lookup::Miss => {}
                            Lookup::Corrupt => panic!("torn read of key {n}"),
                        }
                    }
                });
            }
        });
        assert!(cache.disk_usage() <= bound);
        let names = file_names(dir.path());
        assert!(names.iter().all(|n| n.ends_with(".zgr")), "{names:?}");
        let on_files: u64 = names.iter().map(|n| std::fs::metadata(dir.path().join(n)).unwrap().len()).sum();
        assert_eq!(on_files, cache.disk_usage());
    }
}
