//! Server-sent events for streamed chat completions: the byte-level SSE parser and the
//! assembly of `chat.completion.chunk`s into one answer.

use async_openai::types::chat::CreateChatCompletionStreamResponse;

/// What [`crate::LlmClient::chat_stream`] reports while an answer arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEvent<'a> {
    /// HTTP attempt number `n` (1-based) starts. Text received in earlier attempts is void:
    /// the answer is the text after the last `Attempt`.
    Attempt(u32),
    /// Text appended to the answer. A request answered from the ledger gets its whole text
    /// as one delta and no `Attempt`.
    Delta(&'a str),
}

/// Splits a byte stream into SSE events and returns their `data` fields (multi-line data
/// joined with `\n`); comments (keep-alives), `event:`, `id:` and `retry:` lines are skipped.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buffer: Vec<u8>,
    data: Option<String>,
}

impl SseParser {
    /// Feeds bytes; returns the data of every event they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(newline) = self.buffer.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buffer.drain(..=newline).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                events.extend(self.data.take());
            } else if let Some(value) = line.strip_prefix("data:") {
                let value = value.strip_prefix(' ').unwrap_or(value);
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                }
            }
        }
        events
    }
}

/// A streamed answer being put together.
#[derive(Debug, Default)]
pub(crate) struct StreamAssembly {
    pub content: String,
    pub finish_reason: Option<String>,
    pub model: String,
    /// (prompt, completion) tokens from the usage chunk.
    pub usage: Option<(u64, u64)>,
    /// `data: [DONE]` arrived.
    pub done: bool,
    /// Data events seen (any, including `[DONE]`).
    pub events: usize,
}

/// What one data event meant.
#[derive(Debug, PartialEq)]
pub(crate) enum Chunk {
    /// Text to append (may be empty).
    Text(String),
    Done,
    /// The server reported an error inside the stream.
    Error(String),
    /// Not a chunk we can read.
    Malformed(String),
}

impl StreamAssembly {
    /// Applies one event's data.
    pub fn apply(&mut self, data: &str) -> Chunk {
        self.events += 1;
        if data.trim() == "[DONE]" {
            self.done = true;
            return Chunk::Done;
        }
        let value: serde_json::Value = match serde_json::from_str(data) {
            Ok(value) => value,
            Err(e) => return Chunk::Malformed(format!("stream event is not JSON: {e}")),
        };
        if let Some(error) = value.get("error") {
            let message = error
                .get("message")
                .and_then(|m| m.as_str())
                .map_or_else(|| error.to_string(), str::to_owned);
            return Chunk::Error(message);
        }
        let chunk: CreateChatCompletionStreamResponse = match serde_json::from_value(value) {
            Ok(chunk) => chunk,
            Err(e) => return Chunk::Malformed(format!("not a chat.completion.chunk: {e}")),
        };
        if self.model.is_empty() {
            self.model = chunk.model.clone();
        }
        if let Some(usage) = &chunk.usage {
            self.usage = Some((
                u64::from(usage.prompt_tokens),
                u64::from(usage.completion_tokens),
            ));
        }
        let mut text = String::new();
        for choice in chunk.choices.iter().filter(|c| c.index == 0) {
            if let Some(content) = &choice.delta.content {
                text.push_str(content);
            }
            if let Some(reason) = &choice.finish_reason {
                self.finish_reason = serde_json::to_value(reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned));
            }
        }
        self.content.push_str(&text);
        Chunk::Text(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_and_line_endings() {
        let mut parser = SseParser::default();
        assert!(parser.push(b": keep-alive\n\nda").is_empty());
        assert_eq!(
            parser.push(b"ta: {\"a\":1}\r\n\r\ndata: x\ndata:y\n"),
            ["{\"a\":1}"]
        );
        assert_eq!(
            parser.push(b"\nevent: e\nid: 3\ndata: [DONE]\n\n"),
            ["x\ny", "[DONE]"]
        );
        // An event without its blank line is not complete.
        assert!(parser.push(b"data: partial\n").is_empty());
    }

    #[test]
    fn chunks_assemble_into_an_answer() {
        let chunk = |delta: &str, finish: &str, usage: &str| {
            format!(
                r#"{{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]{usage}}}"#
            )
        };
        let mut a = StreamAssembly::default();
        assert_eq!(
            a.apply(&chunk(r#"{"role":"assistant","content":""}"#, "null", "")),
            Chunk::Text(String::new())
        );
        assert_eq!(
            a.apply(&chunk(r#"{"content":"Hel"}"#, "null", "")),
            Chunk::Text("Hel".into())
        );
        a.apply(&chunk(r#"{"content":"lo"}"#, "null", ""));
        a.apply(&chunk("{}", r#""length""#, ""));
        a.apply(r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#);
        assert_eq!(a.apply("[DONE]"), Chunk::Done);
        assert_eq!(a.content, "Hello");
        assert_eq!(a.finish_reason.as_deref(), Some("length"));
        assert_eq!(a.usage, Some((5, 2)));
        assert_eq!(a.model, "m");
        assert!(a.done);
        assert_eq!(
            a.apply(r#"{"error":{"message":"boom","type":"server_error"}}"#),
            Chunk::Error("boom".into())
        );
        assert!(matches!(a.apply("{\"choices\": 3}"), Chunk::Malformed(_)));
        assert!(matches!(a.apply("not json"), Chunk::Malformed(_)));
    }
}
