//! The appliance's TOML configuration, validated on load. Every error names the file, the key,
//! the value and what is allowed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use wlbs_dataplane::filter::{self, Affinity, FilterSpec, Mode, PortRule, Protocol, RuleVip};
use wlbs_dataplane::wire::EthernetAddress;

/// Most worker cores one appliance runs (one RX queue of the cluster port each).
pub const MAX_WORKERS: u16 = 64;
/// Most hosts in a cluster; host priorities are 1..=32.
pub const MAX_HOSTS: u8 = 32;
/// Most virtual IPs besides the primary cluster IP.
pub const MAX_EXTRA_VIPS: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub dataplane: Dataplane,
    /// Absent: the appliance forwards everything unchanged (pass-through mode).
    pub cluster: Option<Cluster>,
    pub host: Option<Host>,
    #[serde(default, rename = "port_rule")]
    pub port_rules: Vec<PortRuleConfig>,
    #[serde(default)]
    pub control: Control,
    #[serde(default)]
    pub stats: Stats,
    #[serde(default)]
    pub remote_control: RemoteControl,
}

/// `[remote_control]`: the verbs over UDP to the cluster IP, authenticated with the cluster
/// key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteControl {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_remote_port")]
    pub port: u16,
}

impl Default for RemoteControl {
    fn default() -> RemoteControl {
        RemoteControl {
            enabled: false,
            port: default_remote_port(),
        }
    }
}

fn default_remote_port() -> u16 {
    crate::remote::DEFAULT_PORT
}

/// `[stats]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    /// Address and port of `/metrics`; "off" disables it.
    #[serde(default = "default_stats_listen")]
    pub listen: String,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            listen: default_stats_listen(),
        }
    }
}

/// Loopback only by default: put a reverse proxy or an SSH tunnel in front to scrape from
/// elsewhere, or listen on a management address.
pub const DEFAULT_STATS_LISTEN: &str = "127.0.0.1:9470";

fn default_stats_listen() -> String {
    DEFAULT_STATS_LISTEN.to_string()
}

/// `[control]`: how operator verbs reach the appliance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// The local control socket (`wlbs query --socket`); root-only.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
}

impl Default for Control {
    fn default() -> Control {
        Control {
            socket: default_socket(),
        }
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from(crate::ctl::DEFAULT_SOCKET)
}

/// `[cluster]`: the addresses every host shares.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// The primary cluster IP (IPv4, as in NLB); it also seeds the bucket hash.
    pub ip: Ipv4Addr,
    /// Extra virtual IPs, IPv4 or IPv6.
    #[serde(default)]
    pub vips: Vec<IpAddr>,
    /// Subnet mask of the cluster IP.
    #[serde(default = "default_mask")]
    pub mask: Ipv4Addr,
    /// Static membership: the host priorities of the live members, this host included. Used
    /// when membership is driven from outside (as with Linux xt_cluster). Unset: the hosts
    /// find each other with heartbeats and converge (WLBS membership).
    pub members: Option<Vec<u8>>,
    /// Heartbeat period (NLB's AliveMsgPeriod), 100..=10000 ms.
    #[serde(default = "default_period")]
    pub heartbeat_period_ms: u32,
    /// Missed periods before a host is failed (NLB's AliveMsgTolerance), 2..=100.
    #[serde(default = "default_tolerance")]
    pub heartbeat_tolerance: u32,
    /// How long a host handing a bucket away keeps its connections at most (NLB's
    /// ConnectionCleanupDelay).
    #[serde(default = "default_cleanup_delay")]
    pub connection_cleanup_delay_s: u32,
    /// File with the cluster key (at least 16 bytes): heartbeats are signed with
    /// HMAC-SHA256 and unsigned or replayed ones refused. Unset: unauthenticated, as NLB.
    pub key_file: Option<PathBuf>,
    /// How the hosts share the cluster IP's MAC: unicast, multicast or igmp.
    #[serde(default)]
    pub mode: ModeSetting,
    /// The cluster MAC: "auto" (derived from the cluster IP per mode) or a MAC.
    #[serde(default)]
    pub mac: ClusterMacSetting,
    /// IGMP version of the membership reports in igmp mode: 1 or 2.
    #[serde(default = "default_igmp_version")]
    pub igmp_version: u8,
    /// Unicast mode: every frame leaving the cluster port carries the masked source MAC
    /// 02-<priority>-a-b-c-d, so the switch never learns the cluster MAC.
    #[serde(default = "default_true")]
    pub mask_source_mac: bool,
    /// Multicast modes: ARP answers map the VIPs to the cluster MAC (NLB's MulticastSpoof);
    /// false: to the port's own MAC.
    #[serde(default = "default_true")]
    pub multicast_spoof: bool,
}

fn default_igmp_version() -> u8 {
    2
}
fn default_true() -> bool {
    true
}

/// `[cluster] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModeSetting(pub crate::macs::MacMode);

impl<'de> Deserialize<'de> for ModeSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(ModeSetting).map_err(|_| {
            de::Error::invalid_value(
                de::Unexpected::Str(&s),
                &"\"unicast\", \"multicast\" or \"igmp\"",
            )
        })
    }
}

/// `[cluster] mac`: derived from the cluster IP, or given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterMacSetting {
    #[default]
    Auto,
    Given(EthernetAddress),
}

impl<'de> Deserialize<'de> for ClusterMacSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "auto" {
            return Ok(ClusterMacSetting::Auto);
        }
        s.parse::<EthernetAddress>()
            .map(ClusterMacSetting::Given)
            .map_err(|_| {
                de::Error::invalid_value(
                    de::Unexpected::Str(&s),
                    &"\"auto\" or a MAC address such as \"02:bf:c0:00:02:0a\"",
                )
            })
    }
}

impl Cluster {
    /// The cluster MAC in effect: the given one, or NLB's for the mode and cluster IP.
    pub fn cluster_mac(&self) -> EthernetAddress {
        match self.mac {
            ClusterMacSetting::Given(mac) => mac,
            ClusterMacSetting::Auto => {
                crate::macs::ClusterMacs::new(self.ip).cluster_mac(self.mode.0)
            }
        }
    }
}

fn default_period() -> u32 {
    1000
}
fn default_tolerance() -> u32 {
    5
}
fn default_cleanup_delay() -> u32 {
    300
}

fn default_mask() -> Ipv4Addr {
    Ipv4Addr::new(255, 255, 255, 0)
}

/// `[host]`: what is this host's own.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Host priority 1..=32: unique in the cluster; the lowest live one is the default host.
    pub priority: u8,
    /// Traffic to this address is never load balanced.
    pub dedicated_ip: Option<IpAddr>,
}

/// One `[[port_rule]]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRuleConfig {
    #[serde(default)]
    pub vip: VipSpec,
    #[serde(default)]
    pub ports: PortRange,
    #[serde(default = "default_protocol")]
    pub protocol: ProtocolConfig,
    #[serde(default = "default_mode")]
    pub mode: ModeConfig,
    #[serde(default = "default_affinity")]
    pub affinity: AffinityConfig,
    pub load_weight: Option<LoadWeight>,
    pub handling_priority: Option<u8>,
}

fn default_protocol() -> ProtocolConfig {
    ProtocolConfig::Both
}
fn default_mode() -> ModeConfig {
    ModeConfig::Multiple
}
fn default_affinity() -> AffinityConfig {
    AffinityConfig::Single
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolConfig {
    Tcp,
    Udp,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeConfig {
    Multiple,
    Single,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AffinityConfig {
    None,
    Single,
    Network,
}

/// `vip = "all"` or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VipSpec {
    #[default]
    All,
    Addr(IpAddr),
}

impl<'de> Deserialize<'de> for VipSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.eq_ignore_ascii_case("all") {
            return Ok(VipSpec::All);
        }
        s.parse().map(VipSpec::Addr).map_err(|_| {
            de::Error::invalid_value(
                de::Unexpected::Str(&s),
                &"\"all\" or an IPv4/IPv6 address of the cluster",
            )
        })
    }
}

/// `ports = "80"`, `"1024-65535"` or `80`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange {
            first: 0,
            last: 65535,
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RangeVisitor;
        impl Visitor<'_> for RangeVisitor {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port (0..=65535) or a range \"first-last\" with first <= last")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                let p = u16::try_from(v)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))?;
                Ok(PortRange { first: p, last: p })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                let bad = || E::invalid_value(de::Unexpected::Str(v), &self);
                let (a, b) = match v.split_once('-') {
                    Some((a, b)) => (a.trim(), b.trim()),
                    None => (v.trim(), v.trim()),
                };
                let first: u16 = a.parse().map_err(|_| bad())?;
                let last: u16 = b.parse().map_err(|_| bad())?;
                if first > last {
                    return Err(bad());
                }
                Ok(PortRange { first, last })
            }
        }
        d.deserialize_any(RangeVisitor)
    }
}

/// `load_weight = 0..=100` or `"equal"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadWeight {
    Equal,
    Percent(u8),
}

impl LoadWeight {
    /// The weight the assignment uses: "equal" counts as 50 (so hosts that all say "equal"
    /// split evenly).
    pub fn value(self) -> u8 {
        match self {
            LoadWeight::Equal => 50,
            LoadWeight::Percent(p) => p,
        }
    }
}

impl<'de> Deserialize<'de> for LoadWeight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct WeightVisitor;
        impl Visitor<'_> for WeightVisitor {
            type Value = LoadWeight;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a load weight 0..=100 or \"equal\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LoadWeight, E> {
                match u8::try_from(v) {
                    Ok(p) if p <= 100 => Ok(LoadWeight::Percent(p)),
                    _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LoadWeight, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LoadWeight, E> {
                if v.eq_ignore_ascii_case("equal") {
                    Ok(LoadWeight::Equal)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_any(WeightVisitor)
    }
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
    /// Mbufs in the packet pool. Unset: enough for every RX and TX ring plus caches. (Like
    /// testpmd's --total-num-mbufs; a net_pcap port with infinite_rx needs one per frame of
    /// its capture on top.)
    pub mbufs: Option<u32>,
    /// Data room of each mbuf in bytes, headroom (128) included (like testpmd's --mbuf-size).
    #[serde(default = "default_mbuf_size")]
    pub mbuf_size: u16,
    /// Destination MAC for accepted frames on the host port. Unset: learned from the source
    /// MAC of frames the host port sends.
    pub host_mac: Option<MacAddr>,
    /// Connection descriptors per host (split evenly among the workers).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// A TCP descriptor idle this long is freed.
    #[serde(default = "default_tcp_idle")]
    pub tcp_idle_timeout_s: u32,
    /// A UDP flow idle this long is forgotten.
    #[serde(default = "default_udp_idle")]
    pub udp_idle_timeout_s: u32,
    /// After a FIN, the descriptor lives this long past the last packet.
    #[serde(default = "default_close_wait")]
    pub tcp_close_wait_s: u32,
}

fn default_mbuf_size() -> u16 {
    2048 + 128
}

fn default_max_connections() -> u32 {
    262_144
}
fn default_tcp_idle() -> u32 {
    3600
}
fn default_udp_idle() -> u32 {
    30
}
fn default_close_wait() -> u32 {
    10
}

/// A MAC address written `02:00:5e:10:00:01` or `02-00-5E-10-00-01`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub EthernetAddress);

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.parse::<EthernetAddress>() {
            Ok(a) if !a.is_multicast() => Ok(MacAddr(a)),
            _ => Err(de::Error::invalid_value(
                de::Unexpected::Str(&s),
                &"a unicast MAC address such as \"02:00:5e:10:00:01\"",
            )),
        }
    }
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
        key: String,
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
        let invalid = |key: &str, value: String, allowed: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            value,
            allowed,
        };
        if self.stats.listen != "off" && self.stats.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "[stats] listen",
                format!("{:?}", self.stats.listen),
                "must be an address and port such as \"127.0.0.1:9470\" or \"[::1]:9470\", or \"off\"".into(),
            ));
        }
        if self.remote_control.enabled {
            let keyed = self.cluster.as_ref().is_some_and(|c| c.key_file.is_some());
            if !keyed {
                return Err(invalid(
                    "[remote_control] enabled",
                    "true".into(),
                    "needs [cluster] key_file: remote commands are accepted only when signed with the cluster key".into(),
                ));
            }
            if self.remote_control.port == 0 {
                return Err(invalid(
                    "[remote_control] port",
                    "0".into(),
                    "must be a UDP port, 1..65535 (default 2504)".into(),
                ));
            }
        }
        let socket = self.control.socket.as_os_str().len();
        if socket == 0 || socket > 107 {
            return Err(invalid(
                "[control] socket",
                format!("{:?}", self.control.socket.display().to_string()),
                "must be a path of 1 to 107 bytes (a Unix socket path)".into(),
            ));
        }
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
        if dp.mbuf_size < 128 + 64 {
            return Err(invalid(
                "[dataplane] mbuf_size",
                dp.mbuf_size.to_string(),
                "must be at least 192 (128 bytes of headroom and a 64-byte frame)".into(),
            ));
        }
        if dp.mbufs.is_some_and(|n| !(1024..=64 << 20).contains(&n)) {
            return Err(invalid(
                "[dataplane] mbufs",
                dp.mbufs.unwrap_or_default().to_string(),
                "must be between 1024 and 67108864".into(),
            ));
        }
        if dp.max_connections < 1024 || dp.max_connections > 64 << 20 {
            return Err(invalid(
                "[dataplane] max_connections",
                dp.max_connections.to_string(),
                "must be between 1024 and 67108864".into(),
            ));
        }
        for (key, v) in [
            ("[dataplane] tcp_idle_timeout_s", dp.tcp_idle_timeout_s),
            ("[dataplane] udp_idle_timeout_s", dp.udp_idle_timeout_s),
            ("[dataplane] tcp_close_wait_s", dp.tcp_close_wait_s),
        ] {
            if !(1..=86_400).contains(&v) {
                return Err(invalid(
                    key,
                    v.to_string(),
                    "must be between 1 and 86400 seconds".into(),
                ));
            }
        }
        self.validate_cluster(path)
    }

    fn validate_cluster(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, value: String, allowed: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            value,
            allowed,
        };
        let Some(cluster) = &self.cluster else {
            if self.host.is_some() || !self.port_rules.is_empty() {
                return Err(invalid(
                    "[cluster]".into(),
                    "missing".into(),
                    "[host] and [[port_rule]] need a [cluster] table with at least ip".into(),
                ));
            }
            return Ok(());
        };
        let Some(host) = &self.host else {
            return Err(invalid(
                "[host]".into(),
                "missing".into(),
                "a cluster member needs [host] priority (1..=32)".into(),
            ));
        };
        let unicast = |a: IpAddr| match a {
            IpAddr::V4(v) => {
                !(v.is_unspecified() || v.is_broadcast() || v.is_multicast() || v.is_loopback())
            }
            IpAddr::V6(v) => !(v.is_unspecified() || v.is_multicast() || v.is_loopback()),
        };
        if !unicast(IpAddr::V4(cluster.ip)) {
            return Err(invalid(
                "[cluster] ip".into(),
                format!("\"{}\"", cluster.ip),
                "must be a unicast IPv4 address".into(),
            ));
        }
        let mask = u32::from(cluster.mask);
        if mask == 0 || mask.leading_ones() + mask.trailing_zeros() != 32 {
            return Err(invalid(
                "[cluster] mask".into(),
                format!("\"{}\"", cluster.mask),
                "must be a contiguous subnet mask such as \"255.255.255.0\"".into(),
            ));
        }
        if cluster.vips.len() > MAX_EXTRA_VIPS {
            return Err(invalid(
                "[cluster] vips".into(),
                format!("{} addresses", cluster.vips.len()),
                format!("at most {MAX_EXTRA_VIPS} extra virtual IPs"),
            ));
        }
        let mut seen = vec![IpAddr::V4(cluster.ip)];
        for vip in &cluster.vips {
            if !unicast(*vip) {
                return Err(invalid(
                    "[cluster] vips".into(),
                    format!("\"{vip}\""),
                    "every virtual IP must be a unicast address".into(),
                ));
            }
            if seen.contains(vip) {
                return Err(invalid(
                    "[cluster] vips".into(),
                    format!("\"{vip}\""),
                    "duplicate virtual IP (the primary cluster IP counts too)".into(),
                ));
            }
            seen.push(*vip);
        }
        if host.priority == 0 || host.priority > MAX_HOSTS {
            return Err(invalid(
                "[host] priority".into(),
                host.priority.to_string(),
                format!("must be between 1 and {MAX_HOSTS}"),
            ));
        }
        if let Some(dip) = host.dedicated_ip {
            if seen.contains(&dip) || !unicast(dip) {
                return Err(invalid(
                    "[host] dedicated_ip".into(),
                    format!("\"{dip}\""),
                    "must be a unicast address of this host, not a virtual IP".into(),
                ));
            }
        }
        if let ClusterMacSetting::Given(mac) = cluster.mac {
            let multicast_mode = cluster.mode.0 != crate::macs::MacMode::Unicast;
            if mac.is_multicast() != multicast_mode || mac == EthernetAddress::BROADCAST {
                return Err(invalid(
                    "[cluster] mac".into(),
                    format!("{:?}", mac.to_string()),
                    format!(
                        "must be a {} MAC in {} mode (\"auto\" derives {})",
                        if multicast_mode {
                            "multicast"
                        } else {
                            "unicast"
                        },
                        cluster.mode.0,
                        crate::macs::ClusterMacs::new(cluster.ip).cluster_mac(cluster.mode.0)
                    ),
                ));
            }
        }
        if !(1..=2).contains(&cluster.igmp_version) {
            return Err(invalid(
                "[cluster] igmp_version".into(),
                cluster.igmp_version.to_string(),
                "must be 1 or 2".into(),
            ));
        }
        if !(100..=10_000).contains(&cluster.heartbeat_period_ms) {
            return Err(invalid(
                "[cluster] heartbeat_period_ms".into(),
                cluster.heartbeat_period_ms.to_string(),
                "must be between 100 and 10000".into(),
            ));
        }
        if !(2..=100).contains(&cluster.heartbeat_tolerance) {
            return Err(invalid(
                "[cluster] heartbeat_tolerance".into(),
                cluster.heartbeat_tolerance.to_string(),
                "must be between 2 and 100".into(),
            ));
        }
        if cluster.connection_cleanup_delay_s > 86_400 {
            return Err(invalid(
                "[cluster] connection_cleanup_delay_s".into(),
                cluster.connection_cleanup_delay_s.to_string(),
                "must be between 0 and 86400".into(),
            ));
        }
        if let Some(members) = &cluster.members {
            let mut sorted = members.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if members.is_empty()
                || sorted.len() != members.len()
                || members.iter().any(|&m| m == 0 || m > MAX_HOSTS)
            {
                return Err(invalid(
                    "[cluster] members".into(),
                    format!("{members:?}"),
                    format!("host priorities 1..={MAX_HOSTS}, each once"),
                ));
            }
            if !members.contains(&host.priority) {
                return Err(invalid(
                    "[cluster] members".into(),
                    format!("{members:?}"),
                    format!("must include this host's priority {}", host.priority),
                ));
            }
        }
        if self.port_rules.len() > filter::MAX_RULES {
            return Err(invalid(
                "[[port_rule]]".into(),
                format!("{} rules", self.port_rules.len()),
                format!("at most {} port rules", filter::MAX_RULES),
            ));
        }
        for (i, r) in self.port_rules.iter().enumerate() {
            let key = |k: &str| format!("[[port_rule]] #{} {k}", i + 1);
            if let VipSpec::Addr(a) = r.vip {
                if !seen.contains(&a) {
                    return Err(invalid(
                        key("vip"),
                        format!("\"{a}\""),
                        "must be \"all\", [cluster] ip or one of [cluster] vips".into(),
                    ));
                }
            }
            match (r.mode, r.handling_priority) {
                (ModeConfig::Single, None) => {
                    return Err(invalid(
                        key("handling_priority"),
                        "missing".into(),
                        "mode = \"single\" needs handling_priority 1..=32 (unique per host)".into(),
                    ))
                }
                (ModeConfig::Single, Some(h)) if h == 0 || h > MAX_HOSTS => {
                    return Err(invalid(
                        key("handling_priority"),
                        h.to_string(),
                        format!("must be between 1 and {MAX_HOSTS}"),
                    ))
                }
                (ModeConfig::Multiple | ModeConfig::Disabled, Some(h)) => {
                    return Err(invalid(
                        key("handling_priority"),
                        h.to_string(),
                        "only mode = \"single\" rules have a handling priority".into(),
                    ))
                }
                _ => {}
            }
            if r.mode != ModeConfig::Multiple {
                if let Some(w) = r.load_weight {
                    return Err(invalid(
                        key("load_weight"),
                        format!("{w:?}"),
                        "only mode = \"multiple\" rules have a load weight".into(),
                    ));
                }
            }
            for (j, other) in self.port_rules[..i].iter().enumerate() {
                let ports_overlap =
                    r.ports.first <= other.ports.last && other.ports.first <= r.ports.last;
                if r.vip == other.vip && ports_overlap && r.protocol().overlaps(other.protocol()) {
                    return Err(invalid(
                        key("ports"),
                        format!("\"{}\"", r.ports),
                        format!(
                            "overlaps [[port_rule]] #{} (ports {}, protocol {:?}, same vip); port rules must not overlap",
                            j + 1,
                            other.ports,
                            other.protocol
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The cluster's port rules: the configured ones, or NLB's default rule (every port, both
    /// protocols, multiple hosts, single affinity, equal load) when none is configured.
    pub fn effective_port_rules(&self) -> Vec<PortRuleConfig> {
        if self.port_rules.is_empty() {
            vec![PortRuleConfig {
                vip: VipSpec::All,
                ports: PortRange::default(),
                protocol: ProtocolConfig::Both,
                mode: ModeConfig::Multiple,
                affinity: AffinityConfig::Single,
                load_weight: None,
                handling_priority: None,
            }]
        } else {
            self.port_rules.clone()
        }
    }

    /// The cluster key from `[cluster] key_file`, if set.
    pub fn cluster_key(
        &self,
        path: &Path,
    ) -> Result<Option<crate::membership::wire::ClusterKey>, ConfigError> {
        let Some(file) = self.cluster.as_ref().and_then(|c| c.key_file.as_ref()) else {
            return Ok(None);
        };
        let bytes = std::fs::read(file).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: "[cluster] key_file".into(),
            value: format!("{:?}", file.display().to_string()),
            allowed: format!("cannot read it: {e}"),
        })?;
        crate::membership::wire::ClusterKey::new(bytes)
            .map(Some)
            .ok_or_else(|| ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "[cluster] key_file".into(),
                value: format!("{:?}", file.display().to_string()),
                allowed: "the key must be at least 16 bytes (e.g. head -c 32 /dev/urandom > FILE)"
                    .into(),
            })
    }

    /// What the data plane's filter needs, or `None` in pass-through mode.
    pub fn filter_spec(&self) -> Option<FilterSpec> {
        let cluster = self.cluster.as_ref()?;
        let mut vips = vec![IpAddr::V4(cluster.ip)];
        vips.extend(cluster.vips.iter().copied());
        Some(FilterSpec {
            cluster_ip: cluster.ip,
            vips,
            dedicated: self
                .host
                .as_ref()
                .and_then(|h| h.dedicated_ip)
                .into_iter()
                .collect(),
            rules: self
                .effective_port_rules()
                .iter()
                .map(PortRuleConfig::to_rule)
                .collect(),
        })
    }
}

impl PortRuleConfig {
    pub fn protocol(&self) -> Protocol {
        match self.protocol {
            ProtocolConfig::Tcp => Protocol::Tcp,
            ProtocolConfig::Udp => Protocol::Udp,
            ProtocolConfig::Both => Protocol::Both,
        }
    }

    pub fn mode(&self) -> Mode {
        match self.mode {
            ModeConfig::Multiple => Mode::Multiple,
            ModeConfig::Single => Mode::Single,
            ModeConfig::Disabled => Mode::Disabled,
        }
    }

    pub fn to_rule(&self) -> PortRule {
        PortRule {
            vip: match self.vip {
                VipSpec::All => RuleVip::All,
                VipSpec::Addr(a) => RuleVip::Addr(a),
            },
            first_port: self.ports.first,
            last_port: self.ports.last,
            protocol: self.protocol(),
            mode: self.mode(),
            affinity: match self.affinity {
                AffinityConfig::None => Affinity::None,
                AffinityConfig::Single => Affinity::Single,
                AffinityConfig::Network => Affinity::Network,
            },
        }
    }

    /// This host's load weight for the rule (multiple-host rules; "equal" when unset).
    pub fn weight(&self) -> u8 {
        self.load_weight.unwrap_or(LoadWeight::Equal).value()
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

    const BASE: &str = "[dataplane]\ncluster_port = 0\nhost_port = 1\n";

    fn cluster(extra: &str) -> Result<Config, ConfigError> {
        parse(&format!(
            "{BASE}[cluster]\nip = \"192.0.2.10\"\nvips = [\"192.0.2.20\", \"2001:db8::10\"]\nmembers = [1, 2, 3]\n[host]\npriority = 2\ndedicated_ip = \"192.0.2.12\"\n{extra}"
        ))
    }

    fn err(extra: &str) -> String {
        cluster(extra).unwrap_err().to_string()
    }

    #[test]
    fn full_cluster_config_is_accepted() {
        let c = cluster(
            "[[port_rule]]\nvip = \"all\"\nports = \"80\"\nprotocol = \"tcp\"\naffinity = \"none\"\nload_weight = 70\n\
             [[port_rule]]\nvip = \"192.0.2.20\"\nports = \"1024-65535\"\nmode = \"single\"\nhandling_priority = 4\n\
             [[port_rule]]\nports = 23\nmode = \"disabled\"\n",
        )
        .unwrap();
        let spec = c.filter_spec().unwrap();
        assert_eq!(spec.vips.len(), 3);
        assert_eq!(spec.rules.len(), 3);
        assert_eq!(spec.rules[0].affinity, Affinity::None);
        assert_eq!(spec.rules[1].mode, Mode::Single);
        assert_eq!(
            (spec.rules[2].first_port, spec.rules[2].last_port),
            (23, 23)
        );
        assert_eq!(c.port_rules[0].weight(), 70);
        assert_eq!(
            spec.dedicated,
            vec!["192.0.2.12".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn no_port_rule_means_the_default_rule() {
        let c = cluster("").unwrap();
        let rules = c.filter_spec().unwrap().rules;
        assert_eq!(rules.len(), 1);
        assert_eq!((rules[0].first_port, rules[0].last_port), (0, 65535));
        assert_eq!(rules[0].protocol, Protocol::Both);
        assert_eq!(rules[0].affinity, Affinity::Single);
    }

    #[test]
    fn overlapping_rules_are_refused_naming_both() {
        let e = err("[[port_rule]]\nports = \"80-90\"\nprotocol = \"tcp\"\n[[port_rule]]\nports = \"85\"\nprotocol = \"both\"\n");
        assert!(e.contains("[[port_rule]] #2 ports = \"85-85\""), "{e}");
        assert!(e.contains("overlaps [[port_rule]] #1"), "{e}");
        // Same ports, other protocol: fine. Same ports, other VIP: fine.
        cluster("[[port_rule]]\nports = \"80\"\nprotocol = \"tcp\"\n[[port_rule]]\nports = \"80\"\nprotocol = \"udp\"\n").unwrap();
        cluster(
            "[[port_rule]]\nports = \"80\"\n[[port_rule]]\nvip = \"192.0.2.20\"\nports = \"80\"\n",
        )
        .unwrap();
    }

    #[test]
    fn too_many_rules_are_refused() {
        let rules: String = (0..33)
            .map(|i| format!("[[port_rule]]\nports = {}\n", 1000 + i))
            .collect();
        let e = err(&rules);
        assert!(e.contains("at most 32 port rules"), "{e}");
    }

    #[test]
    fn duplicate_and_bad_addresses_are_refused() {
        let e = parse(&format!(
            "{BASE}[cluster]\nip = \"192.0.2.10\"\nvips = [\"192.0.2.10\"]\n[host]\npriority = 1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("duplicate virtual IP"), "{e}");
        let e = parse(&format!(
            "{BASE}[cluster]\nip = \"192.0.2.300\"\n[host]\npriority = 1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("ip"), "{e}");
        let e = parse(&format!(
            "{BASE}[cluster]\nip = \"224.0.0.1\"\n[host]\npriority = 1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("[cluster] ip = \"224.0.0.1\": must be a unicast IPv4 address"),
            "{e}"
        );
        let e = parse(&format!(
            "{BASE}[cluster]\nip = \"192.0.2.10\"\nmask = \"255.0.255.0\"\n[host]\npriority = 1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("contiguous subnet mask"), "{e}");
        let e = err("[[port_rule]]\nvip = \"192.0.2.99\"\n");
        assert!(e.contains("#1 vip = \"192.0.2.99\""), "{e}");
    }

    #[test]
    fn host_and_members_are_checked() {
        let e = parse(&format!(
            "{BASE}[cluster]\nip = \"192.0.2.10\"\n[host]\npriority = 33\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("[host] priority = 33: must be between 1 and 32"),
            "{e}"
        );
        let e = parse(&format!(
            "{BASE}[cluster]\nip = \"192.0.2.10\"\nmembers = [1, 3]\n[host]\npriority = 2\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("must include this host's priority 2"), "{e}");
        let e = parse(&format!(
            "{BASE}[cluster]\nip = \"192.0.2.10\"\nmembers = [1, 1]\n[host]\npriority = 1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("each once"), "{e}");
        let e = parse(&format!("{BASE}[cluster]\nip = \"192.0.2.10\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[host]"), "{e}");
        let e = parse(&format!("{BASE}[host]\npriority = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("need a [cluster]"), "{e}");
    }

    #[test]
    fn rule_fields_are_checked() {
        let e = err("[[port_rule]]\nmode = \"single\"\n");
        assert!(e.contains("#1 handling_priority = missing"), "{e}");
        let e = err("[[port_rule]]\nhandling_priority = 3\n");
        assert!(e.contains("only mode = \"single\""), "{e}");
        let e = err("[[port_rule]]\nload_weight = 101\n");
        assert!(e.contains("load weight"), "{e}");
        let e = err("[[port_rule]]\nports = \"90-80\"\n");
        assert!(e.contains("first <= last"), "{e}");
        let e = err("[[port_rule]]\nprotocol = \"sctp\"\n");
        assert!(e.contains("tcp") && e.contains("udp"), "{e}");
        let e = err("[[port_rule]]\naffinity = \"class_c\"\n");
        assert!(e.contains("network"), "{e}");
        let c = cluster("[[port_rule]]\nload_weight = \"equal\"\n").unwrap();
        assert_eq!(c.port_rules[0].weight(), 50);
    }

    #[test]
    fn host_mac_must_be_unicast() {
        let c = parse(&format!("{BASE}host_mac = \"02-00-5E-10-00-01\"\n")).unwrap();
        assert_eq!(
            c.dataplane.host_mac.unwrap().0.to_string(),
            "02:00:5e:10:00:01"
        );
        let e = parse(&format!("{BASE}host_mac = \"01:00:5e:00:00:01\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unicast MAC"), "{e}");
    }

    #[test]
    fn key_file_must_exist_and_be_long_enough() {
        let dir = std::env::temp_dir().join(format!("wlbs-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short.key");
        std::fs::write(&short, b"too short").unwrap();
        let good = dir.join("good.key");
        std::fs::write(&good, [7u8; 32]).unwrap();
        let with_key = |f: &std::path::Path| {
            parse(&format!(
                "{BASE}[cluster]\nip = \"192.0.2.10\"\nkey_file = \"{}\"\n[host]\npriority = 1\n",
                f.display()
            ))
            .unwrap()
        };
        let e = with_key(&dir.join("missing.key"))
            .cluster_key(Path::new("test.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[cluster] key_file") && e.contains("cannot read"),
            "{e}"
        );
        let e = with_key(&short)
            .cluster_key(Path::new("test.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 16 bytes"), "{e}");
        assert!(with_key(&good)
            .cluster_key(Path::new("test.toml"))
            .unwrap()
            .is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
