#!/usr/bin/env python3
"""Peer comparison: zhijian's engine against what a team would write instead.

The same generated corpus (`zhijian synth`) and the same forbidden phrases
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
        [args.zhijian, "synth", "--conversations", str(args.conversations)],
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
        [args.zhijian, "scan-bench", "--lexicons", args.lexicons, "--passes", str(args.passes * 4), path],
        check=True, capture_output=True, text=True).stdout)
    aho_rate, aho_hits = timed(aho, texts, args.passes)
    jieba_rate, tokens = timed(seg, texts, max(1, args.passes // 5))
    if aho_hits == 0 or zj["forbidden_hits_per_pass"] == 0:
        sys.exit("peers.py: no hits: the comparison is broken")
    rows.append(("zhijian Scanner::scan (normalise + match + filters)", zj["segments_per_second"],
                 f'{zj["forbidden_hits_per_pass"]} forbidden hits'))
    rows.append(("pyahocorasick, raw phrases, matching only", aho_rate, f"{aho_hits} hits"))
    rows.append(("python jieba lcut (HMM off) on every segment", jieba_rate, f"{tokens} tokens"))

    print(f"{len(texts)} agent segments, {len(phrases)} forbidden phrases, one thread each")
    print("| implementation | segments/s | zhijian × | check |")
    print("|---|---|---|---|")
    for name, rate, check in rows:
        print(f"| {name} | {rate:,.0f} | {zj['segments_per_second'] / rate:.1f} | {check} |")


if __name__ == "__main__":
    main()
