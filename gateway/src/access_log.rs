//! The access log: one line per answered request, as JSON or in the combined log format (with
//! the request id, duration and cache outcome after the usual fields), to standard output or a
//! file. Lines go through a bounded queue to a thread of their own, so a slow disk never holds
//! a request; if the queue is full the line is dropped and counted (the count is logged once
//! the queue drains).

use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Lines queued at most.
const QUEUE: usize = 65_536;
/// A queue idle this long is flushed to the file.
const FLUSH_AFTER: Duration = Duration::from_millis(200);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Combined,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(Format::Json),
            "combined" => Ok(Format::Combined),
            _ => Err(format!("{s:?} is not an access log format (json or combined)")),
        }
    }
}

/// Where the lines go: `-` is standard output.
#[derive(Clone, Debug)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    pub fn parse(text: &str) -> Target {
        if text == "-" {
            Target::Stdout
        } else {
            Target::File(PathBuf::from(text))
        }
    }
}

/// One answered request.
pub struct Entry<'a> {
    pub time: SystemTime,
    pub client: IpAddr,
    /// An access key id, or `None` for an anonymous request.
    pub principal: Option<&'a str>,
    pub method: &'a str,
    /// The path and query as sent.
    pub target: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub duration: Duration,
    pub request_id: &'a str,
    /// `hit` or `miss` for operations; `None` otherwise.
    pub cache: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

pub struct AccessLog {
    tx: SyncSender<String>,
    format: Format,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens the target (a file is appended to) and starts the writer thread.
    pub fn open(target: &Target, format: Format) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn std::io::Write + Send> = match target {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(path) => {
                Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot open the access log {}: {e}", path.display()))
                })?)
            }
        };
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        std::thread::Builder::new().name("access-log".into()).spawn(move || {
            let mut buf = Vec::with_capacity(1 << 16);
            loop {
                match rx.recv_timeout(FLUSH_AFTER) {
                    Ok(line) => {
                        buf.extend_from_slice(line.as_bytes());
                        buf.push(b'\n');
                        if buf.len() < 1 << 16 {
                            continue;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        let _ = out.write_all(&buf);
                        let _ = out.flush();
                        return;
                    }
                }
                if !buf.is_empty() {
                    if let Err(e) = out.write_all(&buf).and_then(|()| out.flush()) {
                        tracing::error!("writing the access log failed: {e}");
                    }
                    buf.clear();
                }
                let n = lost.swap(0, Ordering::Relaxed);
                if n > 0 {
                    tracing::warn!("{n} access log lines were dropped (the log could not keep up)");
                }
            }
        })?;
        Ok(AccessLog { tx, format, dropped })
    }

    pub fn write(&self, e: &Entry) {
        let line = match self.format {
            Format::Json => json_line(e),
            Format::Combined => combined_line(e),
        };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn json_line(e: &Entry) -> String {
    serde_json::json!({
        "time": crate::dates::iso8601_millis(e.time),
        "client": e.client.to_string(),
        "principal": e.principal,
        "method": e.method,
        "path": e.target,
        "status": e.status,
        "bytes": e.bytes,
        "duration_ms": (e.duration.as_secs_f64() * 1e6).round() / 1e3,
        "request_id": e.request_id,
        "cache": e.cache,
        "referer": e.referer,
        "user_agent": e.user_agent,
    })
    .to_string()
}

/// `client - principal [time] "METHOD target HTTP/1.1" status bytes "referer" "agent"`, then
/// the request id, the duration in milliseconds and the cache outcome.
fn combined_line(e: &Entry) -> String {
    let quoted = |s: Option<&str>| match s {
        Some(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
        None => "\"-\"".into(),
    };
    format!(
        "{} - {} [{}] \"{} {} HTTP/1.1\" {} {} {} {} {} {:.3} {}",
        e.client,
        e.principal.unwrap_or("-"),
        httpdate_clf(e.time),
        e.method,
        e.target.replace('"', "%22"),
        e.status,
        e.bytes,
        quoted(e.referer),
        quoted(e.user_agent),
        e.request_id,
        e.duration.as_secs_f64() * 1000.0,
        e.cache.unwrap_or("-"),
    )
}

/// `07/Dec/2026:08:30:00 +0000`, the time format of the common and combined logs.
fn httpdate_clf(t: SystemTime) -> String {
    // An HTTP date is `Mon, 07 Dec 2026 08:30:00 GMT`.
    let http = httpdate::fmt_http_date(t);
    let parts: Vec<&str> = http.split(' ').collect();
    match parts.as_slice() {
        [_, day, month, year, time, _] => format!("{day}/{month}/{year}:{time} +0000"),
        _ => http,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_631_000),
            client: "192.0.2.7".parse().unwrap(),
            principal: Some("ZGKEY"),
            method: "GET",
            target: "/b/x.nc/.zmetadata?a=\"1\"",
            status: 200,
            bytes: 42,
            duration: Duration::from_micros(1500),
            request_id: "00AB00000001",
            cache: None,
            referer: None,
            user_agent: Some("curl/8 \"x\""),
        }
    }

    #[test]
    fn lines_in_both_formats() {
        let j: serde_json::Value = serde_json::from_str(&json_line(&entry())).unwrap();
        assert_eq!(j["status"], 200);
        assert_eq!(j["duration_ms"], 1.5);
        assert_eq!(j["principal"], "ZGKEY");
        assert!(j["cache"].is_null());
        let c = combined_line(&entry());
        assert!(c.starts_with("192.0.2.7 - ZGKEY [07/Dec/2026:"), "{c}");
        assert!(
            c.contains(r#""GET /b/x.nc/.zmetadata?a=%221%22 HTTP/1.1" 200 42 "-" "curl/8 \"x\"" 00AB00000001 1.500 -"#),
            "{c}"
        );
    }
}
