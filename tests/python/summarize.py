"""Print a fidelity summary JSON as Markdown (for docs/fidelity.md).

    .venv/bin/python tests/python/summarize.py [SUMMARY.json | --s3]
        [--source fixtures|corpus] [--no-files] [--failures N]

The default is ``target/fidelity/summary.json`` (references through
``reference://``); ``--s3`` reads ``target/fidelity/summary-s3.json`` (the
same files through the gateway), which adds a column for the variables the
gateway serves decoded although the indexer marked them ``transcode``.
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


def via_s3(doc: dict) -> bool:
    return doc.get("via") == "s3"


def totals_table(doc: dict, sources: list[str]) -> list[str]:
    s3 = via_s3(doc)
    out = [
        "| source | files | clean | clean with exceptions | failed | unreadable |"
        + "".join(f" {k} (files / instances) |" for k in KINDS)
        + (" served decoded (files / variables) |" if s3 else ""),
        "|---|--:|--:|--:|--:|--:|" + "--:|" * (len(KINDS) + s3),
    ]
    for src in sources:
        t = doc["totals"].get(src)
        if not t or not t["files"]:
            continue
        exc = "".join(f" {t['exception_files'][k]} / {t['exception_instances'][k]} |" for k in KINDS)
        if s3:
            exc += f" {t.get('transcoded_files', 0)} / {t.get('transcoded_variables', 0)} |"
        out.append(
            f"| {src} | {t['files']} | {t['clean']} | {t['clean_with_exceptions']} | {t['failed']} |"
            f" {t['unreadable']} |{exc}"
        )
    return out


def files_table(files: list[dict], n_failures: int, s3: bool = False) -> list[str]:
    out = [
        "| file | status |" + "".join(f" {k} |" for k in KINDS) + (" served decoded |" if s3 else "") + " notes |",
        "|---|---|" + "--:|" * (len(KINDS) + s3) + "---|",
    ]
    for r in files:
        exc = "".join(f" {r['exceptions'].get(k, 0) or ''} |" for k in KINDS)
        if s3:
            exc += f" {len(r.get('transcoded') or []) or ''} |"
        if r["status"] == "unreadable":
            note = f"xarray: {r.get('reason') or ''}"
        elif r["status"] == "failed":
            fails = r.get("failures") or []
            shown = "; ".join(f.splitlines()[0] for f in fails[:n_failures])
            more = f" (+{len(fails) - n_failures} more)" if len(fails) > n_failures else ""
            # through S3, a file xarray cannot read fails when the gateway does not serve it cleanly
            why = f"{r['reason']}: " if r.get("reason") else ""
            note = f"{why}{len(fails)} failure(s): {shown}{more}"
        else:
            note = ""
        if r.get("notes"):
            note = (note + "; " if note else "") + "note: " + "; ".join(r["notes"][:2])
        out.append(f"| `{cell(r['id'], 200)}` | {STATUS_LABEL.get(r['status'], r['status'])} |{exc} {cell(note, 300)} |")
    return out


def render(doc: dict, source: str | None = None, with_files: bool = True, n_failures: int = 1) -> str:
    files = [r for r in doc["files"] if source is None or r["source"] == source]
    sources = [source] if source else ["fixtures", "corpus", "all"]
    s3 = via_s3(doc)
    lines = [
        f"{'Gateway' if s3 else 'Indexer'}: `{' '.join(doc.get('indexer', []))}`  ",
        f"Read through: {'S3 (s3fs, consolidated metadata)' if s3 else 'reference://'}  ",
        f"Generated: {doc.get('generated', '?')}",
        "",
        *totals_table(doc, sources),
        "",
        "Exceptions are the three allowed differences: `attr_type` (attribute numerically equal,"
        " storage type differs), `packed_float64` (packed variable decodes to float64 instead of"
        " float32, values equal at float32 precision), `transcode` (variable intentionally left out"
        + (" of the references, which the gateway cannot decode either)." if s3 else " of the references)."),
    ]
    if s3:
        lines += ["", "Served decoded: variables left out of the plain references (`transcode`) that the"
                  " gateway decodes and serves; they are compared like every other variable."]
    if with_files:
        lines += ["", *files_table(files, n_failures, s3)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("summary", nargs="?", help="default target/fidelity/summary.json")
    ap.add_argument("--s3", action="store_true", help="read target/fidelity/summary-s3.json")
    ap.add_argument("--source", choices=("fixtures", "corpus"))
    ap.add_argument("--no-files", action="store_true", help="totals only")
    ap.add_argument("--failures", type=int, default=1, metavar="N", help="failures shown per file (default 1)")
    ns = ap.parse_args(argv)
    if ns.summary is None:
        ns.summary = str(repo / "target" / "fidelity" / ("summary-s3.json" if ns.s3 else "summary.json"))
    try:
        doc = json.loads(Path(ns.summary).read_text())
    except OSError as e:
        print(f"summarize: cannot read {ns.summary}: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(render(doc, ns.source, not ns.no_files, ns.failures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
