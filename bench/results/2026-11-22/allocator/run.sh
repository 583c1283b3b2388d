#!/usr/bin/env bash
# usage: alloc.sh <variant> <out.jsonl>
set -u
ulimit -n 20000
V=$1; OUT=$2; BIN=/tmp/pm/polymq-$V; B=/tmp/pm/polymq-bench
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
run_broker() { D=$(mktemp -d); MP=$(port); AP=$(port); $BIN serve --data-dir $D --mqtt-listen 127.0.0.1:$MP --amqp-listen 127.0.0.1:$AP --kafka-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --log warn & PID=$!; sleep 1.5; }
stop_broker() { kill $PID; wait $PID 2>/dev/null; rm -rf $D; }
run_broker
$B --json mqtt-conns --label $V --mqtt 127.0.0.1:$MP --count 10000 --broker-pid $PID --hold-seconds 1 >> $OUT 2>/dev/null
stop_broker
run_broker
$B --json amqp --label $V --amqp amqp://guest:guest@127.0.0.1:$AP/%2f --broker-pid $PID --scenario durable --queues 1 --seconds 8 >> $OUT 2>/dev/null
stop_broker
