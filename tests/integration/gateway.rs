//! The gateway in-process: a catalog built by the indexer, served on port 0, read over raw
//! HTTP/1.1, then shut down through its shutdown future.

use std::io::{Read as _, Write as _};
use std::sync::Arc;

use zarrgate_core::refs::Reference;
use zarrgate_gateway::auth::Auth;
use zarrgate_gateway::{AppBuilder, Collection, ServeOptions};
use zarrgate_indexer::tree::{index_tree, InProcess, Outcome, Progress, TreeOptions};

use super::fixture;

struct Silent;

impl Progress for Silent {
    fn start(&mut self, _: usize) {}
    fn file(&mut self, _: &str, _: Outcome) {}
}

/// One request on a fresh connection; returns the status line and body.
fn get(addr: std::net::SocketAddr, path: &str, extra: &str) -> (String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n").unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    (head.lines().next().unwrap().to_string(), answer[split + 4..].to_vec())
}

#[test]
fn serves_a_catalog_by_byte_range_and_stops_on_its_shutdown_future() {
    let data = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("good/cal_noleap.nc"), data.path().join("cal_noleap.nc")).unwrap();
    let catalog = tempfile::tempdir().unwrap();
    let options = TreeOptions { jobs: 1, ..Default::default() };
    index_tree(data.path(), catalog.path(), &options, &InProcess, &mut Silent).unwrap();
    let db = zarrgate_core::catalog::CatalogDb::open(catalog.path()).unwrap();
    let row = db.dataset("cal_noleap.nc").unwrap().unwrap();
    let refs = zarrgate_core::catalog::packed::unpack(&row.refs.unwrap()).unwrap();
    let Some(Reference::Range { offset, length, .. }) = refs.refs.get("tas/0.0.0") else {
        panic!("tas/0.0.0 is a range")
    };
    let file = std::fs::read(data.path().join("cal_noleap.nc")).unwrap();
    let expected = file[*offset as usize..(*offset + *length) as usize].to_vec();

    let collection = Collection::open("demo".into(), catalog.path().to_path_buf(), None).unwrap();
    let logins = zarrgate_gateway::auth::Logins::new(&[], &Default::default()).unwrap();
    let auth = Auth::start(catalog.path().join("auth.db"), Default::default(), logins).unwrap();
    let app = Arc::new(AppBuilder::new(vec![Arc::new(collection)], auth).build());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        zarrgate_gateway::serve(app, listener, &ServeOptions::default(), shutdown).await
    });

    let (status, body) = get(addr, "/demo/cal_noleap.nc/tas/0.0.0", "");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, expected);
    let (status, body) = get(addr, "/demo/cal_noleap.nc/tas/0.0.0", "Range: bytes=-5\r\n");
    assert_eq!(status, "HTTP/1.1 206 Partial Content");
    assert_eq!(body, expected[expected.len() - 5..]);
    let (status, body) = get(addr, "/demo/cal_noleap.nc/tas/9.9.9", "");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(String::from_utf8_lossy(&body).contains("<Code>NoSuchKey</Code>"));

    stop.send(()).unwrap();
    runtime.block_on(server).unwrap().unwrap();
    assert!(std::net::TcpStream::connect(addr).is_err(), "the listener is closed after shutdown");
}
