#!/usr/bin/env bash
# kp-bench.sh LABEL BROKER_BIN BENCH_BIN OUT_JSONL SIZE
# One fresh polymq (fsync interval=50, fresh data dir), the Kafka produce and
# consume scenarios of polymq-bench against it, then the broker stopped and
# its data dir removed.
set -u
label=$1 bin=$2 bench=$3 out=$4 size=$5
dir=$(mktemp -d /tmp/kp-run.XXXXXX)
kport=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
"$bin" serve --data-dir "$dir/data" --fsync interval=50 --mqtt-listen 127.0.0.1:0 --amqp-listen 127.0.0.1:0 \
    --kafka-listen "127.0.0.1:$kport" --http-listen 127.0.0.1:0 2>"$dir/polymq.log" &
pid=$!
for _ in $(seq 100); do grep -q "listening protocol=kafka" "$dir/polymq.log" && break; sleep 0.1; done
POLYMQ_BENCH_PYTHON=${POLYMQ_BENCH_PYTHON:-$PWD/.venv/bin/python} "$bench" --json kafka --bootstrap "127.0.0.1:$kport" \
    --broker-pid "$pid" --label "$label" --scenario produce,consume --size "$size" --acks 1 --compression none \
    --producers 2 --partitions 4 --seconds 5 >>"$out"
kill "$pid"; wait "$pid"
rm -rf "$dir"
