"""Render the ``report`` objects of Uni-Encoder result JSONs into docs/uni-encoder.md.

Each ``<!-- uni-report:NAME -->`` ... ``<!-- /uni-report -->`` block is replaced by the table of
``bench/results/uni/NAME.json`` (title, columns, rows, notes, machine ISA and date); a missing JSON
leaves the block saying so. Numbers in the guide come only from here.

    .venv/bin/python bench/uni_docs.py [--doc docs/uni-encoder.md] [--results bench/results/uni]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

BLOCK = re.compile(r"<!-- uni-report:(?P<name>[\w.-]+) -->.*?<!-- /uni-report -->", re.S)


def _cell(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def render(data: dict, name: str) -> str:
    rep = data["report"]
    m = data.get("machine") or {}
    isa = m.get("feature_set", "?") if isinstance(m, dict) else "?"
    lines = [f"**{rep['title']}**", "", "| " + " | ".join(rep["columns"]) + " |"]
    lines.append("|" + "---|" * len(rep["columns"]))
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rep["rows"]]
    lines += ["", f"{rep['notes']} (`bench/results/uni/{name}.json`; {isa} CPU, {data.get('date', '?')})"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--doc", default="docs/uni-encoder.md")
    ap.add_argument("--results", default="bench/results/uni")
    args = ap.parse_args()
    doc = Path(args.doc)

    def sub(m: re.Match) -> str:
        name = m.group("name")
        path = Path(args.results) / f"{name}.json"
        body = render(json.loads(path.read_text()), name) if path.is_file() else f"(no {path} yet)"
        return f"<!-- uni-report:{name} -->\n{body}\n<!-- /uni-report -->"

    from pairsmith.atomic import atomic_write_text

    atomic_write_text(doc, BLOCK.sub(sub, doc.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
