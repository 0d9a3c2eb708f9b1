"""Print the fidelity summary JSON as Markdown (for docs/fidelity.md).

    .venv/bin/python tests/python/summarize.py [target/fidelity/summary.json]
        [--source fixtures|corpus] [--no-files] [--failures N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KINDS = ("attr_type", "packed_float64", "transcode")
STATUS_LABEL = {
    "clean": "clean",
    "clean_with_exceptions": "clean (exceptions)",
    "failed": "**failed**",
    "unreadable": "unreadable",
}


def cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def totals_table(doc: dict, sources: list[str]) -> list[str]:
    out = [
        "| source | files | clean | clean with exceptions | failed | unreadable |"
        + "".join(f" {k} (files / instances) |" for k in KINDS),
        "|---|--:|--:|--:|--:|--:|" + "--:|" * len(KINDS),
    ]
    for src in sources:
        t = doc["totals"].get(src)
        if not t or not t["files"]:
            continue
        exc = "".join(f" {t['exception_files'][k]} / {t['exception_instances'][k]} |" for k in KINDS)
        out.append(
            f"| {src} | {t['files']} | {t['clean']} | {t['clean_with_exceptions']} | {t['failed']} |"
            f" {t['unreadable']} |{exc}"
        )
    return out


def files_table(files: list[dict], n_failures: int) -> list[str]:
    out = [
        "| file | status |" + "".join(f" {k} |" for k in KINDS) + " notes |",
        "|---|---|" + "--:|" * len(KINDS) + "---|",
    ]
    for r in files:
        exc = "".join(f" {r['exceptions'].get(k, 0) or ''} |" for k in KINDS)
        if r["status"] == "unreadable":
            note = f"xarray: {r.get('reason') or ''}"
        elif r["status"] == "failed":
            fails = r.get("failures") or []
            shown = "; ".join(f.splitlines()[0] for f in fails[:n_failures])
            more = f" (+{len(fails) - n_failures} more)" if len(fails) > n_failures else ""
            note = f"{len(fails)} failure(s): {shown}{more}"
        else:
            note = ""
        if r.get("notes"):
            note = (note + "; " if note else "") + "note: " + "; ".join(r["notes"][:2])
        out.append(f"| `{cell(r['id'], 200)}` | {STATUS_LABEL.get(r['status'], r['status'])} |{exc} {cell(note, 300)} |")
    return out


def render(doc: dict, source: str | None = None, with_files: bool = True, n_failures: int = 1) -> str:
    files = [r for r in doc["files"] if source is None or r["source"] == source]
    sources = [source] if source else ["fixtures", "corpus", "all"]
    lines = [
        f"Indexer: `{' '.join(doc.get('indexer', []))}`  ",
        f"Generated: {doc.get('generated', '?')}",
        "",
        *totals_table(doc, sources),
        "",
        "Exceptions are the three allowed differences: `attr_type` (attribute numerically equal,"
        " storage type differs), `packed_float64` (packed variable decodes to float64 instead of"
        " float32, values equal at float32 precision), `transcode` (variable intentionally left out"
        " of the references).",
    ]
    if with_files:
        lines += ["", *files_table(files, n_failures)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("summary", nargs="?", default=str(repo / "target" / "fidelity" / "summary.json"))
    ap.add_argument("--source", choices=("fixtures", "corpus"))
    ap.add_argument("--no-files", action="store_true", help="totals only")
    ap.add_argument("--failures", type=int, default=1, metavar="N", help="failures shown per file (default 1)")
    ns = ap.parse_args(argv)
    try:
        doc = json.loads(Path(ns.summary).read_text())
    except OSError as e:
        print(f"summarize: cannot read {ns.summary}: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(render(doc, ns.source, not ns.no_files, ns.failures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
