#!/usr/bin/env python3
"""Verdicts of three instances through a kill -9, against `zhijian scan`.

A nats-server (JetStream, one node) on free loopback ports, three
`zhijian run` instances on the default partitioned stream, `zhijian tail
--json` recording what they publish; a JSONL file of input events is
published at --rate lines/s, and after --kill-after seconds the instance
holding the most partitions is killed (SIGKILL) and started again a second
later (--interleave conversations are in progress at once, so the kill
finds open ones). When the output has been quiet for --quiet seconds, every stored
event must equal `zhijian scan` of the same file, id for id and field for
field (the time of a summary or verdict aside: see `verdict`), and the
output stream must hold each id once.

    python3 benches/failover_parity.py --bin target/release/zhijian \\
        --nats-server .local/nats/bin/nats-server FILE.jsonl

Everything it starts is stopped by pid, its files removed.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import free_port  # noqa: E402  (benches/cluster.py)


def get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metric(port, name):
    try:
        text = get(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def verdict(event):
    """An event without the time of a summary or of a verdict (a violation
    without `matched`): that is the conversation's time when it was reached,
    its last segment's `ts_ms` plus the engine time since (docs/events.md),
    and the daemon's engine time is the wall clock, a millisecond or two on
    between a segment and the `end` after it, where `scan` reads the file
    at once. A match's `ts_ms` is its segment's, and compared."""
    if event.get("type") == "summary" or event.get("matched") is None:
        return {k: v for k, v in event.items() if k != "ts_ms"}
    return event


def wait(what, check, timeout=60):
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--nats-server", required=True)
    ap.add_argument("--lexicons", default="lexicons")
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--kill-after", type=float, default=2.0)
    ap.add_argument("--quiet", type=float, default=10.0)
    ap.add_argument("--interleave", type=int, default=200,
                    help="conversations in progress at once (the file's lines are "
                         "interleaved, each conversation's kept in order)")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="zhijian-parity-")
    procs = []

    def start(cmd, log, env=None):
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, **(env or {})))
        procs.append(p)
        return p

    try:
        args.input = interleave(args.input, args.interleave, os.path.join(tmp, "input.jsonl"))
        port, monitor = free_port(), free_port()
        start([args.nats_server, "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor),
               "-js", "-sd", os.path.join(tmp, "store")], subprocess.DEVNULL)
        wait("nats-server", lambda: _ok(f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true"))
        url = f"nats://127.0.0.1:{port}"
        instances = {}

        def run(name):
            mport = instances[name][1] if name in instances else free_port()
            log = open(os.path.join(tmp, f"{name}.log"), "a")
            p = start([args.bin, "run", "--nats-url", url, "--metrics-addr", f"127.0.0.1:{mport}",
                       "--lexicons", args.lexicons], log,
                      {"ZHIJIAN_CLUSTER_INSTANCE": name, "ZHIJIAN_CONSOLE_ENABLED": "false",
                       "ZHIJIAN_LOG_LEVEL": "warn"})
            instances[name] = (p, mport)
            wait(f"{name} ready", lambda: _ok(f"http://127.0.0.1:{mport}/readyz"))

        for name in ("a", "b", "c"):
            run(name)
        wait("12 partitions held", lambda: sum(
            metric(m, "zhijian_partitions_owned") or 0 for _, m in instances.values()) == 12)
        tail_out = open(os.path.join(tmp, "tail.jsonl"), "w")
        start([args.bin, "tail", "--json", "--nats-url", url, "--color", "never"], tail_out)
        time.sleep(0.5)
        publisher = start([args.bin, "publish", "--nats-url", url, "--rate", str(args.rate),
                           args.input], subprocess.DEVNULL)
        time.sleep(args.kill_after)
        owned = {n: metric(m, "zhijian_partitions_owned") or 0 for n, (_, m) in instances.items()}
        victim = max(owned, key=owned.get)
        open_convs = metric(instances[victim][1], "zhijian_open_conversations") or 0
        instances[victim][0].send_signal(signal.SIGKILL)
        instances[victim][0].wait()
        killed_at = time.time()
        print(f"killed {victim} (held {owned[victim]:.0f} of 12 partitions, "
              f"{open_convs:.0f} open conversations) {args.kill_after:.1f} s into the publish",
              flush=True)
        time.sleep(1.0)
        run(victim)
        if publisher.wait() != 0:
            sys.exit("publish failed")
        path = os.path.join(tmp, "tail.jsonl")
        last = (-1, time.time())
        while time.time() - last[1] < args.quiet:
            size = os.path.getsize(path)
            if size != last[0]:
                last = (size, time.time())
            time.sleep(0.2)
        replayed = sum(metric(m, "zhijian_replayed_messages_total") or 0
                       for _, m in instances.values())
        print(f"output quiet for {args.quiet:.0f} s, {time.time() - killed_at:.1f} s after the kill; "
              f"inputs replayed from checkpoints: {replayed:.0f}", flush=True)

        scan = subprocess.run([args.bin, "scan", "--lexicons", args.lexicons, args.input],
                              capture_output=True, check=True).stdout.decode()
        want = {}
        for line in scan.splitlines():
            e = json.loads(line)
            want[e["id"]] = e
        got = {}
        for line in open(path):
            line = line.strip()
            if line.startswith("{"):
                e = json.loads(line)
                got[e["id"]] = e
        stored = json.loads(get(f"http://127.0.0.1:{monitor}/jsz?streams=true"))
        messages = next(s["state"]["messages"]
                        for a in stored["account_details"] for s in a["stream_detail"]
                        if s["name"] == "VIOLATIONS")
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        differ = sorted(i for i in set(want) & set(got) if verdict(want[i]) != verdict(got[i]))
        print(f"scan: {len(want)} events; published: {len(got)} distinct ids; "
              f"stored: {messages}; missing {len(missing)}, unexpected {len(extra)}, "
              f"different {len(differ)}")
        for i in (missing + extra)[:5]:
            print("  e.g.", i, json.dumps(want.get(i) or got.get(i), ensure_ascii=False)[:200])
        for i in differ[:5]:
            keys = sorted(k for k in set(want[i]) | set(got[i]) if want[i].get(k) != got[i].get(k))
            print("  e.g.", i, {k: (want[i].get(k), got[i].get(k)) for k in keys})
        ok = not missing and not extra and not differ and messages == len(want)
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def interleave(path, width, out):
    """The file's lines with `width` conversations in progress at once,
    round robin, each conversation's lines in their order."""
    convs = {}
    for line in open(path, encoding="utf-8"):
        if line.strip():
            try:
                key = json.loads(line).get("conversation_id")
            except ValueError:
                key = None
            convs.setdefault(key, []).append(line if line.endswith("\n") else line + "\n")
    waiting = list(convs.values())
    active = []
    with open(out, "w", encoding="utf-8") as f:
        while waiting or active:
            while waiting and len(active) < width:
                active.append(waiting.pop(0))
            for lines in active:
                f.write(lines.pop(0))
            active = [lines for lines in active if lines]
    return out


def _ok(url):
    try:
        get(url, timeout=1)
        return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
