//! Configuration: one TOML file, overridden by `SVCMETA_*` environment variables, overridden by
//! flags (DESIGN §7).
//!
//! `RawConfig` is what the file says, with every field optional; [`Config`] is the validated
//! result the rest of the program uses. Unknown keys are errors, so a typo never goes unnoticed.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use svcmeta_core::{parse_duration_ms, Limits, RequiredField, VersionFormat};
use svcmeta_server::api::consul::ConsulSettings;
use svcmeta_server::{CatalogSettings, ServerSettings};

/// Which store backs the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreKind {
    /// Nothing persisted.
    Memory,
    /// One redb file in the data directory.
    Embedded,
    /// A Redis server shared by several nodes.
    Redis,
}

impl StoreKind {
    fn parse(text: &str) -> anyhow::Result<StoreKind> {
        match text {
            "memory" => Ok(StoreKind::Memory),
            "embedded" => Ok(StoreKind::Embedded),
            "redis" => Ok(StoreKind::Redis),
            other => bail!("store {other:?} is not one of memory, embedded, redis"),
        }
    }
}

/// The file's contents. Some settings (`[features]`, `[acl]`) belong to features
/// that are not built yet; they are accepted so that one configuration file works across
/// releases, and are not read. `node_name` and `datacenter` name the Consul API's node.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawConfig {
    listen: Option<String>,
    store: Option<String>,
    data_dir: Option<PathBuf>,
    redis_url: Option<String>,
    node_name: Option<String>,
    datacenter: Option<String>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    validation: RawValidation,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    features: RawFeatures,
    #[serde(default)]
    ttl: RawTtl,
    #[serde(default)]
    redis: RawRedis,
    acl: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    /// Same as the top-level `redis_url` (so `SVCMETA_REDIS_URL` fits the section rule too).
    url: Option<String>,
    key_prefix: Option<String>,
    stream_retention: Option<u64>,
}

/// Settings of the redis store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedisSettings {
    /// `redis://host:port/db`.
    pub(crate) url: String,
    /// Prefix of every key (nodes with the same prefix share one registry).
    pub(crate) key_prefix: String,
    /// About how many change-stream entries Redis keeps for nodes that fall behind.
    pub(crate) stream_retention: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_tags: Option<usize>,
    max_tag_len: Option<usize>,
    max_meta_keys: Option<usize>,
    max_meta_key_len: Option<usize>,
    max_meta_value_len: Option<usize>,
    max_instances: Option<u64>,
    max_body_bytes: Option<usize>,
    max_filter_len: Option<usize>,
    max_page: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValidation {
    enabled: Option<bool>,
    required: Option<Vec<String>>,
    version_format: Option<String>,
    environments: Option<Vec<String>>,
    regions: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    enabled: Option<bool>,
    max_entries: Option<usize>,
    ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawFeatures {
    stats: Option<bool>,
    consul_api: Option<bool>,
    ui: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTtl {
    deregister_after: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Address the server listens on.
    pub(crate) listen: String,
    /// The store backend.
    pub(crate) store: StoreKind,
    /// Data directory of the embedded store.
    pub(crate) data_dir: PathBuf,
    /// The redis store.
    pub(crate) redis: RedisSettings,
    /// Registry settings.
    pub(crate) catalog: CatalogSettings,
    /// HTTP settings.
    pub(crate) server: ServerSettings,
}

/// Values given as flags (or their environment variables), which win over the file.
#[derive(Debug, Default, Clone)]
pub(crate) struct Overrides {
    /// `--listen`.
    pub(crate) listen: Option<String>,
    /// `--store`.
    pub(crate) store: Option<String>,
    /// `--data-dir`.
    pub(crate) data_dir: Option<PathBuf>,
    /// `--redis-url`.
    pub(crate) redis_url: Option<String>,
    /// `--key-prefix`.
    pub(crate) key_prefix: Option<String>,
}

/// Environment variables for sections: `SVCMETA_LIMITS_MAX_TAGS=32` sets `[limits] max_tags`.
const ENV_SECTIONS: [&str; 6] = ["limits", "validation", "cache", "features", "ttl", "redis"];

fn apply_environment(table: &mut toml::Table) -> anyhow::Result<()> {
    for (name, value) in std::env::vars() {
        let Some(rest) = name.strip_prefix("SVCMETA_") else {
            continue;
        };
        let lower = rest.to_ascii_lowercase();
        for section in ENV_SECTIONS {
            let Some(key) = lower.strip_prefix(&format!("{section}_")) else {
                continue;
            };
            let parsed = if let Ok(number) = value.parse::<i64>() {
                toml::Value::Integer(number)
            } else if let Ok(flag) = value.parse::<bool>() {
                toml::Value::Boolean(flag)
            } else if value.contains(',') {
                toml::Value::Array(
                    value
                        .split(',')
                        .map(|v| toml::Value::String(v.trim().to_string()))
                        .collect(),
                )
            } else {
                toml::Value::String(value.clone())
            };
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => {
                    inner.insert(key.to_string(), parsed);
                }
                _ => bail!("[{section}] in the configuration file is not a table"),
            }
        }
    }
    Ok(())
}

impl Config {
    /// Opens the configured store and loads it into a catalog (the embedded store fails fast
    /// when another process holds the data directory).
    pub(crate) fn open_catalog(&self) -> anyhow::Result<svcmeta_server::Catalog> {
        let store = match self.store {
            StoreKind::Memory => svcmeta_store::Store::Memory,
            StoreKind::Embedded => svcmeta_store::Store::open_embedded(&self.data_dir)?,
            StoreKind::Redis => {
                svcmeta_store::Store::Shared(Box::new(svcmeta_store::SharedStore::open(
                    &self.redis.url,
                    &self.redis.key_prefix,
                    self.redis.stream_retention,
                )?))
            }
        };
        Ok(svcmeta_server::Catalog::open(store, self.catalog.clone())?)
    }

    /// Loads the file (if any), applies the environment and the flags, and validates.
    pub(crate) fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read configuration {}", path.display()))?;
                text.parse::<toml::Table>().with_context(|| {
                    format!("configuration {} is not valid TOML", path.display())
                })?
            }
            None => toml::Table::new(),
        };
        apply_environment(&mut table)?;
        let raw: RawConfig =
            RawConfig::deserialize(toml::Value::Table(table)).context("invalid configuration")?;
        Config::from_raw(raw, overrides)
    }

    fn from_raw(raw: RawConfig, overrides: &Overrides) -> anyhow::Result<Config> {
        let mut limits = Limits::standard();
        let raw_limits = &raw.limits;
        if let Some(v) = raw_limits.max_tags {
            limits.max_tags = v;
        }
        if let Some(v) = raw_limits.max_tag_len {
            limits.max_tag_len = v;
        }
        if let Some(v) = raw_limits.max_meta_keys {
            limits.max_meta_keys = v;
        }
        if let Some(v) = raw_limits.max_meta_key_len {
            limits.max_meta_key_len = v;
        }
        if let Some(v) = raw_limits.max_meta_value_len {
            limits.max_meta_value_len = v;
        }
        let validation = &raw.validation;
        if validation.enabled == Some(false) {
            // Validation cannot be switched off entirely: ids and names must stay well-formed
            // for the indexes. Switching it off lifts the size limits instead.
            limits.max_tags = usize::MAX;
            limits.max_tag_len = usize::MAX;
            limits.max_meta_keys = usize::MAX;
            limits.max_meta_value_len = usize::MAX;
        }
        if let Some(required) = &validation.required {
            limits.required = required
                .iter()
                .map(|name| {
                    RequiredField::parse(name).with_context(|| {
                        format!("[validation] required: unknown field {name:?} (address, port, version, environment, region)")
                    })
                })
                .collect::<anyhow::Result<_>>()?;
        }
        if let Some(format) = &validation.version_format {
            limits.version_format = match format.as_str() {
                "any" => VersionFormat::Any,
                "semver" => VersionFormat::Semver,
                other => bail!("[validation] version_format: {other:?} is not any or semver"),
            };
        }
        limits.environments = validation.environments.clone();
        limits.regions = validation.regions.clone();

        let cache_ttl_ms = match &raw.cache.ttl {
            Some(text) => {
                parse_duration_ms(text).map_err(|e| anyhow::anyhow!("[cache] ttl: {e}"))?
            }
            None => 60_000,
        };
        let deregister_after_ms = match &raw.ttl.deregister_after {
            Some(text) => Some(
                parse_duration_ms(text)
                    .map_err(|e| anyhow::anyhow!("[ttl] deregister_after: {e}"))?,
            ),
            None => None,
        };
        let mut catalog = CatalogSettings::standard();
        catalog.limits = limits;
        if let Some(v) = raw_limits.max_instances {
            catalog.max_instances = v;
        }
        catalog.cache_enabled = raw.cache.enabled.unwrap_or(true);
        if let Some(v) = raw.cache.max_entries {
            catalog.cache_max_entries = v;
        }
        catalog.cache_ttl_ms = cache_ttl_ms;
        catalog.deregister_after_ms = deregister_after_ms;

        let mut server = ServerSettings::standard();
        if let Some(v) = raw_limits.max_body_bytes {
            server.max_body_bytes = v;
        }
        if let Some(v) = raw_limits.max_filter_len {
            server.filter_limits.max_len = v;
        }
        if let Some(v) = raw_limits.max_page {
            if v == 0 {
                bail!("[limits] max_page must be at least 1");
            }
            server.max_page = v;
        }

        let listen = overrides
            .listen
            .clone()
            .or(raw.listen)
            .unwrap_or_else(|| "127.0.0.1:8500".to_string());
        server.consul = consul_settings(raw.node_name, raw.datacenter, &listen)?;

        let store_text = overrides
            .store
            .clone()
            .or(raw.store)
            .unwrap_or_else(|| "embedded".to_string());
        Ok(Config {
            listen,
            store: StoreKind::parse(&store_text)?,
            data_dir: overrides
                .data_dir
                .clone()
                .or(raw.data_dir)
                .unwrap_or_else(|| PathBuf::from("svcmeta-data")),
            redis: RedisSettings {
                url: overrides
                    .redis_url
                    .clone()
                    .or(raw.redis_url)
                    .or(raw.redis.url)
                    .unwrap_or_else(|| "redis://127.0.0.1:6379/0".to_string()),
                key_prefix: match overrides.key_prefix.clone().or(raw.redis.key_prefix) {
                    Some(prefix)
                        if prefix.is_empty()
                            || prefix.len() > 64
                            || prefix
                                .contains(|c: char| c.is_whitespace() || c == '{' || c == '}') =>
                    {
                        bail!("[redis] key_prefix {prefix:?} must be 1 to 64 characters without spaces or braces")
                    }
                    Some(prefix) => prefix,
                    None => "svcmeta".to_string(),
                },
                stream_retention: match raw.redis.stream_retention {
                    Some(n) if n < 16 => bail!("[redis] stream_retention must be at least 16"),
                    Some(n) => n,
                    None => 100_000,
                },
            },
            catalog,
            server,
        })
    }
}

/// The Consul API's node: `node_name` (default the host name from `/etc/hostname`, else
/// `svcmeta`), `datacenter` (default `dc1`), and the node address from the listen address.
fn consul_settings(
    node_name: Option<String>,
    datacenter: Option<String>,
    listen: &str,
) -> anyhow::Result<ConsulSettings> {
    let standard = ConsulSettings::standard();
    let is_name = |text: &str| {
        !text.is_empty()
            && text.len() <= 128
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    let node_name = match node_name {
        Some(name) if is_name(&name) => name,
        Some(name) => bail!("node_name {name:?} must be 1 to 128 characters of [A-Za-z0-9._-]"),
        None => std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|text| text.trim().to_string())
            .filter(|name| is_name(name))
            .unwrap_or(standard.node_name),
    };
    let datacenter = match datacenter {
        Some(dc) if is_name(&dc) => dc,
        Some(dc) => bail!("datacenter {dc:?} must be 1 to 128 characters of [A-Za-z0-9._-]"),
        None => standard.datacenter,
    };
    let node_address = match listen.parse::<std::net::SocketAddr>() {
        Ok(address) if !address.ip().is_unspecified() => address.ip().to_string(),
        Ok(_) => standard.node_address,
        Err(_) => match listen.rsplit_once(':') {
            Some((host, _)) if !host.is_empty() && host != "localhost" => host.to_string(),
            _ => standard.node_address,
        },
    };
    Ok(ConsulSettings {
        node_name,
        datacenter,
        node_address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        let raw: RawConfig = toml::from_str(text)?;
        Config::from_raw(raw, &Overrides::default())
    }

    #[test]
    fn defaults_follow_the_design() {
        let config = parse("").unwrap();
        assert_eq!(config.listen, "127.0.0.1:8500");
        assert_eq!(config.store, StoreKind::Embedded);
        assert_eq!(config.data_dir, PathBuf::from("svcmeta-data"));
        assert_eq!(config.catalog.limits.max_tags, 64);
        assert_eq!(config.server.max_page, 1000);
    }

    #[test]
    fn the_redis_store_reads_its_url_prefix_and_retention() {
        let config = parse("store = \"redis\"").unwrap();
        assert_eq!(config.store, StoreKind::Redis);
        assert_eq!(config.redis.url, "redis://127.0.0.1:6379/0");
        assert_eq!(config.redis.key_prefix, "svcmeta");
        assert_eq!(config.redis.stream_retention, 100_000);
        // `[redis] url` is what SVCMETA_REDIS_URL becomes under the section rule.
        let config = parse(
            "store = \"redis\"\n[redis]\nurl = \"redis://10.0.0.9:7000/2\"\nkey_prefix = \"prod\"\nstream_retention = 500",
        )
        .unwrap();
        assert_eq!(config.redis.url, "redis://10.0.0.9:7000/2");
        assert_eq!(config.redis.key_prefix, "prod");
        assert_eq!(config.redis.stream_retention, 500);
        let top_level =
            parse("redis_url = \"redis://a:1/0\"\n[redis]\nurl = \"redis://b:2/0\"").unwrap();
        assert_eq!(top_level.redis.url, "redis://a:1/0");
        for bad in [
            "[redis]\nkey_prefix = \"\"",
            "[redis]\nkey_prefix = \"a{b}\"",
            "[redis]\nkey_prefix = \"a b\"",
            "[redis]\nstream_retention = 5",
        ] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.contains("[redis]"), "{bad}: {error}");
        }
    }

    #[test]
    fn file_values_and_flags_apply_in_order() {
        let raw: RawConfig = toml::from_str(
            "listen = \"127.0.0.1:9000\"\nstore = \"memory\"\n[limits]\nmax_tags = 8\n[cache]\nttl = \"5s\"\n[validation]\nenvironments = [\"prod\"]\nrequired = [\"version\"]",
        )
        .unwrap();
        let overrides = Overrides {
            listen: Some("127.0.0.1:9100".into()),
            ..Overrides::default()
        };
        let config = Config::from_raw(raw, &overrides).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9100");
        assert_eq!(config.store, StoreKind::Memory);
        assert_eq!(config.catalog.limits.max_tags, 8);
        assert_eq!(config.catalog.cache_ttl_ms, 5000);
        assert_eq!(
            config.catalog.limits.environments,
            Some(vec!["prod".to_string()])
        );
        assert_eq!(config.catalog.limits.required, vec![RequiredField::Version]);
        assert_eq!(config.catalog.deregister_after_ms, None);
        let config = parse("[ttl]\nderegister_after = \"90s\"").unwrap();
        assert_eq!(config.catalog.deregister_after_ms, Some(90_000));
    }

    #[test]
    fn mistakes_are_named() {
        let error = parse("[limits]\nmax_tagz = 3").unwrap_err();
        assert!(format!("{error:#}").contains("max_tagz"), "{error:#}");
        let error = parse("store = \"mongo\"").unwrap_err();
        assert!(error.to_string().contains("mongo"));
        let error = parse("[cache]\nttl = \"5 parsecs\"").unwrap_err();
        assert!(error.to_string().contains("[cache] ttl"));
        let error = parse("[validation]\nrequired = [\"colour\"]").unwrap_err();
        assert!(error.to_string().contains("colour"));
        let error = parse("datacenter = \"dc 1\"").unwrap_err();
        assert!(error.to_string().contains("datacenter"));
    }

    #[test]
    fn consul_node_comes_from_the_config() {
        let config =
            parse("node_name = \"reg-1\"\ndatacenter = \"eu1\"\nlisten = \"0.0.0.0:8500\"")
                .unwrap();
        assert_eq!(config.server.consul.node_name, "reg-1");
        assert_eq!(config.server.consul.datacenter, "eu1");
        assert_eq!(config.server.consul.node_address, "127.0.0.1");
        let config = parse("listen = \"127.0.0.2:8500\"").unwrap();
        assert_eq!(config.server.consul.datacenter, "dc1");
        assert_eq!(config.server.consul.node_address, "127.0.0.2");
        assert!(!config.server.consul.node_name.is_empty());
    }
}
