//! The configuration file: server settings and the collections (buckets) it serves.
//!
//! ```toml
//! listen = "127.0.0.1:9000"
//! max_connections = 1024      # optional
//! client_timeout_secs = 30    # optional
//! workers = 2                 # optional: threads serving connections (default: the CPUs)
//!
//! auth_db = "/var/lib/zarrgate/auth.db"  # keys and usage (default: ~/.local/share/zarrgate)
//!
//! [[collections]]
//! bucket = "cmip6"
//! data = "/data/cmip6"                 # indexed at start (incrementally) into `catalog`
//! catalog = "/var/lib/zarrgate/cmip6"  # required without `data`
//! read = "public"                      # or "authenticated", or ["group:esgf", "key:ZG…"]
//! compute = "authenticated"            # who may run operations (same forms)
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
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::quota::QuotaConfig;
use crate::auth::Policy;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Option<SocketAddr>,
    pub max_connections: Option<usize>,
    pub client_timeout_secs: Option<u64>,
    pub workers: Option<std::num::NonZeroUsize>,
    pub auth_db: Option<PathBuf>,
    #[serde(default)]
    pub quotas: QuotaConfig,
    #[serde(default)]
    pub collections: Vec<CollectionConfig>,
    /// Server-side operations (see docs/operations.md); the directory defaults to
    /// ~/.cache/zarrgate/ops.
    pub ops: Option<crate::ops::OpsConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    pub bucket: String,
    pub data: Option<PathBuf>,
    pub catalog: Option<PathBuf>,
    #[serde(default)]
    pub read: Policy,
    #[serde(default)]
    pub compute: Policy,
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
        Ok(())
    }
}

/// S3 bucket naming rules (3–63 lowercase letters, digits, dots and hyphens), minus the names
/// of our own endpoints.
pub fn check_bucket_name(name: &str) -> Result<(), ConfigError> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ok_ends = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if !(3..=63).contains(&name.len())
        || !ok_chars
        || !ok_ends
        || matches!(name, "healthz" | "readyz" | "metrics" | "ops" | "processes" | "jobs" | "results")
    {
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

        assert!(toml::from_str::<Config>("[[collections]]\nbucket = \"x\"\ndta = \"/d\"").is_err());
        let no_source: Config = toml::from_str("[[collections]]\nbucket = \"abc\"").unwrap();
        assert!(no_source.validate().is_err());
        for bad in ["ab", "Upper", "under_score", "-dash", "healthz"] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
    }
}
