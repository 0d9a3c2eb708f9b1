//! The configuration file: server settings and the collections (buckets) it serves.
//!
//! ```toml
//! listen = "127.0.0.1:9000"
//! max_connections = 16384     # optional (default: 3/4 of the open-file limit, at most 16384)
//! max_connections_per_client = 64  # optional: per client address
//! client_timeout_secs = 30    # optional
//! header_timeout_secs = 10    # optional: a request head (or TLS handshake) must arrive within it
//! workers = 2                 # optional: threads serving connections (default: the CPUs)
//! tls_cert = "/etc/zarrgate/tls/fullchain.pem"  # optional: TLS on the listener, reloaded on change
//! tls_key = "/etc/zarrgate/tls/privkey.pem"
//! trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]  # whose X-Forwarded-For/Forwarded name the client
//! metrics = "authenticated"   # who may read /metrics (default: public unless a collection is restricted)
//!
//! auth_db = "/var/lib/zarrgate/auth.db"  # keys and usage (default: ~/.local/share/zarrgate)
//!
//! [[collections]]
//! bucket = "cmip6"
//! data = "/data/cmip6"                 # indexed at start (incrementally) into `catalog`
//! catalog = "/var/lib/zarrgate/cmip6"  # required without `data`
//! read = "public"                      # or "authenticated", or ["group:esgf", "key:ZG…"]
//! compute = "authenticated"            # who may run operations (same forms; default: `read`);
//!                                      # an operation needs `read` as well
//!
//! [ops]                                # server-side operations (docs/operations.md)
//! dir = "/var/cache/zarrgate/ops"      # results cache and job records
//! sync_limit_bytes = 536_870_912       # larger requests run as jobs
//! max_output_bytes = 2_147_483_648
//! workers = 2                          # computations at once
//! disk_cache_bytes = 10_737_418_240
//!
//! [quotas.anonymous]                   # per client IP
//! requests_per_second = 50
//! bytes_per_day = 10_000_000_000
//! [quotas.default_key]                 # per key, unless [quotas.key.ID] says otherwise
//! requests_per_second = 200
//! [quotas.group.course]                # shared by the members of a group
//! bytes_per_day = 50_000_000_000
//! [quotas.failed_auth]                 # per client address and per access key id
//! per_minute = 20
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::quota::QuotaConfig;
use crate::auth::Policy;
use crate::client::Cidr;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Option<SocketAddr>,
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    pub client_timeout_secs: Option<u64>,
    pub header_timeout_secs: Option<u64>,
    pub workers: Option<std::num::NonZeroUsize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// The header trusted proxies name the client in: `x-forwarded-for` (the default) or
    /// `forwarded`. The other one is ignored, since a proxy passes it on from the client.
    pub trusted_proxy_header: Option<crate::client::ForwardHeader>,
    /// Who may read `/metrics` (default: everyone unless a collection is restricted).
    pub metrics: Option<Policy>,
    pub auth_db: Option<PathBuf>,
    /// A line per request: `"-"` (standard output) or a file appended to.
    pub access_log: Option<String>,
    /// `json` (the default) or `combined`.
    pub access_log_format: Option<crate::access_log::Format>,
    /// Memory for loaded datasets, shared by the collections (`"256MiB"`); see
    /// [`Config::cache_bytes`].
    pub cache_memory: Option<String>,
    #[serde(default)]
    pub quotas: QuotaConfig,
    /// OpenID issuers whose bearer tokens are accepted (`[[oidc]]`, docs/identity.md).
    #[serde(default)]
    pub oidc: Vec<crate::auth::oidc::IssuerConfig>,
    /// Temporary S3 credentials from a login (`[sts]`).
    #[serde(default)]
    pub sts: crate::auth::session::SessionConfig,
    /// The URL clients reach the gateway at (`https://data.example.org`), for the absolute
    /// links of the STAC and OGC API documents and the pages' snippets; by default the
    /// request's `Host` with the listener's scheme.
    pub public_url: Option<String>,
    #[serde(default)]
    pub collections: Vec<CollectionConfig>,
    /// Server-side operations (see docs/operations.md); the directory defaults to
    /// ~/.cache/zarrgate/ops.
    pub ops: Option<crate::ops::OpsConfig>,
    /// Remote objects that imported references may name (`[[remote]]`, docs/remote.md).
    #[serde(default)]
    pub remote: Vec<zarrgate_remote::PrefixConfig>,
    /// How remote reads are cached and retried (`[remote_cache]`).
    #[serde(default)]
    pub remote_cache: zarrgate_remote::CacheConfig,
}

impl Config {
    /// The reader of remote objects, if any `[[remote]]` prefix is configured.
    pub fn remote(&self) -> Result<Option<std::sync::Arc<zarrgate_remote::Remote>>, ConfigError> {
        if self.remote.is_empty() {
            return Ok(None);
        }
        let settings =
            zarrgate_remote::Settings { remote: self.remote.clone(), remote_cache: self.remote_cache.clone() };
        let remote = zarrgate_remote::Remote::new(&settings).map_err(ConfigError::Invalid)?;
        Ok(Some(std::sync::Arc::new(remote)))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    pub bucket: String,
    pub data: Option<PathBuf>,
    pub catalog: Option<PathBuf>,
    #[serde(default)]
    pub read: Policy,
    /// Who may run operations; an operation needs `read` too. Default: `read`.
    pub compute: Option<Policy>,
    /// Origins whose web pages may read the collection from a browser (`["*"]`: any). Default:
    /// any for a public collection, none for a restricted one.
    pub cors_origins: Option<Vec<String>>,
}

impl CollectionConfig {
    /// The compute policy in force: the configured one, else the read policy.
    pub fn compute_policy(&self) -> Policy {
        self.compute.clone().unwrap_or_else(|| self.read.clone())
    }

    /// The CORS origins in force.
    pub fn cors(&self) -> Vec<String> {
        self.cors_origins.clone().unwrap_or_else(|| if self.read.is_public() { vec!["*".into()] } else { vec![] })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0} is not a valid configuration: {1}")]
    Parse(PathBuf, toml::de::Error),
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse(path.to_path_buf(), e))?;
        config.validate()?;
        Ok(config)
    }

    /// Bytes of loaded datasets to keep (all collections together): `cache_memory`, else
    /// [`crate::collection::DEFAULT_CACHE_MEMORY`].
    pub fn cache_bytes(&self) -> Result<u64, ConfigError> {
        match &self.cache_memory {
            None => Ok(crate::collection::DEFAULT_CACHE_MEMORY),
            Some(text) => parse_bytes(text).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "cache_memory {text:?} is not a size (write bytes, or a number with KiB, MiB or GiB)"
                ))
            }),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.collections.is_empty() {
            return Err(ConfigError::Invalid("no collections are configured".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.collections {
            check_bucket_name(&c.bucket)?;
            if !seen.insert(&c.bucket) {
                return Err(ConfigError::Invalid(format!("bucket {:?} is declared twice", c.bucket)));
            }
            if c.data.is_none() && c.catalog.is_none() {
                return Err(ConfigError::Invalid(format!("bucket {:?} needs `data` or `catalog`", c.bucket)));
            }
        }
        self.cache_bytes()?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid("TLS needs both `tls_cert` and `tls_key`".into()));
        }
        if self.max_connections_per_client == Some(0) || self.max_connections == Some(0) {
            return Err(ConfigError::Invalid("connection limits must be at least 1".into()));
        }
        self.quotas.check().map_err(ConfigError::Invalid)?;
        Ok(())
    }
}

/// S3 bucket naming rules (3–63 lowercase letters, digits, dots and hyphens), minus the names
/// of our own endpoints.
/// Paths the gateway serves itself, so no bucket may have their names.
pub const RESERVED_BUCKETS: &[&str] =
    &["healthz", "readyz", "metrics", "ops", "processes", "jobs", "results", "ogc", "stac", "browse", "kerchunk"];

pub fn check_bucket_name(name: &str) -> Result<(), ConfigError> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ok_ends = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if RESERVED_BUCKETS.contains(&name) {
        return Err(ConfigError::Invalid(format!(
            "{name:?} cannot be a bucket name: the gateway answers /{name} itself (reserved: {})",
            RESERVED_BUCKETS.join(", ")
        )));
    }
    if !(3..=63).contains(&name.len()) || !ok_chars || !ok_ends {
        return Err(ConfigError::Invalid(format!(
            "{name:?} is not a valid bucket name (3-63 lowercase letters, digits, '.' and '-')"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_collections_and_rejects_mistakes() {
        let c: Config = toml::from_str(
            r#"listen = "127.0.0.1:9100"
            [[collections]]
            bucket = "cmip6"
            data = "/data"
            [[collections]]
            bucket = "obs"
            catalog = "/cat"
            read = ["group:esgf"]
            [quotas.anonymous]
            requests_per_second = 5.0"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.collections.len(), 2);
        assert_eq!(c.listen.unwrap().port(), 9100);
        assert_eq!(c.collections[0].read, Policy::Public);
        assert_eq!(c.collections[1].read, Policy::Allow { groups: vec!["esgf".into()], keys: vec![] });
        assert_eq!(c.quotas.anonymous.unwrap().requests_per_second, Some(5.0));
        assert_eq!(c.collections[1].compute_policy(), c.collections[1].read, "compute defaults to read");
        assert_eq!(c.metrics, None);

        assert!(toml::from_str::<Config>("[[collections]]\nbucket = \"x\"\ndta = \"/d\"").is_err());
        let no_source: Config = toml::from_str("[[collections]]\nbucket = \"abc\"").unwrap();
        assert!(no_source.validate().is_err());
        let tls_half: Config =
            toml::from_str("tls_cert = \"/c\"\n[[collections]]\nbucket = \"abc\"\ndata = \"/d\"").unwrap();
        assert!(tls_half.validate().unwrap_err().to_string().contains("tls_key"));
        let proxies: Config =
            toml::from_str("trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nmetrics = \"public\"").unwrap();
        assert_eq!(proxies.trusted_proxies.len(), 2);
        assert_eq!(proxies.metrics, Some(Policy::Public));
        assert!(toml::from_str::<Config>("trusted_proxies = [\"10.0.0.0/40\"]").is_err());
        for bad in ["ab", "Upper", "under_score", "-dash", "healthz"] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
    }
}

/// `30`, `30s`, `5m`, `2h`: a duration in whole seconds.
pub fn parse_seconds(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// `1048576`, `512KiB`, `16MiB`, `2GiB` (also `KB`/`MB`/`GB`, taken as powers of 1024).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

#[cfg(test)]
mod bytes_tests {
    #[test]
    fn sizes_parse() {
        use super::parse_bytes;
        assert_eq!(parse_bytes("16MiB"), Some(16 << 20));
        assert_eq!(parse_bytes("2GiB"), Some(2 << 30));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("12 kb"), Some(12 << 10));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-5MiB"), None);
        assert_eq!(parse_bytes("99999999999999GiB"), None);
        use super::parse_seconds;
        assert_eq!(parse_seconds("30s"), Some(30));
        assert_eq!(parse_seconds("5m"), Some(300));
        assert_eq!(parse_seconds("2h"), Some(7200));
        assert_eq!(parse_seconds("45"), Some(45));
        assert_eq!(parse_seconds("1.5s"), None);
    }
}
