//! The input as documents and objects: the YAML stream split on its `---`
//! lines (each document's text kept for copying through), parsed, the items
//! of a `kind: List` addressed as objects of their own, objects named for
//! errors and notes, and the output written back.

use serde_norway::Value;

use crate::value::{kind_of, str_at};

/// A problem with one document, named so it can be fixed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("document {index} ({what}): {message}")]
pub struct InjectError {
    /// 1-based position of the document in the input.
    pub index: usize,
    /// `Deployment web`, `List, item 2: Deployment web`, or `YAML` when it
    /// does not parse.
    pub what: String,
    pub message: String,
}

/// Splits a multi-document YAML stream on its `---` lines, keeping each
/// document's text (with its comments) as it was.
fn split_documents(input: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in input.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            docs.push(&input[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&input[start..]);
    docs
}

/// One document of the input: its text, its value, whether it changed.
pub(crate) struct Doc<'a> {
    text: &'a str,
    value: Value,
    pub(crate) changed: bool,
}

/// Where an object is: a document, or an item of a List document.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At {
    pub(crate) doc: usize,
    item: Option<usize>,
}

/// Parses every document of `input`.
pub(crate) fn parse(input: &str) -> Result<Vec<Doc<'_>>, InjectError> {
    let mut docs = Vec::new();
    let mut line = 1;
    for (i, text) in split_documents(input).into_iter().enumerate() {
        let value: Value = serde_norway::from_str(text).map_err(|e| InjectError {
            index: i + 1,
            what: "YAML".into(),
            message: yaml_error(&e, line),
        })?;
        docs.push(Doc {
            text,
            value,
            changed: false,
        });
        line += text.matches('\n').count() + 1;
    }
    Ok(docs)
}

/// The output: changed documents written by the YAML library, the others
/// copied through as they were.
pub(crate) fn write(docs: &[Doc], capacity: usize) -> Result<String, InjectError> {
    let mut out = String::with_capacity(capacity);
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        if doc.changed {
            let yaml = serde_norway::to_string(&doc.value).map_err(|e| InjectError {
                index: i + 1,
                what: describe(&doc.value),
                message: format!("cannot be written back as YAML ({e}); please report this"),
            })?;
            out.push_str(&yaml);
        } else {
            out.push_str(doc.text);
        }
    }
    Ok(out)
}

fn is_list(v: &Value) -> bool {
    kind_of(v).is_some_and(|k| k.ends_with("List"))
        && v.get("items").is_some_and(Value::is_sequence)
}

/// Every object of the input, the items of Lists included.
pub(crate) fn addresses(docs: &[Doc]) -> Vec<At> {
    let mut all = Vec::new();
    for (doc, d) in docs.iter().enumerate() {
        match d.value.get("items").and_then(Value::as_sequence) {
            Some(items) if is_list(&d.value) => {
                all.extend((0..items.len()).map(|i| At { doc, item: Some(i) }));
            }
            _ => all.push(At { doc, item: None }),
        }
    }
    all
}

pub(crate) fn object<'v>(docs: &'v [Doc], at: At) -> &'v Value {
    let v = &docs[at.doc].value;
    match at.item {
        Some(i) => &v["items"][i],
        None => v,
    }
}

pub(crate) fn object_mut<'v>(docs: &'v mut [Doc], at: At) -> &'v mut Value {
    let v = &mut docs[at.doc].value;
    match at.item {
        Some(i) => &mut v["items"][i],
        None => v,
    }
}

/// Namespaces match when they are equal or one is not written (then both
/// go wherever `kubectl apply -n` puts them).
pub(crate) fn same_namespace(a: Option<&str>, b: Option<&str>) -> bool {
    a.is_none() || b.is_none() || a == b
}

/// `Deployment web`.
fn describe(v: &Value) -> String {
    let kind = kind_of(v).unwrap_or("?");
    let name = str_at(v, &["metadata", "name"]).unwrap_or("?");
    format!("{kind} {name}")
}

/// How errors and notes name an object: `Deployment web`, or
/// `List, item 2: Deployment web`.
pub(crate) fn what(docs: &[Doc], at: At) -> String {
    match at.item {
        Some(i) => format!(
            "{}, item {}: {}",
            kind_of(&docs[at.doc].value).unwrap_or("List"),
            i + 1,
            describe(object(docs, at))
        ),
        None => describe(object(docs, at)),
    }
}

/// A YAML syntax error, with its line counted in the whole input.
fn yaml_error(e: &serde_norway::Error, first_line: usize) -> String {
    let text = e.to_string();
    match e.location() {
        Some(loc) => {
            let text = text
                .rfind(" at line ")
                .map_or(text.as_str(), |i| &text[..i]);
            format!(
                "is not valid YAML at line {}, column {} of the input ({text}); fix the YAML there",
                first_line + loc.line() - 1,
                loc.column()
            )
        }
        None => format!("is not valid YAML ({text}); fix the YAML"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{inject, test_options};

    #[test]
    fn documents_split_on_separator_lines_only() {
        let docs = split_documents("a: 1\n---\nb: '---'\n--- \nc: 3\n");
        assert_eq!(docs, vec!["a: 1\n", "b: '---'\n", "c: 3\n"]);
    }

    #[test]
    fn untouched_documents_keep_their_text_and_comments() {
        let input = "# a comment\napiVersion: v1\nkind: Service  # trailing\nmetadata: {name: x}\n---\nkind: Deployment\nmetadata: {name: d}\nspec: {template: {spec: {containers: []}}}\n";
        assert_eq!(inject(input, &test_options()).unwrap().yaml, input);
    }

    #[test]
    fn yaml_errors_give_the_line_in_the_whole_input() {
        let err = inject("kind: Service\n---\na: b\nc: [\n", &test_options()).unwrap_err();
        assert_eq!(err.index, 2);
        assert!(err.message.contains("line 5"), "{err}");
        assert!(err.message.contains("fix the YAML"), "{err}");
    }
}
