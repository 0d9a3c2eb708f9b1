"""End-to-end fidelity oracle for zarrgate reference files and the S3 gateway.

The oracle is ``xr.open_dataset(original_file)``: a Zarr view of the file is
correct when xarray, reading it with the zarr engine, yields the *same* dataset
as xarray reading the original file with its default engine, for every group,
both with ``decode_cf=False`` (raw stored values and attributes) and
``decode_cf=True`` (masked, scaled, time-decoded values).  Two views are
compared by the same rules (:class:`ZarrView`):

:class:`RefsView`
    the Kerchunk v1 reference JSON of ``zarrgate index``, read through fsspec's
    ``reference://`` filesystem;
:class:`GatewayView`
    the dataset as ``zarrgate serve`` serves it, read through s3fs with the
    consolidated metadata each group carries.

Every difference is a failure except exactly three allowed kinds, which are
counted (each distinct instance once, however many modes it shows up in):

``attr_type``
    an attribute whose value is numerically equal but whose numpy storage type
    differs (float32 vs python float/float64, int16 vs int64, a 1-element array
    vs a scalar).  JSON cannot carry attribute storage types.
``packed_float64``
    a packed variable (``scale_factor``/``add_offset``) that decodes to float64
    through the refs but to float32 from the original, with values equal within
    float32 precision after casting (a consequence of ``attr_type`` on the
    packing attributes: xarray picks the decoded float width from their type).
``transcode``
    a variable that the JSON's top-level ``zarrgate.variables`` block lists with
    ``"status": "transcode"``: intentionally absent from the refs, present in
    the original.  The gateway decodes such variables itself, so through it
    they must be present and equal, except those whose filters it cannot
    decode: those stay absent, and only then count as ``transcode``.  The ones
    it serves are listed in :attr:`FileResult.transcoded`.

Comparison policy (decisions that are easy to get wrong):

* attributes are compared as xarray shows them on each side, literally: e.g.
  xarray's netCDF4 backend moves ``least_significant_digit`` into
  ``.encoding``, so the refs must not carry it in ``.zattrs`` either;
* a float32 attribute must be written as its exact float64 widening
  (``0.10000000149011612``, not ``0.1``): only an *equal* value in another
  storage type is ``attr_type``;
* byte order is an encoding detail and is ignored; fixed-width unicode,
  object-of-str and StringDType arrays are one "string" dtype class whose
  values are compared element-wise; ``S`` dtypes must match exactly; str and
  bytes never compare equal;
* a variable absent from both sides (e.g. a compound type netCDF4 skips) is
  no difference, whatever ``zarrgate.variables`` says about it;
* parts the oracle cannot verify are *notes*, not failures: original values
  that change from one read to the next (never written with fill off).

Library entry points: :func:`list_groups`, :func:`open_original`,
:func:`readable`, :func:`open_refs`, :func:`compare`, :func:`check_alone` and
:class:`FileResult`.  :func:`run_isolated` runs any of them in a forked child
process, because netCDF-C aborts or segfaults on some plain-HDF5 files and a
crash must not take the test session down with it.  Failure messages name the
Zarr side by its view's :attr:`ZarrView.label` ("refs", "gateway").

A variable only the gateway can decode (netCDF-C's plugins lack its filter) is
compared with the original as h5py and hdf5plugin read it; where neither
library can, its values are a note ("unverified"), as for unreadable files.

Run ``python fidelity.py ORIGINAL REFS.json`` to compare one pair by hand, or
``python fidelity.py ORIGINAL s3://BUCKET/KEY --endpoint URL [--meta REFS.json]``
for a file served by a running gateway.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import re
import resource
import signal
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import xarray as xr

EXCEPTION_KINDS = ("attr_type", "packed_float64", "transcode")

#: statuses that may appear in the ``zarrgate.variables`` block
KNOWN_STATUSES = ("referenced", "inlined", "transcode", "refused")

#: how many differing elements a value-mismatch message shows
_MAX_SHOWN = 3


# --------------------------------------------------------------------------
# Result type
# --------------------------------------------------------------------------


@dataclass
class FileResult:
    path: str
    ok: bool = True
    exceptions: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    #: one human-readable line per counted exception (for reports)
    exception_details: list[str] = field(default_factory=list)
    #: observations that are neither failures nor counted exceptions
    notes: list[str] = field(default_factory=list)
    #: set when netCDF-C crashed reading the *original* (the oracle failed):
    #: the file is then unreadable rather than failed
    oracle_crash: str | None = None
    #: variables the indexer marked ``transcode`` that the view serves anyway
    #: (the gateway decodes them); compared like every other variable
    transcoded: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``failed``, ``clean_with_exceptions`` or ``clean``."""
        if not self.ok:
            return "failed"
        return "clean_with_exceptions" if sum(self.exceptions.values()) else "clean"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["exceptions"] = {k: self.exceptions.get(k, 0) for k in EXCEPTION_KINDS}
        return d

    def summary(self, limit: int = 40) -> str:
        lines = [f"{self.path}: {len(self.failures)} failure(s)"]
        lines += ["  - " + f for f in self.failures[:limit]]
        if len(self.failures) > limit:
            lines.append(f"  ... and {len(self.failures) - limit} more")
        return "\n".join(lines)


# --------------------------------------------------------------------------
# Opening files
# --------------------------------------------------------------------------


def _join(group: str, name: str) -> str:
    group = _norm_group(group)
    return f"{group}/{name}" if group else name


def _norm_group(group: str | None) -> str:
    return (group or "").strip("/")


def _group_label(group: str) -> str:
    return "/" + _norm_group(group)


def list_groups(path: str | os.PathLike, engine: str | None = None) -> list[str]:
    """All group paths in *path*: ``""`` for the root, then ``"a"``, ``"a/b"``...

    Uses netCDF4; falls back to h5py for plain HDF5 that netCDF4 cannot open
    (such a file is not :func:`readable`).  Raises if neither can open it.
    With ``engine="h5netcdf"``, h5py only.
    """
    path = os.fspath(path)
    try:
        import netCDF4

        if engine == "h5netcdf":
            raise RuntimeError("the h5netcdf view lists groups with h5py")

        out = [""]
        with netCDF4.Dataset(path) as ds:

            def walk(grp: Any, prefix: str) -> None:
                for name, sub in grp.groups.items():
                    p = f"{prefix}/{name}" if prefix else name
                    out.append(p)
                    walk(sub, p)

            walk(ds, "")
        return out
    except Exception as nc_err:  # noqa: BLE001 - fall back to h5py
        try:
            import h5py
        except ImportError:  # pragma: no cover
            raise nc_err
        try:
            with h5py.File(path, "r") as f:
                names: list[str] = []

                def visit(name: str, obj: Any) -> None:
                    if isinstance(obj, h5py.Group):
                        names.append(name)

                f.visititems(visit)
            return [""] + sorted(names)
        except Exception:
            raise nc_err from None


def open_original(path: str | os.PathLike, group: str | None, decode_cf: bool,
                  engine: str | None = None) -> xr.Dataset:
    return xr.open_dataset(os.fspath(path), group=_norm_group(group) or None, decode_cf=decode_cf,
                           **_engine_kwargs(engine))


def _engine_kwargs(engine: str | None) -> dict:
    # "access": h5netcdf names dimensions without a scale phony_dim_N in the order it meets them
    return {} if engine is None else {"engine": engine, "phony_dims": "access"}


def _beyond_netcdf(dt: np.dtype) -> bool:
    """Types that netCDF's model lacks and that h5netcdf shows: complex, opaque bytes, float16."""
    return dt.kind == "c" or (dt.kind == "V" and dt.names is None) or dt == np.float16


def _is_bool(v: Any) -> bool:
    return isinstance(v, (bool, np.bool_)) or (isinstance(v, np.ndarray) and v.dtype == bool) or (
        isinstance(v, list) and bool(v) and all(isinstance(x, bool) for x in v))


def with_h5netcdf_view(path: str, g: str, decode_cf: bool, o: xr.Dataset, r: xr.Dataset,
                       col: "_Collector") -> xr.Dataset:
    """The oracle where the default engine shows less than h5netcdf.

    The default engine shows complex numbers as a structured ``{r, i}`` dtype, skips opaque
    data, crashes on float16 and drops boolean attributes; h5netcdf shows them all. Where the
    view serves such a variable or attribute, the expected value is h5netcdf's (dimension names
    stay the default engine's where it shows the variable's dimensions). Everything else is
    still compared against the default engine.
    """
    names = [n for n, v in r.variables.items() if _beyond_netcdf(v.dtype)]
    bools = any(_is_bool(v) for v in r.attrs.values()) or any(
        _is_bool(a) for v in r.variables.values() for a in v.attrs.values())
    if not names and not bools and not _is_hdf5(path):
        return o
    try:
        h = open_original(path, g, decode_cf, engine="h5netcdf")
    except Exception as e:  # noqa: BLE001 - then the default engine alone is the oracle
        col.note(f"group {_group_label(g)}: engine='h5netcdf' cannot open the original ({_exc(e)})")
        return o
    with h:
        out = o.copy()
        for n in names:
            if n not in h.variables:
                continue
            hv = h.variables[n]
            dims = o.variables[n].dims if n in o.variables else hv.dims
            out[n] = xr.Variable(dims, hv.values, dict(hv.attrs), dict(hv.encoding))
            col.note(f"{_join(g, n)}: {hv.dtype} compared against engine='h5netcdf'")
        _add_bools(h.attrs, out.attrs)
        for n, v in out.variables.items():
            if n in h.variables:
                _add_bools(h.variables[n].attrs, v.attrs)
    return out


def _is_complex_attr(v: Any) -> bool:
    """A complex number as h5netcdf (complex) or the default engine (``np.void`` of ``r, i``)
    shows it."""
    dt = getattr(v, "dtype", None)
    return dt is not None and (dt.kind == "c" or (dt.names is not None and tuple(dt.names) == ("r", "i")))


def _is_hdf5(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89HDF\r\n\x1a\n"


def _add_bools(source: dict, target: dict) -> None:
    for k, v in source.items():
        if k not in target and _is_bool(v):
            target[k] = v


def readable(path: str | os.PathLike) -> bool:
    """True if every group of *path* opens and ``.load()``s with the default engine."""
    return probe(path)["readable"]


def probe(path: str | os.PathLike) -> dict:
    """Like :func:`readable`, with the groups found and the reason when not."""
    path = os.fspath(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            groups = list_groups(path)
        except Exception as e:  # noqa: BLE001
            return {"readable": False, "groups": [], "reason": f"list_groups: {_exc(e)}"}
        for g in groups:
            try:
                with xr.open_dataset(path, group=g or None) as ds:
                    ds.load()
            except Exception as e:  # noqa: BLE001
                return {
                    "readable": False,
                    "groups": groups,
                    "reason": f"group {_group_label(g)}: {_exc(e)}",
                }
    return {"readable": True, "groups": groups, "reason": None}


#: how netCDF4-python says netCDF-C could not open a file at all ("NetCDF: HDF error",
#: "NetCDF: Unknown file format"); the indexer then reads it as plain HDF5 with h5netcdf's model
_NOT_OPENED = re.compile(r"OSError: \[Errno -(101|51)\] NetCDF")


def netcdf_refused(info: dict) -> bool:
    """True if a :func:`probe` verdict says netCDF-C refused to open the file."""
    return not info["readable"] and bool(_NOT_OPENED.search(info.get("reason") or ""))


def probe_h5netcdf(path: str | os.PathLike) -> dict:
    """Whether every group of *path* opens with ``engine="h5netcdf"`` (values are not loaded:
    some that h5netcdf cannot load are compared with h5py)."""
    path = os.fspath(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            groups = list_groups(path, "h5netcdf")
        except Exception as e:  # noqa: BLE001
            return {"readable": False, "groups": [], "reason": f"list_groups: {_exc(e)}"}
        for g in groups:
            try:
                with open_original(path, g, False, engine="h5netcdf"):
                    pass
            except Exception as e:  # noqa: BLE001
                return {"readable": False, "groups": groups, "reason": f"group {_group_label(g)}: {_exc(e)}"}
    return {"readable": True, "groups": groups, "reason": None}


def open_refs(json_path: str | os.PathLike, group: str | None, decode_cf: bool) -> xr.Dataset:
    """Open one group of a Kerchunk reference JSON with xarray's zarr engine.

    Subgroups are opened as ``reference://<group>`` rather than with
    ``group=``: with zarr 3.1.6 + fsspec 2026.9, ``group="a"`` on a store
    rooted at ``reference://`` lists no members (``FsspecStore.list_dir`` asks
    ``ReferenceFileSystem.ls("/a")``, which raises FileNotFoundError), so the
    group silently opens as an *empty* dataset.
    """
    group = _norm_group(group)
    return xr.open_dataset(
        f"reference://{group}",
        engine="zarr",
        decode_cf=decode_cf,
        backend_kwargs={
            "consolidated": False,
            # skip_instance_cache: the same JSON path may be rewritten between
            # calls (e.g. in the harness self-tests); never reuse a stale FS.
            "storage_options": {"fo": os.fspath(json_path), "skip_instance_cache": True},
        },
    )


class ZarrView:
    """The Zarr side of a comparison: one file as a Zarr store.

    :meth:`inspect` reads what the view says about itself, records structural
    failures, and returns its groups and the indexer's ``zarrgate.variables``
    block (``None`` when there is nothing to compare); :meth:`open` opens one
    group with xarray's zarr engine.
    """

    #: names this side in failure messages
    label = "refs"
    #: whether variables marked ``transcode`` may be present (decoded by the view)
    serves_transcode = False

    def inspect(self, col: "_Collector") -> tuple[set[str], dict[str, dict]] | None:
        raise NotImplementedError

    def open(self, group: str, decode_cf: bool) -> xr.Dataset:
        raise NotImplementedError

    @property
    def location(self) -> str:
        """Where the view is, for messages."""
        raise NotImplementedError


@dataclass(frozen=True)
class RefsView(ZarrView):
    """A Kerchunk v1 reference JSON written by ``zarrgate index``."""

    json_path: str

    def inspect(self, col: "_Collector") -> tuple[set[str], dict[str, dict]] | None:
        try:
            doc = load_refs_json(self.json_path)
        except Exception as e:  # noqa: BLE001
            col.fail(f"refs JSON unreadable: {_exc(e)}")
            return None
        _check_refs_structure(doc, col)
        if not isinstance(doc, dict) or not isinstance(doc.get("refs"), dict):
            return None
        return refs_groups(doc), zarrgate_variables(doc)

    def open(self, group: str, decode_cf: bool) -> xr.Dataset:
        return open_refs(self.json_path, group, decode_cf)

    @property
    def location(self) -> str:
        return self.json_path


@dataclass(frozen=True)
class GatewayView(ZarrView):
    """One dataset as ``zarrgate serve`` serves it, at ``s3://BUCKET/KEY``.

    ``meta_json`` is the reference JSON the gateway's catalog holds for the
    dataset: S3 has no place for the indexer's ``zarrgate.variables`` block,
    which says what was marked ``transcode`` or ``refused``.
    """

    endpoint: str
    bucket: str
    key: str
    meta_json: str | None = None

    label = "gateway"
    serves_transcode = True

    def path(self, group: str = "") -> str:
        """``BUCKET/KEY[/GROUP]``, the form s3fs takes."""
        return "/".join(p for p in (self.bucket, self.key.strip("/"), _norm_group(group)) if p)

    @property
    def location(self) -> str:
        return f"s3://{self.path()} at {self.endpoint}"

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(anon=True, endpoint_url=self.endpoint)

    def inspect(self, col: "_Collector") -> tuple[set[str], dict[str, dict]] | None:
        variables: dict[str, dict] = {}
        if self.meta_json:
            try:
                variables = zarrgate_variables(load_refs_json(self.meta_json))
            except Exception as e:  # noqa: BLE001
                col.fail(f"catalog references {self.meta_json} unreadable: {_exc(e)}")
        groups = check_served_metadata(self.filesystem(), self.path(), col)
        return None if groups is None else (groups, variables)

    def open(self, group: str, decode_cf: bool) -> xr.Dataset:
        # consolidated=True: every group must open from its own .zmetadata
        return xr.open_dataset(
            f"s3://{self.path(group)}",
            engine="zarr",
            decode_cf=decode_cf,
            consolidated=True,
            # s3fs (2026.9) sends a HEAD before every whole-object GET when max_concurrency > 1,
            # to split large objects; chunks are small, so that only doubles the requests.
            storage_options={"anon": True, "endpoint_url": self.endpoint, "max_concurrency": 1},
        )


def as_view(other: "ZarrView | str | os.PathLike") -> ZarrView:
    """*other* itself, or a :class:`RefsView` of the reference JSON at that path."""
    return other if isinstance(other, ZarrView) else RefsView(os.fspath(other))


def _canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True)


def _consolidated(raw: bytes) -> dict[str, Any]:
    """The ``metadata`` mapping of a Zarr v2 ``.zmetadata`` document."""
    doc = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("zarr_consolidated_format") != 1 or not isinstance(
            doc.get("metadata"), dict):
        raise ValueError("not Zarr v2 consolidated metadata (zarr_consolidated_format 1 with a metadata object)")
    return doc["metadata"]


def check_served_metadata(fs: Any, base: str, col: "_Collector") -> set[str] | None:
    """The groups of the store at *base* (``BUCKET/KEY``), from its consolidated ``.zmetadata``.

    Also checks what clients rely on besides it: every group serves its own
    ``.zmetadata`` holding its subtree, every metadata key is served with the
    same document, and listing a group shows exactly its members (zarr lists
    when it does not read consolidated metadata).  Returns ``None`` when the
    root ``.zmetadata`` is missing or invalid.
    """
    try:
        root = _consolidated(fs.cat_file(f"{base}/.zmetadata"))
    except Exception as e:  # noqa: BLE001
        col.fail(f"gateway: {base}/.zmetadata: {_exc(e)}")
        return None
    groups = {k[: -len(".zgroup")].rstrip("/") for k in root if k.rsplit("/", 1)[-1] == ".zgroup"}
    if "" not in groups:
        col.fail(f"gateway: {base}/.zmetadata has no root .zgroup")
    subtrees = {g: {k[len(g) + 1:]: v for k, v in root.items() if k.startswith(g + "/")} if g else root
                for g in groups}
    want = {f"{base}/{k}": _canonical(v) for k, v in root.items()}
    want.update({f"{base}/{g}/.zmetadata": _canonical(t) for g, t in subtrees.items() if g})
    got = fs.cat(sorted(want), on_error="return")
    bad = []
    for url, doc in sorted(want.items()):
        raw = got.get(url, KeyError(url))
        try:
            if isinstance(raw, BaseException):
                raise raw
            served = _canonical(_consolidated(raw) if url.endswith("/.zmetadata") else json.loads(raw))
        except Exception as e:  # noqa: BLE001
            bad.append(f"{url}: {_exc(e)}")
            continue
        if served != doc:
            bad.append(f"{url} differs from its entry in {base}/.zmetadata")
    if bad:
        col.fail(f"gateway: {len(bad)} metadata object(s) wrong: " + "; ".join(bad[:3]))
    for g, tree in sorted(subtrees.items()):
        _check_listing(fs, "/".join(p for p in (base, g) if p), {k.split("/")[0] for k in tree} | {".zmetadata"}, col)
    return groups


def _check_listing(fs: Any, prefix: str, members: set[str], col: "_Collector") -> None:
    try:
        listed = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(prefix, detail=False, refresh=True)}
    except Exception as e:  # noqa: BLE001
        col.fail(f"gateway: listing {prefix}/ fails: {_exc(e)}")
        return
    lacks, extra = sorted(members - listed), sorted(listed - members)
    if lacks:
        col.fail(f"gateway: listing {prefix}/ lacks {len(lacks)} member(s) of its .zmetadata: {lacks[:5]}")
    if extra:
        col.fail(f"gateway: listing {prefix}/ has {len(extra)} name(s) its .zmetadata lacks: {extra[:5]}")


def _exc(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:300] if msg else ''}"


# --------------------------------------------------------------------------
# Value comparison helpers
# --------------------------------------------------------------------------


def _native(dt: np.dtype) -> np.dtype:
    """dtype with byte order made native (byte order is an encoding detail)."""
    if dt.fields is not None:
        return dt  # structured: leave as is (compared field-wise)
    if dt.kind in "biufcmMSUV":
        return dt.newbyteorder("=")
    return dt


def _is_stringish_dtype(dt: np.dtype) -> bool:
    # object (str) arrays, numpy StringDType and fixed-width unicode all hold
    # Python str values; netCDF4 gives '<U..' or object for vlen strings and
    # zarr gives StringDType.  Their *values* are compared element-wise.
    return dt.kind in ("O", "T", "U")


def dtypes_equivalent(a: np.dtype, b: np.dtype) -> bool:
    """Same dtype up to byte order; unicode/object/StringDType are equivalent."""
    if _is_stringish_dtype(a) and _is_stringish_dtype(b):
        return True
    if a.fields is not None or b.fields is not None:
        if a.fields is None or b.fields is None or a.names != b.names:
            return False
        return all(dtypes_equivalent(a.fields[n][0], b.fields[n][0]) for n in a.names)
    return _native(a) == _native(b)


def _is_null(x: Any) -> bool:
    if x is None:
        return True
    if isinstance(x, (float, np.floating)) and math.isnan(x):
        return True
    if isinstance(x, np.datetime64) or isinstance(x, np.timedelta64):
        return bool(np.isnat(x))
    return False


def py_equal(a: Any, b: Any) -> bool:
    """Equality of two Python/numpy scalar-or-array values, NaN == NaN."""
    na, nb = _is_null(a), _is_null(b)
    if na or nb:
        if not (na and nb):
            return False
        # None vs None, NaN vs NaN (any float type), NaT vs NaT
        return type(a) is type(b) or (_num_like(a) and _num_like(b))
    if isinstance(a, (str, bytes)) or isinstance(b, (str, bytes)):
        # str vs bytes is a real difference, even when the text is the same
        if isinstance(a, str) and isinstance(b, str):
            return str(a) == str(b)
        if isinstance(a, bytes) and isinstance(b, bytes):
            return bytes(a) == bytes(b)
        return False
    if isinstance(a, (np.ndarray, list, tuple)) or isinstance(b, (np.ndarray, list, tuple)):
        ok, _ = values_equal(np.asarray(a), np.asarray(b))
        return ok and np.shape(a) == np.shape(b)
    if _num_like(a) and _num_like(b):
        return bool(a == b)
    # cftime and other objects: equal value and same calendar / class
    try:
        if type(a).__name__ != type(b).__name__:
            return False
        if getattr(a, "calendar", None) != getattr(b, "calendar", None):
            return False
        return bool(a == b)
    except Exception:  # noqa: BLE001
        return False


def _num_like(x: Any) -> bool:
    return isinstance(x, (int, float, complex, np.number, np.bool_, bool))


def _to_object(arr: np.ndarray) -> np.ndarray:
    out = np.empty(arr.shape, dtype=object)
    flat = out.reshape(-1)
    for i, v in enumerate(arr.reshape(-1).tolist() if arr.dtype.kind == "T" else arr.reshape(-1)):
        flat[i] = v
    return out


def values_equal(a: np.ndarray, b: np.ndarray, label: str = "refs") -> tuple[bool, str]:
    """Exact value equality (NaN == NaN, NaT == NaT); returns (ok, detail).

    *label* names the side of *b* in the detail.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        return False, f"shape {a.shape} != {b.shape}"
    if a.size == 0:
        return True, ""
    ka, kb = a.dtype.kind, b.dtype.kind
    if a.dtype.fields is not None or b.dtype.fields is not None:
        if a.dtype.fields is None or b.dtype.fields is None or a.dtype.names != b.dtype.names:
            return False, f"structured fields {a.dtype.names} != {b.dtype.names}"
        for name in a.dtype.names:
            ok, detail = values_equal(a[name], b[name], label)
            if not ok:
                return False, f"field {name!r}: {detail}"
        return True, ""
    if ka == "V" and kb == "V":  # opaque bytes
        n = a.dtype.itemsize
        if n != b.dtype.itemsize:
            return False, f"opaque sizes {a.dtype} vs {b.dtype}"
        eq = (np.frombuffer(a.tobytes(), "u1").reshape(a.size, n)
              == np.frombuffer(b.tobytes(), "u1").reshape(b.size, n)).all(axis=1)
        return _report(eq.reshape(a.shape), a, b, label)
    if ka in "mM" or kb in "mM":
        if ka != kb:
            return False, f"kind {ka} vs {kb}"
        unit = np.result_type(a.dtype, b.dtype)
        ai = a.astype(unit).view("i8")
        bi = b.astype(unit).view("i8")
        return _report(ai == bi, a, b, label)
    if ka in "biufc" and kb in "biufc":
        if ka in "fc" or kb in "fc":
            both_nan = _isnan(a) & _isnan(b)
            with np.errstate(invalid="ignore"):
                eq = (a == b) | both_nan
        else:
            eq = a == b
        return _report(np.asarray(eq), a, b, label)
    if ka in "SU" and kb == ka:
        return _report(a == b, a, b, label)
    if ka in "OTSU" and kb in "OTSU":
        ao = a if ka == "O" else _to_object(a)
        bo = b if kb == "O" else _to_object(b)
        eq = np.fromiter(
            (py_equal(x, y) for x, y in zip(ao.reshape(-1), bo.reshape(-1))),
            dtype=bool,
            count=a.size,
        ).reshape(a.shape)
        return _report(eq, a, b, label)
    return False, f"incomparable kinds {a.dtype} vs {b.dtype}"


def _isnan(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind in "fc":
        return np.isnan(x)
    return np.zeros(x.shape, dtype=bool)


def _report(eq: np.ndarray, a: np.ndarray, b: np.ndarray, label: str = "refs") -> tuple[bool, str]:
    eq = np.asarray(eq, dtype=bool)
    if eq.all():
        return True, ""
    bad = np.argwhere(~eq) if eq.ndim else np.zeros((1, 0), dtype=int)
    shown = []
    for idx in bad[:_MAX_SHOWN]:
        t = tuple(int(i) for i in idx)
        shown.append(f"{list(t)}: original={_short(a[t])} {label}={_short(b[t])}")
    n = int((~eq).sum())
    extra = ""
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        na, nb = _isnan(a), _isnan(b)
        if not np.array_equal(na, nb):
            extra = (
                f"; NaN/mask positions differ (original {int(na.sum())} NaN,"
                f" {label} {int(nb.sum())} NaN, {int((na != nb).sum())} positions differ)"
            )
    return False, f"{n}/{eq.size} elements differ{extra}; e.g. " + "; ".join(shown)


def _short(x: Any, n: int = 80) -> str:
    s = repr(x.item() if isinstance(x, np.ndarray) and x.ndim == 0 else x)
    return s if len(s) <= n else s[: n - 3] + "..."


def _attr_array(v: Any) -> np.ndarray | None:
    """Normalise an attribute value to a numpy array, None if not possible."""
    try:
        if isinstance(v, (list, tuple)):
            arr = np.asarray(v)
            if arr.dtype.kind == "O":
                return None
            return arr
        return np.asarray(v)
    except Exception:  # noqa: BLE001
        return None


def compare_attr(orig: Any, refs: Any) -> tuple[str, str]:
    """Classify one attribute pair: ("equal"|"attr_type"|"differ", detail)."""
    # Text: str vs str (np.str_ is a str) or bytes vs bytes, same value.
    o_txt = isinstance(orig, (str, bytes))
    r_txt = isinstance(refs, (str, bytes))
    if o_txt or r_txt:
        same_kind = o_txt and r_txt and isinstance(orig, str) == isinstance(refs, str)
        if same_kind and orig == refs:
            return "equal", ""
        if same_kind:
            return "differ", "text differs"
        return "differ", "type differs"
    oa, ra = _attr_array(orig), _attr_array(refs)
    if oa is None or ra is None:
        return ("equal", "") if py_equal(orig, refs) else ("differ", "value differs")
    ok_kind = "biufc"
    if oa.dtype.kind in "SUO" or ra.dtype.kind in "SUO":
        # arrays of strings (NC_STRING attributes) etc.
        if oa.dtype.kind != ra.dtype.kind:
            return "differ", f"kind {oa.dtype} vs {ra.dtype}"
        ok, _ = values_equal(oa.reshape(-1), ra.reshape(-1)) if oa.size == ra.size else (False, "")
        if not ok:
            return "differ", "value differs"
        return ("equal", "") if oa.shape == ra.shape else ("attr_type", "shape differs")
    if oa.dtype.kind not in ok_kind or ra.dtype.kind not in ok_kind:
        return "differ", f"incomparable {oa.dtype} vs {ra.dtype}"
    if oa.size != ra.size:
        return "differ", f"length {oa.size} vs {ra.size}"
    ok, _ = values_equal(oa.reshape(-1), ra.reshape(-1))
    if not ok:
        return "differ", "value differs"
    if _native(oa.dtype) == _native(ra.dtype) and oa.shape == ra.shape:
        return "equal", ""
    what = []
    if _native(oa.dtype) != _native(ra.dtype):
        what.append(f"{oa.dtype} vs {ra.dtype}")
    if oa.shape != ra.shape:
        what.append(f"shape {oa.shape} vs {ra.shape}")
    return "attr_type", ", ".join(what)


def _fmt_attr(v: Any) -> str:
    if isinstance(v, np.ndarray):
        s = f"array({v.tolist()!r}, dtype={v.dtype})"
    elif isinstance(v, np.generic):
        s = f"{type(v).__name__}({v.item()!r})"
    else:
        s = f"{type(v).__name__}({v!r})"
    return s if len(s) <= 160 else s[:157] + "..."


# --------------------------------------------------------------------------
# Refs JSON inspection
# --------------------------------------------------------------------------


def load_refs_json(json_path: str | os.PathLike) -> dict:
    with open(json_path, "rb") as f:
        return json.loads(f.read())


def refs_groups(doc: dict) -> set[str]:
    refs = doc.get("refs", {}) if doc.get("version") == 1 else doc
    out = set()
    for key in refs:
        if key == ".zgroup":
            out.add("")
        elif key.endswith("/.zgroup"):
            out.add(key[: -len("/.zgroup")])
    return out


def zarrgate_variables(doc: dict) -> dict[str, dict]:
    meta = doc.get("zarrgate")
    if not isinstance(meta, dict):
        return {}
    v = meta.get("variables")
    return v if isinstance(v, dict) else {}


def _check_refs_structure(doc: Any, res: "_Collector") -> None:
    if not isinstance(doc, dict):
        res.fail("refs JSON: top level is not an object")
        return
    if doc.get("version") != 1 or not isinstance(doc.get("refs"), dict):
        res.fail(f"refs JSON: expected {{'version': 1, 'refs': {{...}}}}, got keys {sorted(doc)[:8]}")
        return
    templates = doc.get("templates") or {}
    if not isinstance(templates, dict):
        res.fail("refs JSON: 'templates' is not an object")
        templates = {}
    bad: list[str] = []
    sizes: dict[str, int | None] = {}
    for key, val in doc["refs"].items():
        if isinstance(val, (str, dict)):
            continue  # inline data / metadata
        if not isinstance(val, list) or len(val) not in (1, 3):
            bad.append(f"{key}: malformed ref {val!r:.80}")
            continue
        url = val[0]
        if not isinstance(url, str):
            bad.append(f"{key}: url is not a string")
            continue
        for name, tv in templates.items():
            url = url.replace("{{" + name + "}}", str(tv))
        local = url[len("file://"):] if url.startswith("file://") else url
        if "://" in local or not os.path.isabs(local):
            bad.append(f"{key}: url {url!r} is not an absolute local path")
            continue
        if local not in sizes:
            sizes[local] = os.path.getsize(local) if os.path.isfile(local) else None
        if sizes[local] is None:
            bad.append(f"{key}: {local} does not exist")
            continue
        if len(val) == 3:
            off, length = val[1], val[2]
            if not (isinstance(off, int) and isinstance(length, int) and off >= 0 and length >= 0):
                bad.append(f"{key}: bad offset/length {off!r}/{length!r}")
            elif off + length > sizes[local]:
                bad.append(f"{key}: range {off}+{length} past end of {local} ({sizes[local]} bytes)")
    if bad:
        res.fail(f"refs JSON: {len(bad)} bad chunk reference(s): " + "; ".join(bad[:3]))
    zg = doc.get("zarrgate")
    if zg is not None:
        if not isinstance(zg, dict) or not isinstance(zg.get("variables", {}), dict):
            res.fail("refs JSON: 'zarrgate' block is malformed")
            return
        for vpath, info in zg.get("variables", {}).items():
            status = info.get("status") if isinstance(info, dict) else None
            if status not in KNOWN_STATUSES:
                res.fail(f"refs JSON: zarrgate.variables[{vpath!r}] has unknown status {status!r}")


# --------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------


class _Collector:
    def __init__(self, path: str, side: str = "refs") -> None:
        self.result = FileResult(path=path)
        #: the view's label, naming the Zarr side in messages
        self.side = side
        #: xarray's engine for the original (None: the default engine)
        self.engine: str | None = None
        self._seen: set = set()

    def fail(self, msg: str, key: tuple | None = None) -> None:
        """Record a failure; with *key*, only the first of equal keys is kept."""
        if key is not None:
            if ("fail", key) in self._seen:
                return
            self._seen.add(("fail", key))
        self.result.failures.append(msg)

    def allow(self, kind: str, key: tuple, msg: str) -> None:
        assert kind in EXCEPTION_KINDS, kind
        if (kind, key) in self._seen:
            return
        self._seen.add((kind, key))
        self.result.exceptions[kind] += 1
        self.result.exception_details.append(f"[{kind}] {msg}")

    def note(self, msg: str) -> None:
        if msg not in self.result.notes:
            self.result.notes.append(msg)

    def transcoded(self, vpath: str) -> None:
        if vpath not in self.result.transcoded:
            self.result.transcoded.append(vpath)

    def finish(self) -> FileResult:
        self.result.ok = not self.result.failures
        return self.result


def compare(path: str | os.PathLike, other: ZarrView | str | os.PathLike,
            engine: str | None = None) -> FileResult:
    """Compare *other* (a view, or the path of a reference JSON) against *path*.

    See the module docstring for what is compared. *engine* picks xarray's engine for the
    original (``"h5netcdf"`` for files the default engine cannot read).
    """
    path = os.fspath(path)
    view = as_view(other)
    col = _Collector(path, view.label)
    col.engine = engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _compare(path, view, col)
        except Exception as e:  # noqa: BLE001 - a harness crash is a failure, never a pass
            col.fail(f"harness error: {_exc(e)}\n{traceback.format_exc(limit=6)}")
    return col.finish()


def _compare(path: str, view: ZarrView, col: _Collector) -> None:
    found = view.inspect(col)
    if found is None:
        return
    rgroups, zvars = found

    try:
        groups = list_groups(path, col.engine)
    except Exception as e:  # noqa: BLE001
        col.fail(f"original: cannot list groups: {_exc(e)}")
        return

    # group structure
    for g in sorted(set(groups) - rgroups):
        col.fail(f"group {_group_label(g)}: missing from {col.side} (no .zgroup)")
    for g in sorted(rgroups - set(groups)):
        col.fail(f"group {_group_label(g)}: in {col.side} but not in original")

    by_group: dict[str, dict[str, dict]] = {}
    for vpath, info in zvars.items():
        g, _, name = vpath.strip("/").rpartition("/")
        by_group.setdefault(g, {})[name] = info if isinstance(info, dict) else {}
    listed_groups = set(by_group) - set(groups)
    for g in sorted(listed_groups):
        for name, info in sorted(by_group[g].items()):
            msg = f"zarrgate.variables lists {_join(g, name)!r} but group {_group_label(g)} is not in the original"
            if info.get("status") in ("transcode", "refused") and g not in rgroups:
                col.note(msg + f" (status {info.get('status')!r}, absent from {col.side} too)")
            else:
                col.fail(msg)

    for g in groups:
        if g not in rgroups:
            continue
        raw_orig_attrs: dict[str, dict] = {}
        for decode_cf in (False, True):
            _compare_group(path, view, g, decode_cf, by_group.get(g, {}), raw_orig_attrs, col)


def _compare_group(
    path: str,
    view: ZarrView,
    g: str,
    decode_cf: bool,
    meta: dict[str, dict],
    raw_orig_attrs: dict[str, dict],
    col: _Collector,
) -> None:
    where = f"group {_group_label(g)} [decode_cf={decode_cf}]"
    try:
        o = open_original(path, g, decode_cf, col.engine)
    except Exception as e:  # noqa: BLE001
        col.fail(f"{where}: original failed to open: {_exc(e)}")
        return
    try:
        r = view.open(g, decode_cf)
    except Exception as e:  # noqa: BLE001
        o.close()
        col.fail(f"{where}: {col.side} failed to open: {_exc(e)}")
        return
    reread = _Rereader(path, g, decode_cf, col.engine)
    with o, r, reread:
        expected = o if col.engine else with_h5netcdf_view(path, g, decode_cf, o, r, col)
        _compare_datasets(expected, r, g, decode_cf, where, meta, raw_orig_attrs, col, reread,
                          view.serves_transcode)


def _compare_datasets(
    o: xr.Dataset,
    r: xr.Dataset,
    g: str,
    decode_cf: bool,
    where: str,
    meta: dict[str, dict],
    raw_orig_attrs: dict[str, dict],
    col: _Collector,
    reread: "_Rereader",
    serves_transcode: bool = False,
) -> None:
    ovars, rvars = set(o.variables), set(r.variables)
    side = col.side
    excused = _excused_variables(o, rvars, g, where, meta, col, serves_transcode)

    for name in sorted(ovars - rvars - excused):
        col.fail(f"{where} var {name!r}: missing from {side}")
    for name in sorted(rvars - ovars):
        col.fail(f"{where} var {name!r}: in {side} but not in original")

    # -- coordinates vs data variables --------------------------------------
    ocoords, rcoords = set(o.coords) - excused, set(r.coords)
    for name in sorted((ocoords ^ rcoords) & ovars & rvars):
        which = "coordinate" if name in ocoords else "data variable"
        col.fail(f"{where} var {name!r}: is a {which} in the original but not in {side}")

    # -- dimensions ----------------------------------------------------------
    excused_dims = {d for n in excused for d in o.variables[n].dims} - {
        d for n in ovars - excused for d in o.variables[n].dims
    }
    for d in sorted(set(o.sizes) | set(r.sizes), key=str):
        if d in o.sizes and d in r.sizes:
            if o.sizes[d] != r.sizes[d]:
                col.fail(f"{where}: dimension {d!r} size {o.sizes[d]} in original, {r.sizes[d]} in {side}")
        elif d in o.sizes:
            if d not in excused_dims:
                col.fail(f"{where}: dimension {d!r} missing from {side}")
        else:
            col.fail(f"{where}: dimension {d!r} in {side} but not in original")

    # -- dataset attributes --------------------------------------------------
    _compare_attrs(o.attrs, r.attrs, g, None, where + " dataset attrs", col)

    # -- per variable ---------------------------------------------------------
    for name in sorted(ovars & rvars, key=str):
        ov, rv = o.variables[name], r.variables[name]
        vwhere = f"{where} var {name!r}"
        # literally what xr.open_dataset shows: e.g. xarray's netCDF4 backend
        # moves least_significant_digit into .encoding, so refs must not have
        # it in .zattrs either
        oattrs = dict(ov.attrs)
        if not decode_cf:
            raw_orig_attrs[name] = oattrs
        if ov.dims != rv.dims:
            col.fail(f"{vwhere}: dims {ov.dims} in original, {rv.dims} in {side}")
        if ov.shape != rv.shape:
            col.fail(f"{vwhere}: shape {ov.shape} in original, {rv.shape} in {side}")
            _compare_attrs(oattrs, rv.attrs, g, name, vwhere + " attrs", col)
            continue
        _compare_attrs(oattrs, rv.attrs, g, name, vwhere + " attrs", col)
        raw_attrs = raw_orig_attrs.get(name, ov.encoding)
        h5 = None
        if _join(g, name) in col.result.transcoded:
            h5 = lambda sl, name=name, ov=ov, a=raw_attrs: reread.via_h5py(name, sl, ov.dims, a)  # noqa: E731
        _compare_values(ov, rv, g, name, decode_cf, vwhere, raw_attrs, col,
                        lambda sl, name=name: reread(name, sl), h5)


def _excused_variables(
    o: xr.Dataset,
    rvars: set[str],
    g: str,
    where: str,
    meta: dict[str, dict],
    col: _Collector,
    serves_transcode: bool,
) -> set[str]:
    """Checks the variables the indexer declared it left out; returns those allowed to be absent."""
    ovars = set(o.variables)
    excused: set[str] = set()
    for name, info in sorted(meta.items()):
        status = info.get("status")
        vp = _join(g, name)
        if status in ("transcode", "refused") and name not in ovars and name not in rvars:
            # e.g. a compound-typed dataset that netCDF4 skips: both sides agree
            col.note(f"{vp}: listed as {status!r}; xarray does not show it in the original either")
            continue
        if status == "transcode":
            if name not in rvars:
                excused.add(name)
                col.allow("transcode", (vp,), f"{vp}: {info.get('reason', '')}".rstrip(": "))
            elif serves_transcode:
                col.transcoded(vp)  # decoded by the view: compared like any other variable
            else:
                col.fail(f"{where} var {name!r}: listed as 'transcode' but present in {col.side}")
        elif status == "refused":
            if name in rvars:
                col.fail(f"{where} var {name!r}: listed as 'refused' but present in {col.side}")
            else:
                excused.add(name)
                try:
                    o[name].values  # noqa: B018 - can the oracle read it?
                except Exception as e:  # noqa: BLE001
                    col.note(f"{vp}: refused by indexer, unreadable in original too ({_exc(e)})")
                else:
                    col.fail(
                        f"{where} var {name!r}: refused by indexer"
                        f" ({info.get('reason', 'no reason given')}) but the original reads it"
                    )
        elif status in ("referenced", "inlined") and name not in ovars:
            col.fail(f"{where} var {name!r}: listed as {status!r} but not in the original")
    return excused


#: variables larger than this (estimated in memory) are compared in slabs
#: along their first dimension, so a 2 GiB variable never needs 4 x 2 GiB
BLOCK_BYTES = 64 << 20


def _slabs(var: xr.Variable) -> list[slice | None]:
    if var.ndim == 0 or var.shape[0] <= 1:
        return [None]
    est = var.size * max(8, var.dtype.itemsize)
    if est <= BLOCK_BYTES:
        return [None]
    row = max(1, est // var.shape[0])
    step = max(1, BLOCK_BYTES // row)
    return [slice(i, min(i + step, var.shape[0])) for i in range(0, var.shape[0], step)]


def _truncated_string_fields(original: np.dtype, served: np.dtype) -> list[str]:
    """Fields of a compound that netCDF4-python shows as 'S1' where the file holds longer
    strings."""
    if original.names is None or served.names != original.names:
        return []
    return [n for n in original.names
            if original.fields[n][0] == np.dtype("S1") and served.fields[n][0].kind == "S"
            and served.fields[n][0].itemsize > 1]


def _compare_values(
    ov: xr.Variable,
    rv: xr.Variable,
    g: str,
    name: str,
    decode_cf: bool,
    vwhere: str,
    raw_attrs: dict,
    col: _Collector,
    reread: Callable[[slice | None], np.ndarray] | None = None,
    h5: Callable[[slice | None], np.ndarray] | None = None,
) -> None:
    """Compares values, in slabs.  *h5* reads the original through h5py when
    netCDF-C cannot decode it (a variable only the gateway serves decoded)."""
    packed = "scale_factor" in raw_attrs or "add_offset" in raw_attrs
    mode = None  # "exact" | "packed", decided on the first slab
    for sl in _slabs(ov):
        part = "" if sl is None else f" (rows {sl.start}:{sl.stop} of {ov.dims[0]!r})"
        try:
            ovals = np.asarray((ov if sl is None else ov[sl]).values)
        except Exception as e:  # noqa: BLE001
            ovals = None if h5 is None else _original_via_h5py(h5, sl, e, rv, _join(g, name), col)
            if ovals is None:
                if h5 is None:
                    col.fail(f"{vwhere}: original failed to load{part}: {_exc(e)}")
                return
        if h5 is not None and _truncated_string_fields(ovals.dtype, rv.dtype):
            # netCDF4-python reads only the first byte of a fixed-length string inside a
            # compound (it gives 'S1' for HDF5's 'S4'); h5py reads the whole field.
            if sl is None or sl.start == 0:
                col.note(f"{vwhere}: netCDF4-python truncates string fields"
                         f" {_truncated_string_fields(ovals.dtype, rv.dtype)} to one byte; values compared with h5py")
            ovals = h5(sl)
        try:
            rvals = np.asarray((rv if sl is None else rv[sl]).values)
        except Exception as e:  # noqa: BLE001
            col.fail(f"{vwhere}: {col.side} failed to load{part}: {_exc(e)}")
            return
        if mode is None:
            od, rd = ovals.dtype, rvals.dtype
            mode = "exact"
            if not dtypes_equivalent(od, rd):
                if decode_cf and packed and od == np.float32 and rd == np.float64:
                    mode = "packed"
                else:
                    col.fail(f"{vwhere}: dtype {od} in original, {rd} in {col.side}")
                    # go on: value differences are reported too when comparable
        if mode == "packed":
            ok, detail = _packed_close(ovals, rvals, raw_attrs, col.side)
        else:
            ok, detail = values_equal(ovals, rvals, col.side)
        if not ok:
            if reread is not None and _unstable(ovals, reread, sl):
                col.note(
                    f"{vwhere}: the original's values change from one read to the next"
                    f" (undefined data, e.g. never written with fill off): not compared"
                )
                return
            if mode == "packed":
                col.fail(f"{vwhere}: packed, float64 via {col.side} vs float32 original,"
                         f" and values differ{part}: {detail}")
            else:
                col.fail(f"{vwhere}: values differ{part}: {detail}")
            return
    if mode == "packed":
        vp = _join(g, name)
        col.allow("packed_float64", (vp,), f"{vp}: decodes to float64 via {col.side}, float32 from original")


class _Rereader:
    """Reads variables of the original again through a second, uncached dataset.

    Opened on first use only (after a mismatch) and once per group and mode.
    """

    def __init__(self, path: str, g: str, decode_cf: bool, engine: str | None = None) -> None:
        self.args = (path, g, decode_cf)
        self.engine = engine
        self.ds: xr.Dataset | None = None

    def __call__(self, name: str, sl: slice | None) -> np.ndarray:
        if self.ds is None:
            path, g, decode_cf = self.args
            self.ds = _open_original_uncached(path, g, decode_cf, **_engine_kwargs(self.engine))
        v = self.ds.variables[name]
        return np.asarray((v if sl is None else v[sl]).values)

    def via_h5py(self, name: str, sl: slice | None, dims: tuple, raw_attrs: dict) -> np.ndarray:
        """The values through h5py and hdf5plugin's filters, decoded as xarray would with decode_cf.

        For variables netCDF-C cannot decode (its plugins lack the filter) but the gateway serves.
        """
        path, g, decode_cf = self.args
        raw = h5py_stored(path, g, name, sl)
        if not decode_cf:
            return raw
        var = xr.Variable(dims, raw, attrs=dict(raw_attrs))
        return np.asarray(xr.conventions.decode_cf_variable(name, var).values)

    def __enter__(self) -> "_Rereader":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.ds is not None:
            self.ds.close()
            self.ds = None


def h5py_stored(path: str, g: str, name: str, sl: slice | None = None) -> np.ndarray:
    """The stored values of a numeric variable read with h5py and every filter of hdf5plugin."""
    import h5py
    import hdf5plugin  # noqa: F401 - registers the filter plugins with h5py's HDF5

    with h5py.File(path, "r") as f:
        grp = f[_norm_group(g)] if _norm_group(g) else f
        ds = grp[name] if name in grp else grp[f"_nc4_non_coord_{name}"]
        fields = [ds.dtype.fields[n][0] for n in ds.dtype.names] if ds.dtype.names else [ds.dtype]
        if not all(f.kind in "biuf" or (f.kind == "S" and ds.dtype.names) for f in fields):
            raise TypeError(f"h5py type {ds.dtype} is not compared")
        return np.asarray(ds[()] if sl is None else ds[sl])


def _open_original_uncached(path: str, g: str, decode_cf: bool, **kw: Any) -> xr.Dataset:
    return xr.open_dataset(path, group=_norm_group(g) or None, decode_cf=decode_cf, cache=False, **kw)


def _original_via_h5py(h5: Callable[[slice | None], np.ndarray], sl: slice | None, err: Exception,
                       rv: xr.Variable, vp: str, col: _Collector) -> np.ndarray | None:
    """The original's values through h5py, for a variable netCDF-C cannot decode.

    ``None`` when h5py cannot read them either: then nothing can check the
    values (a note), and the view need only load them.
    """
    try:
        vals = h5(sl)
    except Exception as e:  # noqa: BLE001
        col.note(f"{vp}: neither netCDF-C ({_exc(err)}) nor h5py with hdf5plugin ({_exc(e)}) decodes the"
                 " original: values unverified")
        try:
            for part in _slabs(rv):
                np.asarray((rv if part is None else rv[part]).values)
        except Exception as e2:  # noqa: BLE001
            col.fail(f"{vp}: {col.side} failed to load: {_exc(e2)}", ("load", vp))
        return None
    col.note(f"{vp}: xarray cannot load the original ({_exc(err)}); values compared with h5py and hdf5plugin")
    return vals


def _unstable(first: np.ndarray, reread: Callable[[slice | None], np.ndarray], sl: slice | None) -> bool:
    """True when a second read of the original gives different values.

    netCDF-C returns uninitialised memory for variables that were never
    written with fill disabled; such values are undefined and no reference
    can match them.  Only called after a mismatch, so it costs nothing on
    passing variables.
    """
    try:
        again = reread(sl)
    except Exception:  # noqa: BLE001
        return False
    return not values_equal(first, again)[0]


def _packed_close(ovals: np.ndarray, rvals: np.ndarray, raw_attrs: dict,
                  label: str = "refs") -> tuple[bool, str]:
    r32 = rvals.astype(np.float32)
    on, rn = np.isnan(ovals), np.isnan(r32)
    if not np.array_equal(on, rn):
        return False, f"NaN/mask positions differ ({int(on.sum())} vs {int(rn.sum())} NaN)"
    # float32 arithmetic (x*scale + offset) loses up to ~1 ulp of the larger
    # operand, so allow an absolute slack proportional to |add_offset|.
    offset = raw_attrs.get("add_offset", 0)
    try:
        atol = 2 * float(np.spacing(np.float32(abs(float(np.asarray(offset).reshape(-1)[0])))))
    except Exception:  # noqa: BLE001
        atol = 0.0
    close = np.isclose(r32, ovals, rtol=1e-6, atol=atol, equal_nan=True)
    if close.all():
        return True, ""
    return _report(close, ovals, r32, label)


def _compare_attrs(oattrs: dict, rattrs: dict, g: str, var: str | None, where: str, col: _Collector) -> None:
    vp = _join(g, var) if var else (_group_label(g) + " (dataset)")
    for k in sorted(set(oattrs) | set(rattrs), key=str):
        # the same attribute difference seen with decode_cf=False and True is
        # reported once (keyed by group/variable/attribute)
        key = ("attr", vp, k)
        if k not in rattrs:
            if _is_complex_attr(oattrs[k]):
                col.allow("attr_type", (vp, k), f"{vp} @{k}: a complex number, which JSON cannot hold")
                continue
            col.fail(f"{where}: attribute {k!r} missing from {col.side} (original {_fmt_attr(oattrs[k])})", key)
            continue
        if k not in oattrs:
            extra = " (invented fill value)" if k == "_FillValue" else ""
            col.fail(f"{where}: attribute {k!r} in {col.side} but not in original{extra}: {_fmt_attr(rattrs[k])}",
                     key)
            continue
        verdict, detail = compare_attr(oattrs[k], rattrs[k])
        if verdict == "equal":
            continue
        if verdict == "attr_type":
            col.allow("attr_type", (vp, k), f"{vp} @{k}: {detail}")
            continue
        col.fail(
            f"{where}: attribute {k!r} differs ({detail}): original {_fmt_attr(oattrs[k])},"
            f" {col.side} {_fmt_attr(rattrs[k])}",
            key,
        )


# --------------------------------------------------------------------------
# Process isolation
# --------------------------------------------------------------------------


class IsolationError(RuntimeError):
    pass


def _child(conn: Any, fn: Callable, args: tuple, mem_limit: int | None) -> None:
    import faulthandler

    # a crash is reported through the exit code; pytest's faulthandler would
    # dump this child's C stack onto the session's real stderr
    faulthandler.disable()
    try:
        if mem_limit:
            resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
        out = ("ok", fn(*args))
    except BaseException as e:  # noqa: BLE001
        out = ("error", f"{_exc(e)}\n{traceback.format_exc(limit=8)}")
    try:
        conn.send(out)
    finally:
        conn.close()


def run_isolated(fn: Callable, *args: Any, timeout: float = 300.0, mem_limit: int | None = None) -> Any:
    """Run ``fn(*args)`` in a forked child and return its (picklable) result.

    netCDF-C aborts (``NClist failure``) or segfaults on some plain HDF5 files,
    and may try multi-GB allocations first; the child gets an address-space
    limit (``mem_limit`` bytes, default ``$ZARRGATE_FIDELITY_MEM_LIMIT_GB`` or
    8 GiB) so such allocations fail fast.  Raises :class:`IsolationError` when
    the child crashes, raises, or times out.
    """
    if mem_limit is None:
        mem_limit = int(float(os.environ.get("ZARRGATE_FIDELITY_MEM_LIMIT_GB", "8")) * (1 << 30))
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args, mem_limit), daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout):
            proc.kill()
            proc.join()
            raise IsolationError(f"timed out after {timeout:.0f}s")
        try:
            status, payload = recv.recv()
        except EOFError:
            proc.join()
            code = proc.exitcode
            what = f" ({signal.Signals(-code).name})" if code and code < 0 else ""
            raise IsolationError(f"child died with exit code {code}{what}") from None
    finally:
        recv.close()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if status != "ok":
        raise IsolationError(payload)
    return payload


def probe_isolated(path: str | os.PathLike, timeout: float = 300.0, attempts: int = 3) -> dict:
    """:func:`probe` in child processes; a crash or timeout means unreadable.

    netCDF-C corrupts its heap on some plain-HDF5 files (compound types:
    "double free or corruption"), so the same file can load in one process
    and abort in the next.  A file only counts as readable when *attempts*
    fresh probes in a row succeed; a single crash makes it unreadable.
    """
    path = os.fspath(path)
    info: dict = {}
    for i in range(max(1, attempts)):
        try:
            info = run_isolated(probe, path, timeout=timeout)
        except IsolationError as e:
            tries = f" (attempt {i + 1} of {attempts})" if attempts > 1 else ""
            return {"readable": False, "groups": [], "reason": f"probe crashed{tries}: {str(e).splitlines()[0]}"}
        if not info["readable"]:
            return info  # an ordinary exception: deterministic, no need to retry
    return info


def load_refs_everything(other: ZarrView | str | os.PathLike) -> int:
    """Open every group of *other* (a view, or a reference JSON's path) in both
    decode modes and load all values; returns the number of loads."""
    view = as_view(other)
    col = _Collector(view.location, view.label)
    found = view.inspect(col)
    if found is None:
        raise RuntimeError("; ".join(col.result.failures))
    n = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for g in sorted(found[0]):
            for decode_cf in (False, True):
                with view.open(g, decode_cf) as ds:
                    for v in ds.variables.values():
                        for sl in _slabs(v):
                            np.asarray((v if sl is None else v[sl]).values)
                            n += 1
    return n


def check_alone(other: ZarrView | str | os.PathLike, original: str | None = None) -> FileResult:
    """What can be checked of a view whose original xarray cannot read.

    Its structure (:meth:`ZarrView.inspect`), and that every group opens and
    every value loads with ``decode_cf=False``: the bytes are the view's job,
    the CF decoding xarray's.  Variables marked ``transcode`` are counted as
    on a comparison: served (:attr:`FileResult.transcoded`) or absent (the
    ``transcode`` exception); with *original*, the served ones are compared
    with its stored values as h5py and hdf5plugin read them.
    """
    view = as_view(other)
    col = _Collector(view.location, view.label)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = view.inspect(col)
        for g in sorted(found[0] if found else ()):
            _load_group_alone(view, g, found[1], original, col)
    if found and not col.result.failures:
        col.note(f"{view.label}: all {len(found[0])} group(s) open and load; the original is unreadable, so"
                 " values are unverified except where h5py can read them")
    return col.finish()


def _load_group_alone(view: ZarrView, g: str, zvars: dict[str, dict], original: str | None,
                      col: _Collector) -> None:
    where = f"group {_group_label(g)} [decode_cf=False]"
    try:
        ds = view.open(g, False)
    except Exception as e:  # noqa: BLE001
        col.fail(f"{where}: {col.side} failed to open: {_exc(e)}")
        return
    with ds:
        for vpath, info in sorted(zvars.items()):
            vg, _, name = vpath.strip("/").rpartition("/")
            if vg != g or not isinstance(info, dict) or info.get("status") != "transcode":
                continue
            if name in ds.variables:
                col.transcoded(_join(g, name))
            else:
                col.allow("transcode", (vpath,), f"{vpath}: {info.get('reason', '')}".rstrip(": "))
        for name, v in sorted(ds.variables.items(), key=lambda kv: str(kv[0])):
            h5 = original if _join(g, name) in col.result.transcoded else None
            _load_alone(v, f"{where} var {name!r}", h5 and (lambda sl, name=name: h5py_stored(h5, g, name, sl)),
                        _join(g, name), col)


def _load_alone(v: xr.Variable, vwhere: str, h5: Callable[[slice | None], np.ndarray] | None, vp: str,
                col: _Collector) -> None:
    for sl in _slabs(v):
        try:
            vals = np.asarray((v if sl is None else v[sl]).values)
        except Exception as e:  # noqa: BLE001
            col.fail(f"{vwhere}: {col.side} failed to load: {_exc(e)}")
            return
        if h5 is None:
            continue
        try:
            ovals = h5(sl)
        except Exception as e:  # noqa: BLE001
            col.note(f"{vp}: h5py with hdf5plugin cannot read the original ({_exc(e)}): values unverified")
            return
        ok, detail = values_equal(ovals, vals, col.side)
        if not ok:
            col.fail(f"{vwhere}: values differ from h5py's read of the original: {detail}")
            return
    if h5 is not None:
        col.note(f"{vp}: values equal to h5py's read of the original (hdf5plugin)")


def compare_isolated(path: str | os.PathLike, other: ZarrView | str | os.PathLike,
                     timeout: float = 600.0, engine: str | None = None) -> FileResult:
    """:func:`compare` in a child process; a crash or timeout is a failure.

    When the comparison crashes, the view is loaded alone in another child:
    if that works, the crash came from netCDF-C reading the original and the
    result says so in ``oracle_crash`` (the file is unreadable, not failed);
    if it crashes too, the view is at fault and it is a failure.
    """
    path, view = os.fspath(path), as_view(other)
    try:
        return run_isolated(compare, path, view, engine, timeout=timeout)
    except IsolationError as e:
        first = str(e).splitlines()[0] if str(e) else "?"
        if "timed out" in first:
            return FileResult(path=path, ok=False, failures=[f"compare {first}"])
        try:
            run_isolated(load_refs_everything, view, timeout=timeout)
        except IsolationError as e2:
            msg = str(e2).splitlines()[0] if str(e2) else "?"
            return FileResult(path=path, ok=False, failures=[
                f"compare crashed ({first}); loading the {view.label} alone fails too: {msg}"])
        return FileResult(path=path, ok=False, oracle_crash=f"original crashed during compare ({first})",
                          failures=[f"compare crashed ({first}) while the {view.label} side loads fine on its own"])


# --------------------------------------------------------------------------
# Candidate discovery
# --------------------------------------------------------------------------

EXTENSIONS = (".nc", ".h5", ".hdf5", ".nc4", ".he5")
MAGICS = (b"CDF", b"\x89HDF")


def is_candidate(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    if os.path.basename(path) == "MANIFEST.json" or not os.path.isfile(path):
        return False
    if path.lower().endswith(EXTENSIONS):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(MAGICS)


def find_candidates(root: str | os.PathLike) -> list[str]:
    root = os.fspath(root)
    if not os.path.isdir(root):
        return []
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            p = os.path.join(dirpath, fn)
            if is_candidate(p):
                out.append(p)
    return out


def _main(argv: Iterable[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Compare a zarrgate refs JSON, or a dataset served by the"
                                 " gateway, against its original file.")
    ap.add_argument("original")
    ap.add_argument("zarr", help="REFS.json, or s3://BUCKET/KEY with --endpoint")
    ap.add_argument("--endpoint", help="gateway URL, e.g. http://127.0.0.1:9000")
    ap.add_argument("--meta", help="the catalog's REFS.json for s3://, for its zarrgate.variables block")
    ap.add_argument("--in-process", action="store_true", help="do not fork (for debugging)")
    ns = ap.parse_args(argv)
    view: ZarrView = RefsView(ns.zarr)
    if ns.zarr.startswith("s3://"):
        if not ns.endpoint:
            ap.error("s3:// needs --endpoint")
        bucket, _, key = ns.zarr[len("s3://"):].partition("/")
        view = GatewayView(ns.endpoint, bucket, key, ns.meta)
    res = compare(ns.original, view) if ns.in_process else compare_isolated(ns.original, view)
    print(json.dumps(res.to_dict(), indent=1, default=str))
    return 0 if res.ok else 1


if __name__ == "__main__":
    raise SystemExit(_main())
