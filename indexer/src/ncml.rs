//! NcML (`NAME.ncml`): what each element and attribute of the NcML 2.2 schema means here,
//! and the parser that turns a file into a join tree and edits.
//!
//! Every element and attribute is either implemented with THREDDS's meaning or refused with
//! an error naming it ([`SUPPORT`]); nothing is ignored. `docs/joins.md` lists the same table
//! (a test checks both against the schema).

use regex::Regex;
use serde_json::Value;
use zarrgate_core::join::{ncml_dtype, Edit, Given};

use crate::paths::{join_path, normalize, split_dir};

/// `(element, attribute, status)`; `attribute` is empty for the element itself. A status
/// starting with "refused" is refused with that reason; anything else is implemented.
pub const SUPPORT: &[(&str, &str, &str)] = &[
    ("netcdf", "", "yes"),
    ("netcdf", "location", "yes: relative to the NcML file, inside the data directory"),
    ("netcdf", "id", "yes: no effect on the data"),
    ("netcdf", "title", "yes: no effect on the data"),
    ("netcdf", "enhance", "yes: xarray applies scale, offset and missing values itself"),
    ("netcdf", "addRecords", "refused: the record Structure has no Zarr form"),
    ("netcdf", "iosp", "refused: zarrgate reads files with its own indexer"),
    ("netcdf", "iospParam", "refused: zarrgate reads files with its own indexer"),
    ("netcdf", "bufferSize", "yes: a performance hint with no effect on the data"),
    ("netcdf", "ncoords", "yes: checked against the file's length"),
    ("netcdf", "coordValue", "yes: joinNew (one value) and joinExisting (one value per step)"),
    ("netcdf", "section", "refused: sections are not implemented"),
    ("readMetadata", "", "yes: the default (metadata from the files, then the NcML's changes)"),
    ("explicit", "", "yes: top level only (refused inside a nested netcdf)"),
    ("iospParam", "", "refused: zarrgate reads files with its own indexer"),
    ("enumTypedef", "", "yes: values are the integer keys (Zarr v2 has no enum type)"),
    ("enumTypedef", "name", "yes"),
    ("enumTypedef", "type", "yes"),
    ("enum", "", "yes"),
    ("enum", "key", "yes"),
    ("group", "", "yes: in datasets of the NcML alone (refused over files: joins are of the root group)"),
    ("group", "name", "yes"),
    ("group", "orgName", "refused: files' groups are not joined"),
    ("dimension", "", "yes"),
    ("dimension", "name", "yes"),
    ("dimension", "length", "yes: for new variables; an existing dimension must have it"),
    ("dimension", "orgName", "yes: renames the dimension"),
    ("dimension", "isUnlimited", "yes: no effect (Zarr has no unlimited dimensions)"),
    ("dimension", "isVariableLength", "refused: variable-length dimensions have no Zarr form"),
    ("dimension", "isShared", "yes when true; refused when false (private dimensions)"),
    ("variable", "", "yes"),
    ("variable", "name", "yes"),
    ("variable", "type", "yes: numbers, unsigned numbers and String; char, opaque and Structure are refused"),
    ("variable", "typedef", "yes: an enumTypedef"),
    ("variable", "shape", "yes: dimension names, empty for a scalar"),
    ("variable", "orgName", "yes: renames the variable"),
    ("values", "", "yes"),
    ("values", "start", "yes"),
    ("values", "increment", "yes"),
    ("values", "npts", "yes"),
    ("values", "separator", "yes"),
    ("values", "fromAttribute", "refused: values from an attribute are not implemented"),
    ("logicalSection", "", "refused: logical views are not implemented"),
    ("logicalSection", "section", "refused: logical views are not implemented"),
    ("logicalSlice", "", "refused: logical views are not implemented"),
    ("logicalSlice", "dimName", "refused: logical views are not implemented"),
    ("logicalSlice", "index", "refused: logical views are not implemented"),
    ("logicalReduce", "", "refused: logical views are not implemented"),
    ("logicalReduce", "dimNames", "refused: logical views are not implemented"),
    ("attribute", "", "yes"),
    ("attribute", "name", "yes"),
    ("attribute", "type", "yes"),
    ("attribute", "value", "yes (or the element's text)"),
    ("attribute", "separator", "yes"),
    ("attribute", "orgName", "yes: renames the attribute"),
    ("attribute", "isUnsigned", "yes: the value is read as a number either way"),
    ("remove", "", "yes"),
    ("remove", "name", "yes"),
    ("remove", "type", "yes: variable, attribute and dimension (of no variable); group is refused"),
    ("aggregation", "", "yes"),
    (
        "aggregation",
        "type",
        "yes: joinExisting, joinNew, union; tiled and forecastModelRun(Single)Collection are refused",
    ),
    ("aggregation", "dimName", "yes"),
    ("aggregation", "recheckEvery", "yes: every index run scans again"),
    ("aggregation", "timeUnitsChange", "yes: times in other units are always re-encoded in the first file's"),
    ("aggregation", "fmrcDefinition", "refused: forecast model run collections are not implemented"),
    ("variableAgg", "", "yes"),
    ("variableAgg", "name", "yes"),
    ("promoteGlobalAttribute", "", "refused: not implemented"),
    ("promoteGlobalAttribute", "name", "refused: not implemented"),
    ("promoteGlobalAttribute", "orgName", "refused: not implemented"),
    ("cacheVariable", "", "yes: a performance hint with no effect on the data"),
    ("cacheVariable", "name", "yes: a performance hint with no effect on the data"),
    ("scan", "", "yes"),
    ("scan", "location", "yes"),
    ("scan", "suffix", "yes"),
    ("scan", "regExp", "yes: matched against the file name"),
    ("scan", "subdirs", "yes"),
    ("scan", "olderThan", "refused: every indexed file is joined"),
    ("scan", "dateFormatMark", "refused: dates from file names are not implemented"),
    ("scan", "enhance", "yes: xarray applies scale, offset and missing values itself"),
    ("scanFmrc", "", "refused: forecast model run collections are not implemented"),
    ("scanFmrc", "location", "refused: forecast model run collections are not implemented"),
    ("scanFmrc", "suffix", "refused: forecast model run collections are not implemented"),
    ("scanFmrc", "regExp", "refused: forecast model run collections are not implemented"),
    ("scanFmrc", "subdirs", "refused: forecast model run collections are not implemented"),
    ("scanFmrc", "olderThan", "refused: forecast model run collections are not implemented"),
    ("scanFmrc", "runDateMatcher", "refused: forecast model run collections are not implemented"),
    ("scanFmrc", "forecastDateMatcher", "refused: forecast model run collections are not implemented"),
    ("scanFmrc", "forecastOffsetMatcher", "refused: forecast model run collections are not implemented"),
];

/// An NcML dataset, with locations relative to the data root.
#[derive(Clone, Debug)]
pub enum NcNode {
    File(String),
    /// `joinExisting`; `coords` and `ncoords` per child (`coordValue` split, and `ncoords`).
    Existing {
        dim: String,
        children: Vec<NcNode>,
        coords: Vec<Option<Vec<String>>>,
        ncoords: Vec<Option<u64>>,
    },
    /// `joinNew`; `values` per child (`coordValue`, or `None`: the file name, or the files'
    /// scalar `dim` when they have one).
    New {
        dim: String,
        variables: Vec<String>,
        values: Vec<Option<String>>,
        children: Vec<NcNode>,
    },
    Union(Vec<NcNode>),
    /// A nested `<netcdf>` with its own changes.
    Edited {
        node: Box<NcNode>,
        edits: Vec<Edit>,
    },
    /// No location and no aggregation: the NcML is the whole dataset.
    Empty,
}

impl NcNode {
    /// Member files, in document order (with repeats).
    pub fn files(&self, out: &mut Vec<String>) {
        match self {
            NcNode::File(f) => out.push(f.clone()),
            NcNode::Existing { children, .. } | NcNode::New { children, .. } | NcNode::Union(children) => {
                children.iter().for_each(|c| c.files(out))
            }
            NcNode::Edited { node, .. } => node.files(out),
            NcNode::Empty => {}
        }
    }
}

/// Parses an NcML file whose directory is `dir` (relative to the data root); `files` are the
/// data files of the tree, for `<scan>`. Returns the dataset and its top-level changes.
pub fn parse(text: &str, dir: &str, files: &[String]) -> Result<(NcNode, Vec<Edit>), String> {
    let doc = roxmltree::Document::parse(text).map_err(|e| format!("not valid XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "netcdf" {
        return Err(format!("the root element is <{}>, not <netcdf>", root.tag_name().name()));
    }
    check_support(root)?;
    let node = dataset(root, dir, files)?.unwrap_or(NcNode::Empty);
    if !matches!(node, NcNode::Empty) && root.descendants().any(|n| n.tag_name().name() == "group") {
        return Err("<group> is refused over files: joins are of the root group (groups are implemented in \
                    datasets of the NcML alone)"
            .into());
    }
    let edits = changes(root, true)?;
    Ok((node, edits))
}

/// Refuses any element or attribute that is not implemented, naming it.
fn check_support(node: roxmltree::Node) -> Result<(), String> {
    for n in node.descendants().filter(|n| n.is_element()) {
        let el = n.tag_name().name();
        let status = |attr: &str| SUPPORT.iter().find(|(e, a, _)| *e == el && *a == attr).map(|(_, _, s)| *s);
        match status("") {
            None => return Err(format!("<{el}> is not an NcML 2.2 element")),
            Some(s) if s.starts_with("refused") => return Err(format!("<{el}> is {s}")),
            _ => {}
        }
        for a in n.attributes() {
            if a.namespace().is_some() {
                continue; // xmlns and xsi: XML's own
            }
            match status(a.name()) {
                None => return Err(format!("<{el} {}> is not an NcML 2.2 attribute", a.name())),
                Some(s) if s.starts_with("refused") => return Err(format!("<{el} {}> is {s}", a.name())),
                _ => {}
            }
        }
        if el == "dimension" && n.attribute("isShared") == Some("false") {
            return Err("<dimension isShared=\"false\"> is refused: private dimensions have no Zarr form".into());
        }
    }
    Ok(())
}

fn attr(node: roxmltree::Node, name: &str) -> Result<String, String> {
    node.attribute(name)
        .map(str::to_string)
        .ok_or_else(|| format!("<{}> needs a {name} attribute", node.tag_name().name()))
}

fn elements<'a, 'i>(node: roxmltree::Node<'a, 'i>) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    node.children().filter(|c| c.is_element())
}

/// A `<netcdf>` element: a file or an aggregation (`None` when it has neither).
fn dataset(node: roxmltree::Node, dir: &str, files: &[String]) -> Result<Option<NcNode>, String> {
    let agg = elements(node).find(|c| c.tag_name().name() == "aggregation");
    let base = match (agg, node.attribute("location")) {
        (Some(_), Some(_)) => return Err("a <netcdf> has both a location and an aggregation".into()),
        (Some(a), None) => aggregation(a, dir, files)?,
        (None, Some(loc)) => NcNode::File(location(dir, loc)?),
        (None, None) => return Ok(None),
    };
    Ok(Some(base))
}

fn location(dir: &str, loc: &str) -> Result<String, String> {
    let loc = loc.strip_prefix("file:").unwrap_or(loc);
    if loc.starts_with('/') || loc.contains("://") {
        return Err(format!("location {loc:?} is absolute; locations are relative to the NcML file"));
    }
    normalize(&join_path(dir, loc)).ok_or_else(|| format!("location {loc:?} is outside the data directory"))
}

fn aggregation(agg: roxmltree::Node, dir: &str, files: &[String]) -> Result<NcNode, String> {
    let kind = attr(agg, "type")?;
    let mut children = Vec::new();
    let mut values = Vec::new();
    let mut ncoords = Vec::new();
    for c in elements(agg) {
        match c.tag_name().name() {
            "netcdf" => {
                let Some(n) = dataset(c, dir, files)? else {
                    return Err("a nested <netcdf> has no location and no aggregation".into());
                };
                let edits = changes(c, false)?;
                values.push(c.attribute("coordValue").map(str::to_string));
                let n_coords = c
                    .attribute("ncoords")
                    .map(|n| n.trim().parse::<u64>().map_err(|_| format!("ncoords {n:?} is not a count")));
                ncoords.push(n_coords.transpose()?);
                children.push(if edits.is_empty() { n } else { NcNode::Edited { node: Box::new(n), edits } });
            }
            "scan" => {
                for f in scan(c, dir, files)? {
                    values.push(None);
                    ncoords.push(None);
                    children.push(NcNode::File(f));
                }
            }
            "variableAgg" | "cacheVariable" => {}
            other => return Err(format!("<{other}> inside <aggregation> is not supported")),
        }
    }
    if children.is_empty() {
        return Err(format!("the {kind} aggregation names no files"));
    }
    Ok(match kind.as_str() {
        "joinExisting" => {
            let coords = values
                .iter()
                .map(|v| v.as_ref().map(|v| v.replace(',', " ").split_whitespace().map(str::to_string).collect()))
                .collect();
            NcNode::Existing { dim: attr(agg, "dimName")?, children, coords, ncoords }
        }
        "joinNew" => {
            let variables = elements(agg).filter(|c| c.tag_name().name() == "variableAgg");
            let variables = variables.map(|v| attr(v, "name")).collect::<Result<Vec<_>, _>>()?;
            NcNode::New { dim: attr(agg, "dimName")?, variables, values, children }
        }
        "union" => NcNode::Union(children),
        "tiled" | "forecastModelRunCollection" | "forecastModelRunSingleCollection" => {
            return Err(format!(
                "aggregation type {kind:?} is refused: not implemented (joinExisting, joinNew and union are); \
                 see docs/joins.md"
            ))
        }
        other => return Err(format!("aggregation type {other:?} is not an NcML aggregation type")),
    })
}

/// The data files a `<scan>` selects, sorted by path.
fn scan(c: roxmltree::Node, dir: &str, files: &[String]) -> Result<Vec<String>, String> {
    let base = location(dir, c.attribute("location").unwrap_or("."))?;
    let suffix = c.attribute("suffix").unwrap_or("");
    let re = c.attribute("regExp").map(Regex::new).transpose().map_err(|e| format!("scan regExp: {e}"))?;
    let subdirs = c.attribute("subdirs").unwrap_or("true") == "true";
    let prefix = if base.is_empty() { String::new() } else { format!("{base}/") };
    let mut out = Vec::new();
    for f in files {
        let Some(rest) = f.strip_prefix(&prefix) else { continue };
        let name = split_dir(rest).1;
        if (!subdirs && rest.contains('/')) || !name.ends_with(suffix) {
            continue;
        }
        if re.as_ref().is_some_and(|re| !re.is_match(name)) {
            continue;
        }
        out.push(f.clone());
    }
    Ok(out)
}

/// The changes a `<netcdf>` element makes (top level or nested), in the order THREDDS makes
/// them: `<explicit/>`, dimensions, variables and attributes in document order, removals last.
fn changes(node: roxmltree::Node, top: bool) -> Result<Vec<Edit>, String> {
    let mut edits = Vec::new();
    let mut removals = Vec::new();
    let enums = enum_types(node)?;
    if elements(node).any(|c| c.tag_name().name() == "explicit") {
        if !top {
            return Err("<explicit/> inside a nested <netcdf> is refused: it is implemented at the top level".into());
        }
        let keep = elements(node)
            .filter(|c| c.tag_name().name() == "variable")
            .map(|v| v.attribute("orgName").or(v.attribute("name")).unwrap_or_default().to_string())
            .collect();
        edits.push(Edit::Explicit { keep });
    }
    for c in elements(node) {
        match c.tag_name().name() {
            "dimension" => {
                let name = attr(c, "name")?;
                if let Some(old) = c.attribute("orgName") {
                    edits.push(Edit::RenameDimension { from: old.to_string(), to: name.clone() });
                }
                if let Some(len) = c.attribute("length") {
                    let length =
                        len.trim().parse().map_err(|_| format!("dimension {name}: length {len:?} is not a count"))?;
                    edits.push(Edit::Dimension { name, length });
                }
            }
            "variable" => variable(c, "", top, &enums, &mut edits, &mut removals)?,
            "attribute" => edits.push(attribute(c, None)?),
            "remove" => removals.push(remove(c, None)?),
            "group" => group(c, "", &enums, &mut edits)?,
            "aggregation" | "readMetadata" | "explicit" | "enumTypedef" => {}
            other => return Err(format!("<{other}> is not supported here")),
        }
    }
    edits.extend(removals);
    Ok(edits)
}

/// `enumTypedef` (name, type) pairs declared directly in `node`.
fn enum_types(node: roxmltree::Node) -> Result<Vec<(String, String)>, String> {
    elements(node)
        .filter(|c| c.tag_name().name() == "enumTypedef")
        .map(|e| Ok((attr(e, "name")?, e.attribute("type").unwrap_or("enum1").to_string())))
        .collect()
}

/// A `<group>` of a dataset of the NcML alone, below `parent` (`""` for the root).
fn group(g: roxmltree::Node, parent: &str, outer: &[(String, String)], edits: &mut Vec<Edit>) -> Result<(), String> {
    let path = format!("{parent}{}", attr(g, "name")?);
    edits.push(Edit::Group { path: path.clone() });
    let mut enums = enum_types(g)?;
    enums.extend(outer.iter().cloned());
    let prefix = format!("{path}/");
    for c in elements(g) {
        match c.tag_name().name() {
            "dimension" if c.attribute("orgName").is_none() => {
                let name = attr(c, "name")?;
                let len = attr(c, "length")?;
                let length =
                    len.trim().parse().map_err(|_| format!("dimension {name}: length {len:?} is not a count"))?;
                edits.push(Edit::Dimension { name: format!("{prefix}{name}"), length });
            }
            "attribute" => match attribute(c, None)? {
                Edit::SetAttribute { name, value, .. } => {
                    edits.push(Edit::GroupAttribute { group: path.clone(), name, value })
                }
                _ => return Err(format!("group {path}: an attribute needs a value")),
            },
            "variable" => {
                let mut removals = Vec::new();
                variable(c, &prefix, true, &enums, edits, &mut removals)?;
                edits.extend(removals);
            }
            "group" => group(c, &prefix, &enums, edits)?,
            "enumTypedef" => {}
            other => return Err(format!("<{other}> inside <group> is refused: not implemented")),
        }
    }
    Ok(())
}

fn variable(
    c: roxmltree::Node,
    prefix: &str,
    top: bool,
    enums: &[(String, String)],
    edits: &mut Vec<Edit>,
    removals: &mut Vec<Edit>,
) -> Result<(), String> {
    let name = format!("{prefix}{}", attr(c, "name")?);
    if let Some(old) = c.attribute("orgName") {
        edits.push(Edit::RenameVariable { from: old.to_string(), to: name.clone() });
    }
    let type_name = match c.attribute("typedef") {
        Some(t) => Some(
            enums
                .iter()
                .find(|(n, _)| n == t)
                .map(|(_, ty)| ty.clone())
                .ok_or(format!("{name}: no enumTypedef {t:?}"))?,
        ),
        None => c.attribute("type").map(str::to_string),
    };
    let dtype = type_name.map(|t| ncml_dtype(&t).map_err(|e| format!("variable {name}: {e}"))).transpose()?;
    let dims = c.attribute("shape").map(|s| s.split_whitespace().map(str::to_string).collect::<Vec<_>>());
    let values = elements(c).find(|v| v.tag_name().name() == "values");
    let given = match values {
        Some(v) => Some(values_of(v, &name)?),
        // A declaration without values: a new variable read as missing values, or a check
        // that an existing one has this type and shape.
        None if dims.is_some() || dtype.is_some() => Some(Given::Missing),
        None => None,
    };
    if let Some(values) = given {
        if !top {
            return Err(format!(
                "variable {name}: <values> and new variables inside a nested <netcdf> are refused (top level only)"
            ));
        }
        edits.push(Edit::Values { name: name.clone(), dims, dtype, values });
    }
    for a in elements(c) {
        match a.tag_name().name() {
            "attribute" => edits.push(attribute(a, Some(&name))?),
            "remove" => removals.push(remove(a, Some(&name))?),
            "values" => {}
            other => return Err(format!("<{other}> inside <variable> is refused: not implemented")),
        }
    }
    Ok(())
}

fn values_of(v: roxmltree::Node, name: &str) -> Result<Given, String> {
    let number = |a: &str| -> Result<Option<f64>, String> {
        v.attribute(a)
            .map(|x| x.trim().parse::<f64>().map_err(|_| format!("{name}: <values {a}={x:?}> is not a number")))
            .transpose()
    };
    match (number("start")?, number("increment")?) {
        (Some(start), Some(increment)) => {
            let npts = number("npts")?.map(|n| n as u64);
            Ok(Given::Range { start, increment, npts })
        }
        (None, None) => {
            let text = v.text().unwrap_or("");
            let items: Vec<String> = match v.attribute("separator") {
                Some(sep) if !sep.is_empty() => text.split(sep).map(str::to_string).collect(),
                _ => text.split_whitespace().map(str::to_string).collect(),
            };
            Ok(Given::List(items))
        }
        _ => Err(format!("{name}: <values> needs both start and increment, or a list")),
    }
}

fn remove(c: roxmltree::Node, variable: Option<&str>) -> Result<Edit, String> {
    let name = attr(c, "name")?;
    Ok(match (c.attribute("type").unwrap_or("attribute"), variable) {
        ("variable", None) => Edit::RemoveVariable(name),
        ("attribute", v) => Edit::RemoveAttribute { variable: v.map(str::to_string), name },
        (other, _) => return Err(format!("<remove type={other:?} name={name:?}> is refused: not implemented")),
    })
}

/// An `<attribute>`: set (value or text), rename (`orgName`), or, without a value, keep the
/// files' (which matters under `<explicit/>`).
fn attribute(node: roxmltree::Node, variable: Option<&str>) -> Result<Edit, String> {
    let name = attr(node, "name")?;
    let variable = variable.map(str::to_string);
    let text = node.attribute("value").map(str::to_string).or_else(|| node.text().map(str::to_string));
    if let (Some(old), None) = (node.attribute("orgName"), &text) {
        return Ok(Edit::RenameAttribute { variable, from: old.to_string(), to: name });
    }
    if node.attribute("orgName").is_some() {
        return Err(format!("attribute {name}: orgName together with a value is refused (rename, or set)"));
    }
    let Some(text) = text else { return Ok(Edit::SetAttribute { variable, name, value: Value::Null }) };
    let kind = node.attribute("type").unwrap_or("String");
    let numeric =
        matches!(kind, "double" | "float" | "int" | "short" | "long" | "byte" | "ubyte" | "ushort" | "uint" | "ulong");
    if !numeric && !matches!(kind, "String" | "string") {
        return Err(format!("attribute {name}: type {kind:?} is refused (numbers and String are implemented)"));
    }
    let value = if numeric {
        let sep = node.attribute("separator").filter(|s| !s.is_empty());
        let items: Vec<&str> = match sep {
            Some(s) => text.split(s).collect(),
            None => text.split(|c: char| c.is_whitespace() || c == ',').filter(|s| !s.is_empty()).collect(),
        };
        let integer = !matches!(kind, "double" | "float");
        let one = |s: &str| -> Result<Value, String> {
            let s = s.trim();
            if integer {
                s.parse::<i64>().map(Value::from).map_err(|_| format!("attribute {name}: {s:?} is not an integer"))
            } else {
                let x = s.parse::<f64>().map_err(|_| format!("attribute {name}: {s:?} is not a number"))?;
                Ok(Value::from(x))
            }
        };
        match items.as_slice() {
            [x] => one(x)?,
            xs => Value::Array(xs.iter().map(|x| one(x)).collect::<Result<_, _>>()?),
        }
    } else {
        Value::from(text)
    };
    Ok(Edit::SetAttribute { variable, name, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/joins.md lists the same table, row for row.
    #[test]
    fn the_docs_table_is_this_table() {
        let docs = include_str!("../../docs/joins.md");
        let rows: Vec<(String, String, String)> = docs
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.strip_prefix("| `<")?.strip_suffix(" |")?.split(" | ").collect();
                let [el, at, status] = cells.as_slice() else { return None };
                Some((el.trim_end_matches(">`").to_string(), at.trim_matches('`').to_string(), status.to_string()))
            })
            .collect();
        let ours: Vec<(String, String, String)> =
            SUPPORT.iter().map(|(e, a, s)| (e.to_string(), a.to_string(), s.to_string())).collect();
        assert_eq!(rows, ours);
    }

    #[test]
    fn refused_and_unknown_names_are_named() {
        let files = vec!["d/a.nc".to_string()];
        let wrap = |body: &str| {
            format!(r#"<netcdf xmlns="http://www.unidata.ucar.edu/namespaces/netcdf/ncml-2.2">{body}</netcdf>"#)
        };
        let err = |body: &str| parse(&wrap(body), "d", &files).unwrap_err();
        assert!(err(r#"<aggregation type="union"><netcdf location="a.nc" section="0:1"/></aggregation>"#)
            .contains("<netcdf section> is refused"));
        assert!(err(r#"<bogus/>"#).contains("<bogus> is not an NcML 2.2 element"));
        assert!(err(r#"<variable name="x" colour="red"/>"#).contains("<variable colour>"));
        assert!(err(r#"<aggregation type="tiled" dimName="x"><netcdf location="a.nc"/></aggregation>"#)
            .contains("\"tiled\" is refused"));
        let (node, edits) = parse(&wrap(r#"<dimension name="x" length="2"/><variable name="x" type="int" shape="x"><values start="1" increment="2"/></variable>"#), "d", &files).unwrap();
        assert!(matches!(node, NcNode::Empty));
        assert_eq!(edits.len(), 2);
    }
}
