//! Response bodies: bytes in memory, or a byte range of a source file streamed in pieces.
//!
//! Streaming keeps memory per connection at two pieces (1 MiB each) however large the chunk, and
//! overlaps reading the next piece with sending the last. After the last piece the source's
//! fingerprint is checked again: if the file changed while it was being sent, the body ends
//! in an error, so the client sees a broken response rather than a mix of old and new bytes.

use std::future::Future as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;
use zarrgate_core::catalog::Fingerprint;

use crate::source::{OpenFile, Sources};

/// Bytes read per step of a streamed body.
pub const PIECE: u64 = 1024 * 1024;

pub enum ResponseBody {
    Memory(Option<Bytes>),
    File(FileStream),
}

impl ResponseBody {
    pub fn empty() -> Self {
        ResponseBody::Memory(None)
    }
}

impl From<Bytes> for ResponseBody {
    fn from(b: Bytes) -> Self {
        ResponseBody::Memory((!b.is_empty()).then_some(b))
    }
}

pub struct FileStream {
    file: Arc<OpenFile>,
    path: PathBuf,
    fingerprint: Fingerprint,
    offset: u64,
    remaining: u64,
    pending: Option<JoinHandle<std::io::Result<Bytes>>>,
}

impl FileStream {
    pub fn new(file: Arc<OpenFile>, path: PathBuf, fingerprint: Fingerprint, offset: u64, length: u64) -> Self {
        FileStream { file, path, fingerprint, offset, remaining: length, pending: None }
    }

    fn start_read(&mut self) -> JoinHandle<std::io::Result<Bytes>> {
        let n = self.remaining.min(PIECE);
        let last = n == self.remaining;
        let (file, offset) = (self.file.clone(), self.offset);
        let (path, fingerprint) = (self.path.clone(), self.fingerprint);
        tokio::task::spawn_blocking(move || {
            let bytes = file.read(offset, n)?;
            if last {
                Sources::check(&path, fingerprint).map_err(std::io::Error::other)?;
            }
            Ok(Bytes::from(bytes))
        })
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ResponseBody::Memory(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::File(stream) => {
                if stream.remaining == 0 {
                    return Poll::Ready(None);
                }
                let mut pending = match stream.pending.take() {
                    Some(p) => p,
                    None => stream.start_read(),
                };
                match Pin::new(&mut pending).poll(cx) {
                    Poll::Pending => {
                        stream.pending = Some(pending);
                        Poll::Pending
                    }
                    Poll::Ready(Ok(Ok(bytes))) => {
                        stream.offset += bytes.len() as u64;
                        stream.remaining -= bytes.len() as u64;
                        if stream.remaining > 0 {
                            // Read ahead while this piece is sent.
                            stream.pending = Some(stream.start_read());
                        }
                        Poll::Ready(Some(Ok(Frame::data(bytes))))
                    }
                    Poll::Ready(Ok(Err(e))) => {
                        eprintln!("zarrgate: streaming {} failed: {e}", stream.path.display());
                        stream.remaining = 0;
                        Poll::Ready(Some(Err(e)))
                    }
                    Poll::Ready(Err(e)) => {
                        stream.remaining = 0;
                        Poll::Ready(Some(Err(std::io::Error::other(e))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Memory(b) => b.is_none(),
            ResponseBody::File(s) => s.remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Memory(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseBody::File(s) => SizeHint::with_exact(s.remaining),
        }
    }
}
