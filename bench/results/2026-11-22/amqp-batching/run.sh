#!/bin/bash
# usage: run.sh <broker-binary> <label> <queues> [seconds]
BIN=$1; LABEL=$2; Q=$3; S=${4:-8}
D=$(mktemp -d /tmp/amqpperf/data.XXXX)
PORT=$((20000 + RANDOM % 20000))
$BIN serve --data-dir $D --amqp-listen 127.0.0.1:$PORT --mqtt-listen 127.0.0.1:0 --kafka-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --log warn >$D.log 2>&1 &
PID=$!
for i in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
/tmp/amqpperf/polymq-bench --json amqp --amqp amqp://guest:guest@127.0.0.1:$PORT/%2f --broker-pid $PID --label $LABEL \
  --scenario durable --queues $Q --seconds $S --data-dir /tmp/amqpperf 2>/dev/null | grep '"consumed\|msg_s\|scenario' | tail -1
kill $PID; wait $PID 2>/dev/null; rm -rf $D $D.log
