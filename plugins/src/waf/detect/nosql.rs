//! NoSQL operator injection: a MongoDB-style query operator where a plain value was
//! expected.
//!
//! An operator only acts in key position: as a JSON key (`{"password": {"$ne": ""}}`, read
//! here as the key field `$ne`), in the bracket syntax that PHP, Express (`qs`) and Rails
//! turn into nested objects (`password[$ne]=`), or as a key of an object literal inside a
//! value (`{"$gt": ""}`, `{$where: ...}`). JSON Schema's own `$` keywords (`$ref`, `$schema`,
//! `$defs`, `$id`) are not operators: tool definitions on LLM routes are full of them.

use super::Detection;

/// Query and aggregation operators that change what a filter matches or run code.
const OPERATORS: &[&[u8]] = &[
    b"ne",
    b"eq",
    b"gt",
    b"gte",
    b"lt",
    b"lte",
    b"in",
    b"nin",
    b"regex",
    b"where",
    b"exists",
    b"expr",
    b"function",
    b"accumulator",
    b"or",
    b"and",
    b"nor",
    b"not",
    b"elemmatch",
    b"size",
    b"all",
    b"type",
    b"mod",
    b"text",
    b"jsonschema",
    b"lookup",
    b"merge",
    b"out",
    b"options",
    b"comment",
];

/// The operator name starting at `s[0]` (after its `$`), if it is one and ends there.
fn operator_at(s: &[u8]) -> Option<usize> {
    let len = s
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count();
    let name = s[..len].to_ascii_lowercase();
    OPERATORS.contains(&name.as_slice()).then_some(len)
}

/// Finds an operator in key position in `input` (the `decoded` form of a name or value).
pub fn detect(input: &[u8]) -> Option<Detection> {
    for at in memchr::memchr_iter(b'$', input) {
        let Some(len) = operator_at(&input[at + 1..]) else {
            continue;
        };
        let end = at + 1 + len;
        let before = input[..at]
            .iter()
            .rev()
            .find(|b| !b.is_ascii_whitespace() && **b != b'"' && **b != b'\'');
        let after = input[end..]
            .iter()
            .find(|b| !b.is_ascii_whitespace() && **b != b'"' && **b != b'\'');
        let whole = input[..at]
            .iter()
            .all(|b| b.is_ascii_whitespace() || *b == b'"')
            && input[end..]
                .iter()
                .all(|b| b.is_ascii_whitespace() || *b == b'"');
        let why = if before == Some(&b'[') && after == Some(&b']') {
            "an operator in bracket syntax, which the server turns into an object key"
        } else if matches!(before, Some(b'{' | b',')) && after == Some(&b':') {
            "an operator as the key of an object inside a value"
        } else if whole {
            "an operator as a JSON key"
        } else {
            continue;
        };
        return Some(Detection {
            at,
            len: end - at,
            why,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waf::detect::expect;

    #[test]
    fn operators_in_key_position_are_found() {
        expect::finds(
            detect,
            &[
                "password[$ne]",
                "user[$regex]",
                "a[ $gt ]",
                "$where",
                "\"$ne\"",
                "{\"$gt\": \"\"}",
                "{$where: 'sleep(100)'}",
                "{\"a\":1, \"$or\": [{}]}",
                "filter[$expr]",
                "$nin",
            ],
        );
    }

    #[test]
    fn dollars_and_schema_keywords_are_left_alone() {
        expect::passes(
            detect,
            &[
                "$ref",
                "$schema",
                "$defs",
                "it costs $5 in total",
                "price[$usd]",
                "the $ne operator",
                "{\"amount\": \"$gt\"}",
                "$",
                "a$ne",
            ],
        );
    }

    #[test]
    fn hostile_input_is_bounded() {
        expect::bounded(
            detect,
            &[
                "$ne".repeat(30_000),
                "[$".repeat(50_000),
                " ".repeat(50_000) + "$ne",
            ],
        );
    }
}
