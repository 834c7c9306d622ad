#!/usr/bin/env bash
# Bytes the checkpoints of one instance write into the cluster bucket:
# deltas over bases (the default) against every checkpoint a base
# ([cluster] max_deltas = 0), the same traffic for both, one after the
# other on one nats-server (free loopback ports; everything removed after).
#
#   benches/checkpoints.sh [OPEN] [RATE]
#
# OPEN conversations at once (default 10,000), 12 turns each then `end`,
# published at RATE lines/s (default 2,500: a segment per conversation
# every 4 s, a call's pace). Uses the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OPEN=${1:-10000}
RATE=${2:-2500}
BIN="$ROOT/target/release/zhijian"
NATS=${NATS_SERVER_BIN:-$ROOT/.local/nats/bin/nats-server}
dir=$(mktemp -d "${TMPDIR:-/tmp}/zhijian-checkpoints.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
metric() { # port series: its value, 0 when absent
    python3 - "$1" "$2" <<'EOF'
import sys, urllib.request
port, name = sys.argv[1], sys.argv[2]
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
print(next((l.rsplit(" ", 1)[1] for l in text.splitlines() if l.startswith(name + " ")), "0"))
EOF
}

python3 - "$OPEN" >"$dir/input.jsonl" <<'EOF'
import json, sys
texts = ["您好，请问有什么可以帮您", "我的订单还没到", "好的，我帮您查一下", "大概什么时候能到",
         "预计明天送达", "好的谢谢", "还有别的问题吗", "没有了", "感谢您的来电，再见"]
n = int(sys.argv[1])
for t in range(12):
    for c in range(n):
        print(json.dumps({"conversation_id": f"c{c}", "tenant": "acme", "seq": t,
                          "speaker": "agent" if t % 2 == 0 else "customer",
                          "text": texts[t % len(texts)]}, ensure_ascii=False))
for c in range(n):
    print(json.dumps({"conversation_id": f"c{c}", "tenant": "acme", "type": "end"}))
EOF
lines=$(wc -l <"$dir/input.jsonl")
echo "$OPEN conversations, $lines lines at $RATE lines/s, one instance, 12 partitions"
echo "| checkpoints | base bytes | delta bytes | total | checkpoints written | seconds |"
echo "|---|---|---|---|---|---|"
for max_deltas in 32 0; do
    rm -rf "$dir/store"
    port=$(free_port); monitor=$(free_port); metrics=$(free_port)
    "$NATS" -a 127.0.0.1 -p "$port" -m "$monitor" -js -sd "$dir/store" >"$dir/nats.log" 2>&1 &
    nats_pid=$!
    pids+=("$nats_pid")
    until curl -sf "http://127.0.0.1:$monitor/healthz?js-enabled-only=true" >/dev/null; do sleep 0.1; done
    ZHIJIAN_CLUSTER_MAX_DELTAS=$max_deltas ZHIJIAN_CONSOLE_ENABLED=false ZHIJIAN_LOG_LEVEL=warn \
        "$BIN" run --nats-url "nats://127.0.0.1:$port" --metrics-addr "127.0.0.1:$metrics" \
        --lexicons "$ROOT/lexicons" 2>"$dir/daemon.log" &
    daemon_pid=$!
    pids+=("$daemon_pid")
    until curl -sf "http://127.0.0.1:$metrics/readyz" >/dev/null; do sleep 0.1; done
    started=$(date +%s.%N)
    "$BIN" publish --nats-url "nats://127.0.0.1:$port" --rate "$RATE" "$dir/input.jsonl" 2>/dev/null
    until [ "$(metric "$metrics" 'zhijian_conversations_closed_total{reason="end"}')" = "$OPEN" ]; do sleep 0.2; done
    sleep 1.5 # the last checkpoints
    took=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
    base=$(metric "$metrics" 'zhijian_checkpoint_written_bytes_total{kind="base"}')
    delta=$(metric "$metrics" 'zhijian_checkpoint_written_bytes_total{kind="delta"}')
    written=$(metric "$metrics" 'zhijian_checkpoints_total{outcome="ok"}')
    label=$([ "$max_deltas" = 0 ] && echo "bases only" || echo "deltas (max_deltas = $max_deltas)")
    echo "| $label | $base | $delta | $((base + delta)) | $written | $took |"
    kill -TERM "$daemon_pid"; wait "$daemon_pid" || true
    kill -TERM "$nats_pid"; wait "$nats_pid" || true
done
