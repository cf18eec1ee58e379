//! What the compiler works out once per schema for [`crate::json_schema_state`]: each node's
//! set of first bytes (alternatives of a union must not share one), and the unions whose objects
//! are told apart by their first, required, key.

use crate::json_schema::{Node, NodeId, MAX_CHAIN, MAX_CHOICES};

/// Node `id`'s first bytes, memoised in `first`; alternatives of a union must not share one.
pub(crate) fn first_bytes(
    (nodes, keyed_all): (&[Node], &[Vec<Option<NodeId>>]),
    id: NodeId,
    first: &mut Vec<Option<[u64; 4]>>,
    depth: usize,
) -> Result<[u64; 4], String> {
    if let Some(f) = first[id as usize] {
        return Ok(f);
    }
    if depth > MAX_CHAIN {
        return Err(format!(
            "a $ref cycle never reaches a value, or references nest more than {MAX_CHAIN} deep"
        ));
    }
    let mut set = [0u64; 4];
    fn add(set: &mut [u64; 4], bytes: &[u8]) {
        for &b in bytes {
            set[(b >> 6) as usize] |= 1 << (b & 63);
        }
    }
    match &nodes[id as usize] {
        Node::Any { object_only: true } | Node::Object(_) => add(&mut set, b"{"),
        Node::Any { object_only: false } => add(&mut set, b"{[\"-0123456789tfn"),
        Node::String | Node::BoundedString(_) => add(&mut set, b"\""),
        Node::Number { .. } => add(&mut set, b"-0123456789"),
        Node::BoundedNumber(range) => {
            if range.reachable(true, &[], false, 0) {
                add(&mut set, b"-");
            }
            for d in 0..=9u8 {
                if range.reachable(false, &[d], false, 0) {
                    add(&mut set, &[b'0' + d]);
                }
            }
        }
        &Node::Integer(range) => {
            if range.reachable(true, 0, 0) {
                add(&mut set, b"-");
            }
            for d in 0..=9u8 {
                if range.reachable(false, u64::from(d), 1) {
                    add(&mut set, &[b'0' + d]);
                }
            }
        }
        Node::Literals(l) => l.iter().for_each(|t| add(&mut set, &t[..1])),
        Node::Array { .. } => add(&mut set, b"["),
        Node::Union(alts) => {
            // Objects whose first property is required are told apart by that key instead.
            let keyed = &keyed_all[id as usize];
            let mut keys: Vec<&[u8]> = Vec::new();
            let brace = |f: &[u64; 4]| f[(b'{' >> 6) as usize] & (1 << (b'{' & 63)) != 0;
            let mut other_brace = false;
            for (i, &alt) in alts.iter().enumerate() {
                let object = keyed.get(i).copied().flatten();
                let f = first_bytes((nodes, keyed_all), alt, first, depth + 1)?;
                other_brace |= object.is_none() && brace(&f);
                if other_brace && !keys.is_empty() {
                    return Err(
                        "anyOf: an alternative that may start with '{' besides objects \
                                told apart by their first property is not supported"
                            .into(),
                    );
                }
                if let Some(o) = object {
                    let Node::Object(props) = &nodes[o as usize] else {
                        unreachable!("keyed_objects returns objects")
                    };
                    if keys.contains(&&props[0].key[..]) {
                        return Err(format!(
                            "anyOf: two object alternatives start with the same required \
                             property {}; they must differ in their first property",
                            String::from_utf8_lossy(&props[0].key)
                        ));
                    }
                    keys.push(&props[0].key);
                    add(&mut set, b"{");
                    continue;
                }
                if f.iter().zip(&set).any(|(a, b)| a & b != 0) {
                    return Err(
                        "anyOf / type list: alternatives that start with the same byte (two \
                         strings, two arrays, …; objects must differ in their first, required, \
                         property) are not supported"
                            .into(),
                    );
                }
                set.iter_mut().zip(f).for_each(|(s, f)| *s |= f);
            }
            // The first key's candidates are a bit set over the alternatives.
            if !keys.is_empty() && alts.len() > MAX_CHOICES {
                return Err(format!(
                    "anyOf: at most {MAX_CHOICES} alternatives where objects are told apart by \
                     their first property"
                ));
            }
        }
    }
    first[id as usize] = Some(set);
    Ok(set)
}

/// For each alternative of a union: the object it is (through one-element unions, which `$ref`s
/// are) when that object's first property is required, so that its key tells it apart; `None`
/// for every other alternative. Empty when fewer than two alternatives are such objects (a single
/// object's `{` tells it apart).
pub(crate) fn keyed_objects(nodes: &[Node], alts: &[NodeId]) -> Vec<Option<NodeId>> {
    let object = |mut id: NodeId| -> Option<NodeId> {
        for _ in 0..MAX_CHAIN {
            match &nodes[id as usize] {
                Node::Union(inner) if inner.len() == 1 => id = inner[0],
                Node::Object(props) if props.first().is_some_and(|p| p.required) => {
                    return Some(id)
                }
                _ => return None,
            }
        }
        None
    };
    let found: Vec<Option<NodeId>> = alts.iter().map(|&a| object(a)).collect();
    if found.iter().flatten().count() < 2 {
        return Vec::new();
    }
    found
}
