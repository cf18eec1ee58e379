//! `response_format: {"type": "json_schema"}`: a JSON Schema compiled into the node graph that
//! [`crate::json_schema_state`] walks byte by byte, so that decoding can only write a document the
//! schema accepts (OpenAI's structured outputs; vLLM's guided JSON).
//!
//! The subset is the one structured-output clients send (the OpenAI SDK's pydantic schemas
//! included):
//! - `type` (one name or a list), `enum`, `const`, `anyOf` / `oneOf`, a one-element `allOf`;
//!   the alternatives of an `anyOf` (or a type list) must start with different bytes (an object
//!   and `null`, a string and a number), except objects whose first properties are required and
//!   differ: their first key picks one;
//! - `properties` and `required` (properties are written in the schema's order, optional ones
//!   may be left out), `additionalProperties` (only the listed properties are written; an object
//!   schema without `properties` takes any object unless `additionalProperties` is `false`);
//! - `items`, `minItems`, `maxItems`;
//! - on integers and numbers, `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum` and
//!   `multipleOf` (on integers a whole one; a number with a whole one is written as an integer,
//!   since every multiple of a whole number is one, and with a fractional `a · 10^-p` in at most
//!   `p` fraction digits) ([`crate::json_schema_int`], [`crate::json_schema_num`]: no digit that
//!   leads out of the range, or away from every multiple, is written);
//! - on strings, `minLength` and `maxLength` (in code points, as JSON Schema counts them; no
//!   character past the maximum, no closing quote before the minimum) and `pattern` (a DFA of
//!   the decoded text: no byte after which it cannot match; [`crate::json_schema_str`]);
//! - `$ref` to `#`, `#/$defs/…` or `#/definitions/…`, recursion included;
//! - annotations, which change nothing: `title`, `description`, `default`, `examples`,
//!   `$schema`, `$id`, `$comment`, `readOnly`, `writeOnly`, `deprecated`, and `format` (an
//!   annotation unless a schema opts into format assertions, JSON Schema 2020-12 §7.2).
//!
//! Any other keyword (`uniqueItems`, `minProperties`, …), or a pattern beyond a DFA
//! (look-around, back-references), is refused by name by [`JsonSchema::compile`] rather than
//! ignored, since the output could then break it: what a `strict` schema needs.
//! [`JsonSchema::compile_best_effort`], for OpenAI's non-strict schemas (which promise no more),
//! passes over the keywords that only narrow a value's range (`NARROWING`) where it cannot
//! enforce them, and holds the output to the rest. The root must be an object.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::json_schema_first::{first_bytes, keyed_objects};
use crate::json_schema_int::{whole_step, IntRange, BOUNDS};
use crate::json_schema_num::NumRange;
use crate::json_schema_str::{Pattern, StrRule};

/// Index of a node in [`Compiled::nodes`].
pub(crate) type NodeId = u16;

/// The longest chain of references and unions before a value starts.
pub(crate) const MAX_CHAIN: usize = 256;

/// The most properties an object, or literals an `enum`, may list (a bit set tracks them).
pub(crate) const MAX_CHOICES: usize = 64;

#[derive(Debug)]
pub(crate) enum Node {
    /// Any JSON value; `object_only`: any JSON object.
    Any {
        object_only: bool,
    },
    String,
    /// A string with `minLength`, `maxLength` or a `pattern` ([`crate::json_schema_str`]).
    BoundedString(StrRule),
    Number {
        integer: bool,
    },
    /// An integer within bounds.
    Integer(IntRange),
    /// A number within bounds, written without an exponent.
    BoundedNumber(NumRange),
    /// One of these JSON texts, compact: `enum`, `const`, `boolean`, `null`.
    Literals(Vec<Box<[u8]>>),
    /// The properties in the order they are written.
    Object(Vec<Prop>),
    Array {
        items: NodeId,
        min: u32,
        max: u32,
    },
    /// One of the alternatives, picked by the value's first byte.
    Union(Vec<NodeId>),
}

#[derive(Debug)]
pub(crate) struct Prop {
    /// The key as a JSON string, quotes included.
    pub key: Box<[u8]>,
    pub value: NodeId,
    pub required: bool,
}

/// The compiled graph and each node's set of first bytes.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub nodes: Vec<Node>,
    pub root: NodeId,
    first: Vec<[u64; 4]>,
    /// Per node, [`keyed_objects`] of a union's alternatives: empty unless the union has
    /// objects told apart by their first key.
    pub keyed: Vec<Vec<Option<NodeId>>>,
    /// The strings' patterns ([`StrRule::pattern`] indexes them).
    pub patterns: Vec<Pattern>,
}

impl Compiled {
    /// Whether a value of `node` may start with `b`.
    pub fn starts(&self, node: NodeId, b: u8) -> bool {
        self.first[node as usize][(b >> 6) as usize] & (1 << (b & 63)) != 0
    }
}

/// A compiled JSON Schema, cheap to clone (shared by every choice of a request).
#[derive(Debug, Clone)]
pub struct JsonSchema(pub(crate) Arc<Compiled>);

impl PartialEq for JsonSchema {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl JsonSchema {
    /// Whether `text` is one whole document of the schema: what a choice held to it has written
    /// when only EOS may follow.
    pub fn matches(&self, text: &[u8]) -> bool {
        let mut state = crate::json_schema_state::SchemaState::new(&self.0);
        state.feed(&self.0, text) && state.is_done()
    }

    /// Compiles `schema`; the error says which keyword or part of it is not supported.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        Self::compile_with(schema, false)
    }

    /// [`Self::compile`], but the keywords that only narrow a value's range (`NARROWING`) are
    /// passed over instead of refused where they cannot be enforced (`uniqueItems`, an integer's
    /// fractional `multipleOf`, a pattern beyond a DFA, …): the output has the schema's structure
    /// (types, properties, enums) and may break those. Bounds, lengths and patterns that compile
    /// are enforced as in strict schemas. For OpenAI's non-strict schemas, which promise no more.
    pub fn compile_best_effort(schema: &Value) -> Result<Self, String> {
        Self::compile_with(schema, true)
    }

    fn compile_with(schema: &Value, best_effort: bool) -> Result<Self, String> {
        let mut c = Compiler {
            root: schema,
            nodes: Vec::new(),
            refs: HashMap::new(),
            best_effort,
            patterns: Vec::new(),
            pattern_tries: 0,
            pattern_bytes: 0,
        };
        let root = c.node(schema, "#")?;
        let nodes: Vec<Node> = c.nodes.into_iter().map(|n| n.expect("filled")).collect();
        let keyed: Vec<Vec<Option<NodeId>>> = nodes
            .iter()
            .map(|n| match n {
                Node::Union(alts) => keyed_objects(&nodes, alts),
                _ => Vec::new(),
            })
            .collect();
        let mut first = vec![None; nodes.len()];
        for id in 0..nodes.len() {
            first_bytes((&nodes, &keyed), id as NodeId, &mut first, 0)?;
        }
        let first: Vec<[u64; 4]> = first.into_iter().map(|f| f.expect("computed")).collect();
        let compiled = Compiled {
            nodes,
            root,
            first,
            keyed,
            patterns: c.patterns,
        };
        if (0..=255u8).any(|b| b != b'{' && compiled.starts(root, b)) {
            return Err("the root must be an object schema".into());
        }
        Ok(Self(Arc::new(compiled)))
    }
}

const ANNOTATIONS: [&str; 11] = [
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "format",
    "readOnly",
    "writeOnly",
    "deprecated",
];

/// Assertions that only narrow the values of a type the schema already gives (dropping one
/// admits more documents, never fewer): [`JsonSchema::compile_best_effort`] passes over those it
/// cannot enforce.
pub(crate) const NARROWING: [&str; 13] = [
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "contentEncoding",
    "contentMediaType",
];

struct Compiler<'a> {
    root: &'a Value,
    /// `None` while a node is being compiled (a `$ref` to it may already use its id).
    nodes: Vec<Option<Node>>,
    refs: HashMap<String, NodeId>,
    /// [`NARROWING`] keywords are passed over like annotations.
    best_effort: bool,
    patterns: Vec<Pattern>,
    /// Patterns compiled (or tried) so far, and their DFAs' bytes.
    pattern_tries: usize,
    pattern_bytes: usize,
}

/// The most patterns a schema may hold, and the most memory their DFAs may take together: each
/// request compiles its own schema.
const MAX_PATTERNS: usize = 16;
const PATTERN_BYTES: usize = 8 << 20;

impl<'a> Compiler<'a> {
    fn reserve(&mut self) -> Result<NodeId, String> {
        let id = NodeId::try_from(self.nodes.len()).map_err(|_| "the schema is too large")?;
        self.nodes.push(None);
        Ok(id)
    }

    fn add(&mut self, node: Node) -> Result<NodeId, String> {
        let id = self.reserve()?;
        self.nodes[id as usize] = Some(node);
        Ok(id)
    }

    /// A keyword that changes nothing here: an annotation, or (best effort) a narrowing one.
    fn passed_over(&self, key: &str) -> bool {
        ANNOTATIONS.contains(&key) || (self.best_effort && NARROWING.contains(&key))
    }

    /// Compiles the schema `v` found at `path` (for error messages).
    fn node(&mut self, v: &'a Value, path: &str) -> Result<NodeId, String> {
        let map = match v {
            Value::Bool(true) => return self.add(Node::Any { object_only: false }),
            Value::Object(m) => m,
            _ => return Err(format!("{path}: a schema must be an object or true")),
        };
        for key in map.keys() {
            let known = matches!(
                key.as_str(),
                "type"
                    | "properties"
                    | "required"
                    | "additionalProperties"
                    | "items"
                    | "minItems"
                    | "maxItems"
                    | "enum"
                    | "const"
                    | "anyOf"
                    | "oneOf"
                    | "allOf"
                    | "$ref"
                    | "$defs"
                    | "definitions"
            ) || self.passed_over(key)
                || (BOUNDS.contains(&key.as_str()) && only_of(map, &["integer", "number"]))
                || (STRING_RULES.contains(&key.as_str()) && only_of(map, &["string"]))
                || (key == "multipleOf" && only_of(map, &["integer", "number"]));
            if !known {
                return Err(format!("{path}: keyword '{key}' is not supported"));
            }
        }
        // Keywords that replace the rest: refused where they would be combined with others.
        let structural = |except: &str| {
            map.keys()
                .any(|k| k != except && k != "$defs" && k != "definitions" && !self.passed_over(k))
        };
        if let Some(r) = map.get("$ref") {
            if structural("$ref") {
                return Err(format!(
                    "{path}: '$ref' next to other keywords is not supported"
                ));
            }
            let r = r.as_str().ok_or(format!("{path}/$ref: must be a string"))?;
            return self.reference(r);
        }
        for kw in ["anyOf", "oneOf"] {
            if let Some(alts) = map.get(kw) {
                if structural(kw) {
                    return Err(format!(
                        "{path}: '{kw}' next to other keywords is not supported"
                    ));
                }
                let alts = alts.as_array().filter(|a| !a.is_empty());
                let alts = alts.ok_or(format!("{path}/{kw}: must be a non-empty array"))?;
                let ids = alts
                    .iter()
                    .enumerate()
                    .map(|(i, a)| self.node(a, &format!("{path}/{kw}/{i}")))
                    .collect::<Result<Vec<_>, _>>()?;
                return self.add(Node::Union(ids));
            }
        }
        if let Some(all) = map.get("allOf") {
            return match all.as_array().map(Vec::as_slice) {
                Some([one]) if !structural("allOf") => self.node(one, &format!("{path}/allOf/0")),
                _ => Err(format!(
                    "{path}/allOf: only one schema, with no other keywords, is supported"
                )),
            };
        }
        if let Some(values) = map.get("enum") {
            let values = values.as_array().filter(|a| !a.is_empty());
            let values = values.ok_or(format!("{path}/enum: must be a non-empty array"))?;
            return self.literals(values.iter(), &format!("{path}/enum"));
        }
        if let Some(value) = map.get("const") {
            return self.literals(std::iter::once(value), &format!("{path}/const"));
        }
        match map.get("type") {
            // Without `type`, object or array keywords make it one (their constraints would
            // otherwise go unenforced on a free value; a value of that kind is valid either way).
            None if ["properties", "required", "additionalProperties"]
                .iter()
                .any(|k| map.contains_key(*k)) =>
            {
                self.typed("object", map, path)
            }
            None if ["items", "minItems", "maxItems"]
                .iter()
                .any(|k| map.contains_key(*k)) =>
            {
                self.typed("array", map, path)
            }
            None => self.add(Node::Any { object_only: false }),
            Some(Value::String(t)) => self.typed(t, map, path),
            Some(Value::Array(types)) if !types.is_empty() => {
                let ids = types
                    .iter()
                    .map(|t| {
                        let t = t
                            .as_str()
                            .ok_or(format!("{path}/type: names are strings"))?;
                        self.typed(t, map, path)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.add(Node::Union(ids))
            }
            Some(_) => Err(format!("{path}/type: must be a name or a list of names")),
        }
    }

    fn typed(
        &mut self,
        t: &str,
        map: &'a Map<String, Value>,
        path: &str,
    ) -> Result<NodeId, String> {
        match t {
            "string" => {
                let min = count(map, "minLength", path)?;
                let max = count(map, "maxLength", path)?;
                let pattern = self.pattern(map, path)?;
                if min.is_none() && max.is_none() && pattern.is_none() {
                    return self.add(Node::String);
                }
                let (min, max) = (min.unwrap_or(0), max.unwrap_or(u32::MAX));
                if min > max {
                    return Err(format!("{path}: minLength is above maxLength"));
                }
                self.add(Node::BoundedString(StrRule { min, max, pattern }))
            }
            // Every multiple of a whole number is an integer: written as one, in the bounds.
            "number" if map.get("multipleOf").and_then(whole_step).is_some() => {
                match IntRange::of(map, path, self.best_effort)? {
                    Some(range) => self.add(Node::Integer(range)),
                    None => self.add(Node::Number { integer: true }),
                }
            }
            "number" => match NumRange::of(map, path, self.best_effort)? {
                Some(range) => self.add(Node::BoundedNumber(range)),
                None => self.add(Node::Number { integer: false }),
            },
            "integer" => match IntRange::of(map, path, self.best_effort)? {
                Some(range) => self.add(Node::Integer(range)),
                None => self.add(Node::Number { integer: true }),
            },
            "boolean" => self.add(Node::Literals(vec![
                b"true".as_slice().into(),
                b"false".as_slice().into(),
            ])),
            "null" => self.add(Node::Literals(vec![b"null".as_slice().into()])),
            "object" => self.object(map, path),
            "array" => {
                let min = count(map, "minItems", path)?.unwrap_or(0);
                let max = count(map, "maxItems", path)?.unwrap_or(u32::MAX);
                if min > max {
                    return Err(format!("{path}: minItems is above maxItems"));
                }
                let id = self.reserve()?;
                let items = match map.get("items") {
                    Some(items) => self.node(items, &format!("{path}/items"))?,
                    None => self.add(Node::Any { object_only: false })?,
                };
                self.nodes[id as usize] = Some(Node::Array { items, min, max });
                Ok(id)
            }
            other => Err(format!("{path}/type: unknown type '{other}'")),
        }
    }

    /// The string's `pattern`, compiled, as an index into the patterns. Best effort passes over
    /// one it cannot compile; strict refuses it.
    fn pattern(&mut self, map: &Map<String, Value>, path: &str) -> Result<Option<u16>, String> {
        let Some(p) = map.get("pattern") else {
            return Ok(None);
        };
        let p = p
            .as_str()
            .ok_or(format!("{path}/pattern: must be a string"))?;
        // Compiling is the costly part (a refused pattern too): bounded per schema in both modes.
        self.pattern_tries += 1;
        if self.pattern_tries > MAX_PATTERNS {
            return Err(format!(
                "{path}: at most {MAX_PATTERNS} patterns per schema are supported"
            ));
        }
        match Pattern::compile(p) {
            Ok(pattern) => {
                self.pattern_bytes += pattern.memory_usage();
                if self.pattern_bytes > PATTERN_BYTES {
                    return Err(format!(
                        "{path}: the schema's patterns compile to more than {} MB",
                        PATTERN_BYTES >> 20
                    ));
                }
                let id = self.patterns.len() as u16; // At most MAX_PATTERNS.
                self.patterns.push(pattern);
                Ok(Some(id))
            }
            Err(_) if self.best_effort => Ok(None),
            Err(e) => Err(format!("{path}: {e}")),
        }
    }

    fn object(&mut self, map: &'a Map<String, Value>, path: &str) -> Result<NodeId, String> {
        let closed = map.get("additionalProperties") == Some(&Value::Bool(false));
        match map.get("additionalProperties") {
            None | Some(Value::Bool(_)) => {}
            Some(Value::Object(o)) if o.is_empty() => {}
            Some(_) => {
                return Err(format!(
                    "{path}/additionalProperties: only true, false or {{}} are supported"
                ))
            }
        }
        let Some(props) = map.get("properties") else {
            return match closed {
                true => self.add(Node::Object(Vec::new())),
                false => self.add(Node::Any { object_only: true }),
            };
        };
        let props = props
            .as_object()
            .ok_or(format!("{path}/properties: must be an object"))?;
        if props.len() > MAX_CHOICES {
            return Err(format!(
                "{path}: at most {MAX_CHOICES} properties are supported"
            ));
        }
        let required: Vec<&str> = match map.get("required") {
            None => Vec::new(),
            Some(Value::Array(r)) => r
                .iter()
                .map(|n| {
                    n.as_str()
                        .ok_or(format!("{path}/required: names are strings"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(format!("{path}/required: must be an array")),
        };
        if let Some(missing) = required.iter().find(|r| !props.contains_key(**r)) {
            return Err(format!(
                "{path}/required: '{missing}' is not in properties (only listed properties are written)"
            ));
        }
        let id = self.reserve()?;
        let mut list = Vec::with_capacity(props.len());
        for (name, schema) in props {
            let value = self.node(schema, &format!("{path}/properties/{name}"))?;
            list.push(Prop {
                key: serde_json::to_vec(name)
                    .expect("a string serialises")
                    .into(),
                value,
                required: required.contains(&name.as_str()),
            });
        }
        self.nodes[id as usize] = Some(Node::Object(list));
        Ok(id)
    }

    fn literals<'v>(
        &mut self,
        values: impl Iterator<Item = &'v Value>,
        path: &str,
    ) -> Result<NodeId, String> {
        let mut lits: Vec<Box<[u8]>> = Vec::new();
        for v in values {
            let text: Box<[u8]> = serde_json::to_vec(v).expect("a value serialises").into();
            if !lits.contains(&text) {
                lits.push(text);
            }
        }
        if lits.len() > MAX_CHOICES {
            return Err(format!(
                "{path}: at most {MAX_CHOICES} values are supported"
            ));
        }
        self.add(Node::Literals(lits))
    }

    /// A `$ref` within this document.
    fn reference(&mut self, r: &str) -> Result<NodeId, String> {
        if let Some(&id) = self.refs.get(r) {
            return Ok(id);
        }
        let target = if r == "#" {
            self.root
        } else {
            let name = r
                .strip_prefix("#/$defs/")
                .map(|n| ("$defs", n))
                .or_else(|| r.strip_prefix("#/definitions/").map(|n| ("definitions", n)));
            let (defs, name) = name.ok_or(format!(
                "$ref '{r}': only '#', '#/$defs/…' and '#/definitions/…' are supported"
            ))?;
            self.root
                .get(defs)
                .and_then(|d| d.get(name))
                .ok_or(format!("$ref '{r}': no such definition"))?
        };
        // The target's id is known before it is compiled, so that it may refer to itself.
        let id = self.reserve()?;
        self.refs.insert(r.to_owned(), id);
        let inner = self.node(target, r)?;
        self.nodes[id as usize] = Some(Node::Union(vec![inner]));
        Ok(id)
    }
}

/// Whether the schema's `type` is one of `types`, or a list of them (and maybe `null`).
fn only_of(map: &Map<String, Value>, types: &[&str]) -> bool {
    let listed = |t: &Value| types.iter().any(|n| t == *n);
    match map.get("type") {
        Some(t @ Value::String(_)) => listed(t),
        Some(Value::Array(list)) => {
            list.iter().any(listed) && list.iter().all(|t| listed(t) || t == "null")
        }
        _ => false,
    }
}

/// Keyword `k` of `map` as a count (`minItems`, `maxLength`, …), if there.
fn count(map: &Map<String, Value>, k: &str, path: &str) -> Result<Option<u32>, String> {
    map.get(k)
        .map(|v| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(format!("{path}/{k}: must be a count"))
        })
        .transpose()
}

/// The string keywords that are enforced ([`crate::json_schema_str`]).
const STRING_RULES: [&str; 3] = ["minLength", "maxLength", "pattern"];
