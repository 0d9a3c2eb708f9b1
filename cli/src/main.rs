//! The `zarrgate` command: a thin layer that parses arguments into options and calls the
//! indexer (and, later, the gateway). Each file is indexed in a child process of this same
//! binary (see [`isolate`]), so a C library that aborts costs one file, not the command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

mod admin;
mod isolate;
mod logging;
mod netcdf_out;
mod serve;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use zarrgate_indexer::tree::{index_tree, FileIndexer, InProcess, Outcome, Progress, Removals, TreeOptions};

#[derive(Parser)]
#[command(name = "zarrgate", version, about = "Serve NetCDF/HDF5 archives as Zarr over S3, without copying a byte")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// What the log (standard error) shows: error, warn, info, debug or trace. Without it,
    /// `RUST_LOG` decides (e.g. `warn,zarrgate_gateway=debug`); the default is info.
    #[arg(long, global = true, value_parser = clap::builder::PossibleValuesParser::new(logging::LEVELS))]
    log_level: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Write Kerchunk references for a file (`-o OUT.json`) or a directory tree (`--out CATALOG_DIR`).
    Index {
        /// A NetCDF-3, NetCDF-4 or HDF5 file, or a directory to index recursively; or a remote
        /// NetCDF-3 object (`s3://`, `gs://`, `az://`, `http(s)://`, with --remote-config) read by
        /// range, or an object store prefix ending in '/' (with -o DIR for its reference files).
        path: PathBuf,
        /// Output JSON for a single file (default: standard output).
        #[arg(short = 'o', long = "output", conflicts_with = "out")]
        output: Option<PathBuf>,
        /// Catalog directory for a tree.
        #[arg(long = "out")]
        out: Option<PathBuf>,
        /// Write chunk URLs as this prefix plus the file's relative path (e.g. `s3://bucket/data/`).
        #[arg(long)]
        url_prefix: Option<String>,
        /// Re-index every file, even unchanged ones.
        #[arg(long)]
        force: bool,
        /// Files indexed at once (default: the number of CPUs).
        #[arg(long)]
        jobs: Option<usize>,
        /// Give up on a file after this long (`600s`, `10m`).
        #[arg(long, default_value = "600s", value_parser = parse_duration)]
        file_timeout: u64,
        /// The exact chunk URL for a single file (used by tree workers).
        #[arg(long, hide = true, conflicts_with = "url_prefix")]
        url: Option<String>,
        /// Index in this process instead of a child (what a worker does).
        #[arg(long, hide = true)]
        worker: bool,
        /// Do not join ESGF/DRS datasets (`PREFIX_START-END.nc` files of one directory).
        #[arg(long)]
        no_drs_join: bool,
        #[command(flatten)]
        removals: RemovalArgs,
        /// A TOML file whose `[[remote]]` tables allow the remote objects that imported
        /// references name, or that are indexed (a `serve` config file will do; docs/remote.md).
        #[arg(long)]
        remote_config: Option<PathBuf>,
    },
    /// Index files named on standard input (what tree indexing runs in child processes).
    #[command(hide = true)]
    IndexWorker {
        /// The `[[remote]]` sources, for requests that name remote objects.
        #[arg(long)]
        remote_config: Option<PathBuf>,
    },
    /// Serve data as a read-only S3 bucket of Zarr stores (one per file: `s3://BUCKET/<relpath>`).
    Serve {
        /// Data tree to index at start (incrementally) and serve.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Bucket name.
        #[arg(long)]
        bucket: Option<String>,
        /// Catalog directory: prebuilt references to serve, or where `--data` is indexed
        /// (default: ~/.cache/zarrgate/catalogs/BUCKET).
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// A TOML file declaring several collections (see docs/configuration.md).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Manage access keys (SigV4 credentials and bearer tokens).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Requests, bytes, compute, cache hits and errors per key and day.
    Usage {
        /// Only this key (its access key id; `anonymous` for unsigned requests).
        #[arg(long)]
        key: Option<String>,
        /// First day (YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// Output: an aligned table, CSV or JSON.
        #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
        format: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Write what a catalog holds as files: `OUT/refs/<dataset>.json` (Kerchunk v1 JSON, as the
    /// gateway serves it), `OUT/reports/<dataset>.json`, `OUT/joins/<id>.json` and
    /// `OUT/catalog.json` (the catalog directory layout before zarrgate 0.2).
    Export {
        /// Catalog directory.
        catalog: PathBuf,
        /// Datasets (ids, the paths relative to the indexed tree) to export; default: all.
        datasets: Vec<String>,
        /// Directory to write into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Publish a catalog for gateways that read it elsewhere (replicas, on a shared volume): a
    /// consistent snapshot of CATALOG into DIR, named in `DIR/CURRENT`. Gateways serving
    /// `--catalog DIR` switch to it within a second; the last snapshots are kept for readers
    /// still on them.
    Publish {
        /// Catalog directory (written by `zarrgate index`).
        catalog: PathBuf,
        /// Directory to publish into (created if missing).
        #[arg(long)]
        to: PathBuf,
    },
    /// Index the bundled fixtures and serve them as bucket `demo`, printing client snippets.
    Demo {
        /// Fixture directory (default: fixtures/data/good of this checkout).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Catalog directory (default: target/demo-catalog).
        #[arg(long)]
        catalog: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Which key and usage database: `--db`, else the `auth_db` of `--config`, else
/// $ZARRGATE_AUTH_DB, else ~/.local/share/zarrgate/auth.db.
#[derive(clap::Args)]
struct DbArgs {
    /// Key and usage database.
    #[arg(long, global = true)]
    db: Option<PathBuf>,
    /// The gateway's configuration file: its `auth_db` is the database.
    #[arg(long, global = true, conflicts_with = "db")]
    config: Option<PathBuf>,
    /// Create the database named by --db if it does not exist (a mistyped path is refused
    /// otherwise).
    #[arg(long, global = true)]
    create_db: bool,
}

impl DbArgs {
    /// The database, which must exist unless `creating` (and then, if named by --db, only
    /// with --create-db).
    fn path(&self, creating: bool) -> anyhow::Result<PathBuf> {
        let from_config = match &self.config {
            Some(file) => Some(
                zarrgate_gateway::config::Config::load(file)?
                    .auth_db
                    .with_context(|| format!("{} sets no auth_db (the gateway uses the default)", file.display()))?,
            ),
            None => None,
        };
        let explicit = self.db.is_some();
        let path = self.db.clone().or(from_config).unwrap_or_else(serve::default_auth_db);
        // A PostgreSQL URL names a server, whose tables are created on first use.
        if path.exists() || path.to_str().is_some_and(zarrgate_gateway::auth::pg::is_url) {
            return Ok(path);
        }
        if !creating {
            bail!(
                "there is no key database at {} (check the path; `zarrgate serve` or `zarrgate keys create` creates it)",
                path.display()
            );
        }
        if explicit && !self.create_db {
            bail!(
                "there is no key database at {}: check the path, or pass --create-db to start one there",
                path.display()
            );
        }
        Ok(path)
    }
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key; its secret is printed once.
    Create {
        /// A name for the key, shown in listings and usage (e.g. the user or the course).
        #[arg(long)]
        name: String,
        /// The owner's email address.
        #[arg(long)]
        owner: String,
        /// A group the key belongs to (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Lifetime (`30d`, `12h`, `90m`, `3600s`) or the day it ends (`YYYY-MM-DD`, midnight UTC).
        #[arg(long)]
        expires: Option<String>,
        /// Print JSON (with the secret) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one key (without its secret).
    Show { access_key: String },
    /// Revoke a key; a running gateway refuses it within a second (it re-reads keys every 0.25 s).
    Revoke { access_key: String },
}

/// The guard against a run that would empty a catalog (an unmounted data directory).
#[derive(clap::Args, Clone)]
struct RemovalArgs {
    /// Remove the datasets of files that are gone even when they are more than
    /// --max-removals of the catalog.
    #[arg(long)]
    allow_removals: bool,
    /// Refuse a run that would remove more than this share of the catalog's datasets
    /// (`50%`, or `0.5`; one dataset may always be removed).
    #[arg(long, default_value = "50%", value_parser = parse_share)]
    max_removals: f64,
}

impl RemovalArgs {
    fn removals(&self) -> Removals {
        if self.allow_removals {
            Removals::Allowed
        } else {
            Removals::AtMost(self.max_removals)
        }
    }
}

fn parse_duration(text: &str) -> Result<u64, String> {
    zarrgate_gateway::config::parse_seconds(text)
        .ok_or_else(|| format!("{text:?} is not a duration: write whole seconds, e.g. 30, 30s, 5m or 1h"))
}

fn parse_size(text: &str) -> Result<u64, String> {
    zarrgate_gateway::config::parse_bytes(text)
        .ok_or_else(|| format!("{text:?} is not a size: write bytes, or a number with KiB, MiB or GiB (512MiB)"))
}

/// `HOST:PORT`, with a host name (resolved now) or none (`:9000`, every interface).
fn parse_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    let text = text.trim();
    let full = if text.starts_with(':') { format!("0.0.0.0{text}") } else { text.to_string() };
    let hint = "write HOST:PORT, e.g. 127.0.0.1:9000, localhost:9000, [::1]:9000 or :9000 (every interface)";
    let mut addrs =
        full.to_socket_addrs().map_err(|e| format!("{text:?} is not an address to listen on ({e}): {hint}"))?;
    addrs.next().ok_or_else(|| format!("{text:?} names no address: {hint}"))
}

fn parse_share(text: &str) -> Result<f64, String> {
    let share = match text.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => text.trim().parse::<f64>(),
    }
    .map_err(|_| format!("{text:?} is not a share: write 50% or 0.5"))?;
    if (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(format!("{text:?} is not between 0% and 100%"))
    }
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Key and usage database (default: $ZARRGATE_AUTH_DB or ~/.local/share/zarrgate/auth.db).
    #[arg(long)]
    auth_db: Option<PathBuf>,
    /// Address to listen on: `127.0.0.1:9000` (the default), `localhost:9000`, `:9000` (every
    /// interface), `[::1]:9000`; port 0 picks a free port.
    #[arg(long, value_parser = parse_listen)]
    listen: Option<std::net::SocketAddr>,
    /// Connections served at once (default: 3/4 of the open-file limit, at most 16384).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Connections one client address may hold at once; more are answered 503 (default 64;
    /// trusted proxies are not limited).
    #[arg(long)]
    max_connections_per_client: Option<usize>,
    /// How long a client may stall reading or writing before it is disconnected (`30s`, `2m`;
    /// default 30s).
    #[arg(long, value_parser = parse_duration)]
    client_timeout: Option<u64>,
    /// How soon a request head (or a TLS handshake) must arrive; idle keep-alive connections
    /// close after it too (`10s`; default 10s).
    #[arg(long, value_parser = parse_duration)]
    header_timeout: Option<u64>,
    /// TLS certificate chain (PEM); reloaded when the file changes, or on SIGHUP.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A proxy (address or block, e.g. 10.0.0.0/8) whose X-Forwarded-For or Forwarded header
    /// names the client; repeatable.
    #[arg(long = "trusted-proxy")]
    trusted_proxies: Vec<zarrgate_gateway::client::Cidr>,
    /// The header trusted proxies write the client into: x-forwarded-for (default) or
    /// forwarded. The other is ignored (a proxy passes it on from the client).
    #[arg(long)]
    trusted_proxy_header: Option<zarrgate_gateway::client::ForwardHeader>,
    /// Threads serving connections, each holding its connections (default: the number of CPUs).
    #[arg(long)]
    workers: Option<std::num::NonZeroUsize>,
    /// Files indexed at once (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// Give up indexing a file after this long (`600s`, `10m`).
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    file_timeout: u64,
    /// Results cache and job records of operations (default: ~/.cache/zarrgate/ops).
    #[arg(long)]
    ops_dir: Option<PathBuf>,
    /// Estimated bytes to decode above which an operation runs as a job (`512MiB`, `2GiB`,
    /// bytes; default 512MiB).
    #[arg(long, value_parser = parse_size)]
    sync_limit: Option<u64>,
    /// Do not join ESGF/DRS datasets (`PREFIX_START-END.nc` files of one directory).
    #[arg(long)]
    no_drs_join: bool,
    #[command(flatten)]
    removals: RemovalArgs,
    /// Write a line per request (time, client, key, method, path, status, bytes, duration,
    /// request id, cache outcome) to this file, or `-` for standard output.
    #[arg(long)]
    access_log: Option<String>,
    /// The access log's format: `json` (a JSON object per line) or `combined` (the combined
    /// log format, then the request id, milliseconds and cache outcome). Default json.
    #[arg(long)]
    access_log_format: Option<zarrgate_gateway::access_log::Format>,
    /// Memory for loaded datasets, shared by the collections (`256MiB`, `2GiB`, bytes);
    /// datasets beyond it are dropped and loaded again when asked for. Default 256MiB.
    #[arg(long)]
    cache_memory: Option<String>,
}

impl ServerArgs {
    /// Flags over the config file's settings of the listener.
    fn apply_server(&self, config: &mut zarrgate_gateway::config::Config) {
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.tls_cert = Some(cert.clone());
            config.tls_key = Some(key.clone());
        }
        config.trusted_proxies.extend(self.trusted_proxies.iter().copied());
        if self.cache_memory.is_some() {
            config.cache_memory = self.cache_memory.clone();
        }
        if self.access_log.is_some() {
            config.access_log = self.access_log.clone();
        }
        if self.access_log_format.is_some() {
            config.access_log_format = self.access_log_format;
        }
        if self.trusted_proxy_header.is_some() {
            config.trusted_proxy_header = self.trusted_proxy_header;
        }
    }

    fn options(&self, config: &zarrgate_gateway::config::Config) -> anyhow::Result<zarrgate_gateway::ServeOptions> {
        zarrgate_gateway::server::raise_fd_limit();
        let defaults = zarrgate_gateway::ServeOptions::default();
        let secs = |flag: Option<u64>, file: Option<u64>, default: Duration| {
            flag.or(file).map_or(default, Duration::from_secs)
        };
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(zarrgate_gateway::tls::Certificates::open(cert, key)?),
            _ => None,
        };
        let options = zarrgate_gateway::ServeOptions {
            listen: self.listen.or(config.listen).unwrap_or(defaults.listen),
            max_connections: self.max_connections.or(config.max_connections).unwrap_or(defaults.max_connections),
            max_connections_per_client: self
                .max_connections_per_client
                .or(config.max_connections_per_client)
                .unwrap_or(defaults.max_connections_per_client),
            client_timeout: secs(self.client_timeout, config.client_timeout_secs, defaults.client_timeout),
            header_timeout: secs(self.header_timeout, config.header_timeout_secs, defaults.header_timeout),
            workers: self.workers.or(config.workers).map_or(defaults.workers, |n| n.get()),
            tls,
            ..defaults
        };
        if options.max_connections == 0 || options.max_connections_per_client == 0 || options.header_timeout.is_zero() {
            bail!("--max-connections, --max-connections-per-client and --header-timeout must be at least 1");
        }
        Ok(options)
    }

    /// Flags over the config file's `[ops]`. `ZARRGATE_TEST_COMPUTE_DELAY_MS` is a test hook that
    /// makes every computation wait first (to test restarts during a job, and slow requests).
    fn apply_ops(&self, config: &mut zarrgate_gateway::config::Config) {
        let ops = config.ops.get_or_insert_with(Default::default);
        if ops.dir.as_os_str().is_empty() {
            ops.dir = serve::default_ops_dir();
        }
        if let Some(d) = &self.ops_dir {
            ops.dir = d.clone();
        }
        if let Some(s) = self.sync_limit {
            ops.sync_limit_bytes = s;
        }
        if let Some(ms) = std::env::var("ZARRGATE_TEST_COMPUTE_DELAY_MS").ok().and_then(|v| v.parse().ok()) {
            ops.test_compute_delay = Duration::from_millis(ms);
        }
        // A synchronous answer must come before the connection's read timeout drops it.
        let client_timeout = self.client_timeout.or(config.client_timeout_secs).map_or(30, |s| s.max(1));
        ops.sync_wait = Duration::from_millis(client_timeout * 1000 * 2 / 3);
    }

    fn index_settings(&self) -> serve::IndexSettings {
        serve::IndexSettings {
            jobs: self.jobs.unwrap_or_else(cpus),
            file_timeout: Duration::from_secs(self.file_timeout),
            no_drs_join: self.no_drs_join,
            removals: self.removals.removals(),
            remote: None,
        }
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Prints the line test harnesses wait for, then flushes.
fn announce(endpoint: &str) {
    use std::io::Write as _;
    println!("listening on {endpoint}");
    let _ = std::io::stdout().flush();
}

/// Keeps the 1 MiB pieces of streamed chunks on the heap. glibc serves blocks that large
/// with mmap by default, and the map, page faults and unmap of every piece cost more than
/// copying it (measured: 11% of the gateway's time streaming 4 MiB chunks).
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator thresholds; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
        // Few arenas, so freed pieces are reused instead of parked per thread.
        libc::mallopt(libc::M_ARENA_MAX, 8);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    logging::init(cli.log_level.as_deref());
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zarrgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Index {
            path,
            output,
            out,
            url_prefix,
            force,
            jobs,
            file_timeout,
            url,
            worker,
            no_drs_join,
            removals,
            remote_config,
        } => {
            let target = path.to_string_lossy().into_owned();
            if zarrgate_remote::is_remote(&target) {
                let Some(file) = remote_config else {
                    bail!("indexing {target} needs --remote-config FILE with a [[remote]] prefix that covers it")
                };
                let remote = remote_from(&file)?;
                let isolated = isolate::Isolated::new(Duration::from_secs(file_timeout))?.reading_remote(&file);
                let jobs = jobs.unwrap_or_else(cpus);
                return index_remote(&target, &remote, &isolated, output.as_deref(), jobs);
            }
            if path.is_dir() {
                let Some(out) = out else { bail!("indexing a directory needs --out CATALOG_DIR") };
                let jobs = jobs.unwrap_or_else(cpus);
                let isolated = isolate::Isolated::new(Duration::from_secs(file_timeout))?;
                let removals = removals.removals();
                let remote = match &remote_config {
                    None => None,
                    Some(file) => Some(Arc::new(remote_from(file)?)),
                };
                let options = TreeOptions { url_prefix, force, jobs, no_drs_join, removals, remote };
                index_dir(&path, &out, options, &isolated)
            } else {
                if out.is_some() {
                    bail!("--out is for directories; use -o OUT.json for a single file");
                }
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let url = url.or_else(|| url_prefix.map(|p| format!("{}/{name}", p.trim_end_matches('/'))));
                let indexer: Box<dyn FileIndexer> = if worker {
                    Box::new(InProcess)
                } else {
                    Box::new(isolate::Isolated::new(Duration::from_secs(file_timeout))?)
                };
                index_single(indexer.as_ref(), &path, output.as_deref(), url)
            }
        }
        Command::IndexWorker { remote_config } => {
            let remote = remote_config.as_deref().map(remote_from).transpose()?;
            isolate::worker_loop(remote.as_ref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { action, db } => {
            let db = db.path(matches!(action, KeysAction::Create { .. }))?;
            match action {
                KeysAction::Create { name, owner, groups, expires, json } => {
                    admin::create(&db, &name, &owner, &groups, expires.as_deref(), json)?
                }
                KeysAction::List { json } => admin::list(&db, json)?,
                KeysAction::Show { access_key } => admin::show(&db, &access_key)?,
                KeysAction::Revoke { access_key } => admin::revoke(&db, &access_key)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Usage { key, since, format, db } => {
            let db = db.path(false)?;
            admin::usage(&db, key.as_deref(), since.as_deref(), &format)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { data, bucket, catalog, config, server } => {
            let mut config = serve::config_from_args(config.as_deref(), bucket, data, catalog)?;
            if server.auth_db.is_some() {
                config.auth_db = server.auth_db.clone();
            }
            server.apply_ops(&mut config);
            server.apply_server(&mut config);
            let options = server.options(&config)?;
            serve::serve(config, options, &server.index_settings(), announce)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { catalog, datasets, out } => {
            let db = zarrgate_core::catalog::CatalogDb::open_existing(&catalog)?
                .with_context(|| format!("{} holds no catalog", catalog.display()))?;
            let done = zarrgate_core::catalog::legacy::export(&db, &datasets, &out)?;
            eprintln!("exported {} datasets and {} joined datasets to {}", done.datasets, done.joins, out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish { catalog, to } => {
            if zarrgate_core::catalog::db::published(&catalog)?.is_some() {
                bail!(
                    "{} is itself a published catalog: publish the catalog `zarrgate index` writes",
                    catalog.display()
                );
            }
            let db = zarrgate_core::catalog::CatalogDb::open_existing(&catalog)?
                .with_context(|| format!("{} holds no catalog", catalog.display()))?;
            let done = db.publish(&to)?;
            if done.new {
                println!("published generation {} as {}", done.generation, done.snapshot.display());
            } else {
                println!("{} is already at generation {}", to.display(), done.generation);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { data, catalog, server } => {
            let data = match data {
                Some(d) => d,
                None => demo_fixtures()?,
            };
            let catalog = catalog.unwrap_or_else(|| PathBuf::from("target/demo-catalog"));
            let dataset = "cal_noleap.nc".to_string();
            let mut config = serve::config_from_args(None, Some("demo".into()), Some(data), Some(catalog))?;
            config.auth_db = server.auth_db.clone();
            server.apply_ops(&mut config);
            server.apply_server(&mut config);
            let options = server.options(&config)?;
            serve::serve(config, options, &server.index_settings(), move |endpoint| {
                announce(endpoint);
                serve::print_demo(endpoint, "demo", &dataset);
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `fixtures/data/good` in the working directory, or in the checkout this binary was built in.
fn demo_fixtures() -> anyhow::Result<PathBuf> {
    let rel = Path::new("fixtures/data/good");
    if rel.is_dir() {
        return Ok(rel.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1) {
        if dir.join(rel).is_dir() {
            return Ok(dir.join(rel));
        }
    }
    bail!("cannot find fixtures/data/good; run from the zarrgate checkout or pass --data DIR")
}

/// The `[[remote]]` sources of a TOML file (a `serve` config file will do).
fn remote_from(file: &Path) -> anyhow::Result<zarrgate_remote::Remote> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let settings =
        zarrgate_remote::Settings::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    zarrgate_remote::Remote::new(&settings).map_err(anyhow::Error::msg)
}

/// A remote object indexed by ranged reads into Kerchunk JSON (`-o FILE`, or standard
/// output); or every object under a prefix (ending in '/') into reference files under
/// `-o DIR`, for a data tree to import. Each object is indexed by `isolated`, in a worker
/// process, as local files are; `jobs` at once under a prefix.
fn index_remote(
    target: &str,
    remote: &zarrgate_remote::Remote,
    isolated: &isolate::Isolated,
    output: Option<&Path>,
    jobs: usize,
) -> anyhow::Result<ExitCode> {
    if !target.ends_with('/') {
        let set = isolated.index(Path::new(target), None).map_err(anyhow::Error::msg)?;
        return write_refs(&set, output);
    }
    let Some(out) = output else { bail!("indexing the objects under {target} needs -o DIR for their reference files") };
    let written =
        zarrgate_indexer::remote_refs::index_prefix(target, remote, isolated, out, jobs).map_err(anyhow::Error::msg)?;
    for (url, why) in &written.failed {
        eprintln!("failed: {url}: {why}");
    }
    eprintln!(
        "indexed {} objects under {target} into {} ({} failed)",
        written.files.len(),
        out.display(),
        written.failed.len()
    );
    Ok(if written.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn index_single(
    indexer: &dyn FileIndexer,
    path: &Path,
    output: Option<&Path>,
    url: Option<String>,
) -> anyhow::Result<ExitCode> {
    let set = indexer.index(path, url).map_err(|e| anyhow::anyhow!(e))?;
    write_refs(&set, output)
}

/// References as JSON to `output`, or to standard output (`None` or `-`).
fn write_refs(set: &zarrgate_core::refs::ReferenceSet, output: Option<&Path>) -> anyhow::Result<ExitCode> {
    let bytes = set.to_json_bytes();
    match output {
        Some(o) if o != Path::new("-") => {
            std::fs::write(o, &bytes).with_context(|| format!("cannot write {}", o.display()))?
        }
        _ => {
            use std::io::Write as _;
            std::io::stdout().write_all(&bytes)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn start(&mut self, total: usize) {
        self.0.set_length(total as u64);
    }
    fn file(&mut self, rel: &str, outcome: Outcome) {
        self.0.set_message(rel.to_string());
        if let Outcome::Indexed(zarrgate_core::catalog::EntryStatus::Failed) = outcome {
            self.0.println(format!("failed: {rel}"));
        }
        self.0.inc(1);
    }
}

pub(crate) fn index_dir(
    root: &Path,
    out: &Path,
    options: TreeOptions,
    worker: &dyn FileIndexer,
) -> anyhow::Result<ExitCode> {
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} {elapsed}, ETA {eta} {wide_msg}")
            .expect("valid template"),
    );
    let mut progress = Bar(bar);
    let summary = index_tree(root, out, &options, worker, &mut progress)?;
    progress.0.finish_and_clear();
    if summary.ok + summary.partial + summary.failed + summary.skipped == 0 {
        eprintln!(
            "no NetCDF or HDF5 file was found under {} (files are recognised by their first bytes, \
             or by a .nc, .nc4, .h5, .hdf5 or .he5 name)",
            root.display()
        );
    }
    eprintln!(
        "indexed {} ok, {} partial (see reports), {} failed; {} unchanged skipped; {} removed; {} joined datasets, {} refused",
        summary.ok, summary.partial, summary.failed, summary.skipped, summary.removed, summary.joins_ok, summary.joins_failed
    );
    if summary.failed > 0 {
        eprintln!("some files failed: see why with `zarrgate export {} --out DIR` (DIR/reports)", out.display());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
