#!/usr/bin/env python3
"""Convert CSDS dialogues (JD.com customer-service chat, whole sessions) into
the JSONL transcript events of $CORPUS (see its README).

CSDS (Lin et al., EMNLP 2021, "CSDS: A Fine-Grained Chinese Dataset for
Customer Service Dialogue Summarization") is distributed through cloud-drive
links only; the authors' later repository xiaolinAndy/TODS carries the
dialogues of its validation and test splits in "CSDS-topic" form, one record
per (dialogue, topic). This script reads those two files from the fetched
repository by path (nothing of it is in this repository):

    python3 eval/convert_csds.py --git <git dir of xiaolinAndy/TODS> \
        --out $DATA/csds/csds.jsonl

Source: xiaolinAndy/TODS @ 4c28a28d2e409363546c54e3096c6143c24f5d6c,
`data/CSDS/topic/val.json` and `data/CSDS/topic/test.json` (blob hashes
checked below). Each record's `Dialogue` is the whole session as one string,
turns joined by `[SEP][CLS]`, each turn `role:text` with role 客服 (agent) or
用户 / 商家 / 物流师傅 or 师傅 (the customer side: a shopper, a
merchant, a courier).
A dialogue appears once per topic; duplicates are dropped. Known limits of
this form: every turn is cut to 30 characters including its role prefix
(about 9 % of turns are cut), masks are `[数字]`, `[姓名]`, `[站点]` … without
an index, and a cut can leave half a mask (`[站`).

Events: `conversation_id` is `csds-` + the first 20 hex digits of sha256 of
the dialogue string; `speaker` agent / customer, or `system` for the chat
platform's notices (text starting with 系统提示, as in the corpus);
`channel` chat; synthetic `ts_ms` like the corpus's chat sources; an `end`
event closes each conversation. Python 3 stdlib only.
"""
import argparse
import hashlib
import json
import subprocess

COMMIT = "4c28a28d2e409363546c54e3096c6143c24f5d6c"
FILES = {
    "data/CSDS/topic/val.json": "4fac3ad27b9b04bf6fb35a1b69efb3fd0edb6525",
    "data/CSDS/topic/test.json": "64338228dbb19f35ef48a70e1dfab44b1ec56e68",
}
SEP = "[SEP][CLS]"
AGENT = "客服"
CUSTOMER = {"用户", "商家", "物流师傅", "师傅"}


def git(args, gitdir):
    return subprocess.run(["git", "--git-dir", gitdir, *args], check=True,
                          capture_output=True).stdout


def turns_of(dialogue: str):
    for raw in dialogue.split(SEP):
        role, sep, text = raw.partition(":")
        if not sep or (role != AGENT and role not in CUSTOMER):
            raise ValueError(f"turn without a known role: {raw[:12]!r}")
        text = text.strip()
        if role == AGENT:
            speaker = "system" if text.startswith("系统提示") else "agent"
        else:
            speaker = "customer"
        yield speaker, text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--git", required=True, help="git dir of xiaolinAndy/TODS")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    gitdir = args.git
    seen = set()
    out = []
    for path, blob in FILES.items():
        found = git(["rev-parse", f"{COMMIT}:{path}"], gitdir).decode().strip()
        if found != blob:
            raise SystemExit(f"{path}: blob {found}, expected {blob}")
        records = json.loads(git(["cat-file", "blob", blob], gitdir).decode("utf-8"))
        for rec in records:
            dialogue = rec["Dialogue"]
            if dialogue in seen:
                continue
            seen.add(dialogue)
            cid = "csds-" + hashlib.sha256(dialogue.encode("utf-8")).hexdigest()[:20]
            events = []
            ts = 0
            seq = 0
            for speaker, text in turns_of(dialogue):
                if not text:
                    continue
                if seq > 0:
                    ts += 1500 + min(180 * len(text), 45000)
                events.append({"conversation_id": cid, "seq": seq, "speaker": speaker,
                               "text": text, "ts_ms": ts, "channel": "chat"})
                seq += 1
            events.append({"conversation_id": cid, "type": "end", "seq": seq,
                           "ts_ms": ts + 1000, "channel": "chat"})
            out.append((cid, events))
    out.sort(key=lambda c: c[0])
    if len({c for c, _ in out}) != len(out):
        raise SystemExit("conversation id collision")
    with open(args.out, "w", encoding="utf-8") as f:
        for _, events in out:
            for e in events:
                f.write(json.dumps(e, ensure_ascii=False) + "\n")
    print(f"{len(out)} conversations, {sum(len(e) for _, e in out)} events -> {args.out}")


if __name__ == "__main__":
    main()
