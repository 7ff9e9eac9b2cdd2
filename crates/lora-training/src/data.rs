//! Training examples: JSONL in chat `messages`, alpaca or sharegpt form, read as a stream and
//! turned into conversations.

use llama::ChatMessage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// The accepted example formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// Decided per line from its keys.
    Auto,
    /// `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}`
    Messages,
    /// `{"instruction": ..., "input": ... (optional), "output": ..., "system": ... (optional)}`
    Alpaca,
    /// `{"conversations": [{"from": "system"|"human"|"gpt", "value": ...}, ...]}`
    Sharegpt,
}

impl DataFormat {
    pub const ACCEPTED: &'static str = "auto, messages, alpaca, sharegpt";
}

impl std::str::FromStr for DataFormat {
    type Err = Error;
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "auto" => Ok(Self::Auto),
            "messages" => Ok(Self::Messages),
            "alpaca" => Ok(Self::Alpaca),
            "sharegpt" => Ok(Self::Sharegpt),
            other => Err(Error::InvalidConfig(format!(
                "unknown data format `{other}` (accepted: {})",
                Self::ACCEPTED
            ))),
        }
    }
}

/// Turns one parsed JSONL record into a conversation. The message says what is wrong; the
/// caller adds file and line.
pub fn conversation(
    record: &Value,
    format: DataFormat,
    system_prompt: Option<&str>,
) -> std::result::Result<Vec<ChatMessage>, String> {
    let format = match format {
        DataFormat::Auto => detect(record)?,
        known => known,
    };
    let mut messages = match format {
        DataFormat::Messages => messages_form(record)?,
        DataFormat::Alpaca => alpaca_form(record)?,
        DataFormat::Sharegpt => sharegpt_form(record)?,
        DataFormat::Auto => unreachable!("resolved above"),
    };
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err("the example has no assistant message, so there is nothing to train on".into());
    }
    if let Some(system) = system_prompt
        && messages.first().is_none_or(|m| m.role != "system")
    {
        messages.insert(0, ChatMessage::system(system));
    }
    Ok(messages)
}

/// A multiple-choice item of the assets' task pool (`question`, `choices.text`,
/// `choices.label`, `answerKey`) as a one-turn conversation whose reply is the correct
/// choice's text. `None` when the record does not have that shape.
pub fn multiple_choice_conversation(record: &Value) -> Option<Vec<ChatMessage>> {
    let question = record.get("question")?.as_str()?;
    let choices = record.get("choices")?;
    let texts = choices.get("text")?.as_array()?;
    let labels = choices.get("label")?.as_array()?;
    let key = record.get("answerKey")?.as_str()?;
    let index = labels.iter().position(|l| l.as_str() == Some(key))?;
    let answer = texts.get(index)?.as_str()?;
    Some(vec![
        ChatMessage::user(question),
        ChatMessage::assistant(answer),
    ])
}

fn detect(record: &Value) -> std::result::Result<DataFormat, String> {
    let object = record
        .as_object()
        .ok_or("expected a JSON object per line")?;
    if object.contains_key("messages") {
        Ok(DataFormat::Messages)
    } else if object.contains_key("conversations") {
        Ok(DataFormat::Sharegpt)
    } else if object.contains_key("instruction") && object.contains_key("output") {
        Ok(DataFormat::Alpaca)
    } else {
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        Err(format!(
            "cannot tell the format from keys {keys:?}: expected `messages` (chat), \
             `conversations` (sharegpt) or `instruction` + `output` (alpaca)"
        ))
    }
}

fn string_field<'a>(value: &'a Value, field: &str) -> std::result::Result<&'a str, String> {
    match value.get(field) {
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(format!(
            "field `{field}` must be a string, got {}",
            type_name(other)
        )),
        None => Err(format!("missing field `{field}`")),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn list_field<'a>(record: &'a Value, field: &str) -> std::result::Result<&'a Vec<Value>, String> {
    match record.get(field) {
        Some(Value::Array(items)) if !items.is_empty() => Ok(items),
        Some(Value::Array(_)) => Err(format!("field `{field}` is an empty list")),
        Some(other) => Err(format!(
            "field `{field}` must be a list, got {}",
            type_name(other)
        )),
        None => Err(format!("missing field `{field}`")),
    }
}

fn messages_form(record: &Value) -> std::result::Result<Vec<ChatMessage>, String> {
    list_field(record, "messages")?
        .iter()
        .enumerate()
        .map(|(index, message)| {
            let role =
                string_field(message, "role").map_err(|e| format!("messages[{index}]: {e}"))?;
            let content =
                string_field(message, "content").map_err(|e| format!("messages[{index}]: {e}"))?;
            match role {
                "system" | "user" | "assistant" => Ok(ChatMessage::new(role, content)),
                other => Err(format!(
                    "messages[{index}].role `{other}` is not one of system, user, assistant"
                )),
            }
        })
        .collect()
}

fn alpaca_form(record: &Value) -> std::result::Result<Vec<ChatMessage>, String> {
    let instruction = string_field(record, "instruction")?;
    let output = string_field(record, "output")?;
    let input = match record.get("input") {
        None | Some(Value::Null) => "",
        Some(_) => string_field(record, "input")?,
    };
    let mut messages = Vec::with_capacity(3);
    if let Some(Value::String(system)) = record.get("system")
        && !system.is_empty()
    {
        messages.push(ChatMessage::system(system.as_str()));
    }
    let prompt = if input.is_empty() {
        instruction.to_string()
    } else {
        format!("{instruction}\n\n{input}")
    };
    messages.push(ChatMessage::user(prompt));
    messages.push(ChatMessage::assistant(output));
    Ok(messages)
}

fn sharegpt_form(record: &Value) -> std::result::Result<Vec<ChatMessage>, String> {
    list_field(record, "conversations")?
        .iter()
        .enumerate()
        .map(|(index, turn)| {
            let from =
                string_field(turn, "from").map_err(|e| format!("conversations[{index}]: {e}"))?;
            let value =
                string_field(turn, "value").map_err(|e| format!("conversations[{index}]: {e}"))?;
            let role = match from {
                "system" => "system",
                "human" | "user" => "user",
                "gpt" | "assistant" => "assistant",
                other => {
                    return Err(format!(
                        "conversations[{index}].from `{other}` is not one of system, human, gpt"
                    ));
                }
            };
            Ok(ChatMessage::new(role, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn roles(messages: &[ChatMessage]) -> Vec<(&str, &str)> {
        messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect()
    }

    #[test]
    fn the_three_formats_give_the_same_conversation() {
        let chat = json!({"messages": [
            {"role": "user", "content": "Add 2 and 3.\n\nquickly"},
            {"role": "assistant", "content": "5"}]});
        let alpaca = json!({"instruction": "Add 2 and 3.", "input": "quickly", "output": "5"});
        let sharegpt = json!({"conversations": [
            {"from": "human", "value": "Add 2 and 3.\n\nquickly"},
            {"from": "gpt", "value": "5"}]});
        let expected = vec![("user", "Add 2 and 3.\n\nquickly"), ("assistant", "5")];
        for record in [&chat, &alpaca, &sharegpt] {
            let auto = conversation(record, DataFormat::Auto, None).unwrap();
            assert_eq!(roles(&auto), expected, "{record}");
        }
        assert_eq!(
            roles(&conversation(&alpaca, DataFormat::Alpaca, Some("Be brief.")).unwrap())[0],
            ("system", "Be brief.")
        );
    }

    #[test]
    fn bad_records_say_what_is_wrong() {
        let cases = [
            (
                json!({"prompt": "x", "completion": "y"}),
                "cannot tell the format",
            ),
            (json!({"messages": []}), "empty list"),
            (
                json!({"messages": [{"role": "robot", "content": "x"}]}),
                "messages[0].role `robot`",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}]}),
                "no assistant message",
            ),
            (
                json!({"instruction": "x", "output": 3}),
                "`output` must be a string",
            ),
            (
                json!({"conversations": [{"from": "bot", "value": "x"}]}),
                "conversations[0].from `bot`",
            ),
        ];
        for (record, expected) in cases {
            let error = conversation(&record, DataFormat::Auto, None).unwrap_err();
            assert!(error.contains(expected), "{record}: {error}");
        }
        let error = "jsonl".parse::<DataFormat>().unwrap_err().to_string();
        assert!(
            error.contains("jsonl") && error.contains(DataFormat::ACCEPTED),
            "{error}"
        );
    }
}
