//! Masking of response bodies with the rule's mask profile and the existing detectors.
//!
//! JSON is walked value by value: each string is a "column" named by its nearest
//! object key, so profiles written for SQL columns (`column = "email"`) and detector
//! rules apply alike. Text bodies are one value named `body`. Anything else cannot be
//! inspected and is refused, since the rule asked for masking.

use std::collections::BTreeMap;

use crate::masking::{ColumnInfo, MaskOutcome, Masker};

/// The masked body and the count of masked values per key.
pub fn mask_body(
    masker: &Masker,
    content_type: &str,
    body: &[u8],
) -> Result<(Vec<u8>, BTreeMap<String, u64>), String> {
    let mut counts = BTreeMap::new();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if body.is_empty() {
        return Ok((Vec::new(), counts));
    }
    if media == "application/json" || media.ends_with("+json") {
        let mut value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|error| format!("the JSON response cannot be parsed for masking: {error}"))?;
        mask_json(masker, &mut value, "body", &mut counts);
        let text = serde_json::to_vec(&value).map_err(|error| error.to_string())?;
        return Ok((text, counts));
    }
    if media.starts_with("text/") {
        let (masked, changed) = mask_text(masker, "body", body);
        if changed {
            *counts.entry("body".into()).or_default() += 1;
        }
        return Ok((masked, counts));
    }
    Err(format!(
        "a `{media}` response cannot be masked (only JSON and text can): refused"
    ))
}

fn mask_text(masker: &Masker, key: &str, value: &[u8]) -> (Vec<u8>, bool) {
    let plan = masker.plan(&[ColumnInfo {
        name: key,
        table: None,
        text_like: true,
    }]);
    match masker.mask_value(&plan, 0, value) {
        MaskOutcome::Unchanged => (value.to_vec(), false),
        MaskOutcome::Masked { value, .. } => (value.into_owned(), true),
        MaskOutcome::Nulled => (Vec::new(), true),
    }
}

fn mask_json(
    masker: &Masker,
    value: &mut serde_json::Value,
    key: &str,
    counts: &mut BTreeMap<String, u64>,
) {
    match value {
        serde_json::Value::String(text) => {
            let (masked, changed) = mask_text(masker, key, text.as_bytes());
            if changed {
                *text = String::from_utf8_lossy(&masked).into_owned();
                *counts.entry(key.to_owned()).or_default() += 1;
            }
        }
        serde_json::Value::Number(number) => {
            let text = number.to_string();
            let (masked, changed) = mask_text(masker, key, text.as_bytes());
            if changed {
                *value = serde_json::Value::String(String::from_utf8_lossy(&masked).into_owned());
                *counts.entry(key.to_owned()).or_default() += 1;
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                mask_json(masker, item, key, counts);
            }
        }
        serde_json::Value::Object(fields) => {
            for (name, field) in fields.iter_mut() {
                mask_json(masker, field, name, counts);
            }
        }
        serde_json::Value::Bool(_) | serde_json::Value::Null => {}
    }
}
