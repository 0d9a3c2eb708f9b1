//! NetCDF-4 read by ranged reads through the remote driver, against the local copy, in one
//! process: the driver is HDF5's default only for the span of a remote translation, so local
//! files indexed before and after still open with sec2, and give the same references.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use zarrgate_indexer::{hdf::View, index_file, index_remote, IndexOptions};
use zarrgate_remote::{CacheConfig, PrefixConfig, Remote, Settings};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/data/good").join(name)
}

/// An HTTP server on 127.0.0.1 for the files of `dir`, answering HEAD and ranged GET (as
/// nginx does, with Last-Modified and ETag), one connection at a time. With `fail_above`,
/// GETs of more bytes than that answer 500.
fn serve(dir: PathBuf, fail_above: Option<usize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = r.trim().split_once('-').unwrap();
                    range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
                }
            }
            let mut parts = request.split_whitespace();
            let (method, path) = (parts.next().unwrap().to_string(), parts.next().unwrap().to_string());
            let mut out = stream;
            let Ok(body) = std::fs::read(dir.join(path.trim_start_matches('/'))) else {
                out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
                continue;
            };
            let common = "Last-Modified: Tue, 08 Dec 2026 00:00:00 GMT\r\nETag: \"v1\"\r\nAccept-Ranges: bytes\r\n\
                          Connection: close\r\n";
            if fail_above.is_some_and(|n| range.is_none_or(|(a, b)| b - a + 1 > n)) && method == "GET" {
                out.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .unwrap();
                continue;
            }
            let (status, slice) = match range {
                Some((a, b)) => {
                    let b = b.min(body.len() - 1);
                    (format!("206 Partial Content\r\nContent-Range: bytes {a}-{b}/{}", body.len()), &body[a..=b])
                }
                None => ("200 OK".to_string(), &body[..]),
            };
            let head = format!("HTTP/1.1 {status}\r\n{common}Content-Length: {}\r\n\r\n", slice.len());
            out.write_all(head.as_bytes()).unwrap();
            if method == "GET" {
                out.write_all(slice).unwrap();
            }
        }
    });
    endpoint
}

#[test]
fn a_remote_netcdf4_object_gives_the_references_of_its_local_copy() {
    let dir = fixture("");
    let endpoint = serve(dir, None);
    let settings = Settings {
        remote: vec![PrefixConfig { prefix: format!("{endpoint}/"), options: Default::default() }],
        ..Default::default()
    };
    let remote = Remote::new(&settings).unwrap();
    let local = |name: &str| index_file(&fixture(name), &IndexOptions::default()).unwrap();
    let before = local("groups.nc");
    for name in ["groups.nc", "cal_noleap.nc", "compact.h5"] {
        let url = format!("{endpoint}/{name}");
        let got = index_remote(&url, &remote, View::Netcdf).unwrap();
        let want = local(name);
        let (got, want) = (got.to_json(), want.to_json());
        assert_eq!(got["refs"], want["refs"], "{name}");
        assert_eq!(got["zarrgate"]["variables"], want["zarrgate"]["variables"], "{name}");
        assert_eq!(got["templates"]["u"], url.as_str());
    }
    // HDF5's default driver is sec2 again: local files read as before.
    assert_eq!(local("groups.nc").to_json()["refs"], before.to_json()["refs"]);
    // A missing object is an error naming it, not a crash.
    let missing = index_remote(&format!("{endpoint}/none.nc"), &remote, View::Netcdf).unwrap_err();
    assert!(zarrgate_core::error_chain(&missing).contains("none.nc"), "{missing}");
}

#[test]
fn a_server_failing_during_the_translation_is_the_objects_error_not_hdf5s() {
    // The sniffing reads (8 bytes) succeed; HDF5's first block read gets 500.
    let endpoint = serve(fixture(""), Some(64));
    let settings = Settings {
        remote: vec![PrefixConfig { prefix: format!("{endpoint}/"), options: Default::default() }],
        remote_cache: CacheConfig { retries: 0, ..Default::default() },
    };
    let remote = Remote::new(&settings).unwrap();
    let url = format!("{endpoint}/cal_noleap.nc");
    let chain = zarrgate_core::error_chain(&index_remote(&url, &remote, View::Netcdf).unwrap_err());
    assert!(chain.contains(&format!("{url} cannot be read now")), "{chain}");
    assert!(!chain.contains("HDF5 cannot") && !chain.contains("netCDF-C cannot"), "{chain}");
}
