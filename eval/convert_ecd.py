#!/usr/bin/env python3
"""Convert the E-commerce Dialogue Corpus sample (Taobao shop chat) into the
JSONL transcript events of $CORPUS (see its README).

Reads the fetched repository by path (nothing of it is in this repository):

    python3 eval/convert_ecd.py --git <git dir of cooelf/DeepUtteranceAggregation> \
        --out $CORPUS/ecd.jsonl

Source: cooelf/DeepUtteranceAggregation @ f2e15d6600ccda0db32eee98b2ca67c322071964,
`ECD_sample/test` and `ECD_sample/train` (`valid` is the same blob as
`train`). Each line is `label \t utterance … \t response`; only label-1
lines are real (label 0 pairs a context with a response drawn from another
session). Speakers are not marked: a context ends with the customer and the
response is the shop's, so turns alternate backwards from the response.
The source is word-segmented with spaces; the spaces between two Chinese
characters are removed (they are the segmenter's, not the writer's), the
others kept. Each sample is an excerpt of 3–10 turns, so most start and
end mid-session. Python 3 stdlib only.
"""
import argparse
import hashlib
import json
import re
import subprocess

COMMIT = "f2e15d6600ccda0db32eee98b2ca67c322071964"
FILES = ["ECD_sample/test", "ECD_sample/train"]
CJK = r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]"


def join_tokens(text: str) -> str:
    text = text.strip()
    # Remove a space with a CJK character (or full-width mark) on either side.
    prev = None
    while prev != text:
        prev = text
        text = re.sub(rf"({CJK}) +", r"\1", text)
        text = re.sub(rf" +({CJK})", r"\1", text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--git", required=True, help="git dir of cooelf/DeepUtteranceAggregation")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    seen = set()
    out = []
    for path in FILES:
        blob = subprocess.run(
            ["git", "--git-dir", args.git, "show", f"{COMMIT}:{path}"],
            check=True, capture_output=True,
        ).stdout.decode("utf-8")
        for line in blob.splitlines():
            parts = line.split("\t")
            if len(parts) < 3 or parts[0] != "1":
                continue
            turns = [join_tokens(p) for p in parts[1:]]
            key = "\t".join(turns)
            if key in seen:
                continue
            seen.add(key)
            cid = "ecd-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]
            n = len(turns)
            ts = 0
            events = []
            for i, text in enumerate(turns):
                # The last turn is the shop's reply; turns alternate backwards.
                speaker = "agent" if (n - 1 - i) % 2 == 0 else "customer"
                if i > 0:
                    ts += 1500 + min(180 * len(text), 45000)
                events.append({"conversation_id": cid, "seq": i, "speaker": speaker,
                               "text": text, "ts_ms": ts, "channel": "chat"})
            events.append({"conversation_id": cid, "type": "end", "seq": n, "ts_ms": ts + 1000,
                           "channel": "chat"})
            out.append((cid, events))
    out.sort(key=lambda c: c[0])
    with open(args.out, "w", encoding="utf-8") as f:
        for _, events in out:
            for e in events:
                f.write(json.dumps(e, ensure_ascii=False) + "\n")
    print(f"{len(out)} conversations, {sum(len(e) for _, e in out)} events -> {args.out}")


if __name__ == "__main__":
    main()
