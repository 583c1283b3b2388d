//! End-to-end tests of the server shell: the real `polymq` binary, real
//! sockets, real signals.
//!
//! Ports: every listener binds 127.0.0.1:0 and the test reads the bound
//! addresses from the broker's `listening protocol=<p> addr=<a>` log lines, so
//! there is no pick-a-free-port race. The config-layering test needs to tell
//! the layers apart without fixed ports: each layer names a different
//! loopback IP (127.0.0.2, .3, .4; Linux routes all of 127/8 to lo) with port 0.

mod broker_common;

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use broker_common::*;

const REQUIRED_METRICS: [&str; 11] = [
    "polymq_log_appends_total",
    "polymq_log_append_bytes_total",
    "polymq_log_fsyncs_total",
    "polymq_log_bytes",
    "polymq_log_segments",
    "polymq_queues",
    "polymq_messages_ready",
    "polymq_messages_inflight",
    "polymq_connections",
    "polymq_connections_accepted_total",
    "polymq_connections_rejected_total",
];

/// Checks the Prometheus text format 0.0.4 rules a scraper enforces: every
/// sample belongs to a family announced by one TYPE line before it, names
/// are legal, values are numbers, and the body ends with a newline.
fn check_prometheus_text(text: &str) -> Result<BTreeMap<String, String>> {
    let legal_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    if !text.ends_with('\n') {
        bail!("body must end with a newline");
    }
    let mut types = BTreeMap::new();
    let mut helps = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').context("TYPE without kind")?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                bail!("bad metric type {kind:?}");
            }
            if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                bail!("TYPE repeated for {name}");
            }
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').context("HELP without text")?;
            helps.insert(name.to_owned(), ());
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let (series, value) = line.rsplit_once(' ').context("sample without value")?;
            let name = series.split('{').next().unwrap_or_default();
            if !legal_name(name) {
                bail!("illegal metric name {name:?}");
            }
            if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                if !(labels.starts_with('{') && labels.ends_with('}') && labels.contains("=\"")) {
                    bail!("malformed labels in {line:?}");
                }
            }
            value.parse::<f64>().with_context(|| format!("value of {line:?}"))?;
            if !types.contains_key(name) {
                bail!("sample {name} before its TYPE line");
            }
            if !helps.contains_key(name) {
                bail!("sample {name} has no HELP line");
            }
        }
    }
    Ok(types)
}

#[test]
fn healthz_turns_200_and_metrics_are_prometheus_text() {
    let mut broker = Broker::serve(&[]);
    let addrs = broker.wait_healthy();
    let health = http(addrs["http"], "GET", "/healthz").expect("GET /healthz");
    assert_eq!((health.status, health.body.trim()), (200, "ok"));

    let r = http(addrs["http"], "GET", "/metrics").expect("GET /metrics");
    assert_eq!(r.status, 200);
    assert!(r.head.contains("Content-Type: text/plain; version=0.0.4"), "Prometheus needs the 0.0.4 content type:\n{}", r.head);
    let types = check_prometheus_text(&r.body).unwrap_or_else(|e| panic!("{e:#}\n{}", r.body));
    for name in REQUIRED_METRICS {
        assert!(types.contains_key(name), "missing {name} in:\n{}", r.body);
    }
    for protocol in ["mqtt", "amqp", "kafka"] {
        let series = format!("polymq_connections{{protocol=\"{protocol}\"}}");
        assert_eq!(sample(&r.body, &series), Some(0.0), "{series} in:\n{}", r.body);
    }
    assert_eq!(types["polymq_log_appends_total"], "counter");
    assert_eq!(types["polymq_connections"], "gauge");

    assert_eq!(http(addrs["http"], "GET", "/nope").expect("GET /nope").status, 404);
    assert_eq!(http(addrs["http"], "POST", "/healthz").expect("POST /healthz").status, 405);
}

#[test]
fn a_taken_port_makes_serve_fail_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let mut broker = Broker::serve(&["--amqp-listen", &taken_addr]);
    let status = broker.wait_exit(START_TIMEOUT).expect("serve must exit when a port is taken");
    let stderr = broker.stderr();
    assert!(!status.success(), "exit status {status} must be non-zero; stderr:\n{stderr}");
    assert!(stderr.contains(&taken_addr), "stderr must name {taken_addr}:\n{stderr}");
    assert!(stderr.contains("amqp"), "stderr must name the protocol:\n{stderr}");
    drop(taken);
}

#[test]
fn sigterm_drains_connections_closes_the_store_and_exits_zero() {
    let mut broker = Broker::serve(&[]);
    let addrs = broker.wait_healthy();
    let mut idle = TcpStream::connect(addrs["mqtt"]).expect("connect mqtt");
    wait_for_metric(addrs["http"], "polymq_connections{protocol=\"mqtt\"}", 1.0);

    let sent = Instant::now();
    broker.send_sigterm();
    let status = broker.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|| panic!("still running {EXIT_TIMEOUT:?} after SIGTERM"));
    let stderr = broker.stderr();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    // The idle connection was drained promptly, not left to the grace timeout.
    assert!(sent.elapsed() < Duration::from_secs(4), "shutdown took {:?}", sent.elapsed());
    assert_eq!(observe(&mut idle, Duration::from_secs(2)), Seen::Closed, "connection must be closed");
    assert!(stderr.contains("store closed"), "must log the store close:\n{stderr}");
}

#[test]
fn connection_limit_closes_the_extra_connection_at_once() {
    let mut broker = Broker::serve(&["--connection-max", "2"]);
    let addrs = broker.wait_healthy();
    let mut first = TcpStream::connect(addrs["mqtt"]).expect("connect 1");
    let mut second = TcpStream::connect(addrs["mqtt"]).expect("connect 2");
    // Both must be accepted before the third connects, or the accept order
    // (not the limit) would decide which one is refused.
    wait_for_metric(addrs["http"], "polymq_connections{protocol=\"mqtt\"}", 2.0);

    let mut third = TcpStream::connect(addrs["mqtt"]).expect("connect 3 (the kernel accepts it)");
    let asked = Instant::now();
    assert_eq!(observe(&mut third, Duration::from_secs(3)), Seen::Closed, "third connection must be closed");
    assert!(asked.elapsed() < Duration::from_secs(2), "closed only after {:?}", asked.elapsed());
    assert_eq!(observe(&mut first, Duration::from_millis(300)), Seen::Open, "first must stay open");
    assert_eq!(observe(&mut second, Duration::from_millis(300)), Seen::Open, "second must stay open");

    let text = metrics(addrs["http"]);
    assert_eq!(sample(&text, "polymq_connections_rejected_total{protocol=\"mqtt\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "polymq_connections_accepted_total{protocol=\"mqtt\"}"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "polymq_connections{protocol=\"mqtt\"}"), Some(2.0), "{text}");

    // The limit is global: another protocol's port is refused too.
    let mut kafka = TcpStream::connect(addrs["kafka"]).expect("connect kafka");
    assert_eq!(observe(&mut kafka, Duration::from_secs(3)), Seen::Closed, "limit spans all protocols");
}

#[test]
fn config_layers_file_then_env_then_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("polymq.toml");
    std::fs::write(&file, "http_listen = \"127.0.0.2:0\"\nconnection_max = 7\n").expect("write config");
    let file_arg = file.to_str().expect("utf-8 path");
    let protocol_ports = ["--mqtt-listen", "127.0.0.1:0", "--amqp-listen", "127.0.0.1:0", "--kafka-listen", "127.0.0.1:0"];

    let http_ip = |args: &[&str], env: &[(&str, &str)]| -> (String, String) {
        let all: Vec<&str> = protocol_ports.iter().copied().chain(args.iter().copied()).collect();
        let mut broker = Broker::serve_raw(&all, env);
        let addrs = broker.wait_healthy();
        let metrics = metrics(addrs["http"]);
        let max = sample(&metrics, "polymq_connections_max").expect("polymq_connections_max").to_string();
        (addrs["http"].ip().to_string(), max)
    };

    assert_eq!(http_ip(&["--config", file_arg], &[]), ("127.0.0.2".into(), "7".into()), "file over defaults");
    assert_eq!(
        http_ip(&["--config", file_arg], &[("POLYMQ_HTTP_LISTEN", "127.0.0.3:0")]),
        ("127.0.0.3".into(), "7".into()),
        "env over file, file still applies to other keys"
    );
    assert_eq!(
        http_ip(
            &["--config", file_arg, "--http-listen", "127.0.0.4:0"],
            &[("POLYMQ_HTTP_LISTEN", "127.0.0.3:0"), ("POLYMQ_CONNECTION_MAX", "9")]
        ),
        ("127.0.0.4".into(), "9".into()),
        "flag over env, env over file"
    );
    // The config file can also come from the environment.
    assert_eq!(http_ip(&[], &[("POLYMQ_CONFIG", file_arg)]), ("127.0.0.2".into(), "7".into()), "POLYMQ_CONFIG");
}

#[test]
fn invalid_settings_are_refused_with_the_setting_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad_key = dir.path().join("bad.toml");
    std::fs::write(&bad_key, "mqtt_port = 1883\n").expect("write");
    // (flags, environment, what stderr must mention)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--connection-max", "0"], vec![], "connection_max"),
        (vec!["--config", bad_key.to_str().expect("utf-8 path")], vec![], "mqtt_port"),
        (vec![], vec![("POLYMQ_FSYNC", "sometimes")], "fsync"),
        (vec!["--kafka-advertised", "no port"], vec![], "kafka_advertised"),
        (vec!["--config", "/nonexistent/polymq.toml"], vec![], "/nonexistent/polymq.toml"),
    ];
    for (args, env, expect) in cases {
        let mut broker = Broker::serve_raw(&args, &env);
        let status = broker.wait_exit(START_TIMEOUT).unwrap_or_else(|| panic!("{args:?} {env:?} must exit"));
        let stderr = broker.stderr();
        assert!(!status.success(), "{args:?} {env:?} must fail; stderr:\n{stderr}");
        assert!(stderr.contains(expect), "{args:?} {env:?}: stderr must mention {expect}:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn version_prints_the_package_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_polymq")).arg("version").output().expect("run polymq version");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("polymq {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn data_dir_is_created_where_asked() {
    let parent = tempfile::tempdir().expect("tempdir");
    let data_dir = parent.path().join("nested").join("data");
    let data_arg = data_dir.to_str().expect("utf-8 path");
    let mut broker = Broker::serve(&["--data-dir", data_arg]);
    broker.wait_healthy();
    assert!(Path::new(&data_dir).is_dir(), "data dir {data_arg} must exist while serving");
}
