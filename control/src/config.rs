//! The appliance's TOML configuration, validated on load. Every error names the file, the key,
//! the value and what is allowed.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Most worker cores one appliance runs (one RX queue of the cluster port each).
pub const MAX_WORKERS: u16 = 64;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub dataplane: Dataplane,
}

/// `[dataplane]`: the two ports and the worker cores.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataplane {
    /// The port facing the switch and the clients (gets every frame for the cluster MAC).
    pub cluster_port: PortSpec,
    /// The port facing the local service (kernel via tap/virtio-user, or a backend NIC).
    pub host_port: PortSpec,
    /// Worker cores: one RX queue of the cluster port (and of the host port) each.
    #[serde(default = "default_workers")]
    pub workers: u16,
    /// Poll without ever sleeping (bare metal, dedicated cores). Off: idle workers back off.
    #[serde(default)]
    pub busy_poll: bool,
    /// RX descriptors per queue.
    #[serde(default = "default_descriptors")]
    pub rx_descriptors: u16,
    /// TX descriptors per queue.
    #[serde(default = "default_descriptors")]
    pub tx_descriptors: u16,
}

fn default_workers() -> u16 {
    1
}

fn default_descriptors() -> u16 {
    1024
}

/// A DPDK port, by id or by device name (`net_pcap0`, `0000:01:00.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    Id(u16),
    Name(String),
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Id(id) => write!(f, "{id}"),
            PortSpec::Name(name) => f.write_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a DPDK port id (0..=65535) or a device name such as \"net_pcap0\" or \"0000:01:00.0\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortSpec, E> {
                u16::try_from(v)
                    .map(PortSpec::Id)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortSpec, E> {
                u16::try_from(v)
                    .map(PortSpec::Id)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSpec, E> {
                if v.trim().is_empty() {
                    return Err(E::invalid_value(de::Unexpected::Str(v), &self));
                }
                Ok(match v.parse::<u16>() {
                    Ok(id) => PortSpec::Id(id),
                    Err(_) => PortSpec::Name(v.to_string()),
                })
            }
        }
        d.deserialize_any(PortVisitor)
    }
}

/// A configuration that could not be loaded: which file, and what is wrong in it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {key} = {value}: {allowed}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        value: String,
        allowed: String,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, value: String, allowed: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            value,
            allowed,
        };
        let dp = &self.dataplane;
        if dp.workers == 0 || dp.workers > MAX_WORKERS {
            return Err(invalid(
                "[dataplane] workers",
                dp.workers.to_string(),
                format!("must be between 1 and {MAX_WORKERS}"),
            ));
        }
        if dp.cluster_port == dp.host_port {
            return Err(invalid(
                "[dataplane] host_port",
                format!("{:?}", dp.host_port.to_string()),
                "must differ from cluster_port (the appliance sits between two ports)".into(),
            ));
        }
        for (key, n) in [
            ("[dataplane] rx_descriptors", dp.rx_descriptors),
            ("[dataplane] tx_descriptors", dp.tx_descriptors),
        ] {
            if !(64..=16384).contains(&n) {
                return Err(invalid(
                    key,
                    n.to_string(),
                    "must be between 64 and 16384".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = parse("[dataplane]\ncluster_port = 0\nhost_port = \"net_pcap1\"\n").unwrap();
        assert_eq!(c.dataplane.cluster_port, PortSpec::Id(0));
        assert_eq!(c.dataplane.host_port, PortSpec::Name("net_pcap1".into()));
        assert_eq!(c.dataplane.workers, 1);
        assert!(!c.dataplane.busy_poll);
    }

    #[test]
    fn numeric_string_is_a_port_id() {
        let c = parse("[dataplane]\ncluster_port = \"3\"\nhost_port = \"0000:01:00.0\"\n").unwrap();
        assert_eq!(c.dataplane.cluster_port, PortSpec::Id(3));
        assert_eq!(c.dataplane.host_port, PortSpec::Name("0000:01:00.0".into()));
    }

    #[test]
    fn zero_workers_is_refused_naming_key_and_range() {
        let e = parse("[dataplane]\ncluster_port = 0\nhost_port = 1\nworkers = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml"), "{e}");
        assert!(e.contains("[dataplane] workers = 0"), "{e}");
        assert!(e.contains("between 1 and 64"), "{e}");
    }

    #[test]
    fn same_port_twice_is_refused() {
        let e = parse("[dataplane]\ncluster_port = 1\nhost_port = \"1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must differ from cluster_port"), "{e}");
    }

    #[test]
    fn missing_key_is_named() {
        let e = parse("[dataplane]\ncluster_port = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("host_port"), "{e}");
    }

    #[test]
    fn unknown_key_is_named_with_the_allowed_ones() {
        let e = parse("[dataplane]\ncluster_port = 0\nhost_port = 1\nworker = 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker"), "{e}");
        assert!(e.contains("workers"), "{e}");
    }

    #[test]
    fn negative_port_id_is_refused() {
        let e = parse("[dataplane]\ncluster_port = -1\nhost_port = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("port id"), "{e}");
    }
}
