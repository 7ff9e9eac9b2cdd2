//! HF chat templates rendered with minijinja, configured as transformers configures jinja2
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`, `strftime_now`),
//! plus assistant spans for loss masks, found by rendering conversation prefixes because HF's
//! `{% generation %}` tag has no minijinja equivalent.
//!
//! ```
//! use llama::{ChatMessage, ChatTemplate};
//! let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
//!               {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
//! let template = ChatTemplate::new(chatml, "", "<|im_end|>")?;
//! let text = template.render(&[ChatMessage::user("Hi")], true)?;
//! assert_eq!(text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
//! # Ok::<(), llama::Error>(())
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Per-render settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// Append the header that starts an assistant reply.
    pub add_generation_prompt: bool,
    /// Passed to the template as `date_string` (Llama 3.x print it as "Today Date"); when absent the
    /// template chooses, e.g. Llama 3.1 defaults to "26 Jul 2024" and Llama 3.2 calls `strftime_now`.
    pub date_string: Option<String>,
}

/// A conversation rendered for training: the text and the byte ranges of `text` written by the assistant
/// (each reply with its end-of-turn marker, without the header before it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedConversation {
    pub text: String,
    pub assistant_spans: Vec<Range<usize>>,
}

const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template with the special-token strings it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

fn template_error(context: &str, error: &minijinja::Error) -> Error {
    // `{:#}` includes the template line the error points at.
    Error::ChatTemplate(format!("{context}: {error:#}"))
}

impl ChatTemplate {
    /// Compiles `source`; syntax errors are reported here, not at render time.
    pub fn new(
        source: &str,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        // transformers: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True), and jinja2's
        // default keep_trailing_newline=False.
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| template_error("syntax config", &e))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| template_error("compiling", &e))?;
        Ok(Self {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// Renders `messages` as HF's `apply_chat_template(..., tokenize=False)` does.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(
            messages,
            &RenderOptions {
                add_generation_prompt,
                date_string: None,
            },
        )
    }

    pub fn render_with(&self, messages: &[ChatMessage], options: &RenderOptions) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut object = BTreeMap::new();
                object.insert("role".to_string(), Value::from(m.role.as_str()));
                object.insert("content".to_string(), Value::from(m.content.as_str()));
                Value::from_object(object)
            })
            .collect();
        let mut context: BTreeMap<String, Value> = BTreeMap::new();
        context.insert("messages".into(), Value::from(messages));
        context.insert(
            "add_generation_prompt".into(),
            Value::from(options.add_generation_prompt),
        );
        context.insert("bos_token".into(), Value::from(self.bos_token.as_str()));
        context.insert("eos_token".into(), Value::from(self.eos_token.as_str()));
        if let Some(date) = &options.date_string {
            context.insert("date_string".into(), Value::from(date.as_str()));
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_error("loading", &e))?;
        template
            .render(Value::from_object(context))
            .map_err(|e| template_error("rendering", &e))
    }

    /// Renders a whole conversation (no generation prompt) and finds each assistant reply's bytes:
    /// reply `i` spans from the end of `messages[..i]` rendered with a generation prompt to the end
    /// of `messages[..=i]` rendered without. Fails if the template does not render prefixes as
    /// prefixes of the whole (then masks cannot be derived this way), naming the message.
    pub fn render_with_assistant_spans(
        &self,
        messages: &[ChatMessage],
        date_string: Option<&str>,
    ) -> Result<RenderedConversation> {
        let options = |add_generation_prompt| RenderOptions {
            add_generation_prompt,
            date_string: date_string.map(str::to_string),
        };
        let text = self.render_with(messages, &options(false))?;
        let mut assistant_spans = Vec::new();
        for (index, message) in messages.iter().enumerate() {
            if message.role != "assistant" {
                continue;
            }
            let before = self.render_with(&messages[..index], &options(true))?;
            let through = self.render_with(&messages[..=index], &options(false))?;
            if !through.starts_with(&before) || !text.starts_with(&through) {
                return Err(Error::ChatTemplate(format!(
                    "assistant message {index}: the template does not render conversation prefixes as \
                     prefixes of the whole conversation, so its reply cannot be located"
                )));
            }
            if before.len() < through.len() {
                assistant_spans.push(before.len()..through.len());
            }
        }
        Ok(RenderedConversation {
            text,
            assistant_spans,
        })
    }
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)` as transformers provides it, but in UTC where transformers uses local
/// time: no timezone database dependency, and our machines run in UTC.
fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?
        .as_secs() as i64;
    strftime(&format, seconds).map(Value::from)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The subset of C `strftime` that chat templates use, for a UTC timestamp.
fn strftime(format: &str, unix_seconds: i64) -> std::result::Result<String, minijinja::Error> {
    let days = unix_seconds.div_euclid(86_400);
    let second_of_day = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let month_name = MONTHS[month as usize - 1];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{:02}", second_of_day / 3600)),
            Some('M') => out.push_str(&format!("{:02}", second_of_day / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", second_of_day % 60)),
            Some('%') => out.push('%'),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported format directive %{}",
                        other.map(String::from).unwrap_or_default()
                    ),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 00:00:00 UTC = 1721952000; a Friday.
        assert_eq!(strftime("%d %b %Y", 1_721_952_000).unwrap(), "26 Jul 2024");
        assert_eq!(
            strftime("%A %d %B %Y %H:%M:%S", 1_721_952_000 + 3_723).unwrap(),
            "Friday 26 July 2024 01:02:03"
        );
        // Leap day and the epoch.
        assert_eq!(
            strftime("%Y-%m-%d %a", 951_782_400).unwrap(),
            "2000-02-29 Tue"
        );
        assert_eq!(strftime("%Y-%m-%d %a", 0).unwrap(), "1970-01-01 Thu");
        assert!(strftime("%Q", 0).is_err());
    }

    #[test]
    fn raise_exception_surfaces_the_message() {
        let template =
            ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
        let error = template.render(&[], false).unwrap_err().to_string();
        assert!(error.contains("no system role"), "{error}");
    }

    #[test]
    fn syntax_errors_fail_at_compile() {
        let error = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err();
        assert!(matches!(error, Error::ChatTemplate(_)), "{error}");
    }

    #[test]
    fn python_string_methods_work() {
        let template = ChatTemplate::new(
            "{% for m in messages %}{{ m.content.strip().upper() }}|{{ m['role'].startswith('us') and 'yes' }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            template
                .render(&[ChatMessage::user("  hi ")], false)
                .unwrap(),
            "HI|yes"
        );
    }
}
