#!/usr/bin/env bash
# End-to-end test of deploy/nats/nats.conf's users and permissions with the
# real programs: a copy of the production config (temporary store, free
# loopback ports, random passwords) and
#
#   1. admin provisions: `zhijian run` with streams.create = true, stopped
#      (the partitioned input stream, the unroutable stream, the buckets)
#   2. zhijian (the daemon) runs with streams.create = false
#      (and serves its console: live feed and one conversation view)
#   3. qa_reader runs `zhijian tail` (core subscribe on violations/summaries)
#   4. asr publishes examples/conversations.jsonl plus one bad line and one
#      conversation that stays open
#   5. the daemon is stopped (checkpoints the open conversations to the
#      cluster bucket), started again (restores them), stopped again
#   6. qa_reader creates, uses and deletes its own durable pull consumer on
#      VIOLATIONS (only when the Python client nats-py is importable)
#   7. negative cases: qa_reader may not publish transcripts, asr may not
#      read violations through JetStream, zhijian may not create streams
#
# and fails on any "Permissions Violation" in any log, or when violations
# do not flow or state is not saved and restored.
#
# Usage (from anywhere): deploy/nats/test-permissions.sh
#   ZJ_BIN           the daemon binary (default target/release/zhijian: run
#                    `cargo build --release --locked` first; not ZHIJIAN_BIN:
#                    the daemon reads every ZHIJIAN_* variable as a setting)
#   NATS_SERVER_BIN  nats-server 2.11+ (default .local/nats/bin/nats-server)
#   NATS_CONF        the config to test (default deploy/nats/nats.conf)
#   KEEP=1           keep the temporary directory with every log
#   OPEN=N           conversations left open at shutdown (default 2000: a key
#                    listing big enough for JetStream flow control)
#   CONSOLE=0        turn the daemon's console off (it is on by default)
#   TRACE=1          nats-server traces every protocol message (nats.log)
#   CLUSTER=1        two daemons sharing the partitions, a hand-over on
#                    SIGTERM
# Not part of deploy/check: it needs a built daemon.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

ZJ_BIN=${ZJ_BIN:-$ROOT/target/release/zhijian}
NATS_SERVER_BIN=${NATS_SERVER_BIN:-$ROOT/.local/nats/bin/nats-server}
NATS_CONF=${NATS_CONF:-deploy/nats/nats.conf}
for b in "$ZJ_BIN" "$NATS_SERVER_BIN"; do
    [ -x "$b" ] || { echo "missing executable: $b" >&2; exit 2; }
done

TMP=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "logs kept in $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap "exit 130" INT TERM

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_http() { # url
    for _ in $(seq 1 150); do
        if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}
metric() { # port name-with-labels: prints the summed value
    python3 - "$1" "$2" <<'EOF'
import sys, urllib.request
port, name = sys.argv[1], sys.argv[2]
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
total = 0.0
for line in text.splitlines():
    if line.startswith(name + " ") or line.startswith(name + "{"):
        total += float(line.rsplit(" ", 1)[1])
print(int(total))
EOF
}
stop() { # pid: SIGTERM, wait, return its exit status
    kill -TERM "$1"
    local rc=0
    wait "$1" || rc=$?
    return $rc
}

rand() { python3 -c 'import secrets; print(secrets.token_hex(12))'; }
# Not exported: only nats-server gets them (the zhijian programs would read
# ZHIJIAN_NATS_PASSWORD as their own password).
NATS_ADMIN_PASSWORD=$(rand)
ZHIJIAN_NATS_PASSWORD=$(rand)
ASR_NATS_PASSWORD=$(rand)
QA_READER_NATS_PASSWORD=$(rand)

NATS_PORT=$(free_port)
MON_PORT=$(free_port)
METRICS_PORT=$(free_port)
HOST=127.0.0.1:$NATS_PORT
OPEN=${OPEN:-2000}

step "nats-server $("$NATS_SERVER_BIN" --version | awk '{print $2}') with a copy of $NATS_CONF on $HOST"
sed -e "s|^listen: .*|listen: 127.0.0.1:$NATS_PORT|" \
    -e "s|^http: .*|http: 127.0.0.1:$MON_PORT|" \
    -e "s|store_dir: .*|store_dir: \"$TMP/jetstream\"|" \
    -e "s|max_file_store: .*|max_file_store: 1GB|" \
    "$NATS_CONF" >"$TMP/nats.conf"
grep -q "listen: 127.0.0.1:$NATS_PORT" "$TMP/nats.conf" || fail "could not rewrite listen"
grep -q "store_dir: \"$TMP/jetstream\"" "$TMP/nats.conf" || fail "could not rewrite store_dir"
env NATS_ADMIN_PASSWORD="$NATS_ADMIN_PASSWORD" ZHIJIAN_NATS_PASSWORD="$ZHIJIAN_NATS_PASSWORD" \
    ASR_NATS_PASSWORD="$ASR_NATS_PASSWORD" QA_READER_NATS_PASSWORD="$QA_READER_NATS_PASSWORD" \
    "$NATS_SERVER_BIN" -c "$TMP/nats.conf" ${TRACE:+-V} >"$TMP/nats.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$MON_PORT/healthz?js-enabled-only=true" || fail "nats-server did not start: $(cat "$TMP/nats.log")"

# Credentials go through ZHIJIAN_NATS_USER/ZHIJIAN_NATS_PASSWORD (the way
# production passes them): async-nats ignores user:password in the URL.
as_user() { # user password command...
    local user=$1 password=$2
    shift 2
    ZHIJIAN_NATS_USER="$user" ZHIJIAN_NATS_PASSWORD="$password" "$@"
}

# The console ([console], on by default) reads the streams through ordered
# consumers of its own: it runs on a free port and step 4 asks it for a
# conversation. A daemon built before the console refuses its variables.
CONSOLE_PORT=$(free_port)
CONSOLE_ENV=()
probe=$(ZHIJIAN_CONSOLE_ADDR=127.0.0.1:0 ZHIJIAN_NATS_URL=nats://127.0.0.1:1 ZHIJIAN_NATS_CONNECT_TIMEOUT_MS=100 \
    timeout 10 "$ZJ_BIN" run --metrics-addr 127.0.0.1:0 --lexicons "$ROOT/lexicons" 2>&1 || true)
if [[ $probe != *"unknown key [console]"* ]]; then
    CONSOLE_ENV=(ZHIJIAN_CONSOLE_ADDR="127.0.0.1:$CONSOLE_PORT")
    [ "${CONSOLE:-1}" = 1 ] || CONSOLE_ENV+=(ZHIJIAN_CONSOLE_ENABLED=false)
fi

# The daemon: zhijian's defaults plus the test's URL and ports; the user and
# password come from the environment, as in production.
daemon() { # log-file user password create
    env "${CONSOLE_ENV[@]}" ZHIJIAN_NATS_URL="nats://$HOST" \
        ZHIJIAN_NATS_USER="$2" ZHIJIAN_NATS_PASSWORD="$3" \
        ZHIJIAN_STREAMS_CREATE="$4" \
        ZHIJIAN_DAEMON_SHUTDOWN_GRACE_S=10 \
        "$ZJ_BIN" run --metrics-addr "127.0.0.1:$METRICS_PORT" --lexicons "$ROOT/lexicons" 2>"$1" &
    DAEMON=$!
    pids+=("$DAEMON")
}

# CLUSTER=1: admin provisions the partitioned stream, the stream of
# unroutable inputs and the cluster bucket, two daemons share the
# partitions as zhijian, a dotted conversation id is judged, one daemon
# hands over on SIGTERM; any permission violation fails.
cluster_permissions() {
    local partitions=4 m1 m2 d1 d2 lines bad=0
    cdaemon() { # log user password create instance metrics-port
        env ZHIJIAN_CONSOLE_ENABLED=false ZHIJIAN_NATS_URL="nats://$HOST" \
            ZHIJIAN_NATS_USER="$2" ZHIJIAN_NATS_PASSWORD="$3" ZHIJIAN_STREAMS_CREATE="$4" \
            ZHIJIAN_CLUSTER_PARTITIONS=$partitions ZHIJIAN_CLUSTER_INSTANCE="$5" \
            ZHIJIAN_CLUSTER_HEARTBEAT_MS=250 ZHIJIAN_CLUSTER_LEASE_MS=1500 ZHIJIAN_DAEMON_SHUTDOWN_GRACE_S=10 \
            "$ZJ_BIN" run --metrics-addr "127.0.0.1:$6" --lexicons "$ROOT/lexicons" 2>"$1" &
        DAEMON=$!
        pids+=("$DAEMON")
    }
    judged() { echo $(($(metric "$m1" zhijian_input_events_total) + $(metric "$m2" zhijian_input_events_total))); }
    step "C1. admin provisions the partitioned stream ($partitions partitions) and the buckets"
    cdaemon "$TMP/daemon-admin.log" admin "$NATS_ADMIN_PASSWORD" true admin "$METRICS_PORT"
    wait_http "http://127.0.0.1:$METRICS_PORT/readyz" || fail "provisioning run not ready: $(tail -5 "$TMP/daemon-admin.log")"
    stop "$DAEMON" || fail "provisioning run exited non-zero"
    step "C2. two daemons share the partitions as zhijian (streams.create = false)"
    m1=$(free_port)
    m2=$(free_port)
    cdaemon "$TMP/daemon-1.log" zhijian "$ZHIJIAN_NATS_PASSWORD" false zj-1 "$m1"
    d1=$DAEMON
    cdaemon "$TMP/daemon-2.log" zhijian "$ZHIJIAN_NATS_PASSWORD" false zj-2 "$m2"
    d2=$DAEMON
    wait_http "http://127.0.0.1:$m1/readyz" || fail "daemon 1 not ready: $(tail -5 "$TMP/daemon-1.log")"
    wait_http "http://127.0.0.1:$m2/readyz" || fail "daemon 2 not ready: $(tail -5 "$TMP/daemon-2.log")"
    for _ in $(seq 1 100); do
        [ $(($(metric "$m1" zhijian_partitions_owned) + $(metric "$m2" zhijian_partitions_owned))) -eq $partitions ] && break
        sleep 0.1
    done
    echo "   partitions: zj-1 $(metric "$m1" zhijian_partitions_owned), zj-2 $(metric "$m2" zhijian_partitions_owned)"
    step "C3. asr publishes examples/conversations.jsonl"
    as_user asr "$ASR_NATS_PASSWORD" "$ZJ_BIN" publish --nats-url "nats://$HOST" examples/conversations.jsonl 2>"$TMP/publish.err" ||
        fail "asr could not publish: $(cat "$TMP/publish.err")"
    lines=$(grep -c . examples/conversations.jsonl)
    for _ in $(seq 1 100); do
        [ "$(judged)" -ge "$lines" ] && break
        sleep 0.1
    done
    echo "   judged: $(judged)/$lines, violations: $(($(metric "$m1" zhijian_violations_total) + $(metric "$m2" zhijian_violations_total)))"
    [ "$(judged)" -ge "$lines" ] || fail "only $(judged) of $lines inputs judged"
    step "C3b. asr publishes a conversation id holding '.' (zhijian publish escapes it): judged"
    before=$(judged)
    echo '{"conversation_id":"call.7","tenant":"acme","seq":0,"speaker":"agent","text":"您好"}' |
        as_user asr "$ASR_NATS_PASSWORD" "$ZJ_BIN" publish --nats-url "nats://$HOST" - 2>>"$TMP/publish.err" ||
        fail "asr could not publish the dotted id: $(cat "$TMP/publish.err")"
    for _ in $(seq 1 100); do
        [ "$(judged)" -gt "$before" ] && break
        sleep 0.1
    done
    [ "$(judged)" -gt "$before" ] || fail "the dotted id was not judged"
    echo "   judged: $(judged)"
    step "C4. SIGTERM hands zj-1's partitions to zj-2 (checkpoint, release, take over)"
    stop "$d1" || fail "zj-1 exited non-zero on SIGTERM: $(tail -5 "$TMP/daemon-1.log")"
    for _ in $(seq 1 100); do
        [ "$(metric "$m2" zhijian_partitions_owned)" -eq $partitions ] && break
        sleep 0.1
    done
    [ "$(metric "$m2" zhijian_partitions_owned)" -eq $partitions ] || fail "zj-2 holds $(metric "$m2" zhijian_partitions_owned) of $partitions partitions"
    echo "   zj-2 holds all $partitions partitions"
    stop "$d2" || fail "zj-2 exited non-zero on SIGTERM: $(tail -5 "$TMP/daemon-2.log")"
    step "logs"
    for f in "$TMP"/daemon-*.log "$TMP/publish.err"; do
        if grep -Ei 'permissions? violation|authori[sz]ation|permission denied' "$f"; then
            echo "   ^ in $(basename "$f")"
            bad=1
        fi
    done
    if grep '\[ERR\].*Violation' "$TMP/nats.log"; then
        echo "   ^ denied by nats-server"
        bad=1
    fi
    [ "$bad" = 0 ] || fail "permission problems (logs: KEEP=1)"
    echo "PASS (cluster): $NATS_CONF lets two zhijian instances share a partitioned stream"
    exit 0
}
[ "${CLUSTER:-0}" = 1 ] && cluster_permissions

step "1. admin provisions streams and buckets (streams.create = true)"
daemon "$TMP/daemon-admin.log" admin "$NATS_ADMIN_PASSWORD" true
wait_http "http://127.0.0.1:$METRICS_PORT/readyz" || fail "provisioning run not ready: $(tail -5 "$TMP/daemon-admin.log")"
stop "$DAEMON" || fail "provisioning run exited non-zero"

step "2. zhijian runs with streams.create = false"
daemon "$TMP/daemon-1.log" zhijian "$ZHIJIAN_NATS_PASSWORD" false
wait_http "http://127.0.0.1:$METRICS_PORT/readyz" || fail "daemon not ready: $(tail -5 "$TMP/daemon-1.log")"

step "3. qa_reader tails violations and summaries"
# env execs tail: $! is tail's own pid (a backgrounded function would be a
# subshell, and killing it would leave tail running).
env ZHIJIAN_NATS_USER=qa_reader ZHIJIAN_NATS_PASSWORD="$QA_READER_NATS_PASSWORD" \
    "$ZJ_BIN" tail --json --nats-url "nats://$HOST" >"$TMP/tail.out" 2>"$TMP/tail.err" &
pids+=($!)
sleep 0.5

step "4. asr publishes examples/conversations.jsonl, a bad line and $OPEN open conversations"
as_user asr "$ASR_NATS_PASSWORD" "$ZJ_BIN" publish --nats-url "nats://$HOST" examples/conversations.jsonl 2>"$TMP/publish.err" ||
    fail "asr could not publish: $(cat "$TMP/publish.err")"
echo '{"conversation_id": "broken' |
    as_user asr "$ASR_NATS_PASSWORD" "$ZJ_BIN" publish --nats-url "nats://$HOST" - 2>>"$TMP/publish.err" ||
    fail "asr could not publish the bad line"
python3 -c '
import json
for i in range('"$OPEN"'):
    print(json.dumps({"conversation_id": f"perm-open-{i}", "tenant": "permtest", "seq": 0,
                      "speaker": "agent", "text": "您好，请问有什么可以帮您"}, ensure_ascii=False))' |
    as_user asr "$ASR_NATS_PASSWORD" "$ZJ_BIN" publish --nats-url "nats://$HOST" - 2>>"$TMP/publish.err" ||
    fail "asr could not publish the open conversation"
lines=$(grep -c . examples/conversations.jsonl)
want=$((lines + OPEN))
for _ in $(seq 1 150); do
    [ "$(metric "$METRICS_PORT" zhijian_input_events_total)" -ge "$want" ] &&
        [ "$(metric "$METRICS_PORT" zhijian_deadlettered_total)" -ge 1 ] && break
    sleep 0.2
done
sleep 1
violations=$(metric "$METRICS_PORT" zhijian_violations_total)
deadlettered=$(metric "$METRICS_PORT" zhijian_deadlettered_total)
failures=$(metric "$METRICS_PORT" zhijian_publish_failures_total)
tailed=$(grep -c '"type":"violation"' "$TMP/tail.out" || true)
summaries=$(grep -c '"type":"summary"' "$TMP/tail.out" || true)
echo "   daemon: input events=$(metric "$METRICS_PORT" zhijian_input_events_total)/$want violations=$violations deadlettered=$deadlettered publish_failures=$failures"
echo "   tail (qa_reader): $tailed violations, $summaries summaries"
[ "$violations" -gt 0 ] || fail "no violations judged"
[ "$tailed" -eq "$violations" ] || fail "qa_reader saw $tailed of $violations violations"
[ "$summaries" -gt 0 ] || fail "qa_reader saw no summaries"
[ "$deadlettered" -ge 1 ] || fail "the bad line was not dead-lettered"
[ "$failures" -eq 0 ] || fail "publish failures: $failures"

if [[ ${#CONSOLE_ENV[@]} -eq 1 ]] && command -v curl >/dev/null; then
    # The console's conversation view reads TRANSCRIPTS with its own consumer.
    code=$(curl -s -o "$TMP/console.json" -w '%{http_code}' \
        "http://127.0.0.1:$CONSOLE_PORT/api/conversations/acme/call-0001" || true)
    echo "   console conversation view: HTTP $code, $(grep -o '"seq"' "$TMP/console.json" | wc -l) segments"
    if [ "$code" != 200 ] || ! grep -q '"seq"' "$TMP/console.json"; then
        fail "console conversation view failed"
    fi
    # The desk: acknowledge that conversation's first alert (a compare-and-
    # set in the bucket zhijian_state_desk), read back through the watch.
    alert=$(grep -oE '"id":"[0-9a-f]{32}"' "$TMP/console.json" | head -1 | grep -oE '[0-9a-f]{32}' || true)
    [ -n "$alert" ] || fail "no alert in the conversation view"
    code=$(curl -s -o "$TMP/desk.json" -w '%{http_code}' -H 'Content-Type: application/json' \
        -d '{"action":"acknowledge","by":"permtest"}' "http://127.0.0.1:$CONSOLE_PORT/api/alerts/$alert" || true)
    echo "   console desk: acknowledge HTTP $code"
    if [ "$code" != 200 ] || ! grep -q '"status":"acknowledged"' "$TMP/desk.json"; then
        fail "console desk action failed: $(cat "$TMP/desk.json")"
    fi
    for _ in $(seq 1 50); do
        curl -s "http://127.0.0.1:$CONSOLE_PORT/api/alerts/$alert" | grep -q '"acknowledged"' && break
        sleep 0.1
    done
    curl -s "http://127.0.0.1:$CONSOLE_PORT/api/alerts/$alert" | grep -q '"acknowledged"' || fail "the desk's watch did not see the action"
fi

step "5. SIGTERM checkpoints the open conversations; a restart restores them"
stop "$DAEMON" || fail "daemon exited non-zero on SIGTERM: $(tail -5 "$TMP/daemon-1.log")"
daemon "$TMP/daemon-2.log" zhijian "$ZHIJIAN_NATS_PASSWORD" false
wait_http "http://127.0.0.1:$METRICS_PORT/readyz" || fail "daemon not ready after restart: $(tail -5 "$TMP/daemon-2.log")"
restored=$(metric "$METRICS_PORT" zhijian_state_restored_conversations_total)
echo "   restored conversations: $restored"
[ "$restored" -ge "$OPEN" ] || fail "restored $restored of $OPEN open conversations"
stop "$DAEMON" || fail "daemon exited non-zero on the second SIGTERM"

step "6. qa_reader's own durable consumer on VIOLATIONS"
if python3 -c 'import nats' 2>/dev/null; then
    python3 - "nats://qa_reader:$QA_READER_NATS_PASSWORD@$HOST" "$violations" <<'EOF'
import asyncio, sys

import nats
from nats.js.api import ConsumerConfig

async def main(url, expected):
    errors = []

    async def on_error(e):
        errors.append(e)

    nc = await nats.connect(url, error_cb=on_error)
    js = nc.jetstream()
    await js.stream_info("VIOLATIONS")
    sub = await js.pull_subscribe("violations.>", durable="qa-test", stream="VIOLATIONS",
                                  config=ConsumerConfig(durable_name="qa-test"))
    got = 0
    while True:
        try:
            msgs = await sub.fetch(100, timeout=1)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            break
        for m in msgs:
            await m.ack()
            got += 1
    info = await js.consumer_info("VIOLATIONS", "qa-test")
    await sub.unsubscribe()
    await js.delete_consumer("VIOLATIONS", "qa-test")
    await nc.close()
    print(f"   qa_reader pulled and acked {got} violations (ack pending {info.num_ack_pending})")
    if got != int(expected) or errors:
        sys.exit(f"expected {expected}, errors {errors}")

asyncio.run(main(sys.argv[1], sys.argv[2]))
EOF
else
    echo "   skipped: Python package nats-py not importable (pip install nats-py)"
fi

# Every permission violation so far is a failure; step 7 causes some.
grep '\[ERR\].*Violation' "$TMP/nats.log" >"$TMP/denials-before" || true

step "7. what must be refused"
if echo '{"conversation_id":"x","seq":0,"speaker":"agent","text":"hi"}' |
    as_user qa_reader "$QA_READER_NATS_PASSWORD" timeout 20 "$ZJ_BIN" publish --nats-url "nats://$HOST" - 2>"$TMP/neg-publish.err"; then
    fail "qa_reader could publish a transcript"
fi
echo "   qa_reader cannot publish transcripts"
if python3 -c 'import nats' 2>/dev/null; then
    python3 - "nats://asr:$ASR_NATS_PASSWORD@$HOST" "nats://zhijian:$ZHIJIAN_NATS_PASSWORD@$HOST" <<'EOF'
import asyncio, sys

import nats
from nats.js.api import StreamConfig

async def refused(what, coro):
    try:
        await coro
    except Exception as e:  # a timeout: the server dropped the request
        print(f"   {what}: refused ({type(e).__name__})")
        return
    sys.exit(f"{what}: allowed")

async def main(asr_url, zhijian_url):
    async def quiet(e):
        pass
    asr = await nats.connect(asr_url, error_cb=quiet)
    await refused("asr reads VIOLATIONS", asr.jetstream(timeout=2).stream_info("VIOLATIONS"))
    await asr.close()
    zj = await nats.connect(zhijian_url, error_cb=quiet)
    await refused("zhijian creates a stream",
                  zj.jetstream(timeout=2).add_stream(StreamConfig(name="ROGUE", subjects=["rogue.>"])))
    await refused("zhijian deletes TRANSCRIPTS", zj.jetstream(timeout=2).delete_stream("TRANSCRIPTS"))
    await zj.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
EOF
fi
step "logs"
sleep 0.5
bad=0
for f in "$TMP"/daemon-*.log "$TMP/tail.err" "$TMP/publish.err"; do
    if grep -Ei 'permissions? violation|authori[sz]ation|permission denied' "$f"; then
        echo "   ^ in $(basename "$f")"
        bad=1
    fi
    if grep -E '"level":"ERROR"| ERROR ' "$f"; then
        echo "   ^ error in $(basename "$f")"
        bad=1
    fi
done
if [ -s "$TMP/denials-before" ]; then
    cat "$TMP/denials-before"
    echo "   ^ nats-server refused the programs under test"
    bad=1
fi
# Step 7's refusals, and nothing else.
grep '\[ERR\].*Violation' "$TMP/nats.log" >"$TMP/denials" || true
echo "   nats-server logged $(wc -l <"$TMP/denials") permission violations, all expected (step 7):"
sed 's/^.* - "QA\//     /' "$TMP/denials"
# shellcheck disable=SC2016 # literal $JS subjects
if grep -v 'user:qa_reader" - Publish Violation - Subject "transcripts\.\|user:asr" - Publish Violation - Subject "$JS.API.STREAM.INFO.VIOLATIONS"\|user:zhijian" - Publish Violation - Subject "$JS.API.STREAM.\(CREATE.ROGUE\|DELETE.TRANSCRIPTS\)"' "$TMP/denials"; then
    echo "   ^ unexpected permission violations"
    bad=1
fi
expected=1
python3 -c 'import nats' 2>/dev/null && expected=4
# zhijian publish sends an unacknowledged message again for a while (a
# server failing over looks the same): count each refusal once.
distinct=$(sed 's/^.* - "QA\///' "$TMP/denials" | sort -u | wc -l)
[ "$distinct" -eq "$expected" ] || { echo "   expected $expected distinct refusals in step 7, got $distinct"; bad=1; }
[ "$bad" = 0 ] || fail "see the logs above (KEEP=1 to keep $TMP)"
echo "PASS: $NATS_CONF gives zhijian, asr and qa_reader what they need, and refuses the rest"
