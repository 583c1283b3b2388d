//! The `polymq` binary: parses the command line, layers the config, opens the
//! store and runs the server shell with one service per protocol.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use polymq::config::{Config, ConfigOverrides};
use polymq::server::{ProtocolService, Server};
use polymq::{FsyncPolicy, Store};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use polymq_amqp::{AmqpConfig, AmqpService};
use polymq_kafka::{KafkaConfig, KafkaService};
use polymq_mqtt::{MqttConfig, MqttService};

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Parser)]
#[command(name = "polymq", version, about = "One broker for MQTT, AMQP 0-9-1 and Kafka clients over one log")]
#[command(arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker. Settings: flags > POLYMQ_* env > --config file > defaults.
    Serve(Box<ServeArgs>),
    /// Print the version.
    Version,
}

#[derive(Args)]
// Last occurrence wins, so wrapper scripts can append a flag to override one.
#[command(args_override_self = true)]
struct ServeArgs {
    /// TOML file with any of the settings below (keys are the flag names with `_`).
    #[arg(long, env = "POLYMQ_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of the commit log [default: ./polymq-data]
    #[arg(long, env = "POLYMQ_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// MQTT listen address [default: 0.0.0.0:1883]
    #[arg(long, env = "POLYMQ_MQTT_LISTEN", value_name = "ADDR")]
    mqtt_listen: Option<SocketAddr>,
    /// AMQP 0-9-1 listen address [default: 0.0.0.0:5672]
    #[arg(long, env = "POLYMQ_AMQP_LISTEN", value_name = "ADDR")]
    amqp_listen: Option<SocketAddr>,
    /// Kafka listen address [default: 0.0.0.0:9092]
    #[arg(long, env = "POLYMQ_KAFKA_LISTEN", value_name = "ADDR")]
    kafka_listen: Option<SocketAddr>,
    /// host:port that Kafka metadata advertises [default: the Kafka listen address, 0.0.0.0 as 127.0.0.1]
    #[arg(long, env = "POLYMQ_KAFKA_ADVERTISED", value_name = "HOST:PORT")]
    kafka_advertised: Option<String>,
    /// HTTP listen address for /healthz and /metrics [default: 0.0.0.0:8080]
    #[arg(long, env = "POLYMQ_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// When the log fsyncs: always, never or interval=<ms> [default: interval=50]
    #[arg(long, env = "POLYMQ_FSYNC", value_name = "POLICY")]
    fsync: Option<FsyncPolicy>,
    /// Most concurrent client connections, all protocols together [default: 100000]
    #[arg(long, env = "POLYMQ_CONNECTION_MAX", value_name = "N")]
    connection_max: Option<usize>,
    /// Log filter, e.g. `info` or `polymq=debug,info`; RUST_LOG wins if set [default: info]
    #[arg(long, env = "POLYMQ_LOG", value_name = "FILTER")]
    log: Option<String>,
}

impl ServeArgs {
    fn overrides(&self) -> ConfigOverrides {
        ConfigOverrides {
            data_dir: self.data_dir.clone(),
            mqtt_listen: self.mqtt_listen,
            amqp_listen: self.amqp_listen,
            kafka_listen: self.kafka_listen,
            kafka_advertised: self.kafka_advertised.clone(),
            http_listen: self.http_listen,
            fsync: self.fsync,
            connection_max: self.connection_max,
            log: self.log.clone(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Version => {
            println!("polymq {VERSION}");
            Ok(())
        }
        Command::Serve(args) => serve(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, no backtrace: this is the operator's message (a taken
            // port, a bad setting), not a bug report.
            eprintln!("polymq: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `outer: cause: root cause`, skipping a cause whose text the previous
/// message already ends with (errors that print their source themselves).
fn error_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !previous.ends_with(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        previous = text;
    }
    out
}

fn serve(args: &ServeArgs) -> Result<()> {
    // Non-UTF-8 variables cannot be ours (all our values are text); skipping
    // them beats std::env::vars(), which panics on them.
    let env = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let (config, env_report) = Config::load(args.config.as_deref(), env, &args.overrides()).context("invalid configuration")?;
    init_logging(&config.log)?;
    for var in &env_report.unknown {
        warn!(var = %var, "ignoring unknown environment variable (typo?)");
    }

    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("polymq").build().context("starting the async runtime")?;
    let result = runtime.block_on(run(config));
    // Connection tasks that outlived the grace period are dropped here; do
    // not let one stuck on a blocking call hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

fn init_logging(config_filter: &str) -> Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.trim().is_empty() => {
            EnvFilter::try_new(&from_env).with_context(|| format!("invalid RUST_LOG filter {from_env:?}"))?
        }
        _ => EnvFilter::try_new(config_filter).with_context(|| format!("invalid log filter {config_filter:?}"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes inside fields would break tools that grep the log.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

async fn run(config: Config) -> Result<()> {
    info!(
        version = VERSION,
        data_dir = %config.data_dir.display(),
        fsync = %config.fsync,
        "starting polymq"
    );
    // Installed before anything binds so that a SIGTERM during start-up is
    // not lost (without a handler it would kill the process mid-recovery).
    let terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let store_config = config.store_config();
    let data_dir = config.data_dir.clone();
    // Opening runs recovery: blocking file I/O, kept off the async workers.
    let store = tokio::task::spawn_blocking(move || Store::open(store_config))
        .await
        .context("store open panicked")?
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;

    let mqtt = MqttService::new(Arc::clone(&store), MqttConfig::from_config(&config)).await.context("starting the MQTT service")?;
    let amqp = AmqpService::new(Arc::clone(&store), AmqpConfig::from_config(&config)).await.context("starting the AMQP service")?;
    let kafka = KafkaService::new(Arc::clone(&store), KafkaConfig::from_config(&config)).await.context("starting the Kafka service")?;
    let services: Vec<(SocketAddr, Arc<dyn ProtocolService>)> =
        vec![(config.mqtt_listen, mqtt), (config.amqp_listen, amqp), (config.kafka_listen, kafka)];
    let server = match Server::bind(&config, Arc::clone(&store), services).await {
        Ok(server) => server,
        Err(e) => {
            // Blocking here is fine: nothing else runs on the runtime yet.
            if let Err(close) = store.close() {
                warn!(error = %close, "closing the store after a failed start");
            }
            return Err(e.into());
        }
    };
    server.run(termination(terminate, interrupt)).await?;
    info!("polymq stopped");
    Ok(())
}

async fn termination(mut terminate: tokio::signal::unix::Signal, mut interrupt: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = terminate.recv() => info!("received SIGTERM"),
        _ = interrupt.recv() => info!("received SIGINT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn error_chain_is_one_line_without_repeats() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let bind = polymq::server::ServerError::Bind { protocol: "mqtt", addr: ([127, 0, 0, 1], 1883).into(), source: io };
        let err = anyhow::Error::from(bind).context("starting");
        assert_eq!(error_chain(&err), "starting: cannot listen for mqtt on 127.0.0.1:1883: Address already in use");
    }
}
