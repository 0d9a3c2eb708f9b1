//! The server's log: one line per event on standard error, with a UTC timestamp and a level.
//!
//! What is logged is chosen by `--log-level` (`error`, `warn`, `info`, `debug`, `trace`), or,
//! without it, by `RUST_LOG` (the `tracing` directive syntax, e.g. `warn,zarrgate_gateway=debug`);
//! the default is `info`. The access log is separate (`--access-log`).

use tracing_subscriber::EnvFilter;

/// The levels `--log-level` accepts.
pub const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Starts logging. Call once, before anything logs.
pub fn init(level: Option<&str>) {
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
}
