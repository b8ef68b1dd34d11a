#!/usr/bin/env python3
"""Writes the demo corpus as lloco ingest jsonl: the appendices of the
Jargon File (public domain; Debian package jargon-text), one document per
appendix, in group "jargon".

    scripts/sample_corpus.py OUT.jsonl [/usr/share/doc/jargon-text/jargon.txt.gz]
"""
import gzip
import json
import re
import sys

SRC = "/usr/share/doc/jargon-text/jargon.txt.gz"


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    src = sys.argv[2] if len(sys.argv) == 3 else SRC
    with gzip.open(src, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    heads = [i for i, l in enumerate(lines) if re.match(r"^(Appendix\s[A-Z]\.|Bibliography$)", l)]
    # the table of contents lists the headings too: keep the last occurrence of each
    last = {}
    for i in heads:
        last[lines[i]] = i
    starts = sorted(last.values())
    docs = []
    for a, b in zip(starts, starts[1:]):
        title = " ".join(lines[a].split())  # the headings use no-break spaces
        if not title.startswith("Appendix"):
            continue
        m = re.match(r"Appendix ([A-Z])\. (.*)", title)
        text = "\n".join(lines[a:b]).strip() + "\n"
        docs.append({"id": "jargon-appendix-" + m.group(1).lower(), "title": m.group(2),
                     "group": "jargon", "text": text})
    if len(docs) < 2:
        sys.exit("sample_corpus: no appendices found in " + src)
    with open(sys.argv[1], "w", encoding="utf-8") as out:
        for d in docs:
            out.write(json.dumps(d, ensure_ascii=False) + "\n")
    print("sample_corpus: %d documents (%s) -> %s" % (
        len(docs), ", ".join(d["title"] for d in docs), sys.argv[1]), file=sys.stderr)


if __name__ == "__main__":
    main()
