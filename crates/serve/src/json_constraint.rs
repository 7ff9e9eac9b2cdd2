//! Structured outputs: `response_format` `json_object` / `json_schema` enforced while decoding,
//! so that even a small model answers with JSON of the requested shape.
//!
//! A schema compiles to a [`JsonGrammar`] (the subset of JSON Schema below). Each constrained
//! request keeps a [`JsonState`], a pushdown automaton over bytes. Before a token is chosen,
//! [`TokenMask::restrict`] sets the logit of every token whose bytes the state cannot accept to
//! -inf (only end-of-sequence tokens once the object is complete); after it is chosen,
//! [`TokenMask::advance`] moves the state over its bytes. The answer is then valid JSON for the
//! schema unless `max_tokens` cuts it off (finish reason `length`).
//!
//! Enforced: `type` (one kind, or a list of kinds that start differently: string, number or
//! integer, object, array, boolean, null), `properties` (every listed property, as OpenAI's
//! strict mode does, in the order of `required` and then the others: a list keeps its order
//! through any JSON library, object keys may not), `additionalProperties` (an object without
//! `properties` takes any keys), `items`, `minItems` / `maxItems`, `minLength` / `maxLength`
//! (characters), `enum` / `const`, and `minimum` / `maximum` on integers with at most
//! [`MAX_INTEGER_CHOICES`] values. Annotations (`description`, `title`, `$schema`, `default`,
//! `examples`, `strict`) are ignored. Any other keyword (`pattern`, `format`, `$ref`, `anyOf`,
//! bounds on non-integers, ...) is refused with the schema path, rather than silently not
//! enforced. The root must be an object, as OpenAI requires.
//!
//! Between structural characters at most [`MAX_WHITESPACE`] bytes of whitespace are allowed in
//! a row, so a model cannot loop on blank lines; numbers take at most [`MAX_NUMBER_BYTES`] bytes.

use std::fmt;

use serde_json::Value;

/// Most whitespace bytes in a row between structural characters (a newline and an indent).
pub const MAX_WHITESPACE: u8 = 8;
/// Longest number, in bytes.
pub const MAX_NUMBER_BYTES: u8 = 24;
/// An integer range with `minimum` and `maximum` is enforced as the list of its values when it
/// has at most this many.
pub const MAX_INTEGER_CHOICES: i64 = 1024;
/// Deepest nesting of containers (schema nesting beyond it is refused; `json_object` values
/// stop opening containers there).
pub const MAX_DEPTH: usize = 16;
/// Most values of one `enum`.
pub const MAX_ENUM_VALUES: usize = 1024;

/// A schema the grammar cannot enforce, with the JSON path of the offending part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// e.g. `properties.items.items.pattern`; empty for the root.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for SchemaError {}

type NodeId = u16;

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// The listed properties in order: (the key as JSON text, e.g. `"name"`, its value).
    Object(Vec<(Vec<u8>, NodeId)>),
    /// Any keys, values of `values`.
    AnyObject {
        values: NodeId,
    },
    Array {
        items: NodeId,
        min: u32,
        max: u32,
    },
    String {
        min: u32,
        max: u32,
    },
    Number {
        integer: bool,
    },
    /// One of these JSON texts (`enum`, `const`, `true`/`false`, `null`).
    Literals(Vec<Vec<u8>>),
    /// One of several kinds, told apart by their first byte.
    Kinds(Vec<NodeId>),
}

/// A compiled schema: what a constrained answer may be.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonGrammar {
    nodes: Vec<Node>,
    root: NodeId,
}

const ANNOTATIONS: &[&str] = &[
    "description",
    "title",
    "$schema",
    "$id",
    "default",
    "examples",
    "$comment",
    "strict",
];

impl JsonGrammar {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    pub fn any_object() -> Self {
        let mut grammar = Self {
            nodes: Vec::new(),
            root: 0,
        };
        let any = grammar.any_value();
        grammar.root = grammar.push(Node::AnyObject { values: any });
        grammar
    }

    /// Compiles a JSON Schema (see the module docs for the subset enforced).
    pub fn from_schema(schema: &Value) -> Result<Self, SchemaError> {
        let mut grammar = Self {
            nodes: Vec::new(),
            root: 0,
        };
        let root = grammar.compile(schema, "", 0)?;
        if !matches!(
            grammar.nodes[root as usize],
            Node::Object(_) | Node::AnyObject { .. }
        ) {
            return Err(SchemaError {
                path: String::new(),
                reason: "the root of a response schema must be an object (\"type\": \"object\")"
                    .into(),
            });
        }
        grammar.root = root;
        Ok(grammar)
    }

    /// A new state at the start of an answer.
    pub fn start(&self) -> JsonState {
        let mut state = JsonState {
            stack: [Frame::Value { node: 0 }; MAX_DEPTH + 1],
            depth: 0,
            whitespace: 0,
        };
        state.push(Frame::Value { node: self.root });
        state
    }

    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        (self.nodes.len() - 1) as NodeId
    }

    /// Any JSON value: the value of a `json_object` answer, or of a schema with no `type`.
    fn any_value(&mut self) -> NodeId {
        // The recursive parts point back at this node, so reserve it first.
        let id = self.push(Node::Kinds(Vec::new()));
        let object = self.push(Node::AnyObject { values: id });
        let array = self.push(Node::Array {
            items: id,
            min: 0,
            max: u32::MAX,
        });
        let string = self.push(Node::String {
            min: 0,
            max: u32::MAX,
        });
        let number = self.push(Node::Number { integer: false });
        let words = self.push(literals(vec![
            b"true".to_vec(),
            b"false".to_vec(),
            b"null".to_vec(),
        ]));
        self.nodes[id as usize] = Node::Kinds(vec![object, array, string, number, words]);
        id
    }

    fn compile(&mut self, schema: &Value, path: &str, depth: usize) -> Result<NodeId, SchemaError> {
        let error = |key: &str, reason: String| SchemaError {
            path: join(path, key),
            reason,
        };
        if depth > MAX_DEPTH {
            return Err(error("", format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let object = match schema {
            Value::Bool(true) => return Ok(self.any_value()),
            Value::Object(object) => object,
            other => {
                return Err(error(
                    "",
                    format!("a schema must be an object, got {other}"),
                ));
            }
        };
        for key in object.keys() {
            let known = matches!(
                key.as_str(),
                "type"
                    | "properties"
                    | "required"
                    | "additionalProperties"
                    | "items"
                    | "minItems"
                    | "maxItems"
                    | "minLength"
                    | "maxLength"
                    | "minimum"
                    | "maximum"
                    | "enum"
                    | "const"
            );
            if !known && !ANNOTATIONS.contains(&key.as_str()) {
                return Err(error(
                    key,
                    "this keyword is not enforced by this server".into(),
                ));
            }
        }
        if let Some(value) = object.get("const") {
            return Ok(self.push(literals(vec![json_text(value)])));
        }
        if let Some(values) = object.get("enum") {
            let values = values
                .as_array()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| error("enum", "must be a non-empty list".into()))?;
            if values.len() > MAX_ENUM_VALUES {
                return Err(error(
                    "enum",
                    format!("at most {MAX_ENUM_VALUES} values are enforced"),
                ));
            }
            return Ok(self.push(literals(values.iter().map(json_text).collect())));
        }
        let kinds: Vec<&str> = match object.get("type") {
            None => return Ok(self.any_value()),
            Some(Value::String(kind)) => vec![kind.as_str()],
            Some(Value::Array(kinds)) => kinds
                .iter()
                .map(|k| {
                    k.as_str()
                        .ok_or_else(|| error("type", format!("{k} is not a type name")))
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(error("type", format!("{other} is not a type"))),
        };
        let mut members = Vec::new();
        for kind in kinds {
            members.push(self.compile_kind(kind, object, path, depth)?);
        }
        if members.len() == 1 {
            return Ok(members[0]);
        }
        // Members must be told apart by their first byte (string `"`, number `-0-9`, ...).
        let mut seen = [false; 256];
        for &member in &members {
            for byte in 0..=255u8 {
                if self.starts_with(member, byte) {
                    if seen[byte as usize] {
                        return Err(error(
                            "type",
                            "a type list may name each kind once (integer and number together are one kind)"
                                .into(),
                        ));
                    }
                    seen[byte as usize] = true;
                }
            }
        }
        Ok(self.push(Node::Kinds(members)))
    }

    fn compile_kind(
        &mut self,
        kind: &str,
        schema: &serde_json::Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<NodeId, SchemaError> {
        let error = |key: &str, reason: String| SchemaError {
            path: join(path, key),
            reason,
        };
        let count = |key: &str| -> Result<Option<u32>, SchemaError> {
            match schema.get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| error(key, format!("{v} is not a count"))),
            }
        };
        // A keyword that belongs to another kind would be silently ignored; refuse it.
        let only_for = |keys: &[&str], kinds: &[&str]| -> Result<(), SchemaError> {
            for key in keys {
                if schema.contains_key(*key) && !kinds.contains(&kind) {
                    return Err(error(
                        key,
                        format!("is enforced for {} only", kinds.join(" and ")),
                    ));
                }
            }
            Ok(())
        };
        only_for(
            &["properties", "required", "additionalProperties"],
            &["object"],
        )?;
        only_for(&["items", "minItems", "maxItems"], &["array"])?;
        only_for(&["minLength", "maxLength"], &["string"])?;
        only_for(&["minimum", "maximum"], &["integer"])?;
        match kind {
            "object" => {
                let properties = match schema.get("properties") {
                    None => None,
                    Some(Value::Object(properties)) => Some(properties),
                    Some(other) => {
                        return Err(error("properties", format!("{other} is not an object")));
                    }
                };
                let closed = matches!(schema.get("additionalProperties"), Some(Value::Bool(false)));
                if let Some(extra) = schema.get("additionalProperties")
                    && !extra.is_boolean()
                {
                    return Err(error(
                        "additionalProperties",
                        "only true or false is enforced".into(),
                    ));
                }
                // `required` is a list, so its order survives any JSON library (object keys'
                // order does not): it decides the order properties are written in.
                let mut order: Vec<&str> = Vec::new();
                if let Some(required) = schema.get("required") {
                    let names = required
                        .as_array()
                        .ok_or_else(|| error("required", "must be a list of names".into()))?;
                    for name in names {
                        let listed = name
                            .as_str()
                            .filter(|n| properties.is_some_and(|p| p.contains_key(*n)));
                        match listed {
                            Some(n) if !order.contains(&n) => order.push(n),
                            _ => {
                                return Err(error(
                                    "required",
                                    format!(
                                        "{name} is not one of the listed properties, or is named twice"
                                    ),
                                ));
                            }
                        }
                    }
                }
                match properties {
                    Some(properties) if !properties.is_empty() => {
                        for name in properties.keys() {
                            if !order.contains(&name.as_str()) {
                                order.push(name);
                            }
                        }
                        let mut listed = Vec::with_capacity(properties.len());
                        for name in order {
                            let property = &properties[name];
                            let key = serde_json::to_vec(name).expect("a string serialises");
                            let value = self.compile(
                                property,
                                &join(&join(path, "properties"), name),
                                depth + 1,
                            )?;
                            listed.push((key, value));
                        }
                        Ok(self.push(Node::Object(listed)))
                    }
                    _ if closed => Ok(self.push(Node::Object(Vec::new()))),
                    _ => {
                        let values = self.any_value();
                        Ok(self.push(Node::AnyObject { values }))
                    }
                }
            }
            "array" => {
                let items = match schema.get("items") {
                    None => self.any_value(),
                    Some(items) => self.compile(items, &join(path, "items"), depth + 1)?,
                };
                let min = count("minItems")?.unwrap_or(0);
                let max = count("maxItems")?.unwrap_or(u32::MAX);
                if min > max {
                    return Err(error("minItems", format!("{min} is above maxItems {max}")));
                }
                Ok(self.push(Node::Array { items, min, max }))
            }
            "string" => {
                let min = count("minLength")?.unwrap_or(0);
                let max = count("maxLength")?.unwrap_or(u32::MAX);
                if min > max {
                    return Err(error(
                        "minLength",
                        format!("{min} is above maxLength {max}"),
                    ));
                }
                Ok(self.push(Node::String { min, max }))
            }
            "integer" => {
                let bound = |key: &str| -> Result<Option<i64>, SchemaError> {
                    match schema.get(key) {
                        None => Ok(None),
                        Some(v) => v
                            .as_i64()
                            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                            .map(Some)
                            .ok_or_else(|| error(key, format!("{v} is not an integer"))),
                    }
                };
                match (bound("minimum")?, bound("maximum")?) {
                    (None, None) => Ok(self.push(Node::Number { integer: true })),
                    (Some(min), Some(max))
                        if min <= max && max.saturating_sub(min) < MAX_INTEGER_CHOICES =>
                    {
                        let values = (min..=max).map(|v| v.to_string().into_bytes()).collect();
                        Ok(self.push(literals(values)))
                    }
                    _ => Err(error(
                        "minimum",
                        format!(
                            "integer bounds are enforced as both minimum and maximum, at most {MAX_INTEGER_CHOICES} values apart"
                        ),
                    )),
                }
            }
            "number" => Ok(self.push(Node::Number { integer: false })),
            "boolean" => Ok(self.push(literals(vec![b"true".to_vec(), b"false".to_vec()]))),
            "null" => Ok(self.push(literals(vec![b"null".to_vec()]))),
            other => Err(error("type", format!("unknown type `{other}`"))),
        }
    }

    /// Whether a value of `node` can start with `byte`.
    fn starts_with(&self, node: NodeId, byte: u8) -> bool {
        match &self.nodes[node as usize] {
            Node::Object(_) | Node::AnyObject { .. } => byte == b'{',
            Node::Array { .. } => byte == b'[',
            Node::String { .. } => byte == b'"',
            Node::Number { .. } => byte == b'-' || byte.is_ascii_digit(),
            Node::Literals(values) => values.iter().any(|v| v.first() == Some(&byte)),
            Node::Kinds(members) => members.iter().any(|&m| self.starts_with(m, byte)),
        }
    }
}

/// A literal list, sorted so that the texts sharing a prefix are neighbours (see `Frame::Literal`).
fn literals(mut texts: Vec<Vec<u8>>) -> Node {
    texts.sort();
    texts.dedup();
    Node::Literals(texts)
}

fn join(path: &str, key: &str) -> String {
    match (path.is_empty(), key.is_empty()) {
        (_, true) => path.to_owned(),
        (true, false) => key.to_owned(),
        (false, false) => format!("{path}.{key}"),
    }
}

/// A value as compact JSON text (what a literal must read as).
fn json_text(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value serialises")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjectStep {
    /// After `{` or `,`: a key next (or `}` right after `{` when allowed).
    Key,
    /// After a key: `:` next.
    Colon,
    /// After a value: `,` or `}` next.
    AfterValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrayStep {
    /// After `[`: an item or `]`.
    First,
    /// After `,`: an item.
    Item,
    /// After an item: `,` or `]`.
    AfterItem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    /// After `\`.
    Backslash,
    /// Hex digits of `\uXXXX` still to come.
    Unicode(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumberPhase {
    /// After `-`: a digit next.
    Minus,
    /// A leading `0`: no more integer digits.
    Zero,
    Integer,
    /// After `.`: a digit next.
    Dot,
    Fraction,
    /// After `e`: a sign or digit next.
    Exponent,
    /// After the exponent's sign: a digit next.
    ExponentSign,
    ExponentDigits,
}

impl NumberPhase {
    /// Whether the number may end here.
    fn complete(self) -> bool {
        matches!(
            self,
            Self::Zero | Self::Integer | Self::Fraction | Self::ExponentDigits
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// A value of `node` next (whitespace may come first).
    Value { node: NodeId },
    /// Inside an object of listed properties; `next` indexes the property whose key comes next
    /// (or whose value was just read, in `AfterValue`).
    Object {
        node: NodeId,
        next: u16,
        step: ObjectStep,
    },
    AnyObject {
        node: NodeId,
        step: ObjectStep,
        empty: bool,
    },
    Array {
        node: NodeId,
        count: u32,
        step: ArrayStep,
    },
    /// Inside a string, after its opening quote; `chars` counted so far.
    String {
        min: u32,
        max: u32,
        chars: u32,
        escape: Escape,
        /// UTF-8 continuation bytes still expected, and the range the next one must be in
        /// (narrower than 0x80..=0xBF after some leading bytes: no overlong forms, no
        /// surrogates, nothing past U+10FFFF).
        continuation: u8,
        next_min: u8,
        next_max: u8,
    },
    Number {
        integer: bool,
        phase: NumberPhase,
        bytes: u8,
    },
    /// Inside one of a literal list's texts (or an object's key, `key` set). The texts are
    /// sorted, so those that match the `at` bytes read so far are the range `lo..hi`.
    Literal {
        node: NodeId,
        key: Option<u16>,
        at: u16,
        lo: u16,
        hi: u16,
    },
}

/// Where a constrained answer is: a stack of open values. Small and `Copy`, so that testing a
/// token is a copy and a walk over its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonState {
    stack: [Frame; MAX_DEPTH + 1],
    depth: u8,
    /// Whitespace bytes in a row at a structural position.
    whitespace: u8,
}

/// What the top frame did with a byte.
enum Step {
    /// Consumed; the frame stays (possibly changed in place).
    Stay,
    /// Consumed, and this frame's value is complete.
    Done,
    /// Consumed; a child value starts (pushed on top).
    Open(Frame),
    /// Consumed (the opening byte of a value): the top frame is now this one.
    Replaced(Frame),
    /// Not consumed: replace the top frame with this one and offer it the byte.
    Become(Frame),
    /// Not consumed: push this child and offer it the byte.
    OpenWith(Frame),
    /// Not consumed, but the top value was complete before it: pop, offer it to the parent.
    EndBefore,
    /// Whitespace at a structural position.
    Space,
    Reject,
}

impl JsonState {
    /// The answer is one complete value: only an end of sequence may follow.
    pub fn is_complete(&self) -> bool {
        self.depth == 0
    }

    fn push(&mut self, frame: Frame) -> bool {
        if self.depth as usize > MAX_DEPTH {
            return false;
        }
        self.stack[self.depth as usize] = frame;
        self.depth += 1;
        true
    }

    /// Moves over one byte; false (and the state is then unusable) when the grammar does not
    /// allow it here.
    pub fn advance(&mut self, grammar: &JsonGrammar, byte: u8) -> bool {
        loop {
            if self.depth == 0 {
                return false;
            }
            let top = self.depth as usize - 1;
            match step(grammar, &mut self.stack[top], byte, self.depth as usize) {
                Step::Stay => {}
                Step::Done => self.depth -= 1,
                Step::Open(child) => {
                    if !self.push(child) {
                        return false;
                    }
                }
                Step::Replaced(frame) => self.stack[top] = frame,
                Step::Become(frame) => {
                    self.stack[top] = frame;
                    continue;
                }
                Step::OpenWith(child) => {
                    if !self.push(child) {
                        return false;
                    }
                    continue;
                }
                Step::EndBefore => {
                    self.depth -= 1;
                    continue;
                }
                Step::Space => {
                    if self.whitespace >= MAX_WHITESPACE {
                        return false;
                    }
                    self.whitespace += 1;
                    return true;
                }
                Step::Reject => return false,
            }
            self.whitespace = 0;
            return true;
        }
    }

    /// Moves over `bytes`; false when any is not allowed.
    pub fn advance_all(&mut self, grammar: &JsonGrammar, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.advance(grammar, b))
    }

    /// The top frame when it is a plain string's text (no escape or multi-byte character under
    /// way): any token of plain characters may follow, up to the length left.
    fn plain_string_room(&self) -> Option<u32> {
        let top = self.stack[..self.depth as usize].last()?;
        match *top {
            Frame::String {
                max,
                chars,
                escape: Escape::None,
                continuation: 0,
                ..
            } => Some(max - chars),
            _ => None,
        }
    }
}

fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

fn step(grammar: &JsonGrammar, frame: &mut Frame, byte: u8, depth: usize) -> Step {
    match frame {
        Frame::Value { node } => {
            if is_space(byte) {
                return Step::Space;
            }
            value_start(grammar, *node, byte, depth)
        }
        Frame::Object { node, next, step } => {
            let Node::Object(properties) = &grammar.nodes[*node as usize] else {
                unreachable!("an object frame points at an object node")
            };
            if is_space(byte) {
                return Step::Space;
            }
            match step {
                ObjectStep::Key if byte == b'"' && (*next as usize) < properties.len() => {
                    *step = ObjectStep::Colon;
                    Step::Open(Frame::Literal {
                        node: *node,
                        key: Some(*next),
                        at: 1,
                        lo: 0,
                        hi: 1,
                    })
                }
                ObjectStep::Colon if byte == b':' => {
                    let value = properties[*next as usize].1;
                    *next += 1;
                    *step = ObjectStep::AfterValue;
                    Step::Open(Frame::Value { node: value })
                }
                ObjectStep::AfterValue if byte == b',' && (*next as usize) < properties.len() => {
                    *step = ObjectStep::Key;
                    Step::Stay
                }
                ObjectStep::AfterValue if byte == b'}' && *next as usize == properties.len() => {
                    Step::Done
                }
                _ => Step::Reject,
            }
        }
        Frame::AnyObject { node, step, empty } => {
            let Node::AnyObject { values } = grammar.nodes[*node as usize] else {
                unreachable!("an any-object frame points at an any-object node")
            };
            if is_space(byte) {
                return Step::Space;
            }
            match step {
                ObjectStep::Key if byte == b'"' => {
                    *step = ObjectStep::Colon;
                    *empty = false;
                    Step::Open(Frame::String {
                        min: 0,
                        max: u32::MAX,
                        chars: 0,
                        escape: Escape::None,
                        continuation: 0,
                        next_min: 0x80,
                        next_max: 0xBF,
                    })
                }
                ObjectStep::Key if byte == b'}' && *empty => Step::Done,
                ObjectStep::Colon if byte == b':' => {
                    *step = ObjectStep::AfterValue;
                    Step::Open(Frame::Value { node: values })
                }
                ObjectStep::AfterValue if byte == b',' => {
                    *step = ObjectStep::Key;
                    Step::Stay
                }
                ObjectStep::AfterValue if byte == b'}' => Step::Done,
                _ => Step::Reject,
            }
        }
        Frame::Array { node, count, step } => {
            let Node::Array { items, min, max } = grammar.nodes[*node as usize] else {
                unreachable!("an array frame points at an array node")
            };
            if is_space(byte) {
                return Step::Space;
            }
            match step {
                ArrayStep::First | ArrayStep::Item => {
                    if *step == ArrayStep::First && byte == b']' {
                        return if min == 0 { Step::Done } else { Step::Reject };
                    }
                    if *count >= max {
                        return Step::Reject;
                    }
                    *count += 1;
                    *step = ArrayStep::AfterItem;
                    Step::OpenWith(Frame::Value { node: items })
                }
                ArrayStep::AfterItem => match byte {
                    b',' if *count < max => {
                        *step = ArrayStep::Item;
                        Step::Stay
                    }
                    b']' if *count >= min => Step::Done,
                    _ => Step::Reject,
                },
            }
        }
        Frame::String {
            min,
            max,
            chars,
            escape,
            continuation,
            next_min,
            next_max,
        } => {
            if *continuation > 0 {
                if (*next_min..=*next_max).contains(&byte) {
                    *continuation -= 1;
                    (*next_min, *next_max) = (0x80, 0xBF);
                    return Step::Stay;
                }
                return Step::Reject;
            }
            match *escape {
                Escape::Backslash => {
                    *escape = match byte {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Escape::None,
                        b'u' => Escape::Unicode(4),
                        _ => return Step::Reject,
                    };
                    return Step::Stay;
                }
                Escape::Unicode(left) => {
                    if !byte.is_ascii_hexdigit() {
                        return Step::Reject;
                    }
                    *escape = if left > 1 {
                        Escape::Unicode(left - 1)
                    } else {
                        Escape::None
                    };
                    return Step::Stay;
                }
                Escape::None => {}
            }
            if byte == b'"' {
                return if *chars >= *min {
                    Step::Done
                } else {
                    Step::Reject
                };
            }
            // Every other byte starts a character (an escape counts as one).
            if byte < 0x20 || *chars >= *max {
                return Step::Reject;
            }
            match byte {
                b'\\' => *escape = Escape::Backslash,
                0x00..=0x7F => {}
                // RFC 3629's table of well-formed sequences.
                0xC2..=0xDF => *continuation = 1,
                0xE0 => (*continuation, *next_min) = (2, 0xA0),
                0xED => (*continuation, *next_max) = (2, 0x9F),
                0xE1..=0xEF => *continuation = 2,
                0xF0 => (*continuation, *next_min) = (3, 0x90),
                0xF4 => (*continuation, *next_max) = (3, 0x8F),
                0xF1..=0xF3 => *continuation = 3,
                _ => return Step::Reject,
            }
            *chars += 1;
            Step::Stay
        }
        Frame::Number {
            integer,
            phase,
            bytes,
        } => {
            use NumberPhase::*;
            let next = match (*phase, byte) {
                (Minus, b'0') => Zero,
                (Minus, b'1'..=b'9') => Integer,
                (Integer, b'0'..=b'9') => Integer,
                (Zero | Integer, b'.') if !*integer => Dot,
                (Zero | Integer | Fraction, b'e' | b'E') if !*integer => Exponent,
                (Dot | Fraction, b'0'..=b'9') => Fraction,
                (Exponent, b'+' | b'-') => ExponentSign,
                (Exponent | ExponentSign | ExponentDigits, b'0'..=b'9') => ExponentDigits,
                _ if phase.complete() => return Step::EndBefore,
                _ => return Step::Reject,
            };
            if *bytes >= MAX_NUMBER_BYTES {
                return if phase.complete() {
                    Step::EndBefore
                } else {
                    Step::Reject
                };
            }
            *phase = next;
            *bytes += 1;
            Step::Stay
        }
        Frame::Literal {
            node,
            key,
            at,
            lo,
            hi,
        } => {
            let texts = &literal_texts(grammar, *node, *key)[*lo as usize..*hi as usize];
            let read = *at as usize;
            // A text as long as what was read sorts first among those sharing its prefix.
            let complete = texts.first().is_some_and(|t| t.len() == read);
            let first = texts.iter().position(|t| t.get(read) == Some(&byte));
            let Some(first) = first else {
                return if complete {
                    Step::EndBefore
                } else {
                    Step::Reject
                };
            };
            let count = texts[first..]
                .iter()
                .take_while(|t| t.get(read) == Some(&byte))
                .count();
            let new_lo = *lo as usize + first;
            *lo = new_lo as u16;
            *hi = (new_lo + count) as u16;
            *at += 1;
            let matching = &texts[first..first + count];
            // Done as soon as no matching text is longer than what was read.
            if matching.iter().any(|t| t.len() > read + 1) {
                Step::Stay
            } else {
                Step::Done
            }
        }
    }
}

/// The texts a literal frame matches against: a literal list's values, or one object key.
fn literal_texts(grammar: &JsonGrammar, node: NodeId, key: Option<u16>) -> &[Vec<u8>] {
    match (&grammar.nodes[node as usize], key) {
        (Node::Object(properties), Some(key)) => std::slice::from_ref(&properties[key as usize].0),
        (Node::Literals(values), None) => values,
        _ => unreachable!("a literal frame points at a literal list or an object key"),
    }
}

/// The first byte of a value of `node`.
fn value_start(grammar: &JsonGrammar, node: NodeId, byte: u8, depth: usize) -> Step {
    // A container opened here pushes its children one level deeper: refusing its opening byte
    // at the limit keeps the state from reaching a place where no byte is allowed (which the
    // mask would then meet); `JsonState::push` checks the same limit as a last guard.
    let container = || depth <= MAX_DEPTH;
    match &grammar.nodes[node as usize] {
        Node::Object(_) if byte == b'{' && container() => Step::Replaced(Frame::Object {
            node,
            next: 0,
            step: ObjectStep::Key,
        }),
        Node::AnyObject { .. } if byte == b'{' && container() => Step::Replaced(Frame::AnyObject {
            node,
            step: ObjectStep::Key,
            empty: true,
        }),
        Node::Array { .. } if byte == b'[' && container() => Step::Replaced(Frame::Array {
            node,
            count: 0,
            step: ArrayStep::First,
        }),
        &Node::String { min, max } if byte == b'"' => Step::Replaced(Frame::String {
            min,
            max,
            chars: 0,
            escape: Escape::None,
            continuation: 0,
            next_min: 0x80,
            next_max: 0xBF,
        }),
        &Node::Number { integer } if byte == b'-' || byte.is_ascii_digit() => {
            let phase = match byte {
                b'-' => NumberPhase::Minus,
                b'0' => NumberPhase::Zero,
                _ => NumberPhase::Integer,
            };
            Step::Replaced(Frame::Number {
                integer,
                phase,
                bytes: 1,
            })
        }
        Node::Literals(values) => Step::Become(Frame::Literal {
            node,
            key: None,
            at: 0,
            lo: 0,
            hi: values.len() as u16,
        }),
        Node::Kinds(members) => members
            .iter()
            .find(|&&m| grammar.starts_with(m, byte))
            .map_or(Step::Reject, |&m| Step::Become(Frame::Value { node: m })),
        _ => Step::Reject,
    }
}

/// The vocabulary's side of constrained decoding: every token's bytes, indexed so that
/// [`TokenMask::restrict`] tests few tokens byte by byte. Built once per model.
#[derive(Clone)]
pub struct TokenMask {
    /// Each id's bytes; `None` for special tokens (never inside an answer's JSON).
    bytes: Vec<Option<Box<[u8]>>>,
    /// Ids with bytes, by their first byte.
    by_first_byte: Vec<Vec<u32>>,
    /// Tokens of whole characters that a JSON string takes as they are (no `"`, backslash or
    /// control character), with their character count: inside a string each is allowed
    /// while the string has room, without a walk.
    plain: Vec<(u32, u32)>,
    /// The other tokens with bytes, walked inside strings.
    other: Vec<u32>,
    /// End-of-sequence ids: the only tokens after a complete answer.
    stop_ids: Vec<u32>,
}

impl fmt::Debug for TokenMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenMask")
            .field("vocab_size", &self.bytes.len())
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}

impl PartialEq for TokenMask {
    /// Built from one vocabulary: the same token bytes and stop ids.
    fn eq(&self, other: &Self) -> bool {
        self.stop_ids == other.stop_ids && self.bytes == other.bytes
    }
}

impl TokenMask {
    /// `token_bytes[id]` as [`llama::Tokenizer::token_bytes`] gives them.
    pub fn new(token_bytes: Vec<Option<Vec<u8>>>, stop_ids: &[u32]) -> Self {
        let mut by_first_byte = vec![Vec::new(); 256];
        let mut plain = Vec::new();
        let mut other = Vec::new();
        let bytes: Vec<Option<Box<[u8]>>> = token_bytes
            .into_iter()
            .map(|b| b.filter(|b| !b.is_empty()).map(Vec::into_boxed_slice))
            .collect();
        for (id, token) in bytes.iter().enumerate() {
            let Some(token) = token else { continue };
            let id = id as u32;
            by_first_byte[token[0] as usize].push(id);
            let text = std::str::from_utf8(token).ok();
            match text.filter(|t| !t.chars().any(|c| c == '"' || c == '\\' || c < ' ')) {
                Some(text) => plain.push((id, text.chars().count() as u32)),
                None => other.push(id),
            }
        }
        Self {
            bytes,
            by_first_byte,
            plain,
            other,
            stop_ids: stop_ids.to_vec(),
        }
    }

    /// Tokens the mask knows (the tokenizer's vocabulary).
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// Sets the logit of every token `state` does not allow next to -inf (entries past the
    /// vocabulary, e.g. padded embedding rows, too). Returns how many tokens stay allowed:
    /// 0 means nothing can continue the answer, and the logits are left as they were (the
    /// caller ends the answer).
    pub fn restrict(&self, grammar: &JsonGrammar, state: &JsonState, logits: &mut [f32]) -> usize {
        let mut allowed = vec![false; logits.len()];
        let mut count = 0;
        let mut allow = |id: u32| {
            if let Some(slot) = allowed.get_mut(id as usize)
                && !*slot
            {
                *slot = true;
                count += 1;
            }
        };
        if state.is_complete() {
            self.stop_ids.iter().for_each(|&id| allow(id));
        } else if let Some(room) = state.plain_string_room() {
            for &(id, chars) in &self.plain {
                if chars <= room {
                    allow(id);
                }
            }
            for &id in &self.other {
                if self.accepts(grammar, state, id) {
                    allow(id);
                }
            }
        } else {
            for first in 0..=255u8 {
                let mut after_first = *state;
                if !after_first.advance(grammar, first) {
                    continue;
                }
                for &id in &self.by_first_byte[first as usize] {
                    let token = self.bytes[id as usize]
                        .as_deref()
                        .expect("indexed ids have bytes");
                    let mut walked = after_first;
                    if walked.advance_all(grammar, &token[1..]) {
                        allow(id);
                    }
                }
            }
        }
        if count == 0 {
            return 0;
        }
        for (logit, allowed) in logits.iter_mut().zip(&allowed) {
            if !allowed {
                *logit = f32::NEG_INFINITY;
            }
        }
        count
    }

    /// Whether `token` may come next.
    pub fn accepts(&self, grammar: &JsonGrammar, state: &JsonState, token: u32) -> bool {
        let mut walked = *state;
        self.advance(grammar, &mut walked, token)
    }

    /// Moves `state` over `token`'s bytes; false when the grammar does not allow them (a
    /// special token never is).
    pub fn advance(&self, grammar: &JsonGrammar, state: &mut JsonState, token: u32) -> bool {
        match self.bytes.get(token as usize) {
            Some(Some(bytes)) => state.advance_all(grammar, bytes),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn accepts(grammar: &JsonGrammar, text: &str) -> bool {
        let mut state = grammar.start();
        state.advance_all(grammar, text.as_bytes()) && state.is_complete()
    }

    /// Accepted as a prefix (the answer may still go on).
    fn prefix(grammar: &JsonGrammar, text: &str) -> bool {
        grammar.start().advance_all(grammar, text.as_bytes())
    }

    fn label_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "Short noun phrase."},
                "description": {"type": "string"}
            },
            "required": ["name", "description"],
            "additionalProperties": false
        })
    }

    #[test]
    fn listed_properties_in_order_with_any_string_text() {
        let g = JsonGrammar::from_schema(&label_schema()).unwrap();
        assert!(accepts(
            &g,
            r#"{"name":"Dates","description":"Adding days."}"#
        ));
        assert!(accepts(
            &g,
            "{\n  \"name\": \"caf\u{e9} \\\"x\\\" \\u00e9\",\n  \"description\": \"\"\n}"
        ));
        // Order, missing and extra keys, trailing text, a wrong key spelling.
        assert!(!accepts(&g, r#"{"description":"a","name":"b"}"#));
        assert!(!accepts(&g, r#"{"name":"b"}"#));
        assert!(!prefix(&g, r#"{"name":"b","description":"a","x"#));
        assert!(!prefix(&g, r#"{"name":"b","description":"a"} "#));
        assert!(!prefix(&g, r#"{"nam":"#));
        assert!(!prefix(&g, r#"{"Name""#));
        // Inside strings: no raw control characters, only JSON's escapes, whole UTF-8.
        assert!(!prefix(&g, "{\"name\":\"a\nb"));
        assert!(!prefix(&g, r#"{"name":"\q"#));
        assert!(!prefix(&g, r#"{"name":"\u12g"#));
        let mut state = g.start();
        assert!(state.advance_all(&g, br#"{"name":""#));
        assert!(state.advance(&g, 0xC3));
        assert!(
            !state.clone().advance(&g, b'a'),
            "a continuation byte must follow"
        );
        assert!(state.advance(&g, 0xA9));
        // No UTF-16 surrogates (ED A0..BF) and no overlong forms (E0 80..9F).
        for (lead, bad, good) in [(0xED, 0xA1, 0x9F), (0xE0, 0x80, 0xA0), (0xF4, 0x90, 0x8F)] {
            let mut s = state;
            assert!(s.advance(&g, lead));
            assert!(!s.clone().advance(&g, bad), "{lead:x} {bad:x}");
            assert!(s.advance(&g, good), "{lead:x} {good:x}");
        }
        assert!(!g.start().advance_all(
            &g,
            &[b'{', b'"', b'n', b'a', b'm', b'e', b'"', b':', b'"', 0xFF]
        ));
    }

    #[test]
    fn numbers_integers_ranges_and_literals() {
        let g = JsonGrammar::from_schema(&json!({
            "type": "object",
            "properties": {
                "score": {"type": "integer", "minimum": 1, "maximum": 10},
                "weight": {"type": "number"},
                "count": {"type": "integer"},
                "ok": {"type": "boolean"},
                "kind": {"enum": ["a", "ab", 3, null]},
                "note": {"type": ["string", "null"]}
            },
            "required": ["score", "weight", "count", "ok", "kind", "note"]
        }))
        .unwrap();
        let doc = |score: &str, weight: &str, count: &str, kind: &str, note: &str| {
            format!(
                r#"{{"score":{score},"weight":{weight},"count":{count},"ok":true,"kind":{kind},"note":{note}}}"#
            )
        };
        assert!(accepts(&g, &doc("10", "-0.5e+3", "-12", "\"ab\"", "null")));
        assert!(accepts(&g, &doc("1", "0", "0", "3", "\"x\"")));
        assert!(accepts(&g, &doc("9", "12.25", "7", "\"a\"", "null")));
        for bad in [
            doc("11", "0", "0", "3", "null"),
            doc("0", "0", "0", "3", "null"),
            doc("1", "01", "0", "3", "null"),
            doc("1", "0", "1.5", "3", "null"),
            doc("1", "1.", "0", "3", "null"),
            doc("1", "0", "0", "\"b\"", "null"),
            doc("1", "0", "0", "4", "null"),
            doc("1", "0", "0", "3", "1"),
        ] {
            assert!(!accepts(&g, &bad), "{bad}");
        }
        // Without `required`, properties come in the map's order (sorted here).
        let sorted = JsonGrammar::from_schema(&json!({
            "type": "object",
            "properties": {"b": {"type": "integer"}, "a": {"type": "integer"}}
        }))
        .unwrap();
        assert!(accepts(&sorted, r#"{"a":1,"b":2}"#));
        // A number ends where the next structural character starts, and is bounded.
        let digits = "9".repeat(MAX_NUMBER_BYTES as usize + 1);
        assert!(!accepts(&g, &doc("1", &digits, "0", "3", "null")));
    }

    #[test]
    fn arrays_nested_objects_and_bounds() {
        let g = JsonGrammar::from_schema(&json!({
            "type": "object",
            "properties": {
                "examples": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 2,
                    "items": {
                        "type": "object",
                        "properties": {"q": {"type": "string", "maxLength": 3}, "a": {"type": "string", "minLength": 1}},
                        "required": ["q", "a"],
                        "additionalProperties": false
                    }
                }
            },
            "required": ["examples"],
            "additionalProperties": false
        }))
        .unwrap();
        assert!(accepts(&g, r#"{"examples":[{"q":"abc","a":"x"}]}"#));
        assert!(accepts(
            &g,
            r#"{"examples": [ {"q":"","a":"é"} , {"q":"a","a":"b"} ]}"#
        ));
        assert!(!accepts(&g, r#"{"examples":[]}"#));
        assert!(!prefix(&g, r#"{"examples":[{"q":"abcd"#));
        assert!(!prefix(&g, r#"{"examples":[{"q":"a","a":""}"#));
        assert!(!prefix(
            &g,
            r#"{"examples":[{"q":"a","a":"b"},{"q":"a","a":"b"},"#
        ));
    }

    #[test]
    fn json_object_takes_any_object_and_whitespace_is_bounded() {
        let g = JsonGrammar::any_object();
        assert!(accepts(&g, r#"{}"#));
        assert!(accepts(
            &g,
            r#"{"a": [1, -2.5e3, "x", {"b": null}, [], true], "c": {}}"#
        ));
        assert!(!accepts(&g, r#"[1]"#));
        assert!(!accepts(&g, r#"{"a": 1,}"#));
        assert!(!accepts(&g, r#"{"a" 1}"#));
        assert!(!prefix(&g, r#"{"a": tru "#));
        let gap = " ".repeat(MAX_WHITESPACE as usize);
        assert!(accepts(&g, &format!("{{{gap}\"a\":{gap}1{gap}}}")));
        assert!(!prefix(&g, &format!("{{{gap} ")));
        // Containers stop opening at the depth limit.
        let deep = "[".repeat(MAX_DEPTH);
        assert!(!prefix(&g, &format!(r#"{{"a":{deep}"#)));
        assert!(prefix(
            &g,
            &format!(r#"{{"a":{}"#, "[".repeat(MAX_DEPTH - 1))
        ));
    }

    #[test]
    fn schemas_that_cannot_be_enforced_are_refused_with_their_path() {
        let refused = |schema: Value| JsonGrammar::from_schema(&schema).unwrap_err();
        let e = refused(
            json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}}),
        );
        assert_eq!(e.path, "properties.a.pattern");
        let e = refused(json!({"type": "string"}));
        assert_eq!(e.path, "");
        assert!(e.reason.contains("root"), "{e}");
        let e = refused(
            json!({"type": "object", "properties": {"n": {"type": "number", "minimum": 0}}}),
        );
        assert_eq!(e.path, "properties.n.minimum");
        let e = refused(
            json!({"type": "object", "properties": {"n": {"type": ["integer", "number"]}}}),
        );
        assert_eq!(e.path, "properties.n.type");
        let e = refused(
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}),
        );
        assert_eq!(e.path, "required");
        let e = refused(json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}}));
        assert_eq!(e.path, "properties.a.$ref");
        let e = refused(json!({"type": "object", "properties": {"a": {"type": "date"}}}));
        assert_eq!(e.path, "properties.a.type");
    }

    #[test]
    fn masks_tokens_by_their_bytes() {
        let vocab: Vec<Option<Vec<u8>>> = [
            Some(&b"{"[..]),
            Some(br#"{""#),
            Some(br#"{"name"#),
            Some(br#"":""#),
            Some(b"hello world"),
            Some(br#"","#),
            Some(br#""}"#),
            None, // a special token
            Some(b" "),
            Some(b"\n\n\n\n\n\n\n\n\n"),
        ]
        .into_iter()
        .map(|b| b.map(<[u8]>::to_vec))
        .collect();
        let stop = 7;
        let mask = TokenMask::new(vocab, &[stop]);
        let g = JsonGrammar::from_schema(&json!({
            "type": "object", "properties": {"name": {"type": "string", "maxLength": 11}}
        }))
        .unwrap();
        let allowed = |state: &JsonState| {
            let mut logits = vec![0.0f32; 12];
            let n = mask.restrict(&g, state, &mut logits);
            let ids: Vec<usize> = (0..12).filter(|&i| logits[i] == 0.0).collect();
            assert_eq!(ids.len(), n);
            ids
        };
        let mut state = g.start();
        // Padded logits past the vocabulary (10, 11) are never allowed; nine newlines are
        // more whitespace than a gap takes.
        assert_eq!(allowed(&state), [0, 1, 2, 8]);
        assert!(mask.advance(&g, &mut state, 2));
        assert_eq!(allowed(&state), [3]);
        assert!(mask.advance(&g, &mut state, 3));
        // Inside the string: plain text while it fits (`{` is text here), and tokens that
        // close it where the object may go on (`{"` ends the string after one character).
        assert_eq!(allowed(&state), [0, 1, 4, 6, 8]);
        assert!(mask.advance(&g, &mut state, 4));
        assert_eq!(allowed(&state), [6]);
        assert!(mask.advance(&g, &mut state, 6));
        assert!(state.is_complete());
        assert_eq!(allowed(&state), [stop as usize]);
        assert!(!mask.accepts(&g, &state, 8));
    }
}
