"""Joined datasets against xarray: zarrgate and kerchunk's MultiZarrToZarr, case by case.

Both join the same files, the cases of tests/python/join_cases.py that must succeed (real
corpus files split by time, member or variable, with differing units, packing and chunks),
and both are compared with the same oracle, what xarray makes of the files
(tests/python/join_oracle.py).

- **zarrgate**: one `zarrgate serve --data TREE`, each join opened with `xr.open_zarr` over
  s3fs, as test_joins.py does.
- **kerchunk**: `SingleHdf5ToZarr` / `NetCDF3ToZarr` per file, then along the plan of the case:
  `MultiZarrToZarr` with `concat_dims=[the join dimension]`, `coo_map={"time": "cf:time"}`
  and `identical_dims` = every variable without that dimension; for a new dimension its
  values as `coo_map` and the variables that do not get it as `identical_dims`; `merge_vars`
  for a union. Opened through `reference://`. What kerchunk has no means for, a user does in
  xarray afterwards: NcML renames and attributes, and dropping the variables a forced join
  leaves out.

    .venv/bin/python benches/join_fidelity.py [--corpus DIR] [--bin target/debug/zarrgate]

Prints a markdown table: clean, wrong (what differs) or error (the exception).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

from compare_kerchunk import kerchunk_refs  # noqa: E402  (benches/ is the script's directory)

SHOWN = 2  # differences quoted per cell


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=os.environ.get("ZARRGATE_CORPUS", str(REPO.parent / "shared" / "corpus")))
    ap.add_argument("--bin", help="gateway command (default: $ZARRGATE_SERVE_BIN, else the debug build)")
    args = ap.parse_args()
    os.environ["ZARRGATE_CORPUS"] = args.corpus  # read by join_cases at import
    if args.bin:
        os.environ["ZARRGATE_SERVE_BIN"] = args.bin
    warnings.simplefilter("ignore")

    import join_cases

    if join_cases.missing_corpus():
        sys.exit(f"corpus files missing under {args.corpus}: {join_cases.missing_corpus()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        cases = [c for c in join_cases.build(root).values() if not c.refusal]
        served = zarrgate_verdicts(root, cases, Path(tmp))
        kerchunk = {c.name: kerchunk_verdict(c, root, Path(tmp)) for c in cases}
    print("| case | zarrgate | kerchunk MZZ |")
    print("|---|---|---|")
    for c in cases:
        print(f"| {c.name} | {served[c.name]} | {kerchunk[c.name]} |")


# ---------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------


def verdict(case, root: Path, open_joined) -> str:
    """`clean`, `wrong values: …`, `metadata differs: …` or `error: …` for `open_joined()`."""
    from join_oracle import differences, new_dims

    try:
        want = case.oracle(root)
        got = open_joined().load()
        diffs = differences(got, want, decoded=case.decoded, loose=new_dims(case.plan))
    except Exception as e:  # noqa: BLE001 - a failure is the measurement
        return f"error: {type(e).__name__}: {cell(str(e).splitlines()[0] if str(e) else '')}"
    if not diffs:
        return "clean"
    label, shown = ("wrong values", diffs.values) if diffs.values else ("metadata differs", diffs.metadata)
    # what the join is about first: the gridded data variables
    gridded = {name for name, v in want.data_vars.items() if v.ndim >= 2}
    shown = sorted(shown, key=lambda d: d.split(":")[0] not in gridded)
    more = f" (and {len(shown) - SHOWN} more)" if len(shown) > SHOWN else ""
    return f"{label}: {cell('; '.join(shown[:SHOWN]))}{more}"


def cell(text: str, limit: int = 220) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def zarrgate_verdicts(root: Path, cases: list, tmp: Path) -> dict[str, str]:
    from gateway import start_gateway
    from test_joins import BUCKET, open_served

    try:
        gw = start_gateway(root, BUCKET, tmp / "catalog")
    except (OSError, RuntimeError) as e:
        return {c.name: f"error: the gateway did not start: {cell(str(e).splitlines()[0])}" for c in cases}
    try:
        return {c.name: verdict(c, root, lambda c=c: open_served(gw, c.id)) for c in cases}
    finally:
        gw.stop()


def kerchunk_verdict(case, root: Path, tmp: Path) -> str:
    from fidelity import open_refs

    refs = tmp / f"{case.name}.kerchunk.json"

    def open_joined():
        refs.write_text(json.dumps(combined(case.plan, root)))
        return user_fixes(case, open_refs(refs, None, decode_cf=True))

    return verdict(case, root, open_joined)


def user_fixes(case, ds):
    """What a kerchunk user does in xarray that the join definition says: drop, edit."""
    from join_oracle import Existing

    if isinstance(case.plan, Existing) and case.plan.drop:
        ds = ds.drop_vars(list(case.plan.drop), errors="ignore")
    return case.edit(ds) if case.edit else ds


# ---------------------------------------------------------------------------------------------
# kerchunk, along the plan of a case
# ---------------------------------------------------------------------------------------------


def combined(plan, root: Path) -> dict:
    from kerchunk.combine import MultiZarrToZarr, merge_vars

    from join_oracle import Existing, File, New, Union

    if isinstance(plan, File):
        return json.loads(kerchunk_refs(root / plan.rel))
    parts = [combined(p, root) for p in plan.parts]
    if isinstance(plan, Union):
        return merge_vars(parts)
    if isinstance(plan, Existing):
        same = without_dim(root / plan.parts[0].rel, plan.dim)
        mzz = MultiZarrToZarr(parts, concat_dims=[plan.dim], identical_dims=same, coo_map={plan.dim: f"cf:{plan.dim}"})
    else:
        assert isinstance(plan, New)
        others = [v for v in variables(parts[0]) if v not in plan.variables]
        mzz = MultiZarrToZarr(parts, concat_dims=[plan.dim], identical_dims=others,
                              coo_map={plan.dim: list(plan.values)})
    return mzz.translate()


def without_dim(path: Path, dim: str) -> list[str]:
    import xarray as xr

    with xr.open_dataset(path, decode_cf=False) as ds:
        return [name for name, v in ds.variables.items() if dim not in v.dims]


def variables(refs: dict) -> list[str]:
    """The arrays of a reference set (top-level `NAME/.zarray` keys)."""
    keys = refs.get("refs", refs)
    return sorted({k.split("/")[0] for k in keys if k.endswith("/.zarray") and k.count("/") == 1})


if __name__ == "__main__":
    main()
