//! Redacts the values of Secrets in API responses as they stream: a list item by item,
//! a watch event by event, never the whole body at once.
//!
//! No streaming JSON crate here rewrites values in place while copying the rest, so
//! this is a small hand-written scanner (after Teleport's streaming list filter): it
//! tracks strings, escapes and depth, cuts the body into units (each member of the top
//! object, each element of a top-level array such as `items` or a Table's `rows`,
//! each watch event), parses each unit alone with serde_json and masks it. A unit
//! larger than the cap, or one that does not parse, is withheld (fail closed) and
//! counted. Memory is bounded by the cap, whatever the list's length.
//!
//! Masked: every value of a `data` or `stringData` map (replaced by the base64 of
//! [`MASKED_TEXT`], so typed clients still decode it) and the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation, which carries a
//! copy of what was applied.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::Value;

/// What a masked value reads as, once base64-decoded.
pub const MASKED_TEXT: &str = "sluice:masked";
/// The annotation `kubectl apply` stores the applied object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The largest unit (one item, one event, one member) inspected; above it the unit is
/// withheld.
pub const DEFAULT_UNIT_CAP: usize = 4 * 1024 * 1024;

/// Masks one parsed JSON value in place; returns how many values were masked.
pub fn mask_value(value: &mut Value, key: Option<&str>) -> u64 {
    let mut count = 0;
    match (key, value) {
        (Some("data" | "stringData"), Value::Object(map)) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(MASKED_TEXT);
            for (_, entry) in map.iter_mut() {
                *entry = Value::String(encoded.clone());
                count += 1;
            }
        }
        (Some("annotations"), Value::Object(map)) => {
            if let Some(entry) = map.get_mut(LAST_APPLIED) {
                *entry = Value::String(MASKED_TEXT.into());
                count += 1;
            }
        }
        (_, Value::Object(map)) => {
            for (name, entry) in map.iter_mut() {
                count += mask_value(entry, Some(name));
            }
        }
        (_, Value::Array(items)) => {
            for item in items {
                count += mask_value(item, None);
            }
        }
        _ => {}
    }
    count
}

/// The shape of the body being filtered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One JSON document (a get or a list, a Table, a Status).
    Document,
    /// A watch: JSON events one after another.
    Events,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Before the top-level `{` (document) or between events.
    Outside,
    /// In the top object, expecting a key, `,` or `}`.
    BeforeKey,
    InKey,
    AfterKey,
    /// A member value being collected.
    InMember,
    /// Inside a top-level array: expecting an element, `,` or `]`.
    InArray,
    /// An array element (or a watch event) being collected.
    InElement,
    /// After the document's last `}`.
    Done,
}

/// The streaming filter.
pub struct SecretFilter {
    shape: Shape,
    cap: usize,
    place: Place,
    /// The unit being collected (a key, a member, an element, an event).
    unit: Vec<u8>,
    /// Bytes of the current unit seen, even when no longer kept (over the cap).
    unit_len: usize,
    key: String,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Whether the current top object or array already holds an emitted entry.
    wrote_member: bool,
    wrote_element: bool,
    pub masked: u64,
    pub withheld: u64,
}

impl SecretFilter {
    pub fn new(shape: Shape, cap: usize) -> Self {
        Self {
            shape,
            cap,
            place: Place::Outside,
            unit: Vec::new(),
            unit_len: 0,
            key: String::new(),
            depth: 0,
            in_string: false,
            escaped: false,
            wrote_member: false,
            wrote_element: false,
            masked: 0,
            withheld: 0,
        }
    }

    fn keep(&mut self, byte: u8) {
        self.unit_len += 1;
        if self.unit_len <= self.cap {
            self.unit.push(byte);
        }
    }

    /// Tracks strings and nesting of a unit being collected; true when it just ended.
    fn scan(&mut self, byte: u8) -> bool {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if byte == b'\\' {
                self.escaped = true;
            } else if byte == b'"' {
                self.in_string = false;
                return self.depth == 0;
            }
            return false;
        }
        match byte {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                return self.depth == 0;
            }
            _ => {}
        }
        false
    }

    /// The collected unit, parsed and masked; `None` when withheld.
    fn finish_unit(&mut self, key: Option<&str>) -> Option<Vec<u8>> {
        let over = self.unit_len > self.cap;
        let unit = std::mem::take(&mut self.unit);
        self.unit_len = 0;
        if over {
            self.withheld += 1;
            return None;
        }
        match serde_json::from_slice::<Value>(&unit) {
            Ok(mut value) => {
                self.masked += mask_value(&mut value, key);
                serde_json::to_vec(&value).ok()
            }
            Err(_) => {
                self.withheld += 1;
                None
            }
        }
    }

    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &byte in chunk {
            self.step(byte, &mut out);
        }
        out
    }

    fn step(&mut self, byte: u8, out: &mut Vec<u8>) {
        match self.place {
            Place::Done => {}
            Place::Outside => match (self.shape, byte) {
                (_, b' ' | b'\t' | b'\r' | b'\n') => {
                    if self.shape == Shape::Events {
                        out.push(byte);
                    }
                }
                (Shape::Document, b'{') => {
                    out.push(b'{');
                    self.place = Place::BeforeKey;
                    self.wrote_member = false;
                }
                (Shape::Events, _) => {
                    self.place = Place::InElement;
                    self.depth = 0;
                    self.keep(byte);
                    if self.scan(byte) {
                        self.end_event(out);
                    }
                }
                // Not an object: withheld whole.
                (Shape::Document, _) => {
                    self.withheld += 1;
                    self.place = Place::Done;
                }
            },
            Place::BeforeKey => match byte {
                b'"' => {
                    self.place = Place::InKey;
                    self.unit.clear();
                    self.unit.push(b'"');
                    self.escaped = false;
                }
                b'}' => {
                    out.push(b'}');
                    self.place = Place::Done;
                }
                _ => {}
            },
            Place::InKey => {
                self.unit.push(byte);
                if self.escaped {
                    self.escaped = false;
                } else if byte == b'\\' {
                    self.escaped = true;
                } else if byte == b'"' {
                    self.key = serde_json::from_slice(&self.unit).unwrap_or_default();
                    self.unit.clear();
                    self.place = Place::AfterKey;
                }
            }
            Place::AfterKey => match byte {
                b':' | b' ' | b'\t' | b'\r' | b'\n' => {}
                b'[' => {
                    if self.wrote_member {
                        out.push(b',');
                    }
                    self.wrote_member = true;
                    out.extend_from_slice(&serde_json::to_vec(&self.key).unwrap_or_default());
                    out.extend_from_slice(b":[");
                    self.place = Place::InArray;
                    self.wrote_element = false;
                }
                _ => {
                    self.place = Place::InMember;
                    self.depth = 0;
                    self.in_string = false;
                    self.keep(byte);
                    if self.scan(byte) {
                        self.end_member(out);
                    }
                }
            },
            Place::InMember => {
                // A scalar ends at the `,` or `}` after it.
                if self.depth == 0 && !self.in_string && matches!(byte, b',' | b'}') {
                    self.end_member(out);
                    if byte == b'}' {
                        out.push(b'}');
                        self.place = Place::Done;
                    }
                    return;
                }
                self.keep(byte);
                if self.scan(byte) {
                    self.end_member(out);
                }
            }
            Place::InArray => match byte {
                b']' => {
                    out.push(b']');
                    self.place = Place::BeforeKey;
                }
                b',' | b' ' | b'\t' | b'\r' | b'\n' => {}
                _ => {
                    self.place = Place::InElement;
                    self.depth = 0;
                    self.in_string = false;
                    self.keep(byte);
                    if self.scan(byte) {
                        self.end_element(out);
                    }
                }
            },
            Place::InElement => {
                if self.shape == Shape::Document
                    && self.depth == 0
                    && !self.in_string
                    && matches!(byte, b',' | b']')
                {
                    self.end_element(out);
                    if byte == b']' {
                        out.push(b']');
                        self.place = Place::BeforeKey;
                    }
                    return;
                }
                self.keep(byte);
                if self.scan(byte) {
                    match self.shape {
                        Shape::Document => self.end_element(out),
                        Shape::Events => self.end_event(out),
                    }
                }
            }
        }
    }

    fn end_member(&mut self, out: &mut Vec<u8>) {
        let key = std::mem::take(&mut self.key);
        let value = self
            .finish_unit(Some(&key))
            .unwrap_or_else(|| b"null".to_vec());
        if self.wrote_member {
            out.push(b',');
        }
        self.wrote_member = true;
        out.extend_from_slice(&serde_json::to_vec(&key).unwrap_or_default());
        out.push(b':');
        out.extend_from_slice(&value);
        self.place = Place::BeforeKey;
    }

    fn end_element(&mut self, out: &mut Vec<u8>) {
        if let Some(element) = self.finish_unit(None) {
            if self.wrote_element {
                out.push(b',');
            }
            self.wrote_element = true;
            out.extend_from_slice(&element);
        }
        self.place = Place::InArray;
    }

    fn end_event(&mut self, out: &mut Vec<u8>) {
        if let Some(event) = self.finish_unit(None) {
            out.extend_from_slice(&event);
        }
        self.place = Place::Outside;
    }

    /// The end of the body: an unfinished unit is withheld.
    pub fn finish(&mut self) -> Vec<u8> {
        if !matches!(self.place, Place::Outside | Place::Done) || !self.unit.is_empty() {
            self.withheld += 1;
            self.unit.clear();
        }
        self.place = Place::Done;
        Vec::new()
    }

    pub fn counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        if self.masked > 0 {
            counts.insert("secret_values".into(), self.masked);
        }
        if self.withheld > 0 {
            counts.insert("withheld".into(), self.withheld);
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_in_chunks(
        shape: Shape,
        body: &[u8],
        chunk: usize,
        cap: usize,
    ) -> (Vec<u8>, SecretFilter) {
        let mut filter = SecretFilter::new(shape, cap);
        let mut out = Vec::new();
        for piece in body.chunks(chunk.max(1)) {
            out.extend(filter.push(piece));
        }
        out.extend(filter.finish());
        (out, filter)
    }

    fn masked_b64() -> String {
        base64::engine::general_purpose::STANDARD.encode(MASKED_TEXT)
    }

    #[test]
    fn a_single_secret_is_masked_whatever_the_chunking() {
        let body = br#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"db","annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"data\":{\"password\":\"aHVudGVyMg==\"}}","team":"shop"}},"data":{"password":"aHVudGVyMg==","user":"YWRtaW4="},"type":"Opaque","immutable":false}"#;
        for chunk in [1, 2, 7, 64, body.len()] {
            let (out, filter) = filter_in_chunks(Shape::Document, body, chunk, DEFAULT_UNIT_CAP);
            let text = String::from_utf8(out).expect("utf-8");
            assert!(!text.contains("aHVudGVyMg=="), "{chunk}: {text}");
            assert!(!text.contains("YWRtaW4="), "{chunk}: {text}");
            let value: Value = serde_json::from_str(&text).expect("still JSON");
            assert_eq!(value["data"]["password"], masked_b64());
            assert_eq!(value["metadata"]["annotations"]["team"], "shop");
            assert_eq!(value["type"], "Opaque");
            assert_eq!(value["immutable"], false);
            assert_eq!(filter.masked, 3);
            assert_eq!(filter.withheld, 0);
        }
    }

    #[test]
    fn a_list_is_masked_item_by_item_and_bad_items_are_withheld() {
        let body = br#"{"kind":"SecretList","apiVersion":"v1","metadata":{"resourceVersion":"7"},"items":[{"metadata":{"name":"a"},"data":{"k":"c2VjcmV0"}} , {"metadata":{"name":"b"},"stringData":{"k":"plain"}},{"metadata":{"name":"big"},"data":{"k":"QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB"}}]}"#;
        let (out, filter) = filter_in_chunks(Shape::Document, body, 5, 80);
        let value: Value = serde_json::from_slice(&out).expect("JSON");
        let items = value["items"].as_array().expect("items");
        assert_eq!(items.len(), 2, "the oversized item is withheld: {value}");
        assert_eq!(items[0]["data"]["k"], masked_b64());
        assert_eq!(items[1]["stringData"]["k"], masked_b64());
        assert_eq!(value["metadata"]["resourceVersion"], "7");
        assert_eq!(filter.withheld, 1);
        assert_eq!(filter.masked, 2);
    }

    #[test]
    fn watch_events_are_masked_one_by_one() {
        let body = b"{\"type\":\"ADDED\",\"object\":{\"kind\":\"Secret\",\"data\":{\"k\":\"c2VjcmV0\"}}}\n{\"type\":\"BROKEN\",\"object\":{\"data\":{\"k\":c2VjcmV0}}}\n{\"type\":\"DELETED\",\"object\":{\"kind\":\"Secret\",\"data\":{\"k\":\"c2VjcmV0\"}}}\n";
        let (out, filter) = filter_in_chunks(Shape::Events, body, 3, DEFAULT_UNIT_CAP);
        let text = String::from_utf8(out).expect("utf-8");
        assert!(!text.contains("c2VjcmV0"), "{text}");
        let events: Vec<Value> = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).expect("event"))
            .collect();
        assert_eq!(events.len(), 2, "{text}");
        assert_eq!(events[1]["type"], "DELETED");
        assert_eq!(filter.withheld, 1);
    }

    #[test]
    fn a_cut_or_non_object_body_is_withheld() {
        let (out, filter) = filter_in_chunks(
            Shape::Document,
            br#"{"kind":"Secret","data":{"k":"c2Vj"#,
            4,
            1024,
        );
        assert!(!String::from_utf8_lossy(&out).contains("c2Vj"));
        assert_eq!(filter.withheld, 1);
        let (out, filter) = filter_in_chunks(Shape::Document, b"[1,2]", 4, 1024);
        assert!(out.is_empty());
        assert_eq!(filter.withheld, 1);
    }

    #[test]
    fn strings_with_brackets_and_escapes_do_not_confuse_the_scanner() {
        let body = br#"{"metadata":{"name":"x]}\"{["},"items":[{"a":"]\\\"}"},{"data":{"k":"djE="}}],"note":"}"}"#;
        let (out, filter) = filter_in_chunks(Shape::Document, body, 1, 1024);
        let value: Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(value["metadata"]["name"], "x]}\"{[");
        assert_eq!(value["items"][0]["a"], "]\\\"}");
        assert_eq!(value["items"][1]["data"]["k"], masked_b64());
        assert_eq!(value["note"], "}");
        assert_eq!(filter.withheld, 0);
    }
}
