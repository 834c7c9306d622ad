#!/usr/bin/env bash
# How long SIGTERM takes with N open conversations (default 100,000), and
# whether every one is saved and restored. Uses the release binary and a
# nats-server on free loopback ports; removes everything it made.
#
#   benches/shutdown_state.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${1:-100000}
BIN="$ROOT/target/release/zhijian"
NATS=${NATS_SERVER_BIN:-$ROOT/.local/nats/bin/nats-server}
dir=$(mktemp -d "${TMPDIR:-/tmp}/zhijian-shutdown.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; sleep 0.5; rm -rf "$dir"; }
trap cleanup EXIT
"$NATS" -a 127.0.0.1 -p -1 -m -1 -js -sd "$dir/store" --ports_file_dir "$dir" >"$dir/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do ls "$dir"/nats-server_*.ports >/dev/null 2>&1 && break; sleep 0.05; done
url=$(python3 -c 'import glob,json,sys; print(json.load(open(glob.glob(sys.argv[1]+"/nats-server_*.ports")[0]))["nats"][0])' "$dir")
metrics=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$dir/zhijian.toml" <<TOML
[nats]
url = "$url"
[engine]
lexicons = "$ROOT/lexicons"
[metrics]
addr = "127.0.0.1:$metrics"
[console]
enabled = false
[log]
level = "info"
TOML
metric() { python3 -c 'import sys,urllib.request
b=urllib.request.urlopen(sys.argv[1],timeout=2).read().decode()
print(next((l.split()[1] for l in b.splitlines() if l.startswith(sys.argv[2]+" ")),"0"))' "http://127.0.0.1:$metrics/metrics" "$1" 2>/dev/null || echo 0; }
python3 -c 'import json,sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"conversation_id":f"s{i}","tenant":"acme","channel":"call","seq":0,"speaker":"agent","text":"您好，请问有什么可以帮您"},ensure_ascii=False))' "$N" >"$dir/open.jsonl"
"$BIN" run --config "$dir/zhijian.toml" 2>"$dir/run1.log" &
daemon=$!; pids+=("$daemon")
until python3 -c 'import sys,urllib.request; urllib.request.urlopen(sys.argv[1],timeout=1)' "http://127.0.0.1:$metrics/readyz" 2>/dev/null; do sleep 0.1; done
"$BIN" publish --nats-url "$url" "$dir/open.jsonl" >/dev/null
until [ "$(metric zhijian_open_conversations)" = "$N" ]; do sleep 0.2; done
start=$(date +%s.%N)
kill -TERM "$daemon"
set +e; wait "$daemon"; status=$?; set -e
took=$(python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.2f}')" "$start" "$(date +%s.%N)")
saved=$(grep -o 'conversations=[0-9]* took_ms=[0-9]*' "$dir/run1.log" | head -1 || true)
echo "open conversations: $N; SIGTERM to exit: ${took} s, exit status $status; saved: $saved"
"$BIN" run --config "$dir/zhijian.toml" 2>"$dir/run2.log" &
daemon=$!; pids+=("$daemon")
until [ "$(metric zhijian_state_restored_conversations_total)" != 0 ]; do sleep 0.2; done
sleep 1
echo "restored at the next start: $(metric zhijian_state_restored_conversations_total); open: $(metric zhijian_open_conversations)"
grep -i "restored" "$dir/run2.log" | head -2 || true
