//! The HTTP server: connection limits, timeouts, panic isolation and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;

use crate::s3::{error_response, handle, App, HttpResponse};
use crate::sendfile::{Conn, LANE};

#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Where the CLI binds the listener it passes to [`serve`].
    pub listen: SocketAddr,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// A client that sends no request headers, or stalls reading or writing, for this long is
    /// disconnected.
    pub client_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: ([127, 0, 0, 1], 9000).into(),
            max_connections: 1024,
            client_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on a bound `listener` until `shutdown` completes, then drains connections.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    options: &ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
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
                    eprintln!("zarrgate: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let mut timed = TimeoutStream::new(stream);
        timed.set_read_timeout(Some(options.client_timeout));
        timed.set_write_timeout(Some(options.client_timeout));
        let (conn, lane) = Conn::new(timed, options.client_timeout);
        let io = TokioIo::new(conn);
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(isolated(app, req, peer.ip()).await) }
        });
        // Vectored writes keep body frames uncopied, which zero-copy sending relies on.
        let conn = http1::Builder::new()
            .writev(true)
            .timer(TokioTimer::new())
            .header_read_timeout(options.client_timeout)
            .max_buf_size(64 * 1024)
            .serve_connection(io, service);
        let conn = graceful.watch(conn);
        tokio::spawn(LANE.scope(lane, async move {
            let _ = conn.await;
            drop(permit);
        }));
    }
    app.shutting_down.store(true, Ordering::Relaxed);
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(options.shutdown_grace) => {
            eprintln!("zarrgate: connections still open after {:?}; stopping", options.shutdown_grace);
        }
    }
    app.auth.flush();
    Ok(())
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
        eprintln!("zarrgate: request for {path} failed: {e}");
        let err = crate::s3::xml::S3Error::internal("The server hit an internal error; it keeps serving.");
        error_response(&err, &path, "0", head)
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
