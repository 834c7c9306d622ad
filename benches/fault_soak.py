#!/usr/bin/env python3
"""A seeded soak with random faults: what the daemon stored against `zhijian scan`.

One nats-server (JetStream, every write synced before it is acknowledged:
a kill -9 loses nothing it acknowledged) on free loopback ports, --instances
`zhijian run` instances on one config (short heartbeats, leases and
checkpoints), and a publisher sending a seeded input at --rate lines/s for
--minutes. Meanwhile a fault injector driven by random.Random(--seed)
picks, every few seconds, one of:

  nats_kill      nats-server kill -9, started again on the same store and ports
  nats_stop      nats-server SIGSTOP for 1-8 s, then SIGCONT
  inst_kill      an instance kill -9, started again
  inst_term      an instance SIGTERM (its exit awaited), started again
  inst_stop      an instance SIGSTOP for 1-8 s, then SIGCONT
  bad_input      a few bad messages: a subject that is not UTF-8, one
                 without a conversation id, one with an unescaped '.', or
                 invalid JSON on a good subject (each acknowledged by
                 JetStream, each expected dead-lettered once)

One fault at a time, each undone before the next. Then the faults stop,
the publisher finishes, and when every instance is ready, no conversation
is open (each one of the input ends, so one open then was opened again by
a late input and closes when idle), nothing waits to be stored, every
partition's checkpoint covers its last input and the output stream has
been quiet for --quiet seconds, the streams are read and
the stored events compared, id for id and field for field (the time of a
summary or verdict aside, see failover_parity.verdict), with two
references:

- `zhijian scan` of the input file (what was meant);
- `zhijian scan` of the input as the input stream holds it, in its order
  (what the daemon was given: `zhijian publish` sends unacknowledged
  messages again after a server failure, which can store a line after
  later lines of its conversation; such conversations are counted).

Checked: every event the references give is stored, and nothing else
(unexpected events are reported by kind: a `timing` or `response` verdict
can legitimately come from a judge paused past a deadline of the daemon's
clock, which `scan`, reading a file at once, never is); no id is stored
twice (Nats-Msg-Id in the output stream); each bad message is
dead-lettered once, with its reason and original sequence, and an
undecodable one removed from the input stream. For the conversations that
differ, their inputs and events as stored (stream sequence, partition,
epoch, time) and the faults around are printed.

The output stream's de-duplication window is shorter than the idle timeout
(--duplicate-window-s 120, --idle-timeout-s 300), so that the server
cannot hide an event the daemon stores again after that long.

Exit status 1 on any missing or duplicated event, on any difference from
the scan of the stream other than an unexpected timing/response verdict,
on a dead letter missing, doubled or wrong, or when the cluster never
settles.

    python3 benches/fault_soak.py --bin target/release/zhijian \\
        --nats-server .local/nats/bin/nats-server [--minutes 10] [--seed 1]

The input is `zhijian-tools synth` (beside --bin; else conversations made here)
given a tenant and a channel per conversation from the seed, or --input
FILE (e.g. a corpus) repeated in rounds with the conversation ids suffixed
per round; either way --interleave conversations are in progress at once,
each one's lines in order and close together, and every line's ts_ms is
the time it is due to be published at (one timeline: see make_input), so
that no deadline of a timing rule passes in the data; a `timing` verdict
can then only come from the daemon's clock. The binary and the lexicons are copied into the
temporary directory first (a rebuild or a lexicon edit meanwhile changes
nothing). Everything started is stopped by pid, the temporary directory
removed (--keep DIR keeps the logs and the fault timeline).
"""

import argparse
import base64
import collections
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import TEXTS, free_port  # noqa: E402  (benches/cluster.py)
from failover_parity import interleave, verdict  # noqa: E402

FAULTS = ["nats_kill", "nats_stop", "inst_kill", "inst_term", "inst_stop", "bad_input"]
BAD_KINDS = {
    # kind: the dead-letter reason it must get
    "nonutf8": "invalid_subject",
    "noid": "unroutable_subject",
    "dotted": "unroutable_subject",
    "badjson": "invalid_json",
}
TENANTS = ["acme", "globex", "initech"]
# Counters reported summed over every incarnation of every instance.
REPORTED = [
    "zhijian_nats_disconnects_total",
    "zhijian_nats_reader_disconnects_total",
    "zhijian_replayed_messages_total",
    "zhijian_replay_skipped_events_total",
    "zhijian_replay_incomplete_total",
    "zhijian_partition_handovers_total",
    "zhijian_state_restored_conversations_total",
    "zhijian_partition_consumer_restarts_total",
    "zhijian_publish_failures_total",
    "zhijian_publish_retries_total",
    "zhijian_output_stalls_total",
    "zhijian_deadlettered_total",
    "zhijian_undecodable_messages_removed_total",
    "zhijian_conversations_closed_total",
    "zhijian_checkpoints_total",
    "zhijian_input_events_total",
]
T0 = time.time()


def now():
    return time.time() - T0


# ---------------------------------------------------------------- NATS


class NatsError(Exception):
    pass


class Msg:
    __slots__ = ("subject", "reply", "headers", "status", "data")

    def __init__(self, subject, reply, headers, status, data):
        self.subject, self.reply, self.headers, self.status, self.data = (
            subject, reply, headers, status, data)


class Nats:
    """The least of a NATS client (stdlib only): requests, raw publishes,
    headers. Subjects are bytes, so one that is not UTF-8 goes out as is."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.f = self.sock.makefile("rb", buffering=1 << 16)
        if not self._line().startswith(b"INFO"):
            raise NatsError("no INFO")
        self.inbox = b"_INBOX.soak%08x" % random.getrandbits(32)
        self.n = 0
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
                          b'"no_responders":true,"protocol":1,"name":"fault_soak"}\r\n'
                          b"SUB " + self.inbox + b".* 1\r\nPING\r\n")
        while True:
            m = self._next()
            if m == "PONG":
                break

    def close(self):
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass

    def _line(self):
        line = self.f.readline()
        if not line:
            raise NatsError("connection closed")
        return line.rstrip(b"\r\n")

    def _read(self, n):
        data = self.f.read(n + 2)
        if len(data) < n + 2:
            raise NatsError("connection closed")
        return data[:n]

    def _next(self):
        """A message, or "PONG"."""
        while True:
            line = self._line()
            if line.startswith(b"MSG "):
                p = line.split(b" ")
                return Msg(p[1], p[3] if len(p) == 5 else None, {}, None, self._read(int(p[-1])))
            if line.startswith(b"HMSG "):
                p = line.split(b" ")
                hlen, total = int(p[-2]), int(p[-1])
                raw = self._read(total)
                head = raw[:hlen].decode("utf-8", "replace").split("\r\n")
                status = head[0][len("NATS/1.0"):].strip() or None
                headers = {}
                for h in head[1:]:
                    if ":" in h:
                        k, v = h.split(":", 1)
                        headers.setdefault(k.strip(), []).append(v.strip())
                return Msg(p[1], p[3] if len(p) == 6 else None, headers, status, raw[hlen:])
            if line == b"PING":
                self.sock.sendall(b"PONG\r\n")
            elif line == b"PONG":
                return "PONG"
            elif line.startswith(b"-ERR"):
                raise NatsError(line.decode("utf-8", "replace"))

    def pub(self, subject, payload, reply=None):
        if isinstance(subject, str):
            subject = subject.encode()
        if isinstance(payload, str):
            payload = payload.encode()
        head = b"PUB " + subject + (b" " + reply if reply else b"") + b" %d\r\n" % len(payload)
        self.sock.sendall(head + payload + b"\r\n")

    def request(self, subject, payload=b""):
        self.n += 1
        reply = self.inbox + b".%d" % self.n
        self.pub(subject, payload, reply)
        while True:
            m = self._next()
            if m != "PONG" and m.subject == reply:
                return m

    def api(self, subject, body=None):
        m = self.request(subject, json.dumps(body).encode() if body is not None else b"")
        if m.status:
            raise NatsError(f"{subject}: {m.status}")
        return json.loads(m.data)

    def read_stream(self, stream, batch=2000):
        """Every message of a stream, oldest first: (stream seq, subject,
        headers, payload, stored at: seconds into the soak), through an
        ephemeral consumer."""
        created = self.api(f"$JS.API.CONSUMER.CREATE.{stream}", {
            "stream_name": stream,
            "config": {"deliver_policy": "all", "ack_policy": "none", "mem_storage": True,
                       "inactive_threshold": 60_000_000_000, "num_replicas": 1}})
        if "error" in created:
            raise NatsError(f"consumer on {stream}: {created['error']}")
        name = created["name"]
        out = []
        while True:
            self.n += 1
            reply = self.inbox + b".%d" % self.n
            self.pub(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
                     json.dumps({"batch": batch, "no_wait": True}), reply)
            got, pending = 0, None
            while got < batch:
                m = self._next()
                if m == "PONG":
                    continue
                if m.reply and m.reply.startswith(b"$JS.ACK."):
                    t = m.reply.split(b".")
                    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
                    # (or with domain and account hash, and a token, in front/after)
                    if len(t) == 9:
                        sseq, ts, pending = int(t[5]), int(t[7]), int(t[8])
                    else:
                        sseq, ts, pending = int(t[7]), int(t[9]), int(t[10])
                    out.append((sseq, m.subject, m.headers, m.data, ts / 1e9 - T0))
                    got += 1
                    if pending == 0:
                        break
                elif m.subject == reply:
                    break  # 404 no messages / 408: the batch is over
            if got == 0 or pending == 0:
                break
        try:
            self.api(f"$JS.API.CONSUMER.DELETE.{stream}.{name}")
        except (NatsError, OSError, ValueError):
            pass
        return out

    def last_seq(self, stream, subject):
        r = self.api(f"$JS.API.STREAM.MSG.GET.{stream}", {"last_by_subj": subject})
        if "error" in r:
            if r["error"].get("code") == 404:
                return 0, None
            raise NatsError(f"{stream} {subject}: {r['error']}")
        msg = r["message"]
        return msg["seq"], base64.b64decode(msg.get("data") or b"")


def js_publish(port, subject, payload, timeout=5.0):
    """One publish with a JetStream ack, on a connection of its own (raw
    bytes: the subject may be anything). Returns the ack, or an error."""
    try:
        nc = Nats(port, timeout)
    except (OSError, NatsError) as e:
        return {"error": f"connect: {e}"}
    try:
        m = nc.request(subject, payload)
        if m.status:
            return {"error": m.status}
        return json.loads(m.data)
    except (OSError, NatsError, ValueError) as e:
        return {"error": str(e)}
    finally:
        nc.close()


# ---------------------------------------------------------------- HTTP


def http(port, path, timeout=1.0):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (OSError, ValueError):
        return None, ""


def parse_metrics(text):
    """{series: value} of a Prometheus text scrape (series with labels as
    written)."""
    out = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        try:
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
        except ValueError:
            pass
    return out


# ---------------------------------------------------------------- input


def make_input(args, tmp, binary):
    """The input file: rate x minutes lines (whole conversations), every
    line with ts_ms and tenant, conversations interleaved. Returns its path,
    line count and conversation count."""
    rng = random.Random(f"input-{args.seed}")
    want = int(args.rate * args.minutes * 60)
    convs = []
    n_lines = 0
    for conv in source_conversations(args, binary, rng, want):
        convs.append(conv)
        n_lines += len(conv)
        if n_lines >= want:
            break
    plain = os.path.join(tmp, "conversations.jsonl")
    with open(plain, "w", encoding="utf-8") as f:
        for conv in convs:
            for e in conv:
                f.write(json.dumps(e, ensure_ascii=False) + "\n")
    mixed = interleave(plain, args.interleave, os.path.join(tmp, "interleaved.jsonl"))
    os.remove(plain)
    # One timeline for all, the time it is published at: `zhijian scan`'s
    # clock is the largest ts_ms read so far, the daemon's a conversation's
    # last ts_ms plus the time since, so they agree only when ts_ms moves
    # with the publishing (per-conversation times far apart would have scan
    # pass deadlines of one conversation by the times of another).
    path = os.path.join(tmp, "input.jsonl")
    step = 1000.0 / args.rate
    with open(mixed, encoding="utf-8") as src, open(path, "w", encoding="utf-8") as out:
        for i, line in enumerate(src):
            e = json.loads(line)
            e["ts_ms"] = 1_765_000_000_000 + int(i * step)
            out.write(json.dumps(e, ensure_ascii=False) + "\n")
    os.remove(mixed)
    return path, n_lines, len(convs)


def source_conversations(args, binary, rng, want):
    """Conversations (lists of events, an `end` last), endlessly or until
    the source runs out."""
    if args.input:
        groups = collections.OrderedDict()
        for line in open(args.input, encoding="utf-8"):
            if line.strip():
                e = json.loads(line)
                groups.setdefault(e["conversation_id"], []).append(e)
        rounds = 0
        while True:
            for cid, events in groups.items():
                yield finish(events, f"{cid}-s{args.seed}r{rounds}", rng, from_file=True)
            rounds += 1
    synth = None
    try:
        # `zhijian-tools synth` beside --bin (an older build had it as
        # `zhijian synth`).
        tools = os.path.join(os.path.dirname(os.path.abspath(args.bin)), "zhijian-tools")
        generator = tools if os.access(tools, os.X_OK) else binary
        synth = subprocess.Popen([generator, "synth", "--conversations", str(want // 6 + 10),
                                  "--seed", str(args.seed)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        conv, cid = [], None
        for line in synth.stdout:
            e = json.loads(line)
            if e["conversation_id"] != cid and conv:
                yield finish(conv, f"soak{args.seed}-{cid}", rng, from_file=False)
                conv = []
            cid = e["conversation_id"]
            conv.append(e)
        if synth.wait() == 0 and conv:
            yield finish(conv, f"soak{args.seed}-{cid}", rng, from_file=False)
            return
    finally:
        if synth and synth.poll() is None:
            synth.kill()
            synth.wait()
    # Not a bench build: conversations of our own.
    print("zhijian-tools synth unavailable: generating conversations here", flush=True)
    i = 0
    while True:
        events = []
        for seq in range(rng.randint(6, 14)):
            speaker, text = TEXTS[rng.randrange(len(TEXTS))]
            events.append({"seq": seq, "speaker": speaker, "text": text})
        yield finish(events, f"soak{args.seed}-gen-{i}", rng, from_file=False)
        i += 1


def finish(events, cid, rng, from_file):
    """A conversation with its id, tenant and channel, ending with `end`
    (its lines get their ts_ms once interleaved: see make_input)."""
    tenant = rng.choice(TENANTS)
    channel = rng.choice(["chat", "chat", "call", "call", "call"])
    out = []
    for e in events:
        if e.get("type") == "end":
            continue
        e = dict(e)
        e["conversation_id"] = cid
        if not from_file or "tenant" not in e:
            e["tenant"] = tenant
        if not from_file or "channel" not in e:
            e["channel"] = channel
        out.append(e)
    out.append({"type": "end", "conversation_id": cid, "tenant": out[0]["tenant"] if out else tenant,
                "seq": (out[-1].get("seq", 0) + 1) if out else 0})
    return out


# ---------------------------------------------------------------- the soak


class Soak:
    def __init__(self, args, tmp, binary, lexicons):
        self.args, self.tmp, self.binary, self.lexicons = args, tmp, binary, lexicons
        self.procs = []  # every Popen started, for the cleanup
        self.lock = threading.Lock()
        self.timeline = open(os.path.join(tmp, "timeline.log"), "w")
        self.instances = {}  # name -> {"proc", "port", "stopped"}
        self.incarnations = {}  # (name, pid) -> last scrape
        self.ready = {}  # name -> bool (the scraper's last look)
        self.faults = collections.Counter()
        self.events = []  # (seconds, timeline line)
        self.anomalies = []
        self.nats = None
        self.nats_stopped = False
        self.port, self.monitor = free_port(), free_port()
        self.stop_scraper = threading.Event()
        self.last_probe = {}

    # -- bookkeeping

    def log(self, what):
        line = f"{now():8.2f}s  {what}"
        with self.lock:
            self.events.append((now(), line))
            self.timeline.write(line + "\n")
            self.timeline.flush()
        if self.args.verbose:
            print(line, flush=True)

    def anomaly(self, what):
        self.anomalies.append(f"{now():.1f}s {what}")
        self.log("ANOMALY " + what)

    def start(self, cmd, stdout, stderr, env=None, stdin=subprocess.DEVNULL):
        p = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=stderr,
                             env=dict(os.environ, **(env or {})))
        self.procs.append(p)
        return p

    # -- nats-server

    def start_nats(self):
        conf = os.path.join(self.tmp, "nats.conf")
        with open(conf, "w") as f:
            f.write(f'listen: "127.0.0.1:{self.port}"\nhttp: "127.0.0.1:{self.monitor}"\n'
                    f'jetstream {{\n  store_dir: "{os.path.join(self.tmp, "store")}"\n'
                    f'  sync_interval: always\n}}\n')
        log = open(os.path.join(self.tmp, "nats-server.log"), "a")
        self.nats = self.start([self.args.nats_server, "-c", conf], log, subprocess.STDOUT)
        log.close()
        self.nats_stopped = False
        started = time.time()
        while http(self.monitor, "/healthz?js-enabled-only=true")[0] != 200:
            if time.time() - started > 120 or self.nats.poll() is not None:
                raise SystemExit("nats-server did not come up (see nats-server.log)")
            time.sleep(0.05)
        return time.time() - started

    # -- instances

    def config(self):
        path = os.path.join(self.tmp, "zhijian.toml")
        with open(path, "w") as f:
            f.write(f"""[nats]
url = "nats://127.0.0.1:{self.port}"
[streams]
ack_wait_s = 5
duplicate_window_s = {self.args.duplicate_window_s}
[engine]
lexicons = "{self.lexicons}"
idle_timeout_s = {self.args.idle_timeout_s}
[daemon]
shutdown_grace_s = {self.args.grace}
[console]
addr = "127.0.0.1:0"
[log]
level = "info"
[cluster]
partitions = {self.args.partitions}
heartbeat_ms = 200
lease_ms = 1000
checkpoint_ms = 200
""")
        return path

    def start_instance(self, name):
        inst = self.instances.setdefault(name, {"port": free_port(), "stopped": False})
        log = open(os.path.join(self.tmp, f"{name}.log"), "a")
        log.write(f"==== fault_soak: starting {name} at {now():.2f}s\n")
        log.flush()
        p = self.start([self.binary, "run", "--config", self.cfg,
                        "--metrics-addr", f"127.0.0.1:{inst['port']}"],
                       subprocess.DEVNULL, log, {"ZHIJIAN_CLUSTER_INSTANCE": name})
        log.close()
        inst["proc"], inst["stopped"], inst["expect_exit"] = p, False, False
        self.log(f"{name} started (pid {p.pid})")
        return p

    def wait_ready(self, name, timeout):
        started = time.time()
        port = self.instances[name]["port"]
        while time.time() - started < timeout:
            if http(port, "/readyz")[0] == 200:
                return time.time() - started
            if self.instances[name]["proc"].poll() is not None:
                return None
            time.sleep(0.1)
        return None

    def scrape(self, name):
        inst = self.instances[name]
        p = inst.get("proc")
        if p is None or p.poll() is not None or inst["stopped"]:
            return
        code, text = http(inst["port"], "/metrics")
        if code == 200:
            self.incarnations[(name, p.pid)] = parse_metrics(text)
        ready = http(inst["port"], "/readyz")[0] == 200
        if self.ready.get(name) != ready:
            self.log(f"{name} {'ready' if ready else 'NOT ready'}")
            self.ready[name] = ready

    def scraper(self):
        while not self.stop_scraper.is_set():
            for name in list(self.instances):
                self.scrape(name)
            self.stop_scraper.wait(1.0)

    # -- faults

    def revive(self):
        """Restarts what exited without being told to (an anomaly)."""
        if self.nats.poll() is not None:
            self.anomaly(f"nats-server exited by itself ({self.nats.returncode}); starting it again")
            self.start_nats()
        for name, inst in sorted(self.instances.items()):
            p = inst["proc"]
            if p.poll() is not None and not inst["expect_exit"]:
                self.anomaly(f"{name} exited by itself ({p.returncode}, see its log); starting it again")
                self.start_instance(name)

    def fault(self, rng, bad_counter):
        """One fault from the seeded generator, undone before returning.
        Every draw is made whatever happens, so the sequence is the
        seed's."""
        self.revive()
        kind = rng.choice(FAULTS)
        names = sorted(self.instances)
        target = rng.choice(names)
        pause = rng.uniform(1.0, 8.0)
        down = rng.uniform(0.5, 3.0)
        bad_kind = rng.choice(sorted(BAD_KINDS))
        bad_n = rng.randint(1, 4)
        self.faults[kind] += 1
        if kind == "nats_kill":
            self.log(f"FAULT nats_kill: nats-server kill -9 (pid {self.nats.pid}), down {down:.1f} s")
            self.nats.send_signal(signal.SIGKILL)
            self.nats.wait()
            time.sleep(down)
            took = self.start_nats()
            self.log(f"  nats-server back (pid {self.nats.pid}) in {took:.1f} s")
        elif kind == "nats_stop":
            self.log(f"FAULT nats_stop: nats-server SIGSTOP for {pause:.1f} s")
            self.nats.send_signal(signal.SIGSTOP)
            self.nats_stopped = True
            time.sleep(pause)
            self.nats.send_signal(signal.SIGCONT)
            self.nats_stopped = False
            self.log("  nats-server SIGCONT")
        elif kind in ("inst_kill", "inst_term"):
            inst = self.instances[target]
            p = inst["proc"]
            self.scrape(target)
            inst["expect_exit"] = True
            if kind == "inst_kill":
                self.log(f"FAULT inst_kill: {target} kill -9 (pid {p.pid}), down {down:.1f} s")
                p.send_signal(signal.SIGKILL)
                p.wait()
            else:
                self.log(f"FAULT inst_term: {target} SIGTERM (pid {p.pid})")
                p.send_signal(signal.SIGTERM)
                try:
                    rc = p.wait(timeout=self.args.grace + 15)
                    self.log(f"  {target} exited {rc} after SIGTERM")
                    if rc != 0:
                        self.anomaly(f"{target} exited {rc} after SIGTERM (see its log)")
                except subprocess.TimeoutExpired:
                    self.anomaly(f"{target} still running {self.args.grace + 15} s after SIGTERM: kill -9")
                    p.send_signal(signal.SIGKILL)
                    p.wait()
                down = 0.2
            time.sleep(down)
            self.start_instance(target)
            took = self.wait_ready(target, 60)
            if took is None:
                self.anomaly(f"{target} not ready 60 s after its restart")
            else:
                self.log(f"  {target} ready in {took:.1f} s")
        elif kind == "inst_stop":
            p = self.instances[target]["proc"]
            self.log(f"FAULT inst_stop: {target} SIGSTOP (pid {p.pid}) for {pause:.1f} s")
            self.instances[target]["stopped"] = True
            p.send_signal(signal.SIGSTOP)
            time.sleep(pause)
            p.send_signal(signal.SIGCONT)
            self.instances[target]["stopped"] = False
            self.log(f"  {target} SIGCONT")
        else:
            for _ in range(bad_n):
                bad_counter[0] += 1
                self.publish_bad(bad_kind, bad_counter[0])

    def publish_bad(self, kind, n):
        mark = f"soakbad-{kind}-{n}"
        event = {"conversation_id": mark, "tenant": "acme", "seq": 0, "speaker": "agent",
                 "text": "急什么，不关我的事", "ts_ms": 1_700_000_000_000}
        if kind == "nonutf8":
            subject, payload = b"transcripts.acme.\xff\xfe" + mark.encode(), json.dumps(event)
        elif kind == "noid":
            subject, payload = b"transcripts.acme", json.dumps(event)
        elif kind == "dotted":
            event["conversation_id"] = mark + ".x"
            subject, payload = f"transcripts.acme.{mark}.x".encode(), json.dumps(event)
        else:
            subject = f"transcripts.acme.{mark}".encode()
            payload = '{"conversation_id":"%s","tenant":"acme", oops' % mark
        ack = js_publish(self.port, subject, payload.encode(), timeout=5.0)
        self.bad.append({"kind": kind, "mark": mark, "ack": ack})
        self.log(f"FAULT bad_input: {kind} {subject!r} -> {ack}")

    # -- publisher

    def publisher(self, path, done):
        """The input in chunks of about --chunk-s seconds, each one
        `zhijian publish --rate`; a chunk that fails is published again
        (the engine ignores what it has seen; reported)."""
        per = max(1, int(self.args.rate * self.args.chunk_s))
        with open(path, "rb") as f:
            lines = f.readlines()
        self.published = 0
        for k in range(0, len(lines), per):
            chunk = b"".join(lines[k:k + per])
            for attempt in range(1, 6):
                p = self.start([self.binary, "publish", "--nats-url", f"nats://127.0.0.1:{self.port}",
                                "--rate", str(self.args.rate), "-"],
                               subprocess.DEVNULL, subprocess.PIPE, stdin=subprocess.PIPE)
                _, err = p.communicate(chunk)
                if p.returncode == 0:
                    break
                self.anomaly(f"publish of lines {k + 1}-{k + per} failed (attempt {attempt}, "
                             f"rc {p.returncode}): {err.decode(errors='replace').strip()[-300:]}")
                self.publish_retries += 1
                time.sleep(1.0)
            else:
                self.anomaly(f"publish of lines {k + 1}-{k + per} gave up")
            self.published = min(len(lines), k + per)
        done.set()

    # -- the end

    def probe(self):
        """Per instance: /readyz and the gauges that say what waits."""
        out = {}
        for name, inst in sorted(self.instances.items()):
            code, body = http(inst["port"], "/readyz")
            mcode, text = http(inst["port"], "/metrics")
            m = parse_metrics(text) if mcode == 200 else {}
            out[name] = {"ready": code == 200, "readyz": body.strip().replace("\n", "; ")[:300],
                         "metrics": mcode == 200,
                         "pending": m.get("zhijian_output_pending_events", 0),
                         "oldest_unstored_s": m.get("zhijian_output_oldest_unstored_seconds"),
                         "stalled": m.get("zhijian_output_stalled"),
                         "partitions_owned": m.get("zhijian_partitions_owned", 0),
                         "open_conversations": m.get("zhijian_open_conversations", 0)}
        return out

    def settled(self, nc):
        """(what is not settled yet, events pending per instance, the
        probe): settled is every instance ready, every partition held,
        no conversation open (each one of the input ends), every
        partition's checkpoint at its last input; and nothing pending."""
        probe = self.probe()
        why = [f"{n} not ready" for n, s in probe.items() if not s["ready"]]
        why += [f"{n} /metrics unanswered" for n, s in probe.items() if not s["metrics"]]
        why += [f"{n}: {s['open_conversations']:.0f} conversations open"
                for n, s in probe.items() if s["open_conversations"]]
        owned = sum(s["partitions_owned"] for s in probe.values())
        if owned != self.args.partitions:
            why.append(f"{owned:.0f} of {self.args.partitions} partitions held")
        for p in range(self.args.partitions):
            last, _ = nc.last_seq("TRANSCRIPTS", f"transcripts.{p}.>")
            if last == 0:
                continue
            _, head = nc.last_seq("KV_zhijian_cluster", f"$KV.zhijian_cluster.ckpt.{p}")
            try:
                seq = json.loads(head).get("seq", 0) if head else 0
            except ValueError:
                seq = 0
            if seq < last:
                why.append(f"partition {p}: checkpoint at input {seq}, last input {last}")
        pending = {n: s["pending"] for n, s in probe.items() if s["pending"]}
        return why, pending, probe

    def wait_quiet(self):
        """Waits until settled, nothing pending and the output and dead
        letter streams unchanged for --quiet seconds. Returns the seconds
        waited, or None. A pending count that stays while everything
        else is settled and quiet for --stuck seconds is reported and the
        wait ends there."""
        started = time.time()
        last, since, why, pending, probe = None, time.time(), [], {}, {}
        nc = None
        while time.time() - started < self.args.settle_timeout:
            self.revive()
            try:
                if nc is None:
                    nc = Nats(self.port, 10)
                info = nc.api("$JS.API.STREAM.INFO.VIOLATIONS")
                dl = nc.api("$JS.API.STREAM.INFO.ZHIJIAN_DEADLETTER")
                state = (info["state"]["last_seq"], dl["state"]["last_seq"])
                why, pending, probe = self.settled(nc)
                self.last_probe = probe
            except (OSError, NatsError, ValueError, KeyError) as e:
                why, pending, state = [f"NATS: {e}"], {}, None
                if nc:
                    nc.close()
                nc = None
            if why or state != last:
                last, since = state, time.time()
            quiet = time.time() - since
            if not why and not pending and quiet >= self.args.quiet:
                break
            if not why and pending and quiet >= self.args.stuck:
                self.anomaly(f"zhijian_output_pending_events stays {pending} for {quiet:.0f} s while "
                             "every instance is ready, every partition's checkpoint is at its last "
                             "input and the output and dead-letter streams are unchanged; instances: "
                             + json.dumps(probe))
                break
            time.sleep(0.5)
        else:
            self.anomaly(f"not settled {self.args.settle_timeout:.0f} s after the faults: "
                         f"{why or pending}; instances: {json.dumps(probe)}")
            return None
        if nc:
            nc.close()
        return time.time() - started


# ---------------------------------------------------------------- report


def scan(binary, lexicons, path, out_path):
    with open(out_path, "wb") as out:
        r = subprocess.run([binary, "scan", "--lexicons", lexicons, path], stdout=out,
                           stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise SystemExit(f"zhijian scan {path} failed ({r.returncode}):\n"
                         + r.stderr.decode(errors="replace")[-3000:])


def load_scan(path):
    want = {}
    for line in open(path, encoding="utf-8"):
        e = json.loads(line)
        want[e["id"]] = e
    return want


def conv_key(e):
    return (e.get("tenant"), e.get("conversation_id"))


def idle_for_eof(w, g):
    """A summary that differs only in its reason: `eof` by scan, `idle` by
    the daemon (scan has no idle timeout: a conversation whose `end` came
    before its segments, or never, closes at the end of the input)."""
    return (w.get("type") == "summary" and w.get("reason") == "eof" and g.get("reason") == "idle"
            and dict(verdict(w), reason=None) == dict(verdict(g), reason=None))


def compare_events(want, got):
    """Stored events (id -> event) against expected ones: missing,
    unexpected (timing/response apart), different (summaries of a
    conversation with an unexpected timing/response verdict, and those
    closed when idle where scan closed them at the end of the input,
    apart)."""
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differ = sorted(i for i in set(want) & set(got) if verdict(want[i]) != verdict(got[i]))
    extra_timing = [i for i in extra if got[i].get("kind") in ("timing", "response")]
    timing_convs = {conv_key(got[i]) for i in extra_timing}
    explained = [i for i in differ if got[i].get("type") == "summary" and conv_key(got[i]) in timing_convs]
    idle = [i for i in differ if i not in set(explained) and idle_for_eof(want[i], got[i])]
    return {"missing": missing, "extra_timing": extra_timing,
            "extra_other": [i for i in extra if i not in set(extra_timing)],
            "differ": [i for i in differ if i not in set(explained) | set(idle)],
            "explained": explained, "idle": idle}


def check_letters(letters, bad):
    """Each acknowledged bad message dead-lettered once, with its reason
    and original sequence; no other dead letter; none stored twice."""
    ids = collections.Counter()
    by_mark = collections.defaultdict(list)
    unknown = []
    for _, _, headers, data, _ in letters:
        h = {k: v[0] for k, v in headers.items()}
        ids[h.get("Nats-Msg-Id", "?")] += 1
        m = re.search(rb"soakbad-[a-z0-9]+-\d+", data)
        if m:
            by_mark[m.group().decode()].append((h.get("Zhijian-Error"), h.get("Zhijian-Original-Sequence")))
        else:
            unknown.append((h.get("Zhijian-Error"), h.get("Zhijian-Original-Subject"),
                            data[:160].decode("utf-8", "replace")))
    acked = [b for b in bad if "seq" in b["ack"]]
    not_once = [(b["mark"], len(by_mark.get(b["mark"], []))) for b in acked
                if len(by_mark.get(b["mark"], [])) != 1]
    wrong = [(b["mark"], b["ack"], by_mark[b["mark"]][0]) for b in acked
             if len(by_mark.get(b["mark"], [])) == 1
             and by_mark[b["mark"]][0] != (BAD_KINDS[b["kind"]], str(b["ack"]["seq"]))]
    reasons = collections.Counter(r for v in by_mark.values() for r, _ in v)
    reasons.update(r for r, _, _ in unknown)
    return {"acked": acked, "unacked": [b for b in bad if "seq" not in b["ack"]],
            "not_once": not_once, "wrong": wrong, "twice": {k: n for k, n in ids.items() if n > 1},
            "unknown": unknown, "reasons": reasons}


def stored_input(inputs, path):
    """The input as the stream holds it (our bad messages left out), in
    its order, written to `path`; per conversation, what it holds:
    [(stream seq, partition, line's seq or "end", stored at)]."""
    per_conv = collections.defaultdict(list)
    with open(path, "wb") as f:
        for sseq, subject, _, data, ts in inputs:
            if b"soakbad-" in data:
                continue
            f.write(data.rstrip(b"\n") + b"\n")
            try:
                e = json.loads(data)
            except ValueError:
                continue
            part = subject.split(b".")[1].decode("utf-8", "replace")
            per_conv[conv_key(e)].append((sseq, part, e.get("seq") if e.get("type") != "end" else "end", ts))
    return per_conv


def file_order(path):
    per_conv = collections.defaultdict(list)
    for line in open(path, encoding="utf-8"):
        e = json.loads(line)
        per_conv[conv_key(e)].append(e.get("seq") if e.get("type") != "end" else "end")
    return per_conv


def kinds(ids, source):
    c = collections.Counter((source[i].get("type"), source[i].get("kind"), source[i].get("rule_id"))
                            for i in ids)
    return ", ".join(f"{t}/{k or '-'}/{r or '-'}: {n}" for (t, k, r), n in c.most_common())


def checkpoint_regressions(paths):
    """`checkpoint loaded partition=P seq=S` lines of every instance, in
    time order: each whose S is below one loaded before for P (the
    partition judged again from further back), with that one."""
    loads = []
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    for path in paths:
        name = os.path.basename(path)[0]
        for line in open(path, encoding="utf-8", errors="replace"):
            line = ansi.sub("", line.rstrip("\n"))
            m = re.search(r"checkpoint loaded partition=(\d+) seq=(\d+)", line)
            if m:
                loads.append((line.split(" ", 1)[0], int(m[1]), int(m[2]), f"{name}: {line}"))
    best, out = {}, []
    for _, p, seq, line in sorted(loads):
        if p in best and seq < best[p][0]:
            out.append((line, best[p][1]))
        if p not in best or seq >= best[p][0]:
            best[p] = (seq, line)
    return out


def log_digest(paths, limit=25):
    """WARN/ERROR lines (and panics) of the instances' logs, grouped by
    message with values and numbers blanked; the first of each kept."""
    groups = collections.OrderedDict()
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    for path in paths:
        name = os.path.basename(path)
        for line in open(path, encoding="utf-8", errors="replace"):
            line = ansi.sub("", line.rstrip("\n"))
            if not re.search(r"\b(WARN|ERROR)\b|panicked", line):
                continue
            body = re.sub(r"^\S+\s+", "", line, count=1)  # the timestamp
            key = re.sub(r"\d+", "#", re.sub(r'(\w+)=("[^"]*"|\S+)', r"\1=…", body))[:160]
            g = groups.setdefault(key, [0, f"{name}: {line}"])
            g[0] += 1
    return sorted(groups.values(), key=lambda g: -g[0])[:limit], len(groups)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--nats-server", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=1000, help="input lines per second")
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--input", help="JSONL input events (repeated, ids suffixed per round); "
                                    "default: zhijian-tools synth")
    ap.add_argument("--lexicons", default=os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lexicons"))
    ap.add_argument("--partitions", type=int, default=12)
    ap.add_argument("--interleave", type=int, default=50, help="conversations in progress at once")
    ap.add_argument("--gap", default="2,8", help="seconds between faults, min,max")
    ap.add_argument("--grace", type=int, default=10, help="[daemon] shutdown_grace_s")
    ap.add_argument("--idle-timeout-s", type=int, default=300, help="[engine] idle_timeout_s")
    ap.add_argument("--duplicate-window-s", type=int, default=120,
                    help="[streams] duplicate_window_s: shorter than the idle timeout, so that "
                         "the server's de-duplication cannot hide an event published again "
                         "by a conversation closed twice")
    ap.add_argument("--chunk-s", type=float, default=10.0, help="seconds of input per publish process")
    ap.add_argument("--quiet", type=float, default=15.0, help="seconds the output must stay unchanged")
    ap.add_argument("--stuck", type=float, default=60.0,
                    help="seconds a pending count may stay with all else settled before it is reported")
    ap.add_argument("--settle-timeout", type=float, default=600.0,
                    help="seconds to wait for the cluster to settle after the faults "
                         "(more than the idle timeout: a conversation opened again by a late "
                         "input closes when idle)")
    ap.add_argument("--keep", help="copy the logs and the timeline into this directory")
    ap.add_argument("--verbose", action="store_true", help="print the timeline as it happens")
    args = ap.parse_args()
    gap = [float(x) for x in args.gap.split(",")]
    if args.instances > 26:
        ap.error("--instances: at most 26")

    tmp = tempfile.mkdtemp(prefix="zhijian-faultsoak-")
    soak = None
    try:
        # Our own copies: a rebuild or a lexicon edit during the soak
        # changes nothing.
        binary = os.path.join(tmp, "zhijian")
        shutil.copy2(args.bin, binary)
        lexicons = os.path.join(tmp, "lexicons")
        shutil.copytree(args.lexicons, lexicons)
        input_path, n_lines, n_convs = make_input(args, tmp, binary)
        scan_path = os.path.join(tmp, "scan.jsonl")
        scan(binary, lexicons, input_path, scan_path)
        print(f"seed {args.seed}: {n_lines} input lines ({n_convs} conversations) at {args.rate}/s "
              f"for {args.minutes:g} min, {args.instances} instances, {args.partitions} partitions",
              flush=True)

        soak = Soak(args, tmp, binary, lexicons)
        soak.bad, soak.publish_retries = [], 0
        took = soak.start_nats()
        soak.log(f"nats-server up (pid {soak.nats.pid}, port {soak.port}) in {took:.1f} s")
        soak.cfg = soak.config()
        names = [chr(ord("a") + i) for i in range(args.instances)]
        # The first one makes the streams alone.
        soak.start_instance(names[0])
        if soak.wait_ready(names[0], 120) is None:
            raise SystemExit("the first instance never got ready (see its log with --keep)")
        for name in names[1:]:
            soak.start_instance(name)
        for name in names:
            if soak.wait_ready(name, 120) is None:
                raise SystemExit(f"{name} never got ready")
        scraper = threading.Thread(target=soak.scraper, daemon=True)
        scraper.start()

        done = threading.Event()
        publisher = threading.Thread(target=soak.publisher, args=(input_path, done), daemon=True)
        started = time.time()
        soak.log("publishing")
        publisher.start()
        rng = random.Random(args.seed)
        bad_counter = [0]
        deadline = started + args.minutes * 60
        while time.time() < deadline and not done.is_set():
            wait = rng.uniform(*gap)
            if done.wait(min(wait, max(0.0, deadline - time.time()))):
                break
            if time.time() >= deadline:
                break
            soak.fault(rng, bad_counter)
        soak.log(f"faults over ({sum(soak.faults.values())}); publisher "
                 f"{'done' if done.is_set() else 'still publishing'}")
        done.wait()
        publish_s = time.time() - started
        soak.log(f"publisher done after {publish_s:.1f} s")
        # Last bad messages of each kind, with nothing else going on: each
        # kind at least once.
        for kind in sorted(BAD_KINDS):
            bad_counter[0] += 1
            soak.publish_bad(kind, bad_counter[0])
        settle_s = soak.wait_quiet()
        soak.log(f"settled after {settle_s}")
        soak.stop_scraper.set()
        scraper.join()
        for name in names:
            soak.scrape(name)
        with open(os.path.join(tmp, "last-scrapes.log"), "w") as f:
            for (name, pid), scrape in sorted(soak.incarnations.items()):
                for series, v in sorted(scrape.items()):
                    if series.startswith("zhijian_") and "_bucket{" not in series:
                        f.write(f"{name} {pid} {series} {v:g}\n")

        nc = Nats(soak.port, 60)
        stored = nc.read_stream("VIOLATIONS")
        letters = nc.read_stream("ZHIJIAN_DEADLETTER")
        inputs = nc.read_stream("TRANSCRIPTS")
        nc.close()
        soak.log(f"read {len(stored)} events, {len(letters)} dead letters, {len(inputs)} inputs")
        # A removed undecodable input must be gone from the input stream.
        in_stream = {sseq for sseq, *_ in inputs}
        still_there = [b["mark"] for b in soak.bad if b["kind"] == "nonutf8" and "seq" in b["ack"]
                       and b["ack"]["seq"] in in_stream]

        # What the daemon stored, by id and by Nats-Msg-Id.
        got, by_msgid, meta = {}, collections.Counter(), {}
        for sseq, _, headers, data, ts in stored:
            e = json.loads(data)
            by_msgid[(headers.get("Nats-Msg-Id") or [e["id"]])[0]] += 1
            got.setdefault(e["id"], e)
            meta.setdefault(e["id"], []).append(
                (sseq, ts, *((headers.get(h) or ["?"])[0]
                             for h in ("Zhijian-Partition", "Zhijian-Epoch", "Zhijian-Input-Seq"))))
        dup = {k: n for k, n in by_msgid.items() if n > 1}

        # The references: scan of the input file, and scan of the input as
        # the stream holds it (the order the daemon read; a publish sent
        # again after a lost ack can change it, or store a line twice).
        want = load_scan(scan_path)
        stream_path = os.path.join(tmp, "stored-input.jsonl")
        held = stored_input(inputs, stream_path)
        scan2 = os.path.join(tmp, "scan-stored.jsonl")
        scan(binary, lexicons, stream_path, scan2)
        want2 = load_scan(scan2)
        order = file_order(input_path)
        reordered = {k for k, v in held.items() if [x[2] for x in v] != order.get(k)}
        after_end = {k for k, v in held.items() if "end" in [x[2] for x in v[:-1]]}
        twice = sum(len(v) - len({x[2] for x in v}) for v in held.values())
        vs_file, vs_stream = compare_events(want, got), compare_events(want2, got)
        dl = check_letters(letters, soak.bad)

        logs = sorted(os.path.join(tmp, f) for f in os.listdir(tmp) if re.fullmatch(r"[a-z]\.log", f))
        regressions = checkpoint_regressions(logs)

        # Report.
        print()
        print(f"fault soak, seed {args.seed}: published {n_lines} lines in {publish_s:.0f} s "
              f"({soak.publish_retries} chunk(s) published again); settled "
              f"{'in %.0f s' % settle_s if settle_s is not None else 'NEVER'} after the faults")
        rows = [
            ("inputs (lines)", n_lines, ""),
            ("conversations", n_convs, ""),
            ("input lines in the stream (good ones)", sum(len(v) for v in held.values()), ""),
            ("  conversations stored out of file order", len(reordered), ""),
            ("    of them with inputs stored after their end", len(after_end), ""),
            ("  lines stored twice", twice, ""),
            ("", "vs scan of file", "vs scan of stream"),
            ("expected events", len(want), len(want2)),
            ("  of which summaries", sum(e.get("type") == "summary" for e in want.values()),
             sum(e.get("type") == "summary" for e in want2.values())),
            ("stored messages (VIOLATIONS)", len(stored), ""),
            ("stored distinct ids", len(got), ""),
            ("missing", len(vs_file["missing"]), len(vs_stream["missing"])),
            ("  of them in conversations stored out of order",
             sum(conv_key(want[i]) in reordered for i in vs_file["missing"]),
             sum(conv_key(want2[i]) in reordered for i in vs_stream["missing"])),
            ("unexpected timing/response", len(vs_file["extra_timing"]), len(vs_stream["extra_timing"])),
            ("  of them in conversations with inputs after their end",
             sum(conv_key(got[i]) in after_end for i in vs_file["extra_timing"]),
             sum(conv_key(got[i]) in after_end for i in vs_stream["extra_timing"])),
            ("unexpected other", len(vs_file["extra_other"]), len(vs_stream["extra_other"])),
            ("  of them in conversations with inputs after their end",
             sum(conv_key(got[i]) in after_end for i in vs_file["extra_other"]),
             sum(conv_key(got[i]) in after_end for i in vs_stream["extra_other"])),
            ("different, same id", len(vs_file["differ"]), len(vs_stream["differ"])),
            ("  of them in conversations stored out of order",
             sum(conv_key(got[i]) in reordered for i in vs_file["differ"]),
             sum(conv_key(got[i]) in reordered for i in vs_stream["differ"])),
            ("  summaries of a conversation with an unexpected verdict",
             len(vs_file["explained"]), len(vs_stream["explained"])),
            ("  summaries closed when idle (scan: at the end of input)",
             len(vs_file["idle"]), len(vs_stream["idle"])),
            ("duplicated ids (Nats-Msg-Id)", len(dup), ""),
            ("  of them in conversations with inputs after their end",
             sum(conv_key(got[i]) in after_end for i in dup if i in got), ""),
            ("checkpoint loads that went back (instance logs)", len(regressions), ""),
            ("bad messages published (acked)", len(dl["acked"]), ""),
            ("  dead-lettered other than once", len(dl["not_once"]), ""),
            ("  once, another reason or original sequence", len(dl["wrong"]), ""),
            ("  undecodable ones left in the input stream", len(still_there), ""),
            ("dead letters stored", len(letters), ""),
            ("  stored twice (Nats-Msg-Id)", len(dl["twice"]), ""),
            ("  of other input than ours", len(dl["unknown"]), ""),
        ]
        rows += [(f"  reason {r}", n, "") for r, n in sorted(dl["reasons"].items())]
        rows += [(f"faults: {k}", soak.faults[k], "") for k in FAULTS]
        rows.append(("faults: total", sum(soak.faults.values()), ""))
        totals = collections.Counter()
        for scrape in soak.incarnations.values():
            for series, v in scrape.items():
                if series.split("{", 1)[0] in REPORTED:
                    totals[series] += v
        rows.append((f"metrics, summed over {len(soak.incarnations)} instance runs", "", ""))
        rows.append(("  (each run's last scrape, at most 1 s old)", "", ""))
        for series in sorted(totals):
            if totals[series] or series.split("{")[0] in REPORTED[:5]:
                rows.append(("  " + series, f"{totals[series]:.0f}", ""))
        for name, st in sorted(soak.last_probe.items()):
            rows.append((f"at the end, {name}: pending events / open conversations / partitions",
                         f"{st['pending']:.0f} / {st['open_conversations']:.0f} / {st['partitions_owned']:.0f}",
                         ""))
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(str(r[1])) for r in rows)
        for k, a, b in rows:
            print(f"  {k:<{w0}}  {str(a):>{w1}}  {b}".rstrip())

        for title, res, source_want in (("vs scan of the file", vs_file, want),
                                        ("vs scan of the stream", vs_stream, want2)):
            for label in ("missing", "extra_timing", "extra_other", "differ"):
                ids = res[label]
                if not ids:
                    continue
                source = source_want if label == "missing" else got
                print(f"{title}: {label} {len(ids)}, by type/kind/rule: {kinds(ids, source)}")
                for i in ids[:3]:
                    if label == "differ":
                        keys = sorted(k for k in set(source_want[i]) | set(got[i])
                                      if k != "ts_ms" and source_want[i].get(k) != got[i].get(k))
                        print(f"  e.g. {i} {got[i].get('conversation_id')} (expected, stored): " + json.dumps(
                            {k: [source_want[i].get(k), got[i].get(k)] for k in keys}, ensure_ascii=False)[:400])
                    else:
                        print("  e.g. " + json.dumps(source[i], ensure_ascii=False)[:300])
        # The story of a few conversations that differ: their inputs as
        # stored, their events as stored, the faults around.
        odd = []
        for ids, src in ((sorted(dup), got), (vs_stream["missing"], want2), (vs_stream["extra_other"], got),
                         (vs_stream["extra_timing"], got), (vs_stream["differ"], got),
                         (vs_file["missing"], want), (vs_file["extra_timing"], got)):
            for i in ids:
                k = conv_key(src.get(i) or got.get(i))
                if k not in odd:
                    odd.append(k)
                    break
        for k in odd:
            print(f"conversation {k[1]} ({k[0]}):")
            print(f"  file order: {order.get(k)}")
            print("  stored inputs (stream seq, partition, seq, at s): " + ", ".join(
                f"({s},{p},{q},{t:.1f})" for s, p, q, t in held.get(k, [])))
            evs = [(i, e) for i, e in got.items() if conv_key(e) == k]
            for i, e in sorted(evs, key=lambda x: meta[x[0]][0][0]):
                what = e.get("rule_id") or e.get("type")
                flags = "".join(
                    f" {'NOT-IN' if i not in ref else 'DIFFERS-FROM'}-{name}-SCAN"
                    for ref, name in ((want, "FILE"), (want2, "STREAM"))
                    if i not in ref or verdict(ref[i]) != verdict(e))
                for sseq, ts, part, epoch, iseq in meta[i]:
                    print(f"  event {i[:12]} {what} seq={e.get('seq')}: stream seq {sseq}, at {ts:.1f}s, "
                          f"partition {part}, epoch {epoch}, input seq {iseq}{flags}")
            for i, e in sorted(want.items()):
                if conv_key(e) == k and i not in got:
                    print(f"  MISSING {i[:12]} {e.get('rule_id') or e.get('type')} seq={e.get('seq')}")
            times = [t for *_, t in held.get(k, [])]
            if times:
                lo, hi = min(times) - 15, max(times) + 2
                for t, line in soak.events:
                    if lo <= t <= hi and ("FAULT" in line or "ANOMALY" in line or "started" in line):
                        print(f"  timeline {line.strip()}")
        if dup:
            print(f"duplicated ids: {len(dup)}, by type/kind/rule: {kinds([i for i in dup if i in got], got)}")
            for i in sorted(dup)[:3]:
                copies = "; ".join(f"stream seq {sseq} at {ts:.1f}s, partition {part}, epoch {epoch}, "
                                   f"input seq {iseq}" for sseq, ts, part, epoch, iseq in meta.get(i, []))
                print(f"  e.g. {i} {(got.get(i) or {}).get('conversation_id')} stored {dup[i]} times: {copies}")
        if regressions:
            print(f"checkpoint loads that went back ({len(regressions)}): a partition's checkpoint "
                  "loaded at an input before one loaded earlier")
            for line, before in regressions[:12]:
                print(f"  {line[:220]}\n      (earlier: {before[:160]})")
        if dl["not_once"]:
            print(f"bad messages not dead-lettered once (mark, letters): {dl['not_once'][:10]}")
        if dl["wrong"]:
            print(f"dead letters with another reason or original sequence: {dl['wrong'][:10]}")
        if dl["twice"]:
            print(f"dead letters stored twice: {list(dl['twice'].items())[:10]}")
        if dl["unknown"]:
            print(f"dead letters of other input: {len(dl['unknown'])}, e.g. {dl['unknown'][:3]}")
        if dl["unacked"]:
            print(f"bad publishes not acknowledged (not counted): "
                  f"{[(b['mark'], b['ack']) for b in dl['unacked']][:10]}")
        if still_there:
            print(f"undecodable inputs not removed: {still_there[:10]}")
        if soak.anomalies:
            print(f"anomalies ({len(soak.anomalies)}):")
            for a in soak.anomalies:
                print("  " + a[:2000])
        digest, kinds_n = log_digest(logs)
        print(f"instance logs: {kinds_n} kinds of WARN/ERROR line; most frequent:")
        for n, example in digest:
            print(f"  {n:6d} x  {example[:300]}")
        failed = bool(vs_file["missing"] or vs_stream["missing"] or dup
                      or vs_stream["extra_other"] or vs_stream["differ"]
                      or dl["not_once"] or dl["wrong"] or dl["twice"] or dl["unknown"]
                      or still_there or settle_s is None)
        print("FAIL" if failed else "PASS")
        return 1 if failed else 0
    finally:
        if soak:
            soak.stop_scraper.set()
            for p in soak.procs:
                if p.poll() is None:
                    try:
                        p.send_signal(signal.SIGCONT)
                    except OSError:
                        pass
            for p in reversed(soak.procs):
                if p.poll() is None:
                    p.terminate()
            for p in soak.procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            soak.timeline.close()
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            for f in os.listdir(tmp):
                if f.endswith(".log"):
                    shutil.copy2(os.path.join(tmp, f), args.keep)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
