#!/usr/bin/env python3
"""Peer comparison: zhijian's engine against what a team would write instead.

The same generated corpus (`zhijian-tools synth`) and the same forbidden phrases
(`lexicons/*.toml`) through:

- pyahocorasick: one automaton over the raw forbidden phrases, matching only
  (no normalisation, no word boundaries, no exceptions, no state) — less
  work than zhijian does;
- python jieba (`lcut`, HMM off): what segmenting every utterance costs;
- zhijian `scan-bench`: `Scanner::scan` (normalise, one automaton over every
  phrase and exception, filters, jieba only where needed), one thread.

Each is timed over the same agent segments in one run on this machine, and
the table gives zhijian's throughput as a multiple of each peer's. The hit
counts are printed as a sanity check (a broken run finds nothing).

End to end, the same way: `zhijian scan FILE > /dev/null` (decode every
JSONL line, judge it with every rule, encode the events) against a Python
script that decodes every line with `json`, matches agent text with
pyahocorasick and encodes a JSON object per hit (the least a team would
write), over a file 50 times larger (start-up, such as loading jieba's
dictionary, is then a few percent); both whole processes, best of three.

Usage: python3 benches/peers.py [--zhijian target/release/zhijian] [--passes 5]
Needs: pip install pyahocorasick jieba (./dev bench installs them into .local/py).
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time
import tomllib


def forbidden_phrases(lexicon_dir):
    phrases = []
    for path in sorted(glob.glob(os.path.join(lexicon_dir, "*.toml"))):
        with open(path, "rb") as f:
            doc = tomllib.load(f)
        for rule in doc.get("rule", []):
            if rule.get("category") == "forbidden" and rule.get("enabled", True):
                phrases.extend(rule["phrases"])
    return phrases


def agent_texts(jsonl):
    out = []
    for line in jsonl.splitlines():
        e = json.loads(line)
        if e.get("speaker") == "agent":
            out.append(e["text"])
    return out


def timed(fn, texts, passes):
    fn(texts)  # warm-up
    start = time.perf_counter()
    result = None
    for _ in range(passes):
        result = fn(texts)
    secs = time.perf_counter() - start
    return len(texts) * passes / secs, result


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--zhijian", default=os.path.join(root, "target/release/zhijian"))
    ap.add_argument("--tools", default=os.path.join(root, "target/release/zhijian-tools"))
    ap.add_argument("--lexicons", default=os.path.join(root, "lexicons"))
    ap.add_argument("--conversations", type=int, default=2000)
    ap.add_argument("--passes", type=int, default=5)
    args = ap.parse_args()

    try:
        import ahocorasick
        import jieba
    except ImportError as e:
        sys.exit(f"peers.py: {e}: pip install pyahocorasick jieba")
    jieba.setLogLevel(60)
    jieba.initialize()

    corpus = subprocess.run(
        [args.tools, "synth", "--conversations", str(args.conversations)],
        check=True, capture_output=True, text=True).stdout
    path = os.path.join(root, ".local", "peers-corpus.jsonl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(corpus)
    texts = agent_texts(corpus)
    phrases = forbidden_phrases(args.lexicons)

    automaton = ahocorasick.Automaton()
    for p in phrases:
        automaton.add_word(p, p)
    automaton.make_automaton()

    def aho(ts):
        hits = 0
        for t in ts:
            for _ in automaton.iter(t):
                hits += 1
        return hits

    def seg(ts):
        tokens = 0
        for t in ts:
            tokens += len(jieba.lcut(t, HMM=False))
        return tokens

    rows = []
    zj = json.loads(subprocess.run(
        [args.tools, "scan-bench", "--lexicons", args.lexicons, "--passes", str(args.passes * 4), path],
        check=True, capture_output=True, text=True).stdout)
    aho_rate, aho_hits = timed(aho, texts, args.passes)
    jieba_rate, tokens = timed(seg, texts, max(1, args.passes // 5))
    if aho_hits == 0 or zj["forbidden_hits_per_pass"] == 0:
        sys.exit("peers.py: no hits: the comparison is broken")
    rows.append(("zhijian Scanner::scan (normalise + match + filters)", zj["segments_per_second"],
                 f'{zj["forbidden_hits_per_pass"]} forbidden hits'))
    rows.append(("pyahocorasick, raw phrases, matching only", aho_rate, f"{aho_hits} hits"))
    rows.append(("python jieba lcut (HMM off) on every segment", jieba_rate, f"{tokens} tokens"))

    # End to end: whole processes over a larger file.
    big = subprocess.run(
        [args.tools, "synth", "--conversations", str(args.conversations * 50)],
        check=True, capture_output=True, text=True).stdout
    big_path = os.path.join(root, ".local", "peers-corpus-big.jsonl")
    with open(big_path, "w") as f:
        f.write(big)
    n_lines = big.count("\n")
    script = (
        "import json, sys, ahocorasick\n"
        "a = ahocorasick.Automaton()\n"
        "for p in json.loads(sys.argv[2]):\n"
        "    a.add_word(p, p)\n"
        "a.make_automaton()\n"
        "out = sys.stdout\n"
        "for line in open(sys.argv[1], encoding='utf-8'):\n"
        "    e = json.loads(line)\n"
        "    if e.get('speaker') == 'agent':\n"
        "        for end, p in a.iter(e['text']):\n"
        "            out.write(json.dumps({'conversation_id': e['conversation_id'], 'seq': e['seq'],"
        " 'matched': p, 'end': end}, ensure_ascii=False) + '\\n')\n"
    )

    def whole(cmd):
        best = None
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=dict(os.environ))
            secs = time.perf_counter() - start
            best = secs if best is None else min(best, secs)
        return n_lines / best

    zj_scan = whole([args.zhijian, "scan", "--lexicons", args.lexicons, big_path])
    py_scan = whole([sys.executable, "-c", script, big_path, json.dumps(phrases)])

    print(f"{len(texts)} agent segments, {len(phrases)} forbidden phrases, one thread each")
    print("| implementation | segments/s | zhijian × | check |")
    print("|---|---|---|---|")
    for name, rate, check in rows:
        print(f"| {name} | {rate:,.0f} | {zj['segments_per_second'] / rate:.1f} | {check} |")
    print()
    print(f"End to end, {n_lines} JSONL lines, whole processes, best of 3:")
    print("| implementation | input lines/s | zhijian × |")
    print("|---|---|---|")
    print(f"| zhijian scan (decode, every rule, encode) | {zj_scan:,.0f} | 1.0 |")
    print(f"| python json + pyahocorasick (decode, match forbidden phrases, encode hits) | {py_scan:,.0f} | {zj_scan / py_scan:.1f} |")


if __name__ == "__main__":
    main()
