//! Zero-copy responses: large byte ranges go from the page cache to the socket with
//! `sendfile(2)`, as nginx sends them, instead of a `pread` into memory and a `write` out of it.
//!
//! hyper owns the socket and writes bodies itself, so the two meet in the connection's I/O:
//! - a streamed body ([`crate::body::FileStream`]) yields, for each piece, a frame that
//!   *stands for* the piece: a slice of [`PLACEHOLDER`], a static buffer of zeros, and queues
//!   the piece's file range on the connection's [`Lane`];
//! - hyper queues frames without copying them (vectored writes, forced on in the server), so the
//!   slices it later writes still point into [`PLACEHOLDER`];
//! - [`Conn`], the I/O hyper writes through, recognises such a slice by its address and sends
//!   the queued file range in its place. The slice's offset in [`PLACEHOLDER`] must equal the
//!   bytes of that range already sent, or the connection fails: a placeholder is never sent as
//!   data.
//!
//! The staleness check keeps its meaning: the body holds back the range's last bytes, and
//! reads and checks them only once every byte before them has been sent *and acknowledged by
//! the client* (the socket's send queue is empty): the kernel reads a sendfile'd page when it
//! transmits or retransmits it, so until then a change to the file could still go out. A file
//! that changed before the check fails it, and the client gets a truncated response, never a
//! complete one with mixed bytes. Waiting for the acknowledgements costs one round trip per
//! range over 1 MiB.
//!
//! `sendfile` reads the page cache on the runtime's thread, as nginx's `sendfile` does on its
//! worker: on a cold cache over a slow file system, that thread waits for the disk.

use std::collections::VecDeque;
use std::future::Future as _;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd as _, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_io_timeout::TimeoutStream;

use crate::source::OpenFile;

/// Bytes read per step of a streamed body. Ranges longer than this are streamed, zero-copy
/// where the connection allows it; shorter ones are read into memory. (Measured with wrk at
/// 64 KiB, `sendfile` saved the copies but its extra system calls, a second `stat`, the header
/// write and the tail's read, cost as much.)
pub const PIECE: u64 = 1024 * 1024;

/// What a placeholder frame holds (never sent: [`Conn`] sends the file range instead).
pub static PLACEHOLDER: [u8; PIECE as usize] = [0; PIECE as usize];

tokio::task_local! {
    /// The lane of the connection whose task is running, where it supports placeholders.
    pub static LANE: Lane;
}

/// The lane of the current connection, if it sends placeholders.
pub fn current_lane() -> Option<Lane> {
    LANE.try_with(Lane::clone).ok()
}

/// File ranges waiting to be sent, in the order of their placeholders, on one connection.
#[derive(Clone)]
pub struct Lane(Arc<LaneInner>);

struct LaneInner {
    jobs: Mutex<VecDeque<Job>>,
    sock: RawFd,
    timeout: Duration,
    /// A zero-copy body is being sent (see [`Sending`]).
    sending: std::sync::atomic::AtomicBool,
}

/// Marks the lane busy with a zero-copy body while it lives. While busy, the connection's read
/// timeout is off: the body may wait for the client's acknowledgements, writing nothing, while
/// hyper's read for the next request is pending.
pub struct Sending(Lane);

impl Sending {
    pub fn new(lane: &Lane) -> Self {
        lane.0.sending.store(true, Ordering::Release);
        Sending(lane.clone())
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.0 .0.sending.store(false, Ordering::Release);
    }
}

struct Job {
    file: Arc<OpenFile>,
    offset: u64,
    len: usize,
    sent: usize,
    progress: Arc<Progress>,
}

/// How many of a body's jobs are unsent, and the body's task to wake when they are all sent.
#[derive(Default)]
pub struct Progress {
    unsent: AtomicUsize,
    waker: Mutex<Option<Waker>>,
}

impl Progress {
    /// Whether everything queued has been sent; if not, `cx` is woken when it has.
    pub fn poll_sent(&self, cx: &Context<'_>) -> bool {
        if self.unsent.load(Ordering::Acquire) == 0 {
            return true;
        }
        *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        self.unsent.load(Ordering::Acquire) == 0
    }

    fn done_one(&self) {
        if self.unsent.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(w) = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take() {
                w.wake();
            }
        }
    }
}

impl Lane {
    /// The lane of the connection on socket `sock`, whose client may stall for `timeout`.
    pub fn new(sock: RawFd, timeout: Duration) -> Self {
        Lane(Arc::new(LaneInner { jobs: Mutex::default(), sock, timeout, sending: Default::default() }))
    }

    /// How long the client may stall.
    pub fn timeout(&self) -> Duration {
        self.0.timeout
    }

    /// Bytes written to the socket that the client has not acknowledged yet.
    pub fn unacknowledged(&self) -> io::Result<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int.
        if unsafe { libc::ioctl(self.0.sock, libc::TIOCOUTQ, &mut n) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n.max(0) as usize)
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        self.0.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `len` bytes of `file` at `offset` (at most one piece) and gives the frame that
    /// stands for them.
    pub fn push(&self, file: Arc<OpenFile>, offset: u64, len: usize, progress: &Arc<Progress>) -> bytes::Bytes {
        assert!(len > 0 && len <= PLACEHOLDER.len(), "a placeholder covers one piece");
        progress.unsent.fetch_add(1, Ordering::AcqRel);
        let job = Job { file, offset, len, sent: 0, progress: progress.clone() };
        self.jobs().push_back(job);
        bytes::Bytes::from_static(&PLACEHOLDER[..len])
    }
}

fn placeholder_offset(slice: &[u8]) -> Option<usize> {
    let base = PLACEHOLDER.as_ptr() as usize;
    let at = (slice.as_ptr() as usize).wrapping_sub(base);
    (at < PLACEHOLDER.len() && !slice.is_empty()).then_some(at)
}

/// A client connection: a TCP stream with read and write timeouts, which sends placeholder
/// slices as their file ranges.
pub struct Conn {
    io: Pin<Box<TimeoutStream<TcpStream>>>,
    lane: Lane,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the read timeout was last restarted by progress in writing.
    read_timer_restarted: Instant,
    /// The read timeout is off while a zero-copy body is sent.
    read_timer_off: bool,
}

impl Conn {
    /// Wraps a client's stream, which may stall reading or writing for `timeout`; gives the
    /// connection and its lane.
    pub fn new(stream: TcpStream, timeout: Duration) -> (Self, Lane) {
        let lane = Lane::new(stream.as_raw_fd(), timeout);
        let mut io = TimeoutStream::new(stream);
        io.set_read_timeout(Some(timeout));
        io.set_write_timeout(Some(timeout));
        let conn = Conn {
            io: Box::pin(io),
            lane: lane.clone(),
            stalled: None,
            read_timer_restarted: Instant::now(),
            read_timer_off: false,
        };
        (conn, lane)
    }

    /// hyper keeps a read pending while it sends a response (to notice a client that hangs
    /// up), and the read timeout runs while that read waits. A client that only receives is not
    /// idle: each write that makes progress restarts the read timeout (at most twice per period).
    fn wrote(&mut self, result: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = result {
            let timeout = self.lane.timeout();
            if n > 0 && !self.read_timer_off && self.read_timer_restarted.elapsed() > timeout / 2 {
                self.read_timer_restarted = Instant::now();
                self.io.as_mut().set_read_timeout_pinned(Some(timeout));
            }
        }
        result
    }

    /// Sends the front job's remaining bytes, which `slice` (a placeholder) stands for.
    fn poll_sendfile(&mut self, cx: &mut Context<'_>, slice: &[u8], at: usize) -> Poll<io::Result<usize>> {
        let out_of_step = || io::Error::other("a placeholder does not match the file range queued for it");
        let (file, offset, len) = {
            let jobs = self.lane.jobs();
            let job = jobs.front().ok_or_else(out_of_step)?;
            if job.sent != at || job.len - job.sent != slice.len() {
                return Poll::Ready(Err(out_of_step()));
            }
            (job.file.clone(), job.offset + job.sent as u64, job.len - job.sent)
        };
        let n = std::task::ready!(self.poll_raw_write(cx, |sock| file.send_to(sock, offset, len)))?;
        if n == 0 {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the source file ended early")));
        }
        let mut jobs = self.lane.jobs();
        let job = jobs.front_mut().expect("the job just sent from");
        job.sent += n;
        if job.sent == job.len {
            jobs.pop_front().expect("the front job").progress.done_one();
        }
        Poll::Ready(Ok(n))
    }

    /// Sends `bufs` flagged MSG_MORE: more data follows at once.
    fn poll_send_more(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.poll_raw_write(cx, |sock| {
            // SAFETY: `msg` points at `bufs`, which outlive the call; `IoSlice` has the layout
            // of `iovec`.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len();
            let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_MORE | libc::MSG_NOSIGNAL) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        })
    }

    /// Runs `write` on the socket's descriptor once the socket is writable, as often as it
    /// would block; a socket that stays full is [`Conn::poll_stall`].
    fn poll_raw_write(
        &mut self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(RawFd) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            let tcp = self.io.get_ref();
            if tcp.poll_write_ready(cx)?.is_pending() {
                return self.poll_stall(cx);
            }
            let sock = tcp.as_raw_fd();
            match tcp.try_io(Interest::WRITABLE, || write(sock)) {
                Ok(n) => {
                    self.stalled = None;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// The socket is full: wait, but no longer than the write timeout without progress.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let timeout = self.lane.timeout();
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let sending = self.lane.0.sending.load(Ordering::Acquire);
        if sending != self.read_timer_off {
            self.read_timer_off = sending;
            let timeout = self.lane.timeout();
            self.io.as_mut().set_read_timeout_pinned((!sending).then_some(timeout));
        }
        self.io.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.as_mut().poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().position(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        let result = if let Some(at) = placeholder_offset(&bufs[first]) {
            self.poll_sendfile(cx, &bufs[first], at)
        } else {
            // Plain bytes up to the next placeholder. Before one (response headers, say) they
            // are sent with MSG_MORE, so that the kernel joins them with the file's first bytes
            // instead of sending a small packet of their own.
            match bufs[first..].iter().position(|b| placeholder_offset(b).is_some()) {
                Some(p) => self.poll_send_more(cx, &bufs[first..first + p]),
                None => self.io.as_mut().poll_write_vectored(cx, &bufs[first..]),
            }
        };
        self.wrote(result)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_known_by_address() {
        assert_eq!(placeholder_offset(&PLACEHOLDER[..10]), Some(0));
        assert_eq!(placeholder_offset(&PLACEHOLDER[100..200]), Some(100));
        assert_eq!(placeholder_offset(&[0u8; 16]), None);
        assert_eq!(placeholder_offset(&PLACEHOLDER[5..5]), None);
    }
}
