"""NcML as THREDDS writes it (docs/joins.md, "NcML"), through a real gateway, against xncml.

Each case writes small NetCDF files and an NcML file into one data directory, served by one
`zarrgate serve` for the module. The oracle is xncml (pinned in the venv) reading the same
NcML, decoded with `xr.decode_cf` as xarray decodes a file. Where THREDDS and xncml differ,
the test follows THREDDS and says so (each such place is listed in docs/joins.md).

Refused NcML must be refused at indexing with a message that names the element (or
attribute) and the NcML file, and its dataset answers 503.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
import warnings
from pathlib import Path
from xml.sax.saxutils import escape

import netCDF4
import numpy as np
import pytest
import requests
import xarray as xr

from fidelity import dtypes_equivalent, values_equal
from gateway import start_gateway
from join_oracle import attr_differences

BUCKET = "ncml"
NS = "http://www.unidata.ucar.edu/namespaces/netcdf/ncml-2.2"
ROOT = Path(__file__).resolve().parents[2]


def ncml(body: str, location: str | None = None) -> str:
    """An NcML document of `body`, over the file `location` when given."""
    at = f' location="{location}"' if location else ""
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<netcdf{at} xmlns="{NS}">\n{body}\n</netcdf>\n'


def write_nc(path: Path, times=None, time_units="seconds since 1970-01-01 00:00:00", scalar_time=None,
             variables=("T", "rh"), fill=False, packed=False):
    """A small file: `time` (when `times`), lat (3), lon (4), and float32 variables on them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with netCDF4.Dataset(path, "w") as nc:
        nc.title = f"file {path.name}"
        nc.institution = "zarrgate tests"
        dims = ("lat", "lon")
        if times is not None:
            nc.createDimension("time", None)
            t = nc.createVariable("time", "f8", ("time",))
            t.units = time_units
            t.standard_name = "time"
            t[:] = np.asarray(times, dtype="f8")
            dims = ("time", "lat", "lon")
        nc.createDimension("lat", 3)
        nc.createDimension("lon", 4)
        lat = nc.createVariable("lat", "f4", ("lat",))
        lat.units = "degrees_north"
        lat[:] = [10.0, 20.0, 30.0]
        lon = nc.createVariable("lon", "f4", ("lon",))
        lon.units = "degrees_east"
        lon[:] = [0.0, 90.0, 180.0, 270.0]
        if scalar_time is not None:
            s = nc.createVariable("time", "f8", ())
            s.units = time_units
            s[...] = scalar_time
        n = int(np.prod([len(nc.dimensions[d]) for d in dims]))
        base = float(sum(map(ord, path.name)) % 97)
        for i, name in enumerate(variables):
            if packed:
                v = nc.createVariable(name, "i2", dims, fill_value=-999)
                v.scale_factor = 0.5
                v.add_offset = 10.0
                v.units = "K"
                v[:] = (np.arange(n, dtype="f8").reshape([len(nc.dimensions[d]) for d in dims]) + base) * 0.5 + 10
                continue
            v = nc.createVariable(name, "f4", dims, fill_value=np.float32(-9999.0) if fill else None)
            v.units = "K" if i == 0 else "%"
            v.long_name = f"{name} of {path.stem}"
            if scalar_time is not None:
                v.coordinates = "time"
            data = np.arange(n, dtype="f4").reshape([len(nc.dimensions[d]) for d in dims]) + base + 100 * i
            if fill:
                data.flat[1] = -9999.0
            v[:] = data


def build(root: Path) -> dict[str, str]:
    """Writes every case; returns the dataset id of each."""
    cases = {}

    # 1. joinExisting with coordValue and new time units at the top level
    d = root / "coordvalue"
    for i, name in enumerate(("jan.nc", "feb.nc", "mar.nc")):
        write_nc(d / name, times=[1.15e9 + 3600 * i])
    (d / "coordvalue.ncml").write_text(ncml("""
  <variable name="time">
    <attribute name="units" value="hours since 2006-06-16 00:00"/>
    <attribute name="_CoordinateAxisType" value="Time"/>
  </variable>
  <aggregation dimName="time" type="joinExisting">
    <netcdf location="jan.nc" coordValue="12" ncoords="1"/>
    <netcdf location="feb.nc" coordValue="13" ncoords="1"/>
    <netcdf location="mar.nc" coordValue="14" ncoords="1"/>
  </aggregation>"""))
    cases["coordvalue"] = "coordvalue/coordvalue"

    # 1b. coordValue listing several values per file
    d = root / "coordlist"
    write_nc(d / "a.nc", times=[0.0, 1.0])
    write_nc(d / "b.nc", times=[2.0, 3.0])
    (d / "coordlist.ncml").write_text(ncml("""
  <variable name="time"><attribute name="units" value="days since 2001-01-01"/></variable>
  <aggregation dimName="time" type="joinExisting">
    <netcdf location="a.nc" coordValue="0, 31"/>
    <netcdf location="b.nc" coordValue="59 90"/>
  </aggregation>"""))
    cases["coordlist"] = "coordlist/coordlist"

    # 2. a dimension renamed
    d = root / "dimrename"
    write_nc(d / "one.nc", times=[0.0, 3600.0])
    (d / "dimrename.ncml").write_text(ncml('  <dimension name="newTime" orgName="time"/>', "one.nc"))
    cases["dimrename"] = "dimrename/dimrename"

    # 2b. variables renamed inside the nested netcdf of a union
    d = root / "union"
    write_nc(d / "temp.nc", times=[0.0, 3600.0], variables=("T",))
    write_nc(d / "hum.nc", times=[0.0, 3600.0], variables=("rh",))
    (d / "union.ncml").write_text(ncml("""
  <attribute name="title" value="union with renamed variables"/>
  <aggregation type="union">
    <netcdf location="temp.nc">
      <variable name="Temperature" orgName="T"/>
    </netcdf>
    <netcdf location="hum.nc">
      <variable name="ReletiveHumidity" orgName="rh">
        <attribute name="long_name" value="relative humidity"/>
      </variable>
      <attribute name="comment" value="set on the second file only"/>
    </netcdf>
  </aggregation>"""))
    cases["union"] = "union/union"

    # 3. <values>: a joinNew's coordinate replaced, a synthetic axis, a new variable
    d = root / "values"
    for name in ("r1.nc", "r2.nc", "r3.nc"):
        write_nc(d / name, times=[0.0, 3600.0], variables=("T",))
    (d / "values.ncml").write_text(ncml("""
  <dimension name="member" length="3"/>
  <dimension name="lat" length="3"/>
  <dimension name="lon" length="4"/>
  <variable name="member" type="int" shape="member">
    <attribute name="long_name" value="ensemble member"/>
    <values>1 2 3</values>
  </variable>
  <variable name="time">
    <attribute name="units" value="days since 2000-01-01"/>
    <values start="10" increment="0.5"/>
  </variable>
  <variable name="weights" type="double" shape="lat">
    <values separator=",">0.25,0.5,0.25</values>
  </variable>
  <variable name="labels" type="String" shape="lon">
    <values>north east south west</values>
  </variable>
  <aggregation dimName="member" type="joinNew">
    <variableAgg name="T"/>
    <netcdf location="r1.nc"/>
    <netcdf location="r2.nc"/>
    <netcdf location="r3.nc"/>
  </aggregation>"""))
    cases["values"] = "values/values"

    # 3b. a dataset of the NcML alone
    d = root / "standalone"
    d.mkdir()
    (d / "standalone.ncml").write_text(ncml("""
  <dimension name="x" length="4"/>
  <dimension name="y" length="2"/>
  <attribute name="title" value="made by NcML alone"/>
  <attribute name="version" type="int" value="3"/>
  <attribute name="factors" type="double" value="1.5 2.5"/>
  <enumTypedef name="trilean" type="enum1">
    <enum key="0">false</enum>
    <enum key="1">true</enum>
    <enum key="2">undefined</enum>
  </enumTypedef>
  <variable name="x" type="float" shape="x">
    <attribute name="units" value="m"/>
    <values start="0" increment="2.5"/>
  </variable>
  <variable name="y" type="int" shape="y"><values>5 7</values></variable>
  <variable name="field" type="double" shape="y x">
    <attribute name="long_name" value="a field"/>
    <values>1 2 3 4 5 6 7 8</values>
  </variable>
  <variable name="counts" type="ushort" shape="x"><values>0 65535 7 8</values></variable>
  <variable name="small" type="ubyte" shape="y"><values>200 255</values></variable>
  <variable name="state" type="enum1" typedef="trilean" shape="x"><values>0 1 2 1</values></variable>
  <variable name="names" type="String" shape="y"><values>alpha beta</values></variable>
  <variable name="scale" type="double" shape=""><values>0.001</values></variable>
  <group name="sub">
    <dimension name="z" length="3"/>
    <attribute name="purpose" value="a sub-group"/>
    <variable name="depth" type="float" shape="z">
      <attribute name="units" value="m"/>
      <values>1.5 2.5 3.5</values>
    </variable>
    <variable name="xs" type="int" shape="x"><values>1 2 3 4</values></variable>
    <group name="inner">
      <variable name="flag" type="byte" shape=""><values>1</values></variable>
    </group>
  </group>"""))
    cases["standalone"] = "standalone/standalone"

    # 3c. <explicit/>: only what the NcML declares
    d = root / "explicit"
    write_nc(d / "one.nc", times=[0.0, 3600.0])
    (d / "explicit.ncml").write_text(ncml("""
  <explicit/>
  <dimension name="time" length="2"/>
  <dimension name="lat" length="3"/>
  <dimension name="lon" length="4"/>
  <attribute name="title" value="only this"/>
  <variable name="time" type="double" shape="time">
    <attribute name="units"/>
  </variable>
  <variable name="lat" type="float" shape="lat"/>
  <variable name="lon" type="float" shape="lon"/>
  <variable name="Temperature" orgName="T" type="float" shape="time lat lon">
    <attribute name="units" value="K"/>
  </variable>""", "one.nc"))
    cases["explicit"] = "explicit/explicit"

    # 3d. <readMetadata/> (the default, said out loud)
    d = root / "readmeta"
    write_nc(d / "one.nc", times=[0.0, 3600.0])
    (d / "readmeta.ncml").write_text(ncml("""
  <readMetadata/>
  <attribute name="title" value="renamed"/>
  <variable name="T"><attribute name="units" value="degC"/></variable>""", "one.nc"))
    cases["readmeta"] = "readmeta/readmeta"

    # 3e. joinNew over files holding the new dimension's coordinate as a scalar
    d = root / "scalar"
    for i, name in enumerate(("t0.nc", "t1.nc", "t2.nc")):
        write_nc(d / name, scalar_time=6.0 * i, time_units="hours since 2010-01-01", variables=("T",))
    (d / "scalar.ncml").write_text(ncml("""
  <aggregation dimName="time" type="joinNew">
    <variableAgg name="T"/>
    <scan location="." suffix=".nc"/>
  </aggregation>"""))
    cases["scalar"] = "scalar/scalar"

    # 3f. time units whose reference date pandas reads and cftime does not, along the join
    d = root / "pandas_units"
    write_nc(d / "b.nc", times=[2.0, 3.0], time_units="days since Jan 1, 2000")
    write_nc(d / "a.nc", times=[0.0, 1.0], time_units="days since Jan 1, 2000")
    (d / "pandas_units.ncml").write_text(ncml("""
  <aggregation dimName="time" type="joinExisting">
    <scan location="." suffix=".nc"/>
  </aggregation>"""))
    cases["pandas_units"] = "pandas_units/pandas_units"
    return cases


#: NcML that must be refused: (directory, NcML body, words the error must hold)
REFUSED = {
    "tiled": ('<aggregation type="tiled" dimName="lat"><netcdf location="one.nc"/></aggregation>', "tiled"),
    "fmrc": ('<aggregation type="forecastModelRunCollection" dimName="run"><netcdf location="one.nc"/></aggregation>',
             "forecastModelRunCollection"),
    "group": ('<group name="g"><attribute name="a" value="1"/></group><aggregation type="union">'
              '<netcdf location="one.nc"/></aggregation>', "<group>"),
    "slice": ('<variable name="T"><logicalSlice dimName="time" index="0"/></variable>'
              '<aggregation type="union"><netcdf location="one.nc"/></aggregation>', "<logicalSlice>"),
    "nested_explicit": ('<aggregation type="union"><netcdf location="one.nc"><explicit/></netcdf></aggregation>',
                        "<explicit/>"),
    "from_attribute": ('<variable name="lat"><values fromAttribute="x"/></variable>'
                       '<aggregation type="union"><netcdf location="one.nc"/></aggregation>', "fromAttribute"),
    "unknown": ('<frobnicate/><aggregation type="union"><netcdf location="one.nc"/></aggregation>', "<frobnicate>"),
    "section": ('<aggregation type="union"><netcdf location="one.nc" section="0:1"/></aggregation>', "section"),
    "olderthan": ('<aggregation type="joinExisting" dimName="time"><scan location="." olderThan="5 min"/>'
                  '</aggregation>', "olderThan"),
    "fill_change": ('<variable name="T"><attribute name="_FillValue" type="float" value="0"/></variable>'
                    '<aggregation type="union"><netcdf location="one.nc"/></aggregation>', "_FillValue"),
    "nested_scale": ('<aggregation type="union"><netcdf location="one.nc"><variable name="T">'
                     '<attribute name="scale_factor" type="float" value="2"/></variable></netcdf></aggregation>',
                     "scale_factor"),
    "explicit_packing": ('<explicit/><variable name="T" type="short" shape="time lat lon"/>',
                         "the stored values of T need"),
    "units_without_values": ('<variable name="time"><attribute name="units" value="hours since 2006-06-16"/>'
                             '</variable><aggregation type="joinExisting" dimName="time">'
                             '<netcdf location="one.nc"/></aggregation>', "without the values"),
    "coordvalue_count": ('<aggregation type="joinExisting" dimName="time">'
                         '<netcdf location="one.nc" coordValue="1 2 3"/></aggregation>', "coordValue gives 3"),
    "ncoords": ('<aggregation type="joinExisting" dimName="time"><netcdf location="one.nc" ncoords="5"/>'
                '</aggregation>', "ncoords"),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("ncml") / "data"
    cases = build(root)
    for name, (body, _) in REFUSED.items():
        d = root / "refused" / name
        write_nc(d / "one.nc", times=[0.0, 3600.0], variables=("T",), packed=name == "explicit_packing")
        (d / f"{name}.ncml").write_text(ncml(body, "one.nc" if name == "explicit_packing" else None))
    gw = start_gateway(root, BUCKET, tmp_path_factory.mktemp("ncml-catalog") / "catalog")
    catalog = json.loads((gw.exported() / "catalog.json").read_text())
    yield root, gw, catalog, cases
    gw.stop()


def open_served(gw, dataset: str) -> xr.Dataset:
    options = {"anon": True, "endpoint_url": gw.endpoint, "skip_instance_cache": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_zarr(f"s3://{gw.bucket}/{dataset}", storage_options=options, consolidated=True).load()


def oracle(path: Path, without: tuple[str, ...] = (), group: str = "/") -> xr.Dataset:
    """xncml's reading of the NcML, decoded as xarray decodes a file. xncml marks every variable
    the NcML names with a `group_path` attribute of its own, which is not part of the data.

    `without` names variables xncml cannot read (String arrays and multi-dimensional `<values>`
    fail in its `read_values`); they are left out of a copy of the NcML that xncml reads, and
    the tests check them against the values the NcML gives."""
    import xncml

    if without:
        text = path.read_text()
        for name in without:
            text, n = re.subn(rf'<variable name="{name}"[^>]*>.*?</variable>', "", text, flags=re.S)
            assert n == 1, name
        path = path.with_name(path.stem + ".for-xncml.xml")
        path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xncml.open_ncml(path, group=group).load()
    for v in ds.variables.values():
        v.attrs.pop("group_path", None)
    return xr.decode_cf(ds)


def compare(got: xr.Dataset, want: xr.Dataset) -> list[str]:
    out = []
    if dict(got.sizes) != dict(want.sizes):
        out.append(f"dimensions {dict(got.sizes)} != {dict(want.sizes)}")
    if set(got.variables) != set(want.variables):
        out.append(f"variables {sorted(got.variables)} != {sorted(want.variables)}")
    for name in sorted(set(got.variables) & set(want.variables)):
        g, w = got.variables[name], want.variables[name]
        if g.dims != w.dims:
            out.append(f"{name}: dims {g.dims} != {w.dims}")
            continue
        if not dtypes_equivalent(g.dtype, w.dtype):
            out.append(f"{name}: dtype {g.dtype} != {w.dtype}")
        ok, detail = values_equal(w.values, g.values, "served")
        if not ok:
            out.append(f"{name}: values {detail}")
        out += [f"{name}: attribute {d}" for d in attr_differences(dict(g.attrs), dict(w.attrs), loose=False)]
    out += [f"global attribute {d}" for d in attr_differences(dict(got.attrs), dict(want.attrs), loose=False)]
    return out


def entry(catalog: dict, dataset: str) -> dict:
    joins = catalog.get("joins", {})
    assert dataset in joins, f"no join {dataset}: {sorted(joins)}"
    return joins[dataset]


# ---------------------------------------------------------------------------------------------
# Point 1: coordValue on joinExisting (the times were once served in the year 133161)
# ---------------------------------------------------------------------------------------------


def test_coord_value_gives_the_joined_times(served):
    root, gw, catalog, cases = served
    assert entry(catalog, "coordvalue/coordvalue")["status"] == "ok", entry(catalog, "coordvalue/coordvalue")
    got = open_served(gw, "coordvalue/coordvalue")
    want = oracle(root / "coordvalue/coordvalue.ncml")
    # THREDDS keeps the files' attributes of the coordinate; xncml's assign_coords drops them.
    want["time"].attrs["standard_name"] = "time"
    assert compare(got, want) == []
    assert [str(t)[:16] for t in got.time.values] == ["2006-06-16T12:00", "2006-06-16T13:00", "2006-06-16T14:00"]


def test_coord_value_lists_give_every_step(served):
    root, gw, _, _ = served
    got = open_served(gw, "coordlist/coordlist")
    want = oracle(root / "coordlist/coordlist.ncml")
    want["time"].attrs["standard_name"] = "time"  # as above
    assert compare(got, want) == []
    assert [str(t)[:10] for t in got.time.values] == ["2001-01-01", "2001-02-01", "2001-03-01", "2001-04-01"]


# ---------------------------------------------------------------------------------------------
# Point 2: renames that were once ignored
# ---------------------------------------------------------------------------------------------


def test_a_dimension_is_renamed(served):
    """THREDDS renames the dimension, not the variable: `time` becomes a variable along
    `newTime`, as xncml's `rename_dims` gives."""
    root, gw, _, _ = served
    got = open_served(gw, "dimrename/dimrename")
    assert "newTime" in got.dims and "time" not in got.dims
    assert compare(got, oracle(root / "dimrename/dimrename.ncml")) == []


def test_variables_renamed_in_a_nested_netcdf_of_a_union(served):
    """THREDDS applies a nested <netcdf>'s changes to that file before the union. Global
    attributes come from the first part, as xncml's (and xarray's) merge takes them."""
    root, gw, _, _ = served
    got = open_served(gw, "union/union")
    assert {"Temperature", "ReletiveHumidity"} <= set(got.data_vars) and not {"T", "rh"} & set(got.data_vars)
    want = oracle(root / "union/union.ncml")
    assert compare(got, want) == []


# ---------------------------------------------------------------------------------------------
# Point 3: the rest of the language
# ---------------------------------------------------------------------------------------------


def test_values_replace_and_add_variables(served):
    root, gw, _, _ = served
    got = open_served(gw, "values/values")
    want = oracle(root / "values/values.ncml", without=("labels",))
    assert compare(got.drop_vars("labels"), want) == []
    assert got.member.values.tolist() == [1, 2, 3]
    assert [str(t)[:13] for t in got.time.values] == ["2000-01-11T00", "2000-01-11T12"]
    assert got.labels.values.tolist() == ["north", "east", "south", "west"]


def test_a_dataset_of_the_ncml_alone(served):
    """Served from the NcML. THREDDS and xncml agree on values; enums are served as their
    integer keys (xncml keeps the labels in numpy dtype metadata, which Zarr cannot hold)."""
    root, gw, catalog, _ = served
    assert entry(catalog, "standalone/standalone")["status"] == "ok", entry(catalog, "standalone/standalone")
    got = open_served(gw, "standalone/standalone")
    want = oracle(root / "standalone/standalone.ncml", without=("field", "names"))
    assert compare(got.drop_vars(["field", "names"]), want) == []
    assert got.names.values.tolist() == ["alpha", "beta"] and got.field.dims == ("y", "x")
    assert got.counts.dtype == np.uint16 and got.small.dtype == np.uint8 and got.state.dtype == np.int8
    assert got.field.values.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert float(got.scale) == 0.001


def test_groups_of_a_dataset_of_the_ncml_alone(served):
    """A <group> is a Zarr group. xncml flattens a group's variables and attributes into the
    root's (its `group="/sub"`), so the oracle's variables are taken by name and the group's
    attributes are the NcML's."""
    root, gw, _, _ = served
    options = {"anon": True, "endpoint_url": gw.endpoint, "skip_instance_cache": True}
    sub = xr.open_zarr(f"s3://{BUCKET}/standalone/standalone", group="sub", storage_options=options).load()
    want = oracle(root / "standalone/standalone.ncml", without=("field", "names"), group="/sub")
    want = want[["depth", "xs"]]
    want = want.drop_vars([c for c in want.coords if c != "depth"])
    want.attrs = {"purpose": "a sub-group"}
    assert compare(sub, want) == []
    assert sub.depth.attrs == {"units": "m"} and sub.sizes == {"z": 3, "x": 4}
    inner = xr.open_zarr(f"s3://{BUCKET}/standalone/standalone", group="sub/inner", storage_options=options).load()
    assert inner.flag.dtype == np.int8 and int(inner.flag) == 1
    top = open_served(gw, "standalone/standalone")
    assert "depth" not in top.variables and "flag" not in top.variables


def test_a_changed_standalone_ncml_is_noticed(served, tmp_path):
    """The NcML is the source of a standalone dataset: changing it answers 503 until indexed
    again, like a changed file (checked on a copy served by its own gateway)."""
    root, _, _, _ = served
    data = tmp_path / "data"
    (data / "s").mkdir(parents=True)
    text = (root / "standalone/standalone.ncml").read_text()
    (data / "s/s.ncml").write_text(text)
    gw = start_gateway(data, BUCKET, tmp_path / "catalog")
    try:
        key = f"{gw.endpoint}/{BUCKET}/s/s/field/0.0"
        assert requests.get(key, timeout=30).status_code == 200
        (data / "s/s.ncml").write_text(text.replace("made by NcML alone", "changed"))
        assert requests.get(key, timeout=30).status_code == 503
    finally:
        gw.stop()


def test_explicit_takes_only_what_the_ncml_declares(served):
    """THREDDS: with <explicit/>, no metadata comes from the file; an <attribute> without a
    value takes the file's. xncml keeps the file's variable attributes, so the oracle's
    variable attributes follow THREDDS here."""
    root, gw, _, _ = served
    got = open_served(gw, "explicit/explicit")
    want = oracle(root / "explicit/explicit.ncml")
    assert set(got.data_vars) == {"Temperature"} and set(got.attrs) == {"title"}
    want.attrs = {"title": "only this"}
    for name, keep in {"time": {"units"}, "lat": set(), "lon": set(), "Temperature": {"units"}}.items():
        want[name].attrs = {k: v for k, v in want[name].attrs.items() if k in keep}
    want = want[["time", "lat", "lon", "Temperature"]]
    # xncml leaves a variable renamed under <explicit/> uninitialized (np.empty): THREDDS reads
    # it from the file.
    want["Temperature"].values[...] = xr.open_dataset(root / "explicit/one.nc")["T"].values
    assert compare(got, want) == []
    assert got.Temperature.attrs == {"units": "K"}


def test_read_metadata_is_the_default(served):
    root, gw, _, _ = served
    got = open_served(gw, "readmeta/readmeta")
    assert compare(got, oracle(root / "readmeta/readmeta.ncml")) == []
    assert got.T.attrs["units"] == "degC" and got.attrs["title"] == "renamed"


def test_join_new_promotes_the_files_scalar_coordinate(served):
    root, gw, _, _ = served
    got = open_served(gw, "scalar/scalar")
    want = oracle(root / "scalar/scalar.ncml")
    assert compare(got, want) == []
    assert [str(t)[:13] for t in got.time.values] == ["2010-01-01T00", "2010-01-01T06", "2010-01-01T12"]
    assert got.T.dims == ("time", "lat", "lon")


def test_pandas_time_units_join(served):
    """`days since Jan 1, 2000` (read by xarray through pandas) orders and joins the files."""
    root, gw, _, _ = served
    got = open_served(gw, "pandas_units/pandas_units")
    assert compare(got, oracle(root / "pandas_units/pandas_units.ncml")) == []
    assert [str(t)[:10] for t in got.time.values] == ["2000-01-01", "2000-01-02", "2000-01-03", "2000-01-04"]


# ---------------------------------------------------------------------------------------------
# Refusals: never ignored, never wrong
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_ncml_is_refused_naming_it(served, name):
    _, gw, catalog, _ = served
    dataset = f"refused/{name}/{name}"
    e = entry(catalog, dataset)
    assert e["status"] == "failed", e
    words = REFUSED[name][1]
    assert words in e["error"], e["error"]
    assert f"{name}.ncml" in e["error"] or name in e["error"], e["error"]
    resp = requests.get(f"{gw.endpoint}/{BUCKET}/{dataset}/.zmetadata", timeout=30)
    assert resp.status_code == 503 and escape(words) in resp.text, resp.text[:500]


# ---------------------------------------------------------------------------------------------
# The schema: every element and attribute is implemented or refused, and the docs say which
# ---------------------------------------------------------------------------------------------


def schema_names() -> set[tuple[str, str]]:
    """(element, attribute) pairs of the NcML 2.2 schema, from xncml's classes generated from
    it (the element alone has attribute "")."""
    import xncml.generated as generated

    out: set[tuple[str, str]] = set()
    seen = set()

    def classes(t) -> list[type]:
        if isinstance(t, typing.ForwardRef):
            path, t = t.__forward_arg__, generated
            for part in path.split("."):
                t = getattr(t, part)
        if isinstance(t, type) and dataclasses.is_dataclass(t):
            return [t]
        return [c for a in typing.get_args(t) for c in classes(a)]

    def walk(cls, element: str):
        if (cls, element) in seen:
            return
        seen.add((cls, element))
        out.add((element, ""))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = f.metadata.get("type")
            if kind == "Attribute":
                out.add((element, f.metadata.get("name", f.name)))
            for c in f.metadata.get("choices", ()):
                out.add((c["name"], ""))
                for inner in classes(c.get("type")):
                    walk(inner, c["name"])
            if kind == "Element":
                out.add((f.metadata.get("name", f.name), ""))
                for inner in classes(hints[f.name]):
                    walk(inner, f.metadata.get("name", f.name))

    for obj in vars(generated).values():
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and hasattr(obj, "Meta"):
            if getattr(obj.Meta, "namespace", None):
                walk(obj, obj.Meta.name)
    return out


def docs_table() -> dict[tuple[str, str], str]:
    """The NcML table of docs/joins.md: `| <element> | attribute | status |` rows."""
    text = (ROOT / "docs/joins.md").read_text()
    rows = re.findall(r"^\| `<(\w+)>` \| (`\w+`|) \| (.+?) \|$", text, flags=re.M)
    return {(e, a.strip("`")): s for e, a, s in rows}


def test_every_schema_element_and_attribute_is_implemented_or_refused():
    schema = schema_names()
    assert len(schema) > 80, f"the schema walk found only {len(schema)} names"
    table = docs_table()
    missing = sorted(schema - set(table))
    assert not missing, f"docs/joins.md does not say what these do: {missing}"
    for key, status in table.items():
        assert status.startswith(("yes", "refused")), f"{key}: status {status!r}"
    extra = sorted(set(table) - schema)
    assert not extra, f"docs/joins.md lists names that are not in the schema: {extra}"
