//! Broker configuration, layered the same way everywhere: typed defaults, then
//! the TOML file, then `POLYMQ_*` environment variables, then command-line
//! flags, then validation.
//!
//! Each layer only overwrites what it names, so a file can set one key and
//! leave the rest at their defaults. The environment layer takes its variables
//! as an iterator rather than reading the process environment, so tests can
//! exercise it without `std::env::set_var` (which races with other threads).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::limits::{CONNECTION_COUNT_MAX_DEFAULT, RECORD_BYTES_MAX, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN};
use crate::{FsyncPolicy, StoreConfig};

/// Prefix of every environment variable the broker reads.
pub const ENV_PREFIX: &str = "POLYMQ_";

/// Environment variable naming the config file. The binary reads it through
/// its `--config` flag; the environment layer skips it rather than calling it
/// unknown.
pub const ENV_CONFIG_FILE: &str = "POLYMQ_CONFIG";

/// Upper bound for `connection_max`. Far above what one process can hold open
/// (file descriptors run out first), and it keeps the permit count within
/// `u32`, which the server's drain-on-shutdown wait needs.
pub const CONNECTION_COUNT_MAX_CEILING: usize = 10_000_000;
const _: () = assert!(CONNECTION_COUNT_MAX_DEFAULT <= CONNECTION_COUNT_MAX_CEILING);
const _: () = assert!(CONNECTION_COUNT_MAX_CEILING <= u32::MAX as usize);

/// Default MQTT maximum packet size: 8 MiB, far above what devices send and
/// small enough that a connection's read buffer stays bounded.
pub const MQTT_PACKET_BYTES_MAX_DEFAULT: u32 = 8 * 1024 * 1024;
/// A packet must fit a CONNECT with a will and its properties.
pub const MQTT_PACKET_BYTES_MIN: u32 = 1024;
/// A PUBLISH becomes one log record, with room left for its headers.
pub const MQTT_PACKET_BYTES_MAX_CEILING: u32 = (RECORD_BYTES_MAX - 1024 * 1024) as u32;
const _: () = assert!(MQTT_PACKET_BYTES_MIN <= MQTT_PACKET_BYTES_MAX_DEFAULT);
const _: () = assert!(MQTT_PACKET_BYTES_MAX_DEFAULT <= MQTT_PACKET_BYTES_MAX_CEILING);

/// Kafka's default `group.initial.rebalance.delay.ms`.
pub const KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS_DEFAULT: u64 = 3_000;
/// A longer initial delay only makes a group's first consumers wait: 5 minutes
/// is Kafka's default `max.poll.interval.ms`, the longest rebalance timeout
/// clients normally ask for.
pub const KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS_MAX: u64 = 300_000;
/// The AMQP vhost that exists unless configured otherwise.
/// Default of [`Config::kafka_request_read_timeout_ms`].
pub const KAFKA_REQUEST_READ_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Default of [`Config::kafka_connections_max_idle_ms`] (Kafka's 10 minutes).
pub const KAFKA_CONNECTIONS_MAX_IDLE_MS_DEFAULT: u64 = 600_000;
/// Upper bound of both Kafka connection timeouts (a day).
pub const KAFKA_CONNECTION_TIMEOUT_MS_MAX: u64 = 86_400_000;
pub const AMQP_DEFAULT_VHOST: &str = "/";

/// Every setting of the broker. Build it with [`Config::load`] (or
/// `Config::default()` and the `apply_*` layers), then call
/// [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the commit log and queue metadata live.
    pub data_dir: PathBuf,
    pub mqtt_listen: SocketAddr,
    pub amqp_listen: SocketAddr,
    pub kafka_listen: SocketAddr,
    /// `host:port` that Kafka metadata tells clients to connect to. `None`
    /// derives it from `kafka_listen` (see [`Config::kafka_advertised_addr`]).
    pub kafka_advertised: Option<String>,
    /// Health, metrics and (later) the admin API.
    pub http_listen: SocketAddr,
    #[serde(deserialize_with = "deserialize_fsync")]
    pub fsync: FsyncPolicy,
    /// Concurrent protocol connections across all listeners.
    pub connection_max: usize,
    /// `tracing` filter directive, e.g. `info` or `polymq=debug,info`.
    #[serde(alias = "log_level")]
    pub log: String,
    /// Users every protocol authenticates against: name -> password. In TOML
    /// a `[users]` table; in the environment `POLYMQ_USERS=name:password,...`.
    pub users: BTreeMap<String, String>,
    /// MQTT clients without a username are let in (mosquitto's
    /// `allow_anonymous`). A client that sends a username is always checked.
    pub mqtt_allow_anonymous: bool,
    /// The largest MQTT packet accepted (and advertised to MQTT 5 clients as
    /// Maximum Packet Size). Checked before a packet's body is buffered.
    pub mqtt_max_packet_bytes: u32,
    /// Kafka: a Metadata or Produce request naming an unknown topic creates
    /// it (Kafka's `auto.create.topics.enable`, on by default there too).
    pub kafka_auto_create_topics: bool,
    /// Kafka: partitions of an auto-created topic (Kafka's `num.partitions`).
    pub kafka_num_partitions: u32,
    /// Kafka: require SASL (PLAIN, SCRAM-SHA-256/512) against `users`.
    pub kafka_sasl: bool,
    /// Kafka: once a request's first byte is in, the whole request must
    /// arrive within this, or the connection is closed (slow clients).
    pub kafka_request_read_timeout_ms: u64,
    /// Kafka: a connection without requests for this long is closed
    /// (Kafka's `connections.max.idle.ms`, same default).
    pub kafka_connections_max_idle_ms: u64,
    // ---- Kafka consumer groups ----
    /// How long the first JoinGroup of an empty Kafka group waits for more
    /// members before the first generation forms (Kafka's
    /// `group.initial.rebalance.delay.ms`, same default): consumers started
    /// together then get one rebalance instead of one each. 0 disables it.
    pub kafka_group_initial_rebalance_delay_ms: u64,
    // -- AMQP vhosts and the memory alarm (one block, to merge easily) --
    /// AMQP virtual hosts that exist. RabbitMQ's are made by an operator, so
    /// here they are configured: connection.open to any other vhost is
    /// refused. In the environment `POLYMQ_AMQP_VHOSTS=/,dev`.
    pub amqp_vhosts: Vec<String>,
    /// Resident memory of the process above which the memory alarm is on
    /// and protocols push back on publishers (AMQP: connection.blocked).
    /// `None`: 40% of physical RAM (RabbitMQ's `vm_memory_high_watermark`
    /// 0.4); `Some(0)`: no alarm.
    pub memory_high_watermark_bytes: Option<u64>,
    // -- end of the AMQP vhosts and memory alarm block --
    /// Size at which the commit log rolls to a new segment file (Kafka's
    /// `log.segment.bytes`). Space is reclaimed a whole segment at a time,
    /// so smaller segments free disk sooner at the cost of more files.
    pub segment_bytes: u64,
    // -- the one address space (issue 6; one block, to merge easily) --
    /// The `[mapping]` table: how topics, exchanges and Kafka topics map
    /// onto each other (`polymq::mapping`, `docs/interop.md`). In the
    /// environment `POLYMQ_MAPPING_<KEY>`.
    pub mapping: crate::mapping::Mapping,
    // -- end of the address space block --
}

impl Default for Config {
    fn default() -> Self {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        Config {
            data_dir: PathBuf::from("./polymq-data"),
            mqtt_listen: SocketAddr::new(any, 1883),
            amqp_listen: SocketAddr::new(any, 5672),
            kafka_listen: SocketAddr::new(any, 9092),
            kafka_advertised: None,
            http_listen: SocketAddr::new(any, 8080),
            fsync: FsyncPolicy::default(),
            connection_max: CONNECTION_COUNT_MAX_DEFAULT,
            log: "info".to_owned(),
            users: BTreeMap::new(),
            mqtt_allow_anonymous: true,
            mqtt_max_packet_bytes: MQTT_PACKET_BYTES_MAX_DEFAULT,
            kafka_auto_create_topics: true,
            kafka_num_partitions: 1,
            kafka_sasl: false,
            kafka_request_read_timeout_ms: KAFKA_REQUEST_READ_TIMEOUT_MS_DEFAULT,
            kafka_connections_max_idle_ms: KAFKA_CONNECTIONS_MAX_IDLE_MS_DEFAULT,
            kafka_group_initial_rebalance_delay_ms: KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS_DEFAULT,
            amqp_vhosts: vec![AMQP_DEFAULT_VHOST.to_owned()],
            memory_high_watermark_bytes: None,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            mapping: crate::mapping::Mapping::default(),
        }
    }
}

fn deserialize_fsync<'de, D: Deserializer<'de>>(d: D) -> Result<FsyncPolicy, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}

/// Values given on the command line. `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigOverrides {
    pub data_dir: Option<PathBuf>,
    pub mqtt_listen: Option<SocketAddr>,
    pub amqp_listen: Option<SocketAddr>,
    pub kafka_listen: Option<SocketAddr>,
    pub kafka_advertised: Option<String>,
    pub http_listen: Option<SocketAddr>,
    pub fsync: Option<FsyncPolicy>,
    pub connection_max: Option<usize>,
    pub log: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {var}={value:?}: {reason}")]
    Env { var: String, value: String, reason: String },
    #[error("invalid setting {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// What the environment layer saw besides the variables it applied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EnvReport {
    /// `POLYMQ_*` variables that name no setting: most likely typos, which the
    /// binary logs as warnings. Not an error, because wrappers and test
    /// harnesses put their own `POLYMQ_*` variables in the environment.
    pub unknown: Vec<String>,
}

impl Config {
    /// All layers in order: defaults, `file` (if any), `env`, `flags`, then
    /// validation. Pass `std::env::vars()` as `env` in the binary.
    pub fn load<I, K, V>(file: Option<&Path>, env: I, flags: &ConfigOverrides) -> Result<(Config, EnvReport), ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut config = match file {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let report = config.apply_env(env)?;
        config.apply_overrides(flags);
        config.validate()?;
        Ok((config, report))
    }

    /// Defaults overlaid with the keys present in the TOML file at `path`.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::from_toml_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })
    }

    /// Defaults overlaid with the keys present in `text`.
    pub fn from_toml_str(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Overwrites every setting named by a `POLYMQ_<KEY>` variable (the TOML
    /// key upper-cased). Other variables are ignored.
    pub fn apply_env<I, K, V>(&mut self, vars: I) -> Result<EnvReport, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut report = EnvReport::default();
        for (var, value) in vars {
            let (var, value) = (var.as_ref(), value.as_ref());
            let Some(key) = var.strip_prefix(ENV_PREFIX) else { continue };
            if var == ENV_CONFIG_FILE {
                continue;
            }
            let env_err = |reason: String| ConfigError::Env { var: var.to_owned(), value: value.to_owned(), reason };
            match key {
                "DATA_DIR" => self.data_dir = PathBuf::from(value),
                "MQTT_LISTEN" => self.mqtt_listen = parse_socket_addr(value).map_err(env_err)?,
                "AMQP_LISTEN" => self.amqp_listen = parse_socket_addr(value).map_err(env_err)?,
                "KAFKA_LISTEN" => self.kafka_listen = parse_socket_addr(value).map_err(env_err)?,
                // An empty value is how a shell unsets an inherited override.
                "KAFKA_ADVERTISED" if value.is_empty() => self.kafka_advertised = None,
                "KAFKA_ADVERTISED" => self.kafka_advertised = Some(value.to_owned()),
                "HTTP_LISTEN" => self.http_listen = parse_socket_addr(value).map_err(env_err)?,
                "FSYNC" => self.fsync = value.parse().map_err(env_err)?,
                "CONNECTION_MAX" => {
                    self.connection_max = value.trim().parse().map_err(|e| env_err(format!("not a connection count: {e}")))?
                }
                "LOG" | "LOG_LEVEL" => self.log = value.to_owned(),
                "USERS" => self.users = parse_users(value).map_err(env_err)?,
                "MQTT_ALLOW_ANONYMOUS" => self.mqtt_allow_anonymous = parse_bool(value).map_err(env_err)?,
                "MQTT_MAX_PACKET_BYTES" => {
                    self.mqtt_max_packet_bytes = value.trim().parse().map_err(|e| env_err(format!("not a byte count: {e}")))?
                }
                "KAFKA_AUTO_CREATE_TOPICS" => self.kafka_auto_create_topics = parse_bool(value).map_err(env_err)?,
                "KAFKA_NUM_PARTITIONS" => {
                    self.kafka_num_partitions = value.trim().parse().map_err(|e| env_err(format!("not a partition count: {e}")))?
                }
                "KAFKA_SASL" => self.kafka_sasl = parse_bool(value).map_err(env_err)?,
                "KAFKA_REQUEST_READ_TIMEOUT_MS" => {
                    self.kafka_request_read_timeout_ms =
                        value.trim().parse().map_err(|e| env_err(format!("not a number of milliseconds: {e}")))?
                }
                "KAFKA_CONNECTIONS_MAX_IDLE_MS" => {
                    self.kafka_connections_max_idle_ms =
                        value.trim().parse().map_err(|e| env_err(format!("not a number of milliseconds: {e}")))?
                }
                "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS" => {
                    self.kafka_group_initial_rebalance_delay_ms =
                        value.trim().parse().map_err(|e| env_err(format!("not a number of milliseconds: {e}")))?
                }
                "AMQP_VHOSTS" => self.amqp_vhosts = value.split(',').map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned).collect(),
                "MEMORY_HIGH_WATERMARK_BYTES" => {
                    self.memory_high_watermark_bytes = Some(value.trim().parse().map_err(|e| env_err(format!("not a byte count: {e}")))?)
                }
                "SEGMENT_BYTES" => self.segment_bytes = value.trim().parse().map_err(|e| env_err(format!("not a byte count: {e}")))?,
                // -- the one address space --
                "MAPPING_TOPIC_SPACE" => self.mapping.topic_space = value.trim().to_owned(),
                "MAPPING_MQTT_TO_STREAMS" => self.mapping.mqtt_to_streams = parse_bool(value).map_err(env_err)?,
                "MAPPING_AMQP_TO_STREAMS" => self.mapping.amqp_to_streams = parse_bool(value).map_err(env_err)?,
                "MAPPING_STREAMS_TO_TOPICS" => self.mapping.streams_to_topics = parse_bool(value).map_err(env_err)?,
                "MAPPING_AUTO_CREATE_STREAMS" => self.mapping.auto_create_streams = parse_bool(value).map_err(env_err)?,
                "MAPPING_AUTO_CREATE_PARTITIONS" => {
                    self.mapping.auto_create_partitions =
                        value.trim().parse().map_err(|e| env_err(format!("not a partition count: {e}")))?
                }
                "MAPPING_STREAMS" => self.mapping.streams = crate::mapping::Mapping::parse_streams(value).map_err(env_err)?,
                "MAPPING_STREAMS_ONLY_LISTED" => self.mapping.streams_only_listed = parse_bool(value).map_err(env_err)?,
                "MAPPING_TOPIC_HEADER" => self.mapping.topic_header = value.trim().to_owned(),
                "MAPPING_DECODED_BATCH_BYTES_MAX" => {
                    self.mapping.decoded_batch_bytes_max = value.trim().parse().map_err(|e| env_err(format!("not a byte count: {e}")))?
                }
                _ => report.unknown.push(var.to_owned()),
            }
        }
        report.unknown.sort();
        Ok(report)
    }

    /// Overwrites every setting the command line gave.
    pub fn apply_overrides(&mut self, flags: &ConfigOverrides) {
        // Destructured so that adding a field without handling it fails to compile.
        let ConfigOverrides { data_dir, mqtt_listen, amqp_listen, kafka_listen, kafka_advertised, http_listen, fsync, connection_max, log } =
            flags;
        if let Some(v) = data_dir {
            self.data_dir = v.clone();
        }
        if let Some(v) = mqtt_listen {
            self.mqtt_listen = *v;
        }
        if let Some(v) = amqp_listen {
            self.amqp_listen = *v;
        }
        if let Some(v) = kafka_listen {
            self.kafka_listen = *v;
        }
        if let Some(v) = kafka_advertised {
            self.kafka_advertised = Some(v.clone());
        }
        if let Some(v) = http_listen {
            self.http_listen = *v;
        }
        if let Some(v) = fsync {
            self.fsync = *v;
        }
        if let Some(v) = connection_max {
            self.connection_max = *v;
        }
        if let Some(v) = log {
            self.log = v.clone();
        }
    }

    /// Checks what the types alone cannot. Addresses and the fsync policy were
    /// already parsed by whichever layer set them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty".into()));
        }
        if self.connection_max == 0 {
            return Err(invalid("connection_max", "must be at least 1".into()));
        }
        if self.connection_max > CONNECTION_COUNT_MAX_CEILING {
            return Err(invalid(
                "connection_max",
                format!("{} is above the ceiling of {CONNECTION_COUNT_MAX_CEILING}", self.connection_max),
            ));
        }
        if let Some(advertised) = &self.kafka_advertised {
            validate_host_port(advertised).map_err(|reason| invalid("kafka_advertised", reason))?;
        }
        if self.log.trim().is_empty() {
            return Err(invalid("log", "must not be empty (use e.g. `info`)".into()));
        }
        if !(MQTT_PACKET_BYTES_MIN..=MQTT_PACKET_BYTES_MAX_CEILING).contains(&self.mqtt_max_packet_bytes) {
            return Err(invalid(
                "mqtt_max_packet_bytes",
                format!("{} is outside {MQTT_PACKET_BYTES_MIN}..={MQTT_PACKET_BYTES_MAX_CEILING}", self.mqtt_max_packet_bytes),
            ));
        }
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(invalid("segment_bytes", format!("{} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}", self.segment_bytes)));
        }
        if self.kafka_group_initial_rebalance_delay_ms > KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS_MAX {
            return Err(invalid(
                "kafka_group_initial_rebalance_delay_ms",
                format!("{} is above {KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS_MAX}", self.kafka_group_initial_rebalance_delay_ms),
            ));
        }
        for (key, ms) in [
            ("kafka_request_read_timeout_ms", self.kafka_request_read_timeout_ms),
            ("kafka_connections_max_idle_ms", self.kafka_connections_max_idle_ms),
        ] {
            if !(1..=KAFKA_CONNECTION_TIMEOUT_MS_MAX).contains(&ms) {
                return Err(invalid(key, format!("{ms} is outside 1..={KAFKA_CONNECTION_TIMEOUT_MS_MAX}")));
            }
        }
        if let Some(name) = self.users.keys().find(|n| n.is_empty() || n.contains([':', ','])) {
            return Err(invalid("users", format!("user name {name:?} is empty or contains `:` or `,`")));
        }
        if !(1..=crate::topic::PARTITIONS_MAX).contains(&self.kafka_num_partitions) {
            return Err(invalid(
                "kafka_num_partitions",
                format!("{} is outside 1..={}", self.kafka_num_partitions, crate::topic::PARTITIONS_MAX),
            ));
        }
        self.mapping.validate().map_err(|reason| invalid("mapping", reason))?;
        for vhost in &self.amqp_vhosts {
            // Off `/` a vhost prefixes core names as `<vhost>|<name>`: it may
            // not contain the separator nor start like an internal name.
            let reserved = ["mqtt/", "amqp/", crate::topic::PREFIX].iter().any(|p| vhost.starts_with(p));
            if vhost.is_empty() || vhost.len() > 255 || vhost.contains(['|', ',']) || (vhost != AMQP_DEFAULT_VHOST && reserved) {
                return Err(invalid(
                    "amqp_vhosts",
                    format!("vhost {vhost:?} must be 1..=255 bytes without `|` or `,`, not starting with mqtt/, amqp/ or topic/"),
                ));
            }
        }
        Ok(())
    }

    /// The address Kafka metadata hands to clients: `kafka_advertised` if set,
    /// otherwise `kafka_listen` with a wildcard IP replaced by loopback, since
    /// a client cannot connect to 0.0.0.0.
    pub fn kafka_advertised_addr(&self) -> String {
        match &self.kafka_advertised {
            Some(addr) => addr.clone(),
            None => advertised_for(self.kafka_listen).to_string(),
        }
    }

    pub fn store_config(&self) -> StoreConfig {
        let mut store = StoreConfig::new(self.data_dir.clone());
        store.fsync = self.fsync;
        store.segment_bytes = self.segment_bytes;
        store
    }
}

/// `listen` with an unspecified IP (0.0.0.0 or ::) replaced by loopback.
/// Public so that a listener bound to port 0 can advertise its real port.
/// `name:password,name:password` (a password may contain `:`, not `,`).
fn parse_users(value: &str) -> Result<BTreeMap<String, String>, String> {
    let mut users = BTreeMap::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, password)) = entry.split_once(':') else {
            return Err(format!("{entry:?} is not name:password"));
        };
        users.insert(name.to_owned(), password.to_owned());
    }
    Ok(users)
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!("{other:?} is not a boolean")),
    }
}

pub fn advertised_for(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

fn invalid(key: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { key, reason }
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| "expected an IP address and port, e.g. 0.0.0.0:1883 or [::]:1883".to_owned())
}

/// `host:port` where host is a DNS name or an IP (IPv6 in brackets); the
/// name is not resolved here because it is the client's view, not ours.
fn validate_host_port(text: &str) -> Result<(), String> {
    if text.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let usage = || format!("expected host:port, got {text:?}");
    let (host, port) = text.rsplit_once(':').ok_or_else(usage)?;
    let port: u16 = port.parse().map_err(|_| usage())?;
    if port == 0 {
        return Err("port 0 cannot be advertised".into());
    }
    let host_ok = !host.is_empty() && host.len() <= 253 && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !host_ok {
        return Err(usage());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    const NO_ENV: [(&str, &str); 0] = [];

    #[test]
    fn defaults_match_the_product_brief() {
        let c = Config::default();
        assert_eq!(c.data_dir, PathBuf::from("./polymq-data"));
        assert_eq!(c.mqtt_listen, addr("0.0.0.0:1883"));
        assert_eq!(c.amqp_listen, addr("0.0.0.0:5672"));
        assert_eq!(c.kafka_listen, addr("0.0.0.0:9092"));
        assert_eq!(c.http_listen, addr("0.0.0.0:8080"));
        assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_millis(50)));
        assert_eq!(c.connection_max, CONNECTION_COUNT_MAX_DEFAULT);
        assert_eq!(c.log, "info");
        assert_eq!(c.kafka_advertised_addr(), "127.0.0.1:9092");
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(Config::from_toml_str("").expect("parse"), Config::default());
    }

    #[test]
    fn file_sets_only_the_keys_it_names() {
        let c = Config::from_toml_str("http_listen = \"127.0.0.1:9000\"\nfsync = \"always\"\n").expect("parse");
        assert_eq!(c.http_listen, addr("127.0.0.1:9000"));
        assert_eq!(c.fsync, FsyncPolicy::Always);
        assert_eq!(c.mqtt_listen, Config::default().mqtt_listen);
    }

    #[test]
    fn file_rejects_unknown_keys_and_bad_values() {
        let err = Config::from_toml_str("mqtt_port = 1883").expect_err("unknown key");
        assert!(err.to_string().contains("mqtt_port"), "{err}");
        let err = Config::from_toml_str("fsync = \"sometimes\"").expect_err("bad fsync");
        assert!(err.to_string().contains("fsync policy"), "{err}");
        let err = Config::from_toml_str("mqtt_listen = \"localhost\"").expect_err("bad addr");
        assert!(err.to_string().contains("mqtt_listen"), "{err}");
    }

    #[test]
    fn kafka_topic_settings_come_from_file_and_env() {
        let mut c = Config::from_toml_str("kafka_num_partitions = 3\n").expect("parse");
        assert!(c.kafka_auto_create_topics && !c.kafka_sasl, "defaults: auto-create on, SASL off");
        assert_eq!(c.kafka_num_partitions, 3);
        c.apply_env([("POLYMQ_KAFKA_AUTO_CREATE_TOPICS", "false"), ("POLYMQ_KAFKA_NUM_PARTITIONS", "2"), ("POLYMQ_KAFKA_SASL", "true")])
            .expect("env");
        assert!(!c.kafka_auto_create_topics && c.kafka_sasl);
        assert_eq!(c.kafka_num_partitions, 2);
        c.kafka_num_partitions = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn kafka_group_initial_rebalance_delay_from_file_and_env() {
        assert_eq!(Config::default().kafka_group_initial_rebalance_delay_ms, 3_000, "Kafka's default");
        let mut c = Config::from_toml_str("kafka_group_initial_rebalance_delay_ms = 0\n").expect("parse");
        assert_eq!(c.kafka_group_initial_rebalance_delay_ms, 0);
        c.apply_env([("POLYMQ_KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "250")]).expect("env");
        assert_eq!(c.kafka_group_initial_rebalance_delay_ms, 250);
        c.validate().expect("valid");
        assert!(c.clone().apply_env([("POLYMQ_KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "soon")]).is_err());
        c.kafka_group_initial_rebalance_delay_ms = KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS_MAX + 1;
        assert!(c.validate().is_err());
    }

    #[test]
    fn users_and_mqtt_settings_come_from_file_and_env() {
        let mut c = Config::from_toml_str("mqtt_allow_anonymous = false\n[users]\nalice = \"pw:with:colons\"\n").expect("parse");
        assert!(!c.mqtt_allow_anonymous);
        assert_eq!(c.users.get("alice").map(String::as_str), Some("pw:with:colons"));
        c.apply_env([("POLYMQ_USERS", "bob:b, carol:c"), ("POLYMQ_MQTT_ALLOW_ANONYMOUS", "yes"), ("POLYMQ_MQTT_MAX_PACKET_BYTES", "4096")])
            .expect("env");
        assert_eq!(c.users.len(), 2, "the environment replaces the table: {:?}", c.users);
        assert_eq!(c.users["carol"], "c");
        assert!(c.mqtt_allow_anonymous);
        assert_eq!(c.mqtt_max_packet_bytes, 4096);
        c.validate().expect("valid");
        assert!(c.clone().apply_env([("POLYMQ_USERS", "nopassword")]).is_err());
        assert!(c.clone().apply_env([("POLYMQ_MQTT_ALLOW_ANONYMOUS", "maybe")]).is_err());
        c.mqtt_max_packet_bytes = 16 * 1024 * 1024;
        assert!(c.validate().is_err(), "a packet must fit one log record");
    }

    #[test]
    fn amqp_vhosts_and_the_memory_watermark_come_from_file_and_env() {
        let c = Config::default();
        assert_eq!(c.amqp_vhosts, vec!["/".to_owned()]);
        assert_eq!(c.memory_high_watermark_bytes, None);
        let mut c = Config::from_toml_str("amqp_vhosts = [\"/\", \"staging\"]\nmemory_high_watermark_bytes = 0\n").expect("parse");
        assert_eq!(c.amqp_vhosts, vec!["/".to_owned(), "staging".to_owned()]);
        assert_eq!(c.memory_high_watermark_bytes, Some(0));
        c.apply_env([("POLYMQ_AMQP_VHOSTS", "/, dev"), ("POLYMQ_MEMORY_HIGH_WATERMARK_BYTES", "1048576")]).expect("env");
        assert_eq!(c.amqp_vhosts, vec!["/".to_owned(), "dev".to_owned()]);
        assert_eq!(c.memory_high_watermark_bytes, Some(1 << 20));
        c.validate().expect("valid");
        for bad in ["a|b", "mqtt/x", ""] {
            let c = Config { amqp_vhosts: vec![bad.to_owned()], ..Config::default() };
            assert!(c.validate().is_err(), "{bad:?}");
        }
        assert!(c.clone().apply_env([("POLYMQ_MEMORY_HIGH_WATERMARK_BYTES", "lots")]).is_err());
    }

    #[test]
    fn the_mapping_comes_from_its_table_and_env() {
        let c = Config::default();
        assert_eq!(c.mapping.topic_space, "amq.topic");
        assert!(c.mapping.mqtt_to_streams && !c.mapping.auto_create_streams, "defaults: map to existing Kafka topics only");
        let mut c = Config::from_toml_str(
            "[mapping]\nmqtt_to_streams = false\nauto_create_streams = true\nstreams_only_listed = true\n[mapping.streams]\nsensors = \"iot.sensors\"\n",
        )
        .expect("parse");
        assert!(!c.mapping.mqtt_to_streams && c.mapping.auto_create_streams && c.mapping.streams_only_listed);
        assert_eq!(c.mapping.streams.get("sensors").map(String::as_str), Some("iot.sensors"));
        c.apply_env([
            ("POLYMQ_MAPPING_STREAMS", "a=x, b=y"),
            ("POLYMQ_MAPPING_AMQP_TO_STREAMS", "off"),
            ("POLYMQ_MAPPING_TOPIC_HEADER", "topic"),
        ])
        .expect("env");
        assert_eq!(c.mapping.streams.len(), 2);
        assert!(!c.mapping.amqp_to_streams);
        assert_eq!(c.mapping.topic_header, "topic");
        c.validate().expect("valid");
        assert!(Config::from_toml_str("[mapping]\nnope = 1\n").is_err(), "unknown keys are refused");
        c.mapping.streams.insert("x".into(), "not/a/topic".into());
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { key: "mapping", .. })));
    }

    #[test]
    fn log_level_is_an_alias_of_log() {
        let c = Config::from_toml_str("log_level = \"debug\"").expect("parse");
        assert_eq!(c.log, "debug");
    }

    #[test]
    fn file_is_overridden_by_env_which_is_overridden_by_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("polymq.toml");
        std::fs::write(&path, "http_listen = \"127.0.0.1:1001\"\nmqtt_listen = \"127.0.0.1:2001\"\namqp_listen = \"127.0.0.1:3001\"\n")
            .expect("write config");
        let env = [("POLYMQ_HTTP_LISTEN", "127.0.0.1:1002"), ("POLYMQ_MQTT_LISTEN", "127.0.0.1:2002"), ("PATH", "/usr/bin")];
        let flags = ConfigOverrides { http_listen: Some(addr("127.0.0.1:1003")), ..Default::default() };

        let (c, _) = Config::load(Some(&path), env, &flags).expect("load");
        assert_eq!(c.http_listen, addr("127.0.0.1:1003"), "flag beats env and file");
        assert_eq!(c.mqtt_listen, addr("127.0.0.1:2002"), "env beats file");
        assert_eq!(c.amqp_listen, addr("127.0.0.1:3001"), "file beats default");
        assert_eq!(c.kafka_listen, addr("0.0.0.0:9092"), "default when nothing sets it");
    }

    #[test]
    fn env_sets_every_key() {
        let mut c = Config::default();
        let report = c
            .apply_env([
                ("POLYMQ_DATA_DIR", "/var/lib/polymq"),
                ("POLYMQ_MQTT_LISTEN", "127.0.0.1:1"),
                ("POLYMQ_AMQP_LISTEN", "127.0.0.1:2"),
                ("POLYMQ_KAFKA_LISTEN", "127.0.0.1:3"),
                ("POLYMQ_KAFKA_ADVERTISED", "kafka.example:9092"),
                ("POLYMQ_HTTP_LISTEN", "[::1]:4"),
                ("POLYMQ_FSYNC", "never"),
                ("POLYMQ_CONNECTION_MAX", "7"),
                ("POLYMQ_LOG", "debug"),
                ("POLYMQ_CONFIG", "/etc/polymq.toml"),
                ("POLYMQ_MQTT_LISTNE", "typo"),
            ])
            .expect("env");
        assert_eq!(report.unknown, vec!["POLYMQ_MQTT_LISTNE".to_owned()]);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/polymq"));
        assert_eq!(c.mqtt_listen, addr("127.0.0.1:1"));
        assert_eq!(c.amqp_listen, addr("127.0.0.1:2"));
        assert_eq!(c.kafka_listen, addr("127.0.0.1:3"));
        assert_eq!(c.kafka_advertised_addr(), "kafka.example:9092");
        assert_eq!(c.http_listen, addr("[::1]:4"));
        assert_eq!(c.fsync, FsyncPolicy::Never);
        assert_eq!(c.connection_max, 7);
        assert_eq!(c.log, "debug");
    }

    #[test]
    fn env_errors_name_the_variable() {
        let err = Config::default().apply_env([("POLYMQ_CONNECTION_MAX", "lots")]).expect_err("bad count");
        let text = err.to_string();
        assert!(text.contains("POLYMQ_CONNECTION_MAX") && text.contains("lots"), "{text}");
        let err = Config::default().apply_env([("POLYMQ_AMQP_LISTEN", "5672")]).expect_err("bad addr");
        assert!(err.to_string().contains("POLYMQ_AMQP_LISTEN"), "{err}");
        let err = Config::default().apply_env([("POLYMQ_FSYNC", "interval=0")]).expect_err("bad fsync");
        assert!(err.to_string().contains("POLYMQ_FSYNC"), "{err}");
    }

    #[test]
    fn validation_rejects_what_cannot_run() {
        let c = Config { connection_max: 0, ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { key: "connection_max", .. })));
        let c = Config { connection_max: CONNECTION_COUNT_MAX_CEILING + 1, ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { key: "connection_max", .. })));
        for bad in ["kafka", "kafka:", ":9092", "kafka:0", "ka fka:9092", "kafka:99999"] {
            let c = Config { kafka_advertised: Some(bad.into()), ..Config::default() };
            assert!(matches!(c.validate(), Err(ConfigError::Invalid { key: "kafka_advertised", .. })), "{bad} should be rejected");
        }
        for good in ["kafka-1.example.com:9092", "10.0.0.1:9092", "[::1]:9092"] {
            let c = Config { kafka_advertised: Some(good.into()), ..Config::default() };
            c.validate().expect(good);
        }
        let c = Config { log: " ".into(), ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { key: "log", .. })));
    }

    #[test]
    fn load_validates_after_all_layers() {
        let flags = ConfigOverrides { connection_max: Some(0), ..Default::default() };
        assert!(Config::load(None, NO_ENV, &flags).is_err());
        // A bad env value that a flag then fixes is still accepted.
        let flags = ConfigOverrides { connection_max: Some(5), ..Default::default() };
        let (c, _) = Config::load(None, [("POLYMQ_CONNECTION_MAX", "0")], &flags).expect("load");
        assert_eq!(c.connection_max, 5);
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = Config::load(Some(Path::new("/nonexistent/polymq.toml")), NO_ENV, &ConfigOverrides::default()).expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/polymq.toml"), "{err}");
    }

    #[test]
    fn advertised_address_replaces_wildcards_only() {
        assert_eq!(advertised_for(addr("0.0.0.0:9092")), addr("127.0.0.1:9092"));
        assert_eq!(advertised_for(addr("[::]:9092")), addr("[::1]:9092"));
        assert_eq!(advertised_for(addr("10.1.2.3:9092")), addr("10.1.2.3:9092"));
    }

    #[test]
    fn store_config_carries_dir_and_fsync() {
        let c = Config { data_dir: "/tmp/x".into(), fsync: FsyncPolicy::Always, ..Config::default() };
        let s = c.store_config();
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(s.fsync, FsyncPolicy::Always);
        assert_eq!(s.segment_bytes, SEGMENT_BYTES_DEFAULT);
    }

    #[test]
    fn segment_bytes_from_file_and_env_within_bounds() {
        let c = Config::from_toml_str("segment_bytes = 8388608\n").expect("parse");
        assert_eq!(c.store_config().segment_bytes, 8 << 20);
        let mut c = Config::default();
        c.apply_env([("POLYMQ_SEGMENT_BYTES", "65536")]).expect("env");
        assert_eq!(c.store_config().segment_bytes, 64 * 1024);
        let err = Config { segment_bytes: 4096, ..Config::default() }.validate().expect_err("too small");
        assert!(err.to_string().contains("segment_bytes"), "{err}");
        assert!(Config { segment_bytes: SEGMENT_BYTES_MAX + 1, ..Config::default() }.validate().is_err());
        assert!(Config::default().apply_env([("POLYMQ_SEGMENT_BYTES", "big")]).is_err());
    }
}
