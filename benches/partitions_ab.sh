#!/usr/bin/env bash
# The daemon on a partitioned input stream (the default) against an
# unpartitioned one ([cluster] partitions = 0), alternating, with the load
# generator (`zhijian bench --modes daemon`) against one nats-server on free
# loopback ports; everything removed after. Needs
# `cargo build --release --features bench-tools`.
#
#   benches/partitions_ab.sh [RATE] [ROUNDS]
#
# RATE: input segments per second (default 0: as fast as JetStream acks).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RATE=${1:-0}
ROUNDS=${2:-3}
BIN="$ROOT/target/release/zhijian"
NATS=${NATS_SERVER_BIN:-$ROOT/.local/nats/bin/nats-server}
dir=$(mktemp -d "${TMPDIR:-/tmp}/zhijian-partitions-ab.XXXXXX")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
monitor=$(free_port)
"$NATS" -a 127.0.0.1 -p "$port" -m "$monitor" -js -sd "$dir/store" >"$dir/nats.log" 2>&1 &
nats_pid=$!
cleanup() { kill -TERM "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
until curl -sf "http://127.0.0.1:$monitor/healthz?js-enabled-only=true" >/dev/null; do sleep 0.1; done
echo "rate $RATE (0 = max), $ROUNDS rounds, 8 shards, one nats-server"
for round in $(seq 1 "$ROUNDS"); do
    for stream in partitioned unpartitioned; do
        partitions=()
        [ "$stream" = unpartitioned ] && partitions=(ZHIJIAN_CLUSTER_PARTITIONS=0)
        echo "== round $round: $stream"
        env "${partitions[@]}" "$BIN" bench --nats-url "nats://127.0.0.1:$port" \
            --lexicons "$ROOT/lexicons" --shards 8 --rate "$RATE" --modes daemon |
            grep -E '^\| (mode|daemon) '
    done
done
