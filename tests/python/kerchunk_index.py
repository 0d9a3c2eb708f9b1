"""Stand-in for ``zarrgate index FILE -o OUT.json`` built on kerchunk.

Used to self-test the fidelity harness (and as a baseline) before or without
the zarrgate binary::

    ZARRGATE_BIN="/work/main/.venv/bin/python tests/python/kerchunk_index.py" \\
        .venv/bin/python -m pytest tests/python

Accepts the same command line as zarrgate (``index`` is optional).  HDF5 /
NetCDF-4 goes through ``SingleHdf5ToZarr(inline_threshold=0)``, NetCDF-3
through ``NetCDF3ToZarr(inline_threshold=0)`` (which needs scipy).  URLs are
absolute local paths.  Exit code 1 with a message on stderr when kerchunk fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def sniff(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
        if head[:3] == b"CDF":
            return "netcdf3"
        # the HDF5 superblock may sit after a user block at 0, 512, 1024, ...
        off = 0
        size = os.path.getsize(path)
        while off < size:
            f.seek(off)
            if f.read(8) == b"\x89HDF\r\n\x1a\n":
                return "hdf5"
            off = 512 if off == 0 else off * 2
    return "unknown"


def translate(path: str) -> dict:
    kind = sniff(path)
    if kind == "netcdf3":
        from kerchunk.netCDF3 import NetCDF3ToZarr

        return NetCDF3ToZarr(path, inline_threshold=0).translate()
    if kind == "hdf5":
        from kerchunk.hdf import SingleHdf5ToZarr

        return SingleHdf5ToZarr(path, inline_threshold=0).translate()
    raise SystemExit(f"kerchunk_index: {path}: not NetCDF-3 or HDF5")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "index":
        argv = argv[1:]
    ap = argparse.ArgumentParser(prog="kerchunk_index")
    ap.add_argument("file")
    ap.add_argument("-o", "--output", required=True)
    ns = ap.parse_args(argv)
    path = os.path.abspath(ns.file)
    refs = translate(path)

    def default(o):  # numpy scalars kerchunk sometimes leaves behind
        if hasattr(o, "tolist"):
            return o.tolist()
        if isinstance(o, bytes):
            return o.decode("ascii")
        raise TypeError(type(o).__name__)

    with open(ns.output, "w") as f:
        json.dump(refs, f, default=default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
