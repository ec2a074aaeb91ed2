//! Fields a workflow marks sensitive: JSON pointers (RFC 6901) into its input, state
//! data and output whose values are never shown, neither on the dashboard nor in the
//! API's run answers. They are stored as they are (a step needs them); only views
//! redact. A `*` segment matches every element of an array or member of an object, so
//! `/cards/*/number` covers each card.

use serde_json::Value;

/// What a redacted value is replaced by.
pub const REDACTED: &str = "[redacted]";

/// Checks a pointer is one redaction can follow: empty (the whole document is not a
/// field) or not starting with `/` is refused at registration.
pub(crate) fn check(pointer: &str) -> Result<(), String> {
    if pointer.len() > 1 && pointer.starts_with('/') {
        Ok(())
    } else {
        Err(format!(
            "sensitive field {pointer:?} is not a JSON pointer to a field (like \"/card/number\")"
        ))
    }
}

/// Replaces the value at each of `pointers` in `value`, where present, by [`REDACTED`].
pub fn redact(value: &mut Value, pointers: &[&str]) {
    for pointer in pointers {
        let segments: Vec<String> = pointer
            .split('/')
            .skip(1)
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        redact_at(value, &segments);
    }
}

fn redact_at(value: &mut Value, segments: &[String]) {
    let Some((first, rest)) = segments.split_first() else {
        *value = Value::String(REDACTED.into());
        return;
    };
    match value {
        Value::Object(fields) if first == "*" => {
            fields.values_mut().for_each(|v| redact_at(v, rest));
        }
        Value::Array(items) if first == "*" => {
            items.iter_mut().for_each(|v| redact_at(v, rest));
        }
        Value::Object(fields) => {
            if let Some(v) = fields.get_mut(first.as_str()) {
                redact_at(v, rest);
            }
        }
        Value::Array(items) => {
            if let Some(v) = first.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                redact_at(v, rest);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pointed_fields_are_redacted_and_nothing_else() {
        let mut v = json!({
            "card": {"number": "4242", "exp": "12/30"},
            "cards": [{"number": "1"}, {"number": "2", "name": "x"}],
            "a/b": "slash", "list": ["keep", "hide"], "n": 5
        });
        redact(
            &mut v,
            &[
                "/card/number",
                "/cards/*/number",
                "/a~1b",
                "/list/1",
                "/missing/field",
                "/n/x",
            ],
        );
        assert_eq!(
            v,
            json!({
                "card": {"number": REDACTED, "exp": "12/30"},
                "cards": [{"number": REDACTED}, {"number": REDACTED, "name": "x"}],
                "a/b": REDACTED, "list": ["keep", REDACTED], "n": 5
            })
        );
    }

    #[test]
    fn only_pointers_to_fields_are_accepted() {
        assert!(check("/card/number").is_ok());
        for bad in ["", "/", "card/number"] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
    }
}
