//! `zarrgate serve` and `zarrgate demo`: index data trees into catalogs, then run the gateway.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use zarrgate_gateway::client::TrustedProxies;
use zarrgate_gateway::config::{check_bucket_name, CollectionConfig, Config};
use zarrgate_gateway::{AppBuilder, Collection, Reindex, ServeOptions};
use zarrgate_indexer::tree::{index_tree, Outcome, Progress, TreeOptions};

use crate::isolate::Isolated;

/// Indexing settings shared by start-up indexing and re-indexing.
#[derive(Clone, Debug)]
pub struct IndexSettings {
    pub jobs: usize,
    pub file_timeout: Duration,
    pub no_drs_join: bool,
    pub removals: zarrgate_indexer::tree::Removals,
    /// Reads the remote objects of imported references (the config's `[[remote]]`).
    pub remote: Option<Arc<zarrgate_remote::Remote>>,
}

impl IndexSettings {
    fn tree_options(&self) -> TreeOptions {
        TreeOptions {
            url_prefix: None,
            force: false,
            jobs: self.jobs,
            no_drs_join: self.no_drs_join,
            removals: self.removals,
            remote: self.remote.clone(),
        }
    }
}

/// Brings one catalog up to date with its data directory, in worker processes.
struct TreeReindex {
    data: PathBuf,
    catalog: PathBuf,
    settings: IndexSettings,
}

struct Quiet;

impl Progress for Quiet {
    fn start(&mut self, _total: usize) {}
    fn file(&mut self, rel: &str, outcome: Outcome) {
        if let Outcome::Indexed(status) = outcome {
            tracing::info!("re-indexed {rel}: {status:?}");
        }
    }
}

impl Reindex for TreeReindex {
    fn refresh(&self) -> Result<(), String> {
        let worker = Isolated::new(self.settings.file_timeout).map_err(|e| e.to_string())?;
        let options = self.settings.tree_options();
        index_tree(&self.data, &self.catalog, &options, &worker, &mut Quiet)
            .map(|_| ())
            .map_err(|e| zarrgate_indexer::tree::error_chain(&e))
    }
}

/// Where `--data` is indexed when no `--catalog` is given.
pub fn default_catalog(bucket: &str) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("zarrgate").join("catalogs").join(bucket)
}

/// Where operation results and jobs live by default: `~/.cache/zarrgate/ops`.
pub fn default_ops_dir() -> PathBuf {
    default_catalog("x")
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("zarrgate-ops"), |z| z.join("ops"))
}

/// The key and usage database: `$ZARRGATE_AUTH_DB`, else `~/.local/share/zarrgate/auth.db`.
pub fn default_auth_db() -> PathBuf {
    if let Some(p) = std::env::var_os("ZARRGATE_AUTH_DB") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("zarrgate").join("auth.db")
}

/// Builds the collections (indexing data trees first) and serves them until a signal.
pub fn serve(
    config: Config,
    options: ServeOptions,
    settings: &IndexSettings,
    on_ready: impl FnOnce(&str) + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    // This runtime only accepts (and resumes operations); connections are served by the
    // gateway's worker threads.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    // The port first: a taken port fails at once, not after the first index.
    let listener = runtime.block_on(tokio::net::TcpListener::bind(options.listen)).with_context(|| {
        format!("cannot listen on {} (another server there? pick another with --listen)", options.listen)
    })?;
    let scheme = if options.tls.is_some() { "https" } else { "http" };
    let endpoint = format!("{scheme}://{}", listener.local_addr()?);
    // While the data is indexed, /healthz answers and the rest says the gateway is starting
    // (not over TLS, which needs the handshake of the real server: connections wait instead).
    let (ready, starting) = if options.tls.is_none() && config.collections.iter().any(|c| c.data.is_some()) {
        tracing::info!("{endpoint} answers /healthz; it serves once the data is indexed");
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Some(tx), Err(runtime.spawn(zarrgate_gateway::server::serve_starting(listener, rx))))
    } else {
        (None, Ok(listener))
    };
    let remote = config.remote()?;
    let settings = &IndexSettings { remote: remote.clone(), ..settings.clone() };
    let mut collections = Vec::new();
    let cache = config.cache_bytes()? / config.collections.len().max(1) as u64;
    for c in &config.collections {
        collections.push(Arc::new(open_collection(c, settings)?.with_cache_memory(cache)));
    }
    let listener = match starting {
        Ok(listener) => listener,
        Err(task) => {
            if let Some(ready) = ready {
                let _ = ready.send(());
            }
            runtime.block_on(task).context("the start-up answerer failed")?
        }
    };
    let db = config.auth_db.clone().unwrap_or_else(default_auth_db);
    let logins = zarrgate_gateway::auth::Logins::new(&config.oidc, &config.sts).map_err(anyhow::Error::msg)?;
    let auth = zarrgate_gateway::auth::Auth::start(db, config.quotas.clone(), logins)?;
    let mut app = AppBuilder::new(collections, auth)
        .metrics_policy(config.metrics.clone())
        .trusted_proxies(TrustedProxies::new(
            config.trusted_proxies.clone(),
            config.trusted_proxy_header.unwrap_or_default(),
        ))
        .public_url(config.public_url.clone(), scheme)
        .remote(remote);
    if let Some(target) = &config.access_log {
        use zarrgate_gateway::access_log::{AccessLog, Target};
        app = app.access_log(AccessLog::open(&Target::parse(target), config.access_log_format.unwrap_or_default())?);
    }
    if let Some(ops) = config.ops.clone() {
        let dir = ops.dir.clone();
        let ops = zarrgate_gateway::ops::Ops::open(ops, Arc::new(crate::netcdf_out::Writer))
            .with_context(|| format!("cannot open the operations directory {}", dir.display()))?;
        app = app.ops(ops);
    }
    let app = Arc::new(app.build());
    summary(&app, &endpoint, &config);
    runtime
        .block_on(async {
            if let Some(ops) = &app.ops {
                zarrgate_gateway::ops::Ops::register_metrics(&app);
                ops.resume_jobs(&app.state);
                ops.share_jobs(&app.state);
            }
            on_ready(&endpoint);
            zarrgate_gateway::serve(app, listener, &options, zarrgate_gateway::shutdown_signal()).await
        })
        .with_context(|| format!("the server on {} stopped", options.listen))?;
    tracing::info!("{endpoint} stopped (connections drained)");
    Ok(())
}

/// One line per bucket and one for the rest, on standard error, when the server starts.
fn summary(app: &zarrgate_gateway::App, endpoint: &str, config: &Config) {
    for c in app.collections.values() {
        let (files, joins) = c.counts().unwrap_or_default();
        tracing::info!(
            "bucket {}: {files} files and {joins} joined datasets from {}; read: {}, compute: {}",
            c.bucket,
            c.catalog_dir.display(),
            c.read.describe(),
            c.compute.describe()
        );
    }
    let ops = config.ops.as_ref().map_or_else(|| "off".to_string(), |o| format!("results in {}", o.dir.display()));
    let log = config.access_log.as_deref().unwrap_or("off");
    tracing::info!("zarrgate {} on {endpoint}; operations: {ops}; access log: {log}", env!("CARGO_PKG_VERSION"));
}

fn open_collection(c: &CollectionConfig, settings: &IndexSettings) -> anyhow::Result<Collection> {
    let catalog = c.catalog.clone().unwrap_or_else(|| default_catalog(&c.bucket));
    // A published catalog is read only (often on a read-only volume): the publisher decides
    // who may read it.
    let published = zarrgate_core::catalog::db::published(&catalog)?.is_some();
    if !c.read.is_public() && !published {
        // The references of a restricted collection name its files and hold its metadata and
        // inlined values: readable by the service user only.
        zarrgate_gateway::util::private_dir(&catalog)
            .with_context(|| format!("bucket {}: cannot make its catalog private", c.bucket))?;
    }
    let reindex: Option<Arc<dyn Reindex>> = match &c.data {
        Some(data) => {
            if data.is_file() {
                bail!(
                    "bucket {}: --data {} is a file; give the directory that holds the data files",
                    c.bucket,
                    data.display()
                );
            }
            if !data.is_dir() {
                bail!("bucket {}: data directory {} does not exist", c.bucket, data.display());
            }
            let data = std::path::absolute(data)?;
            tracing::info!("indexing {} into {}", data.display(), catalog.display());
            let worker = Isolated::new(settings.file_timeout)?;
            let options = settings.tree_options();
            crate::index_dir(&data, &catalog, options, &worker)?;
            Some(Arc::new(TreeReindex { data, catalog: catalog.clone(), settings: settings.clone() }))
        }
        None => None,
    };
    Collection::open(c.bucket.clone(), catalog.clone(), reindex)
        .map(|col| col.with_policies(c.read.clone(), c.compute_policy()).with_cors(c.cors()))
        .map_err(|e| anyhow::anyhow!("bucket {}: {e}", c.bucket))
}

/// The configuration from command-line flags (or a file, with flags taking precedence).
pub fn config_from_args(
    config_file: Option<&Path>,
    bucket: Option<String>,
    data: Option<PathBuf>,
    catalog: Option<PathBuf>,
) -> anyhow::Result<Config> {
    if let Some(path) = config_file {
        if bucket.is_some() || data.is_some() || catalog.is_some() {
            bail!("--config declares the collections; do not combine it with --bucket, --data or --catalog");
        }
        return Ok(Config::load(path)?);
    }
    let Some(bucket) = bucket else { bail!("give --bucket NAME with --data DIR or --catalog DIR, or --config FILE") };
    check_bucket_name(&bucket)?;
    if data.is_none() && catalog.is_none() {
        bail!("give --data DIR (indexed at start) or --catalog DIR (prebuilt references)");
    }
    Ok(Config {
        collections: vec![CollectionConfig {
            bucket,
            data,
            catalog,
            read: Default::default(),
            compute: None,
            cors_origins: None,
        }],
        ..Default::default()
    })
}

/// Prints copy-paste snippets for the demo bucket.
pub fn print_demo(endpoint: &str, bucket: &str, dataset: &str) {
    println!(
        r#"
zarrgate demo: bucket "{bucket}" at {endpoint} (Ctrl-C stops it)

xarray (s3fs):
    import xarray as xr
    ds = xr.open_dataset("s3://{bucket}/{dataset}", engine="zarr",
                         storage_options={{"anon": True, "endpoint_url": "{endpoint}"}})
    print(ds)

boto3:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    s3 = boto3.client("s3", endpoint_url="{endpoint}", config=Config(signature_version=UNSIGNED))
    print([o["Key"] for o in s3.list_objects_v2(Bucket="{bucket}", Prefix="{dataset}/", Delimiter="/")["Contents"]])

curl:
    curl -s {endpoint}/{bucket}/{dataset}/.zmetadata

a dataset joined from three files (DRS names; other time units and packing per file; docs/joins.md):
    ds = xr.open_zarr("s3://{bucket}/drs/tas_Amon_FIXTURE_historical_r1i1p1",
                      storage_options={{"anon": True, "endpoint_url": "{endpoint}"}})

server-side operations (computed once, then cached; the menu is at {endpoint}/processes):
    curl -s "{endpoint}/ops/v1/average?dataset={bucket}/{dataset}&var=tas&dims=latitude,longitude&weights=coslat&format=csv"
"#
    );
}
