//! Response bodies: bytes in memory, or a byte range of a source file streamed in pieces.
//!
//! On the gateway's own connections a streamed range is sent with `sendfile` (see
//! [`crate::sendfile`]); elsewhere (and in tests) its pieces are read into memory.
//!
//! Streaming keeps memory per connection at two pieces (1 MiB each) however large the chunk, and
//! overlaps reading the next piece with sending the last. After the last piece the source's
//! fingerprint is checked again: if the file changed while it was being sent, the body ends
//! in an error, so the client sees a broken response rather than a mix of old and new bytes.

use std::future::Future as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;
use zarrgate_core::catalog::Fingerprint;

use crate::sendfile::{Lane, Progress, Sending};
use crate::source::{OpenFile, Sources};

pub use crate::sendfile::PIECE;

/// Bytes at the end of a zero-copy body that are read and checked in memory (see
/// [`crate::sendfile`]).
const TAIL: u64 = 16 * 1024;

/// How often the send queue is looked at while the client acknowledges a zero-copy range.
const ACK_POLL: Duration = Duration::from_millis(1);

/// A response as every handler gives it.
pub type HttpResponse = hyper::Response<ResponseBody>;

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
    /// The connection's lane, when pieces are sent with `sendfile` (all but the tail).
    lane: Option<(Lane, Arc<Progress>)>,
    /// Waiting for the client to acknowledge what was sent: the next look, and the last count
    /// of unacknowledged bytes with when it last fell.
    ack_wait: Option<Pin<Box<tokio::time::Sleep>>>,
    ack_progress: Option<(usize, Instant)>,
    _sending: Option<Sending>,
}

impl FileStream {
    pub fn new(
        file: Arc<OpenFile>,
        path: PathBuf,
        fingerprint: Fingerprint,
        offset: u64,
        length: u64,
        lane: Option<Lane>,
    ) -> Self {
        let sending = lane.as_ref().map(Sending::new);
        let lane = lane.map(|l| (l, Arc::new(Progress::default())));
        FileStream {
            file,
            path,
            fingerprint,
            offset,
            remaining: length,
            pending: None,
            lane,
            ack_wait: None,
            ack_progress: None,
            _sending: sending,
        }
    }

    /// The next frame of a zero-copy body: a placeholder per piece, then the tail, read and
    /// checked once every placeholder before it has been sent.
    fn poll_zero_copy(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let (lane, progress) = self.lane.as_ref().expect("a zero-copy body");
        let ahead = self.remaining.saturating_sub(TAIL);
        if ahead > 0 {
            let n = ahead.min(PIECE);
            let frame = lane.push(self.file.clone(), self.offset, n as usize, progress);
            self.offset += n;
            self.remaining -= n;
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        if !progress.poll_sent(cx) {
            return Poll::Pending;
        }
        // Only bytes the client has acknowledged are past the kernel's reading them.
        loop {
            match lane.unacknowledged() {
                Ok(0) => break,
                Ok(n) => {
                    // A client that acknowledges nothing for the client timeout is cut off.
                    let now = Instant::now();
                    match self.ack_progress {
                        Some((last, since)) if n >= last => {
                            if now - since >= lane.timeout() {
                                tracing::warn!(
                                    "a client acknowledged nothing of {} for {:?}; disconnecting",
                                    self.path.display(),
                                    lane.timeout()
                                );
                                self.remaining = 0;
                                return Poll::Ready(Some(Err(std::io::ErrorKind::TimedOut.into())));
                            }
                        }
                        _ => self.ack_progress = Some((n, now)),
                    }
                    let wait = self.ack_wait.insert(Box::pin(tokio::time::sleep(ACK_POLL)));
                    if wait.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Err(e) => {
                    self.remaining = 0;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
        let tail = read_piece(&self.file, &self.path, self.fingerprint, self.offset, self.remaining, true);
        self.remaining = 0;
        Poll::Ready(Some(tail.map(Frame::data).inspect_err(|e| log_failure(&self.path, e))))
    }

    fn start_read(&mut self) -> JoinHandle<std::io::Result<Bytes>> {
        let n = self.remaining.min(PIECE);
        let last = n == self.remaining;
        let (file, offset) = (self.file.clone(), self.offset);
        let (path, fingerprint) = (self.path.clone(), self.fingerprint);
        tokio::task::spawn_blocking(move || read_piece(&file, &path, fingerprint, offset, n, last))
    }
}

/// `n` bytes of `file` at `offset`; with `last`, the source's fingerprint is checked after the
/// read, so the bytes of a file that changed while the body was sent never end it.
fn read_piece(
    file: &OpenFile,
    path: &Path,
    fingerprint: Fingerprint,
    offset: u64,
    n: u64,
    last: bool,
) -> std::io::Result<Bytes> {
    let bytes = file.read(offset, n)?;
    if last {
        Sources::check(path, fingerprint).map_err(std::io::Error::other)?;
    }
    Ok(Bytes::from(bytes))
}

fn log_failure(path: &Path, e: &std::io::Error) {
    tracing::error!("streaming {} failed: {e}", path.display());
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
                if stream.lane.is_some() {
                    return stream.poll_zero_copy(cx);
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
                        log_failure(&stream.path, &e);
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
