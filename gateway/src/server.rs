//! The HTTP server: connection limits (in all and per client address), timeouts, TLS, panic
//! isolation and graceful shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::app::App;
use crate::body::HttpResponse;
use crate::router::handle;
use crate::s3::error_document;
use crate::sendfile::{Conn, LANE};
use crate::tls::Certificates;

#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Where the CLI binds the listener it passes to [`serve`].
    pub listen: SocketAddr,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one client address may hold at once (trusted proxies are not limited);
    /// more are answered 503 and closed at once.
    pub max_connections_per_client: usize,
    /// A client that stalls reading or writing for this long is disconnected.
    pub client_timeout: Duration,
    /// A request head (and a TLS handshake) must arrive within this; an idle keep-alive
    /// connection is closed after it too.
    pub header_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// Threads serving connections (each with a single-threaded runtime of its own).
    pub workers: usize,
    /// TLS on the listener, with certificates reloaded when their files change.
    pub tls: Option<Arc<Certificates>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: ([127, 0, 0, 1], 9000).into(),
            max_connections: default_max_connections(),
            max_connections_per_client: 64,
            client_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tls: None,
        }
    }
}

/// Most connections served by default: three quarters of the file descriptors this process may
/// open (the rest are for source files and the databases), between 256 and 16,384. An idle
/// connection costs a descriptor and a few KiB.
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 1024, rlim_max: 1024 };
    // SAFETY: getrlimit writes one rlimit struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let usable = limit.rlim_cur.saturating_mul(3) / 4;
    usable.clamp(256, 16_384) as usize
}

/// Raises this process's limit of open files to the most it may have, as servers do (Debian's
/// default soft limit of 1024 would cap connections below what the machine holds).
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write one rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Connections open per client address.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

/// One connection of a client address, given back when dropped.
struct ClientSlot {
    counts: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot { counts: self.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// What a connection over its address's limit is told before it is closed.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 154\r\n\r\n<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Too many connections from your address; close some and retry.</Message></Error>";

/// Answers a connection over its address's limit without reading it, and closes it.
fn turn_away(stream: std::net::TcpStream) {
    use std::io::Write as _;
    // The answer fits any socket buffer; a client that cannot take it gets nothing.
    let mut stream = stream;
    let _ = stream.set_nonblocking(true);
    let _ = stream.write(TOO_MANY);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Serves `app` on a bound `listener` until `shutdown` completes, then drains connections.
///
/// This task only accepts. Each connection is handed to the least busy of `options.workers`
/// threads and stays there; each thread runs a single-threaded runtime, as nginx runs a process
/// per core. Measured with wrk at 64 KiB against nginx, this served about 5–10% more requests
/// than one work-stealing runtime, whose tasks and wake-ups cross threads.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    options: &ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let per_client = Arc::new(PerClient::default());
    if let Some(certs) = &options.tls {
        certs.watch();
        tokio::spawn(reload_on_sighup(certs.clone()));
    }
    let workers = (0..options.workers.max(1))
        .map(|n| Worker::start(n, app.clone(), options))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut turn = 0;
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors, say: wait and keep serving.
                    tracing::error!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // A tokio stream belongs to the runtime that accepted it; the worker registers it again.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("a connection from {peer} could not be handed over: {e}");
                continue;
            }
        };
        let slot = if app.proxies.trusts(peer.ip()) {
            None
        } else {
            match per_client.take(peer.ip(), options.max_connections_per_client) {
                Some(slot) => Some(slot),
                None => {
                    turn_away(stream);
                    continue;
                }
            }
        };
        if !hand(&workers, &mut turn, Handed { stream, peer, permit, slot }) {
            return Err(std::io::Error::other("every worker thread has stopped"));
        }
    }
    app.shutting_down.store(true, Ordering::Relaxed);
    drop(listener);
    // Closing its queue starts a worker's graceful shutdown.
    let threads: Vec<_> = workers.into_iter().map(|w| w.thread).collect();
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    })
    .await;
    // Off the runtime: a PostgreSQL key database's client blocks on a runtime of its own.
    let auth = app.auth.clone();
    let _ = std::thread::spawn(move || auth.flush()).join();
    Ok(())
}

/// The load of a worker whose thread has ended: more than any live one has.
const STOPPED: usize = usize::MAX / 2;

/// A thread serving the connections handed to it.
struct Worker {
    queue: mpsc::UnboundedSender<Handed>,
    /// Connections handed to it and not yet closed.
    load: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

struct Handed {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    /// The connection's place in its address's limit (none for trusted proxies).
    slot: Option<ClientSlot>,
}

/// Reloads the TLS certificate on SIGHUP.
async fn reload_on_sighup(certs: Arc<Certificates>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        let certs = certs.clone();
        let _ = tokio::task::spawn_blocking(move || certs.reload_logged(true)).await;
    }
}

impl Worker {
    fn start(n: usize, app: Arc<App>, options: &ServeOptions) -> std::io::Result<Worker> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (queue, handed) = mpsc::unbounded_channel();
        let load = Arc::new(AtomicUsize::new(0));
        let (options, counted) = (options.clone(), load.clone());
        let thread = std::thread::Builder::new()
            .name(format!("zarrgate-worker-{n}"))
            .spawn(move || runtime.block_on(serve_handed(app, handed, counted, options)))?;
        Ok(Worker { queue, load, thread })
    }
}

/// Gives a connection to the worker with the fewest, scanning from a turn that moves on, so
/// ties (one connection at a time) are spread too. A worker whose thread has ended (it never
/// should) is never chosen again, and its connection goes to the next. False if none is left.
fn hand(workers: &[Worker], turn: &mut usize, mut handed: Handed) -> bool {
    *turn = (*turn + 1) % workers.len();
    let order = || workers.iter().cycle().skip(*turn).take(workers.len());
    for _ in 0..workers.len() {
        let worker = order().min_by_key(|w| w.load.load(Ordering::Relaxed)).expect("at least one worker");
        worker.load.fetch_add(1, Ordering::Relaxed);
        match worker.queue.send(handed) {
            Ok(()) => return true,
            Err(mpsc::error::SendError(back)) => {
                tracing::error!("a worker thread has stopped; its connections go to the others");
                worker.load.store(STOPPED, Ordering::Relaxed);
                handed = back;
            }
        }
    }
    false
}

/// A worker's loop: serves each handed connection in a task until the queue closes, then waits
/// up to the grace period for the requests in flight.
async fn serve_handed(
    app: Arc<App>,
    mut handed: mpsc::UnboundedReceiver<Handed>,
    load: Arc<AtomicUsize>,
    options: ServeOptions,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let tls = match &options.tls {
        Some(certs) => match certs.server_config() {
            Ok(config) => Some(tokio_rustls::TlsAcceptor::from(config)),
            Err(e) => {
                tracing::warn!("TLS cannot be set up: {e}");
                return;
            }
        },
        None => None,
    };
    while let Some(Handed { stream, peer, permit, slot }) = handed.recv().await {
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("a connection from {peer} could not be served: {e}");
                load.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (conn, lane) = Conn::new(stream, options.client_timeout);
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(isolated(app, req, peer.ip()).await) }
        });
        // Vectored writes keep body frames uncopied, which zero-copy sending relies on.
        let mut http = http1::Builder::new();
        http.writev(true).timer(TokioTimer::new()).header_read_timeout(options.header_timeout).max_buf_size(64 * 1024);
        let (load, watcher, tls) = (load.clone(), graceful.watcher(), tls.clone());
        let header_timeout = options.header_timeout;
        tokio::spawn(async move {
            match tls {
                // The TLS layer sends real bytes, so its connection has no lane (no zero-copy).
                Some(acceptor) => {
                    if let Ok(Ok(stream)) = tokio::time::timeout(header_timeout, acceptor.accept(conn)).await {
                        let _ = watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await;
                    }
                }
                None => {
                    let served = watcher.watch(http.serve_connection(TokioIo::new(conn), service));
                    let _ = LANE.scope(lane, served).await;
                }
            }
            load.fetch_sub(1, Ordering::Relaxed);
            drop((permit, slot));
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!("connections still open after {:?}; stopping", options.shutdown_grace);
        }
    }
}

/// Answers a request so that a panic becomes a 500 XML error for that request only. Operations
/// run in a task of their own, which finishes (and settles its quotas and jobs) even if the
/// client goes away; S3 requests are polled in place, saving a task per request.
async fn isolated(app: Arc<App>, req: hyper::Request<hyper::body::Incoming>, ip: std::net::IpAddr) -> HttpResponse {
    let head = req.method() == hyper::Method::HEAD;
    let path = req.uri().path().to_string();
    let outcome = if crate::ops::http::is_ops_path(&path) {
        tokio::spawn(handle(app, req, ip)).await.map_err(|e| e.to_string())
    } else {
        CatchUnwind(Box::pin(handle(app, req, ip))).await.map_err(|_| "panicked".to_string())
    };
    outcome.unwrap_or_else(|e| {
        tracing::error!("request for {path} failed: {e}");
        let err = crate::s3::xml::S3Error::internal("The server hit an internal error; it keeps serving.");
        error_document(&err, &path, "0", head)
    })
}

/// A future whose panic is caught and returned, like `tokio::spawn` gives it, without a task.
struct CatchUnwind<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        // A request that panicked is dropped, never polled again; shared state it touched is
        // behind mutexes whose poisoning every user ignores.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

/// Answers on the server's listener while the first index runs, so that an orchestrator sees a
/// live process: `/healthz` is 200, everything else (`/readyz` included) 503 with an S3
/// `ServiceUnavailable` document and `Retry-After`. Gives the listener back when `ready` fires.
pub async fn serve_starting(listener: TcpListener, ready: tokio::sync::oneshot::Receiver<()>) -> TcpListener {
    tokio::pin!(ready);
    loop {
        tokio::select! {
            _ = &mut ready => return listener,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                tokio::spawn(async move {
                    let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                        Ok::<_, Infallible>(starting_answer(req.uri().path()))
                    });
                    let conn = http1::Builder::new().keep_alive(false).serve_connection(TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                });
            }
        }
    }
}

fn starting_answer(path: &str) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, ctype, body) = if path == "/healthz" {
        (200, "text/plain", "ok\n".to_string())
    } else {
        let message = "The gateway is starting: it indexes its data before it serves. Retry shortly.";
        (
            503,
            "application/xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>ServiceUnavailable</Code>\
                 <Message>{message}</Message><Resource>{}</Resource></Error>",
                crate::s3::xml::escape(path)
            ),
        )
    };
    hyper::Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("retry-after", "5")
        .header("connection", "close")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("a valid response")
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_turn_away_answer_declares_its_length() {
        let text = std::str::from_utf8(TOO_MANY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
    }

    #[test]
    fn addresses_hold_at_most_their_share_of_connections() {
        let counts = Arc::new(PerClient::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| counts.take(ip, 3).expect("within the limit")).collect();
        assert!(counts.take(ip, 3).is_none());
        assert!(counts.take("10.0.0.2".parse().unwrap(), 3).is_some(), "another address has its own");
        drop(held);
        assert!(counts.take(ip, 3).is_some());
        assert!(counts.0.lock().unwrap().get(&"10.0.0.2".parse::<IpAddr>().unwrap()).is_none(), "emptied entries go");
    }

    #[tokio::test]
    async fn a_panicking_request_is_caught_and_others_go_on() {
        let bug = std::hint::black_box(true);
        let bad = CatchUnwind(Box::pin(async move {
            if bug {
                panic!("a bug in one request");
            }
            1
        }));
        assert!(bad.await.is_err());
        let good = CatchUnwind(Box::pin(async { 7 }));
        assert_eq!(good.await.unwrap(), 7);
    }
}
