"""JSON Schemas for the STAC extensions zarrgate's items declare, written from the extensions'
specifications (datacube v2.2.0, xarray-assets v1.0.0) for validation without internet access:
pystac bundles the core schemas only, and fetches extension schemas from their URLs."""

DATACUBE = "https://stac-extensions.github.io/datacube/v2.2.0/schema.json"
XARRAY_ASSETS = "https://stac-extensions.github.io/xarray-assets/v1.0.0/schema.json"

_EXTENT_NUMBERS = {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": ["number", "null"]}}
_EXTENT_TIMES = {"type": "array", "minItems": 2, "maxItems": 2,
                 "items": {"type": ["string", "null"], "format": "date-time"}}

_DIMENSION = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string"}, "description": {"type": "string"}, "unit": {"type": "string"},
                   "values": {"type": "array"}, "step": {"type": ["number", "string", "null"]}},
    "allOf": [
        {"if": {"properties": {"type": {"const": "spatial"}}},
         "then": {"required": ["axis"], "properties": {"axis": {"enum": ["x", "y", "z"]}, "extent": _EXTENT_NUMBERS,
                                                       "reference_system": {"type": ["integer", "string", "object"]}},
                  "if": {"properties": {"axis": {"enum": ["x", "y"]}}}, "then": {"required": ["extent"]}}},
        {"if": {"properties": {"type": {"const": "temporal"}}},
         "then": {"anyOf": [{"required": ["extent"]}, {"required": ["values"]}], "properties": {"extent": _EXTENT_TIMES}}},
        {"if": {"properties": {"type": {"not": {"enum": ["spatial", "temporal"]}}}},
         "then": {"properties": {"extent": _EXTENT_NUMBERS}}},
    ],
}

_VARIABLE = {
    "type": "object",
    "required": ["dimensions", "type"],
    "properties": {"dimensions": {"type": "array", "items": {"type": "string"}},
                   "type": {"enum": ["data", "auxiliary"]}, "description": {"type": "string"},
                   "unit": {"type": "string"}, "extent": _EXTENT_NUMBERS, "values": {"type": "array"}},
}

_CUBE = {
    "type": "object",
    "properties": {
        "cube:dimensions": {"type": "object", "additionalProperties": _DIMENSION},
        "cube:variables": {"type": "object", "additionalProperties": _VARIABLE},
    },
    "required": ["cube:dimensions"],
}

DATACUBE_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "$id": DATACUBE,
    "type": "object",
    "required": ["stac_extensions"],
    "properties": {"stac_extensions": {"type": "array", "contains": {"const": DATACUBE}}},
    "oneOf": [
        {"required": ["type", "properties"], "properties": {"type": {"const": "Feature"}, "properties": _CUBE}},
        {"required": ["type"], "properties": {"type": {"const": "Collection"}}, "allOf": [_CUBE]},
    ],
}

_XARRAY_FIELDS = {"xarray:open_kwargs": {"type": "object"}, "xarray:storage_options": {"type": "object"}}

XARRAY_ASSETS_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "$id": XARRAY_ASSETS,
    "type": "object",
    "required": ["stac_extensions"],
    "properties": {
        "stac_extensions": {"type": "array", "contains": {"const": XARRAY_ASSETS}},
        "assets": {"type": "object", "additionalProperties": {"type": "object", "properties": _XARRAY_FIELDS}},
    },
}
