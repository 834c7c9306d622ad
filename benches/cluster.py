#!/usr/bin/env python3
"""Throughput of one and of several zhijian instances on one input stream.

For each instance count: a fresh nats-server (JetStream, one node), the
partitioned input stream filled with the same synthetic conversations
first, then the instances started together; the time is from the first
input judged until every input is judged (the sum of
zhijian_input_events_total over the instances), start-up reported apart.
The ratio against one instance is measured in the same run.

    python3 benches/cluster.py --bin target/release/zhijian \
        --nats-server .local/nats/bin/nats-server [--lines 200000] [--counts 1,3]
"""

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

TEXTS = [
    ("agent", "您好，很高兴为您服务"),
    ("customer", "我的快递怎么还没到"),
    ("agent", "这个我不知道，你自己查吧"),
    ("agent", "嗯嗯，那个，请您稍等"),
    ("customer", "好的"),
    ("agent", "已经为您查询到了，预计明天送达"),
    ("agent", "还有什么可以帮您的吗"),
    ("agent", "感谢您的来电，再见"),
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(url, timeout=2):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except OSError:
        return None, ""


def wait(url, what, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if get(url)[0] == 200:
            return
        time.sleep(0.05)
    sys.exit(f"{what} not ready: {url}")


def traffic(path, lines):
    rnd = random.Random(7)
    n = 0
    with open(path, "w") as f:
        c = 0
        while n < lines:
            cid = f"bench-{c}"
            k = rnd.randint(6, 12)
            for seq in range(k):
                speaker, text = TEXTS[rnd.randrange(len(TEXTS))]
                f.write(json.dumps({"conversation_id": cid, "tenant": "acme", "seq": seq,
                                    "speaker": speaker, "text": text, "ts_ms": 1000 * seq,
                                    "channel": "call"}, ensure_ascii=False) + "\n")
            f.write(json.dumps({"type": "end", "conversation_id": cid, "tenant": "acme"}) + "\n")
            n += k + 1
            c += 1
    return n


def judged(port):
    _, text = get(f"http://127.0.0.1:{port}/metrics")
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith("zhijian_input_events_total{"))


def run(args, count, input_path, lines, root):
    store = tempfile.mkdtemp(prefix="zhijian-clusterbench-")
    port, monitor = free_port(), free_port()
    procs = []
    try:
        nats = subprocess.Popen([args.nats_server, "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor),
                                 "-js", "-sd", store], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(nats)
        wait(f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true", "nats-server")
        url = f"nats://127.0.0.1:{port}"
        env = dict(os.environ, ZHIJIAN_CLUSTER_PARTITIONS=str(args.partitions),
                   ZHIJIAN_CONSOLE_ENABLED="false", ZHIJIAN_LOG_LEVEL="warn")

        def start(name):
            m = free_port()
            p = subprocess.Popen([args.bin, "run", "--nats-url", url, "--metrics-addr", f"127.0.0.1:{m}",
                                  "--lexicons", os.path.join(root, "lexicons")],
                                 env=dict(env, ZHIJIAN_CLUSTER_INSTANCE=name),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            return p, m

        # The stream is created by a first instance, then filled.
        p, m = start("setup")
        wait(f"http://127.0.0.1:{m}/readyz", "zhijian")
        p.terminate()
        p.wait(30)
        subprocess.run([args.bin, "publish", "--nats-url", url, input_path], check=True,
                       stdout=subprocess.DEVNULL)
        started = time.time()
        ports = [start(f"i{i}")[1] for i in range(count)]
        deadline = started + 600
        first = None
        while True:
            done = sum(judged(m) for m in ports)
            if done > 0 and first is None:
                first = time.time()
            if done >= lines:
                break
            if time.time() > deadline:
                sys.exit(f"{count} instance(s): only {done} of {lines} judged")
            time.sleep(0.02)
        end = time.time()
        return end - first, first - started
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(store, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--nats-server", required=True)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=12)
    ap.add_argument("--counts", default="1,3")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    work = tempfile.mkdtemp(prefix="zhijian-clusterbench-input-")
    try:
        input_path = os.path.join(work, "input.jsonl")
        lines = traffic(input_path, args.lines)
        counts = [int(c) for c in args.counts.split(",")]
        results = {c: [] for c in counts}
        for _ in range(args.repeat):
            for c in counts:
                results[c].append(run(args, c, input_path, lines, root))
        base = min(t for t, _ in results[counts[0]])
        print(f"{lines} inputs, {args.partitions} partitions, one nats-server; best of {args.repeat}; "
              "time from the first input judged to the last (start-up apart)")
        for c in counts:
            best = min(t for t, _ in results[c])
            startup = min(s for _, s in results[c])
            print(f"  {c} instance(s): {best:.2f} s, {lines / best:,.0f} inputs/s, "
                  f"{base / best:.2f}x one instance; start-up {startup:.2f} s "
                  f"(runs: {', '.join(f'{t:.2f}' for t, _ in results[c])})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
