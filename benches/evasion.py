#!/usr/bin/env python3
"""Evasion corpus: the default lexicon's forbidden and filler phrases,
disguised the ways a hostile or sloppy transcript can disguise them, scanned
by `zhijian scan`; prints the catch rate per class as a Markdown table.

    python3 benches/evasion.py [--bin target/release/zhijian] [--lexicons lexicons]
                               [--out evasion.jsonl] [--misses]

Each variant is one conversation holding one agent segment whose text is
the disguised phrase alone; it is caught when `zhijian scan` reports a
violation of the phrase's own rule in that conversation. A class only
counts the phrases it can disguise (inserted characters need two
characters; traditional and lookalike classes need a character that has
such a form). `plain` is the undisguised phrase: the baseline.

Standard library only. Not generated: pinyin for a character (你问我ｗｏ问谁),
homophones and other rewrites that need a language model.
"""

import argparse
import collections
import glob
import json
import os
import subprocess
import sys
import tempfile
import tomllib
import unicodedata

# Simplified → traditional for the characters of the default lexicon's
# forbidden and filler phrases that have a distinct traditional form.
TRADITIONAL = dict(
    zip(
        "个么们会关净刚别办吗听声处导归态挂样没烦现经规让讲诉话该说诶谁贴过还这释错长问领题额儿来点墙干才",
        "個麼們會關淨剛別辦嗎聽聲處導歸態掛樣沒煩現經規讓講訴話該說誒誰貼過還這釋錯長問領題額兒來點牆幹纔",
    )
)

ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"]
# Default-ignorable code points other than the zero-width ones above.
IGNORABLE = [
    "\u034f",  # combining grapheme joiner
    "\u180e",  # Mongolian vowel separator
    "\u3164",  # Hangul filler
    "\uffa0",  # half-width Hangul filler
    "\u115f",  # Hangul choseong filler
    "\u00ad",  # soft hyphen
    "\u061c",  # Arabic letter mark
    "\u17b4",  # Khmer vowel inherent aq
    "\u200e",  # left-to-right mark
    "\u202a",  # left-to-right embedding
    "\ufe0f",  # variation selector 16
    "\U0001d173",  # musical symbol begin beam
    "\U000e0020",  # tag space
]
COMBINING = ["\u0301", "\u0308", "\u0323", "\u20dd", "\u3099"]

COMPAT_BLOCKS = [(0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]
RADICAL_BLOCKS = [(0x2F00, 0x2FDF), (0x2E80, 0x2EFF)]


def lookalikes(blocks):
    """Unified ideograph → the first character of `blocks` folding to it."""
    out = {}
    for lo, hi in blocks:
        for cp in range(lo, hi + 1):
            folded = unicodedata.normalize("NFKC", chr(cp))
            if len(folded) == 1 and folded != chr(cp):
                out.setdefault(folded, chr(cp))
    return out


COMPAT = lookalikes(COMPAT_BLOCKS)
RADICAL = lookalikes(RADICAL_BLOCKS)


# The phrase whose variants the table shows, when a class can disguise it.
EXAMPLE = "不关我的事"


def visible(text):
    """`text` with invisible characters and marks written as \\u{…}."""
    hidden = set(ZERO_WIDTH + IGNORABLE) | set(COMPAT.values()) | set(RADICAL.values())
    return "".join(
        c if (c == " " or unicodedata.category(c)[0] in "LNPS") and c not in hidden else f"\\u{{{ord(c):X}}}"
        for c in text
    )


def full_width(c):
    if c == " ":
        return "\u3000"
    if "!" <= c <= "~":
        return chr(ord(c) + 0xFEE0)
    return c


def between(phrase, sep):
    return sep.join(phrase) if len(phrase) > 1 else None


def substitute(phrase, table):
    out = "".join(table.get(c, c) for c in phrase)
    return out if out != phrase else None


def variants(phrase):
    """(class, text) pairs; a class yields nothing it cannot disguise."""
    yield "plain", phrase
    yield "spaces", between(phrase, " ")
    wide = "".join(full_width(c) for c in phrase)
    yield "full_width", between(wide, "\u3000") or (wide if wide != phrase else None)
    yield "traditional", substitute(phrase, TRADITIONAL)
    for z in ZERO_WIDTH:
        yield "zero_width", between(phrase, z)
    for z in IGNORABLE:
        yield "default_ignorable", between(phrase, z)
    for m in COMBINING:
        yield "combining_marks", "".join(c + m for c in phrase)
    yield "compatibility_ideographs", substitute(phrase, COMPAT)
    yield "radicals", substitute(phrase, RADICAL)
    mixed = [COMPAT.get(c, RADICAL.get(c, TRADITIONAL.get(c, c))) + "\u0301" for c in phrase]
    yield "all_at_once", "\u3164".join(mixed)


CLASSES = [
    "plain",
    "spaces",
    "full_width",
    "traditional",
    "zero_width",
    "default_ignorable",
    "combining_marks",
    "compatibility_ideographs",
    "radicals",
    "all_at_once",
]


def phrases(lexicon_dir):
    out = []
    for path in sorted(glob.glob(os.path.join(lexicon_dir, "*.toml"))):
        with open(path, "rb") as f:
            doc = tomllib.load(f)
        for rule in doc.get("rule", []):
            if rule.get("category") in ("forbidden", "filler") and rule.get("enabled", True):
                out.extend((rule["id"], p) for p in rule.get("phrases", []))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="target/release/zhijian")
    ap.add_argument("--lexicons", default="lexicons")
    ap.add_argument("--out", help="keep the generated JSONL here")
    ap.add_argument("--misses", action="store_true", help="list the variants not caught")
    args = ap.parse_args()

    cases = []  # (conversation id, class, rule, text)
    example = {}
    shown_example = set()
    for rule, phrase in phrases(args.lexicons):
        for cls, text in variants(phrase):
            if text is not None:
                cases.append((f"ev-{len(cases):05d}", cls, rule, text))
                if cls not in example or (phrase == EXAMPLE and cls not in shown_example):
                    example[cls] = text
                    if phrase == EXAMPLE:
                        shown_example.add(cls)
    lines = [
        json.dumps(
            {
                "conversation_id": cid,
                "seq": 0,
                "speaker": "agent",
                "text": text,
                "ts_ms": 1_700_000_000_000 + i,
            },
            ensure_ascii=False,
        )
        for i, (cid, _, _, text) in enumerate(cases)
    ]
    if args.out:
        path = args.out
    else:
        fd, path = tempfile.mkstemp(prefix="zhijian-evasion-", suffix=".jsonl")
        os.close(fd)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    try:
        run = subprocess.run(
            [args.bin, "scan", "--lexicons", args.lexicons, path],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        if not args.out:
            os.unlink(path)
    if run.returncode != 0:
        sys.exit(f"{args.bin} scan failed ({run.returncode}): {run.stderr.strip()}")
    if run.stderr.strip():
        print(f"note: zhijian scan reported: {run.stderr.strip()}", file=sys.stderr)
    found = collections.defaultdict(set)
    for line in run.stdout.splitlines():
        event = json.loads(line)
        if event.get("type") == "violation":
            found[event["conversation_id"]].add(event["rule_id"])

    caught = collections.Counter()
    total = collections.Counter()
    missed = []
    for cid, cls, rule, text in cases:
        total[cls] += 1
        if rule in found[cid]:
            caught[cls] += 1
        else:
            missed.append((cls, rule, text))

    print("| class | example | caught / generated | rate |")
    print("|---|---|---:|---:|")
    for cls in CLASSES:
        if total[cls] == 0:
            continue
        shown = visible(example[cls])
        rate = 100.0 * caught[cls] / total[cls]
        print(f"| {cls} | `{shown}` | {caught[cls]} / {total[cls]} | {rate:.1f}% |")
    all_caught, all_total = sum(caught.values()), sum(total.values())
    print(f"| **all** | | {all_caught} / {all_total} | {100.0 * all_caught / all_total:.1f}% |")
    if args.misses:
        for cls, rule, text in missed:
            print(f"missed {cls:<26} {rule:<28} {visible(text)}")


if __name__ == "__main__":
    main()
