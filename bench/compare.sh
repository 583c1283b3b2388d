#!/usr/bin/env bash
# polymq against the brokers users would pick instead, side by side.
#
#   bench/compare.sh                      # MQTT: polymq vs mosquitto, 10 s per run
#   COMPARE_SECONDS=60 bench/compare.sh   # longer runs
#
# Builds polymq (release), installs mosquitto if it is missing (apt-get), and
# for each broker: starts a fresh one on a free loopback port (polymq with a
# fresh temporary data dir and its default fsync policy, interval=50;
# mosquitto with persistence off) and opens N idle connections (memory per
# connection is measured on the fresh process). Then it starts all of them
# again and runs each MQTT scenario against every broker back to back, so
# that other work on the machine skews both sides of a ratio alike. The same
# polymq-bench binary drives every broker. Writes
# a markdown table with polymq/peer ratios to stdout and to
# bench/results/<date>/compare-mqtt.md, next to the raw JSON lines and tables.
#
# Settings (environment):
#   COMPARE_SECONDS     seconds of publishing per run (10)
#   COMPARE_SCENARIOS   fan-in,fan-out,pairs
#   COMPARE_QOS         0,1,2
#   COMPARE_CLIENTS     publishers of fan-in / subscribers of fan-out (8)
#   COMPARE_PAIRS       pairs of the pairs scenario (32)
#   COMPARE_SIZE        payload bytes (100)
#   COMPARE_INFLIGHT    QoS 1/2 publishes a publisher keeps unacknowledged (20)
#   COMPARE_RATE        msg/s of the paced (latency at load) runs; 0 skips them (5000)
#   COMPARE_PERSISTENT  1: also QoS 1 with persistent subscriber sessions (polymq: through the log) (1)
#   COMPARE_REPEAT      runs of each scenario per broker, interleaved; the table shows the median (1)
#   COMPARE_CONNS       idle connections of the connection-scale run; 0 skips it (10000)
#   COMPARE_WAIT_IDLE   seconds each run may wait for the machine to go idle (0)
#   COMPARE_PEERS       peers to run (mosquitto); rabbitmq and kafka are hooks for later
#   COMPARE_OUT         output directory (bench/results/<UTC date>)
#   COMPARE_NO_BUILD=1  use the binaries already in target/release
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

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
PEERS=${COMPARE_PEERS:-mosquitto}
OUT=${COMPARE_OUT:-$ROOT/bench/results/$(date -u +%F)}

BENCH=$ROOT/target/release/polymq-bench
POLYMQ=$ROOT/target/release/polymq
WORK=$(mktemp -d -t polymq-compare.XXXXXX)
mkdir -p "$OUT"

log() { printf '==> %s\n' "$*" >&2; }

# Process ids of brokers this script started; stopped on any exit.
STARTED=()
cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        wait "$pid" 2>/dev/null || true
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

# wait_for_port PORT LOG PID: until the broker accepts TCP connections (30 s at most).
wait_for_port() {
    local port=$1 file=$2 pid=$3 i
    for ((i = 0; i < 300; i++)); do
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
    log "nothing listens on 127.0.0.1:$port after 30 s"
    return 1
}

stop_broker() {
    local pid=$1
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
# Brokers. Each start_<name> sets BROKER_PID and BROKER_ADDR (MQTT host:port).
# ---------------------------------------------------------------------------

start_polymq() {
    local dir=$WORK/polymq-$RANDOM port
    mkdir -p "$dir"
    port=$(free_port)
    # Default settings (fsync interval=50), a fresh data dir, every listener on loopback.
    "$POLYMQ" serve --data-dir "$dir/data" --mqtt-listen "127.0.0.1:$port" --amqp-listen 127.0.0.1:0 \
        --kafka-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 2>"$dir/polymq.log" &
    BROKER_PID=$!
    STARTED+=("$BROKER_PID")
    wait_for_log "$dir/polymq.log" "listening protocol=mqtt" "$BROKER_PID"
    BROKER_ADDR=127.0.0.1:$port
}

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

# Hooks for the other peers (not run yet): RabbitMQ for AMQP 0-9-1 (and its
# MQTT plugin), a Kafka-wire broker for the Kafka scenarios. Each needs a
# start_<name> that sets BROKER_PID/BROKER_ADDR like the ones above and an
# ensure_<name> that installs it; run_peer picks them up by name.
ensure_rabbitmq() { log "rabbitmq: not wired up yet"; return 1; }
start_rabbitmq() { return 1; }
ensure_kafka() { log "kafka peer: not wired up yet"; return 1; }
start_kafka() { return 1; }

# ---------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------

bench() {
    # Scratch data (none for the MQTT scenarios, but the tool makes the dir) goes to the work dir.
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

# one_run NAME ARGS...: one scenario against the running NAME.
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

if [[ -z ${COMPARE_NO_BUILD:-} ]]; then
    log "building polymq and polymq-bench (release)"
    nice -n 10 cargo build --release --quiet -p polymq-broker -p polymq-bench
fi
command -v python3 >/dev/null || { log "python3 is needed for the tables"; exit 1; }

peers=()
for peer in ${PEERS//,/ }; do
    if "ensure_$peer"; then
        peers+=("$peer")
    else
        log "skipping $peer"
    fi
done

BROKERS=(polymq "${peers[@]}")
declare -A ADDR PID
for name in "${BROKERS[@]}"; do
    : >"$OUT/compare-mqtt-$name.jsonl"
done
if ((CONNS > 0)); then
    for name in "${BROKERS[@]}"; do
        conns_run "$name"
    done
fi
for name in "${BROKERS[@]}"; do
    "start_$name"
    ADDR[$name]=$BROKER_ADDR
    PID[$name]=$BROKER_PID
done
scenario_runs
for name in "${BROKERS[@]}"; do
    stop_broker "${PID[$name]}"
    python3 "$ROOT/bench/compare_table.py" --human "$OUT/compare-mqtt-$name.jsonl" >"$OUT/compare-mqtt-$name.txt"
done

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain 2>/dev/null | grep -q . && echo " (with local changes)" || true)
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
