#!/bin/bash
# One run of the before/after table: a fresh polymq on free ports and a temp
# data dir, the durable AMQP scenario against it, one JSON line out.
# usage: run.sh <polymq binary> <label> <queues> [seconds]
# (BENCH=path/to/polymq-bench; the table interleaves before/after per queue count)
BIN=$1; LABEL=$2; Q=$3; S=${4:-8}; BENCH=${BENCH:-target/release/polymq-bench}
D=$(mktemp -d); PORT=$((20000 + RANDOM % 20000))
$BIN serve --data-dir $D --amqp-listen 127.0.0.1:$PORT --mqtt-listen 127.0.0.1:0 --kafka-listen 127.0.0.1:0 \
  --http-listen 127.0.0.1:0 --log warn >$D.log 2>&1 &
PID=$!
for i in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
$BENCH --json amqp --amqp amqp://guest:guest@127.0.0.1:$PORT/%2f --broker-pid $PID --label $LABEL \
  --scenario durable --queues $Q --seconds $S 2>/dev/null | grep '"recv/s"'
kill $PID; wait $PID 2>/dev/null; rm -rf $D $D.log
