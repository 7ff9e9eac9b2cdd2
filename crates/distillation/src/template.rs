//! Prompt templates: plain text with `{{name}}` placeholders, shipped in `templates/` and
//! replaceable by the user's own files. A placeholder the strategy does not fill is an error
//! when the run starts, before any request, and every example records its template's sha256.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result, io_error};

/// The shipped templates, by name.
pub const SHIPPED: [(&str, &str); 4] = [
    ("targeted", include_str!("../templates/targeted.txt")),
    ("rationalize", include_str!("../templates/rationalize.txt")),
    ("rederive", include_str!("../templates/rederive.txt")),
    ("judge", include_str!("../templates/judge.txt")),
];

/// The placeholders each template may use.
fn known(name: &str) -> &'static [&'static str] {
    match name {
        "targeted" => &["label", "description", "keywords", "seeds", "count"],
        "rationalize" => &["question", "gold"],
        "rederive" => &["instruction"],
        "judge" => &["label", "description", "instruction", "response"],
        _ => &[],
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    pub name: String,
    /// Where it came from (a file path or `shipped`), for errors.
    pub origin: String,
    pub text: String,
    pub sha256: String,
}

impl Template {
    /// The user's `dir/<name>.txt` when `dir` has one, else the shipped template; checked.
    pub fn load(name: &str, dir: Option<&Path>) -> Result<Self> {
        let shipped = SHIPPED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, text)| *text)
            .ok_or_else(|| Error::Config {
                field: "templates".into(),
                message: format!("no template named `{name}`"),
            })?;
        let (origin, text) = match dir.map(|dir| dir.join(format!("{name}.txt"))) {
            Some(path) if path.is_file() => (
                path.display().to_string(),
                std::fs::read_to_string(&path).map_err(io_error(&path))?,
            ),
            _ => (format!("shipped {name}.txt"), shipped.to_string()),
        };
        let template = Self {
            name: name.to_string(),
            origin,
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            text,
        };
        template.check()?;
        Ok(template)
    }

    fn check(&self) -> Result<()> {
        let known = known(&self.name);
        for placeholder in placeholders(&self.text) {
            if !known.contains(&placeholder) {
                return Err(Error::Template {
                    template: self.origin.clone(),
                    placeholder: placeholder.to_string(),
                    known: known.join(", "),
                });
            }
        }
        Ok(())
    }

    /// The text with every placeholder replaced (a value containing `{{` is inserted as is).
    pub fn render(&self, values: &BTreeMap<&str, String>) -> String {
        let mut out = String::with_capacity(self.text.len());
        let mut rest = self.text.as_str();
        while let Some(start) = rest.find("{{") {
            let Some(len) = rest[start + 2..].find("}}") else {
                break;
            };
            let name = rest[start + 2..start + 2 + len].trim();
            out.push_str(&rest[..start]);
            out.push_str(values.get(name).map(String::as_str).unwrap_or_default());
            rest = &rest[start + 2 + len + 2..];
        }
        out.push_str(rest);
        out
    }
}

fn placeholders(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        found.push(rest[start + 2..start + 2 + len].trim());
        rest = &rest[start + 2 + len + 2..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_templates_load_and_render_every_placeholder() {
        for (name, _) in SHIPPED {
            let template = Template::load(name, None).unwrap();
            let values: BTreeMap<&str, String> = known(name)
                .iter()
                .map(|&key| (key, format!("<{key}>")))
                .collect();
            let text = template.render(&values);
            assert!(!text.contains("{{"), "{name}: {text}");
            for key in known(name) {
                assert!(text.contains(&format!("<{key}>")), "{name} lacks {key}");
            }
            assert_eq!(template.sha256.len(), 64);
        }
    }

    #[test]
    fn a_user_template_with_an_unknown_placeholder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("judge.txt"),
            "Grade {{instruction}} against {{gold_answer}}",
        )
        .unwrap();
        let error = Template::load("judge", Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("judge.txt") && error.contains("{{gold_answer}}"),
            "{error}"
        );
        // A user's valid template replaces the shipped one and changes the hash.
        std::fs::write(dir.path().join("judge.txt"), "Grade {{instruction}}").unwrap();
        let user = Template::load("judge", Some(dir.path())).unwrap();
        assert_ne!(user.sha256, Template::load("judge", None).unwrap().sha256);
    }
}
