"""Independent re-implementation of h5netcdf(phony_dims='access') dim naming, vs xarray output."""
import h5py, numpy as np, sys, warnings, xarray as xr
warnings.simplefilter("ignore")
NOT_A_VARIABLE = b"This is a netCDF dimension but not a netCDF variable."

def members(grp):
    names = [n for n in grp.id.links.iterate(lambda n: None) or []]  # placeholder
    names = []
    grp.id.links.iterate(names.append, idx_type=h5py.h5.INDEX_NAME)
    tracked = grp.id.get_create_plist().get_link_creation_order() & h5py.h5p.CRT_ORDER_TRACKED
    if tracked:
        names.sort(key=lambda n: grp.id.links.get_info(n).corder)
    else:
        names.sort()  # bytewise
    return [n.decode() for n in names]

def nscales(ds):
    if ds.shape is None or len(ds.shape) == 0: return None
    return [len(d) for d in ds.dims]

def is_scale(ds):
    c = ds.attrs.get("CLASS") if "CLASS" in ds.attrs else None
    return isinstance(c, (bytes, np.bytes_)) and bytes(c) == b"DIMENSION_SCALE"

class G:
    def __init__(self, h5, parent, state):
        self.h5 = h5; self.parent = parent
        self.own = []   # list of [name, size, phony, unlimited]
        self.vars = []
        need = {}
        for m in members(h5):
            o = h5[m]  # follows soft/external links, raises on dangling
            if isinstance(o, (h5py.Group, h5py.Datatype)): continue
            if is_scale(o):
                unlim = o.maxshape == (None,)
                size = o.shape[0]
                if unlim and "REFERENCE_LIST" in o.attrs:
                    for ref, axis in o.attrs["REFERENCE_LIST"]:
                        size = max(size, h5[ref].shape[axis])
                self.own.append([m, size, False, unlim])
            else:
                ns = nscales(o)
                if ns:
                    if all(n == 0 for n in ns):
                        c = {}
                        for s in o.shape: c[s] = c.get(s, 0) + 1
                        for s, k in c.items():
                            if k > need.get(s, 0): need[s] = k
                    elif any(n == 0 for n in ns):
                        raise ValueError(f"malformed variable {m}")
            name_attr = o.attrs.get("NAME", b"") if "NAME" in o.attrs else b""
            if isinstance(name_attr, str): name_attr = name_attr.encode()
            if NOT_A_VARIABLE not in bytes(name_attr):
                self.vars.append(m)
        labeled = {}
        for n, s, ph, un in self.own:
            if not un: labeled[s] = labeled.get(s, 0) + 1
        for s, k in need.items():
            for _ in range(labeled.get(s, 0), k):
                self.own.append([f"phony_dim_{state['count']}", s, True, False])
                state['count'] += 1
    def visible(self, name):
        g = self
        while g is not None:
            for d in g.own:
                if d[0] == name: return d
            g = g.parent
        return None
    def var_dims(self, m):
        o = self.h5[m]
        if "DIMENSION_LIST" in o.attrs:
            ns = nscales(o)
            if ns and all(n > 0 for n in ns):
                return tuple(self.h5.file[refs[-1]].name.split("/")[-1] for refs in o.attrs["DIMENSION_LIST"])
        if self.visible(m) is not None: return (m,)
        if not o.shape: return ()
        used = {}; dims = []
        for s in o.shape:
            cands = [d[0] for d in self.own if d[1] == s]
            dims.append(cands[used.get(s, 0)]); used[s] = used.get(s, 0) + 1
        return tuple(dims)

def model(path, group):
    f = h5py.File(path, "r")
    state = {"count": 0}
    g = G(f["/"], None, state)
    for comp in [c for c in group.strip("/").split("/") if c]:
        h = g.h5[comp]
        if not isinstance(h, h5py.Group): raise OSError("group not found")
        g = G(h, g, state)
    out = {}
    for v in g.vars:
        dims = g.var_dims(v)
        shape = tuple(g.visible(d)[1] for d in dims)
        out[v] = (dims, shape)
    return out

def groups_of(path):
    with h5py.File(path, "r") as f:
        gs = ["/"]
        f.visititems(lambda n, o: gs.append(n) if isinstance(o, h5py.Group) else None)
    return gs

if __name__ == "__main__":
    tot = ok = 0
    for p in sys.argv[1:]:
        for g in groups_of(p):
            try:
                ds = xr.open_dataset(p, engine="h5netcdf", group=g, decode_cf=False)
                ref = {n: (v.dims, v.shape) for n, v in ds.variables.items()}; ds.close()
            except Exception as e:
                ref = f"ERR {type(e).__name__}"
            try: mine = model(p, g)
            except Exception as e: mine = f"ERR {type(e).__name__}"
            tot += 1
            if ref == mine or (isinstance(ref, str) and isinstance(mine, str)): ok += 1
            else: print("MISMATCH", p, g, "\n  xr:", ref, "\n  me:", mine)
    print(f"{ok}/{tot} groups match")
