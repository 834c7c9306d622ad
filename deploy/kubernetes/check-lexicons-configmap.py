#!/usr/bin/env python3
"""Checks that lexicons-configmap.yaml holds exactly lexicons/*.toml.

The drift check of the generated ConfigMap without kubectl (Python 3
standard library only), so that it runs everywhere deploy/check runs:
gen-lexicons-configmap.sh still needs kubectl to regenerate the file, not
to check it.

It reads the ConfigMap's `data:` block scalars (`key: |`, `|-` or `|+`, as
kubectl writes them) and compares each, byte for byte, with the lexicon
file of that name; a file missing from the ConfigMap, a key without a file,
a value that differs, or a value in a form this reader does not handle
(anything but a block scalar) is a failure. It also checks the ConfigMap's
kind and name.

    deploy/kubernetes/check-lexicons-configmap.py [CONFIGMAP [LEXICON_DIR]]

Exit 0 when up to date, 1 otherwise (each problem on stdout).
"""

import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
REGENERATE = "run deploy/kubernetes/gen-lexicons-configmap.sh (needs kubectl) and commit the result"

# `  key: |`, with an optional indentation indicator and chomping in either order.
BLOCK = re.compile(r"^  (?P<key>[^\s:#][^:]*): \|(?:(?P<i1>[1-9])?(?P<c1>[+-])?|(?P<c2>[+-])(?P<i2>[1-9]))$")


def parse_data(text):
    """The `data:` entries of a ConfigMap as {key: value}; raises ValueError."""
    lines = text.split("\n")
    try:
        at = lines.index("data:") + 1
    except ValueError:
        raise ValueError("no top-level `data:` block") from None
    data = {}
    while at < len(lines):
        line = lines[at]
        if line == "" or line.startswith("#"):
            at += 1
            continue
        if not line.startswith("  "):
            break  # the next top-level key: end of data
        m = BLOCK.match(line)
        if not m:
            raise ValueError(
                f"line {at + 1}: {line.strip()!r} is not a `key: |` block scalar; "
                "this check reads only what kubectl writes for text files"
            )
        key = m.group("key")
        if key in data:
            raise ValueError(f"line {at + 1}: key {key!r} twice")
        chomp = m.group("c1") or m.group("c2") or ""
        digit = m.group("i1") or m.group("i2")
        indent = " " * (2 + int(digit)) if digit else None
        at += 1
        body = []
        while at < len(lines):
            line = lines[at]
            if line.strip() == "":
                body.append("")
                at += 1
                continue
            if indent is None:
                # Auto-detected: the indentation of the first non-empty line,
                # which must be deeper than the key's.
                width = len(line) - len(line.lstrip(" "))
                if width <= 2:
                    break
                indent = " " * width
            if not line.startswith(indent):
                break
            body.append(line[len(indent):])
            at += 1
        # Trailing empty lines: dropped (clip and strip) or kept (keep).
        content = "\n".join(body)
        stripped = content.rstrip("\n")
        if chomp == "-":
            value = stripped
        elif chomp == "+":
            # Lines after the value up to the next key belong to it; the
            # final line break of the document is not part of the text.
            value = content + "\n" if content else ""
        else:
            value = stripped + "\n" if stripped else ""
        data[key] = value
    return data


def main(argv):
    configmap = pathlib.Path(argv[1]) if len(argv) > 1 else HERE / "lexicons-configmap.yaml"
    lexicons = pathlib.Path(argv[2]) if len(argv) > 2 else ROOT / "lexicons"
    problems = []
    text = configmap.read_text(encoding="utf-8")
    if not re.search(r"^kind: ConfigMap$", text, re.M):
        problems.append(f"{configmap}: not `kind: ConfigMap`")
    if not re.search(r"^  name: zhijian-lexicons$", text, re.M):
        problems.append(f"{configmap}: metadata.name is not zhijian-lexicons")
    try:
        data = parse_data(text)
    except ValueError as e:
        problems.append(f"{configmap}: {e}")
        data = None
    if data is not None:
        files = {p.name: p for p in sorted(lexicons.glob("*.toml"))}
        if not files:
            problems.append(f"no lexicon files in {lexicons}")
        for name in sorted(files.keys() - data.keys()):
            problems.append(f"{name}: in {lexicons} but not in the ConfigMap")
        for name in sorted(data.keys() - files.keys()):
            problems.append(f"{name}: in the ConfigMap but not in {lexicons}")
        for name in sorted(files.keys() & data.keys()):
            want = files[name].read_text(encoding="utf-8")
            got = data[name]
            if want == got:
                continue
            w, g = want.split("\n"), got.split("\n")
            first = next((i for i in range(max(len(w), len(g)))
                          if (w[i] if i < len(w) else None) != (g[i] if i < len(g) else None)), 0)
            problems.append(
                f"{name}: the ConfigMap differs from {files[name]} from line {first + 1}:\n"
                f"    file:      {w[first] if first < len(w) else '<end>'!r}\n"
                f"    ConfigMap: {g[first] if first < len(g) else '<end>'!r}"
            )
    if problems:
        for p in problems:
            print(p)
        print(f"{configmap.name} is stale: {REGENERATE}")
        return 1
    print(f"{configmap.name} holds exactly {', '.join(sorted(data))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
