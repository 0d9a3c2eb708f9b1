//! The store seam: what a bucket is to the S3 handlers.
//!
//! A [`Bucket`] finds an object by key ([`Bucket::lookup`]: what HEAD shows of it, and where
//! its bytes come from) and lists its keys ([`Bucket::list`], by the rules of [`list`]).
//! Collections (files and joined datasets) and the operations' `results` bucket implement it,
//! so conditional requests, ranges and listing are written once, in the S3 handlers, for every
//! bucket. Reading a found object ([`Found::read`]) checks that its sources are unchanged.

pub mod list;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use hyper::header::HeaderValue;

use crate::body::{FileStream, ResponseBody, PIECE};
use crate::dataset::{AssembleError, Body, Dataset, Object};
use crate::sendfile::Lane;
use crate::source::{remote_url, ReadError, Sources, Wait};
pub use list::{ListPage, ListQuery};

/// What a listing, and a HEAD, show of one object.
#[derive(Clone, Debug)]
pub struct Listed {
    pub size: u64,
    /// Quoted, as S3 sends it.
    pub etag: String,
    pub modified: SystemTime,
}

/// What a bucket says about a key.
pub enum Lookup {
    Found(Found),
    Missing,
    /// No dataset of the bucket holds the key; the dataset the key seems to name.
    NoDataset(String),
    /// The key may exist, but cannot be served now (503, with the reason).
    Unavailable(String),
}

/// A bucket, read-only.
pub trait Bucket: Send + Sync {
    fn lookup(&self, key: &str) -> Lookup;

    /// One page of keys, by the S3 rules of [`list::list`], or why the bucket cannot be
    /// listed now (503).
    fn list(&self, query: &ListQuery) -> Result<ListPage<Listed>, String>;

    /// A read of `dataset` found a source changed since it was indexed (`why`, for the log):
    /// bring the bucket up to date if it can (in the background). Returns what happens next,
    /// in words for the client.
    fn source_changed(&self, _dataset: &str, why: &str) -> String {
        tracing::warn!("{why}");
        "retry later".into()
    }
}

/// An object a bucket holds.
#[derive(Clone)]
pub struct Found {
    pub meta: Listed,
    /// `Last-Modified`, formatted once per dataset.
    pub last_modified: HeaderValue,
    /// The dataset the object belongs to, to name in messages.
    pub dataset: Option<String>,
    contents: Contents,
}

#[derive(Clone)]
enum Contents {
    /// An object of a dataset: metadata, a byte range of a source, a decoded or an assembled
    /// chunk.
    Dataset { dataset: Arc<Dataset>, object: Object },
    /// Bytes held in memory (a file of an operation's result).
    Memory(Bytes),
}

/// What of an object a request wants: bytes `start..end`, or (HEAD) only the check.
#[derive(Clone, Copy)]
pub struct Part {
    pub start: u64,
    pub end: u64,
    pub head: bool,
}

pub enum ReadOutcome {
    /// A source changed since it was indexed.
    Stale(String),
    Failed(String),
    /// Not in the page cache, and the read was not to wait for the disk.
    NotCached,
    /// A remote source cannot be reached now: 503, try again later.
    Unavailable(String),
}

impl From<ReadError> for ReadOutcome {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Stale { .. } => ReadOutcome::Stale(e.to_string()),
            ReadError::Io { .. } => ReadOutcome::Failed(e.to_string()),
            ReadError::NotCached { .. } => ReadOutcome::NotCached,
            ReadError::Unavailable(why) => ReadOutcome::Unavailable(why),
        }
    }
}

impl Found {
    /// An object of the dataset with id `id`.
    pub fn of_dataset(id: &str, dataset: Arc<Dataset>, object: Object) -> Self {
        let meta = Listed { size: object.size, etag: object.etag.clone(), modified: dataset.modified };
        Found {
            meta,
            last_modified: dataset.last_modified.clone(),
            dataset: Some(id.to_string()),
            contents: Contents::Dataset { dataset, object },
        }
    }

    pub fn in_memory(bytes: Bytes, etag: String, modified: SystemTime) -> Self {
        let meta = Listed { size: bytes.len() as u64, etag, modified };
        let last_modified = HeaderValue::from_str(&httpdate::fmt_http_date(modified)).expect("HTTP dates are ASCII");
        Found { meta, last_modified, dataset: None, contents: Contents::Memory(bytes) }
    }

    /// Whether reading `part` right here costs less than handing it to another thread, as nginx
    /// does: metadata and memory, HEAD, and source ranges up to one streaming piece (any range
    /// on a connection with a sendfile lane, which holds no piece in memory). Decoding and
    /// assembling chunks goes to the blocking pool.
    pub fn quick(&self, part: Part, lane: bool) -> bool {
        match &self.contents {
            Contents::Memory(_) => true,
            // Every read of a dataset with remote sources may ask the network (at least to
            // check that an object is unchanged).
            Contents::Dataset { dataset, .. } if dataset.remote => false,
            Contents::Dataset { object, .. } => match &object.body {
                Body::Inline(_) => true,
                Body::Range { .. } => part.head || part.end - part.start <= PIECE || lane,
                Body::Transcoded { .. } | Body::Assembled { .. } => part.head,
            },
        }
    }

    /// Bytes `start..end` of the object, after checking that every source is unchanged. HEAD
    /// only checks. Large ranges of a source file are streamed, with `sendfile` through `lane`
    /// if the connection has one.
    pub fn read(
        &self,
        sources: &Sources,
        part: Part,
        lane: Option<Lane>,
        wait: Wait,
    ) -> Result<ResponseBody, ReadOutcome> {
        match &self.contents {
            Contents::Memory(_) if part.head => Ok(ResponseBody::empty()),
            Contents::Memory(bytes) => Ok(ResponseBody::from(bytes.slice(part.start as usize..part.end as usize))),
            Contents::Dataset { dataset, object } => read_object(sources, dataset, object, part, lane, wait),
        }
    }
}

fn read_object(
    sources: &Sources,
    dataset: &Dataset,
    object: &Object,
    part: Part,
    lane: Option<Lane>,
    wait: Wait,
) -> Result<ResponseBody, ReadOutcome> {
    let Part { start, end, head } = part;
    let slice = |bytes: Vec<u8>| ResponseBody::from(Bytes::from(bytes).slice(start as usize..end as usize));
    match &object.body {
        Body::Inline(bytes) => {
            check(sources, dataset, 0)?;
            Ok(ResponseBody::from(bytes.slice(start as usize..end as usize)))
        }
        Body::Range { source, .. } | Body::Transcoded { source, .. } if head => {
            check(sources, dataset, *source)?;
            Ok(ResponseBody::empty())
        }
        Body::Assembled { .. } if head => {
            check(sources, dataset, 0)?;
            Ok(ResponseBody::empty())
        }
        Body::Range { source, offset, .. } => {
            let (path, fp) = (dataset.source(*source), dataset.sources[*source].fingerprint);
            if end - start > PIECE && remote_url(path).is_none() {
                let file = sources.open(path, fp)?;
                return Ok(ResponseBody::File(FileStream::new(
                    file,
                    path.to_path_buf(),
                    fp,
                    offset + start,
                    end - start,
                    lane,
                )));
            }
            let bytes = sources.read_waiting(path, fp, offset + start, end - start, wait)?;
            Ok(ResponseBody::from(Bytes::from(bytes)))
        }
        Body::Assembled { .. } | Body::Transcoded { .. } => Ok(slice(object_bytes(sources, dataset, object)?)),
    }
}

/// The whole object in memory, after checking that its sources are unchanged: how the
/// operations read chunks, and how the S3 handlers read decoded and assembled ones.
pub fn object_bytes(sources: &Sources, dataset: &Dataset, object: &Object) -> Result<Vec<u8>, ReadOutcome> {
    match &object.body {
        Body::Inline(bytes) => {
            check(sources, dataset, 0)?;
            Ok(bytes.to_vec())
        }
        Body::Range { source, offset, length } => {
            Ok(sources.read(dataset.source(*source), dataset.sources[*source].fingerprint, *offset, *length)?)
        }
        Body::Assembled { array, idx } => dataset.assemble(sources, array, idx).map_err(|e| match e {
            AssembleError::Read(e) => ReadOutcome::from(e),
            AssembleError::Decode(why) => ReadOutcome::Failed(format!("cannot assemble a joined chunk: {why}")),
        }),
        Body::Transcoded { source, pipeline, chunk } => {
            let fp = dataset.sources[*source].fingerprint;
            let stored = sources.read(dataset.source(*source), fp, chunk.offset, chunk.length)?;
            pipeline.decode(stored, chunk.filter_mask).map_err(|e| {
                ReadOutcome::Failed(format!(
                    "cannot decode the chunk at offset {} of {}: {e}",
                    chunk.offset,
                    dataset.source(*source).display()
                ))
            })
        }
    }
}

fn check(sources: &Sources, dataset: &Dataset, source: usize) -> Result<(), ReadOutcome> {
    sources.verify(dataset.source(source), dataset.sources[source].fingerprint)?;
    Ok(())
}
