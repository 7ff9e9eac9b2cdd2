//! The parts of a HF `BertModel` `config.json` the encoder needs, validated once.

use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// `config.json` of a BERT encoder (as written by HF transformers).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
}

fn default_type_vocab_size() -> usize {
    2
}

fn default_position_embedding_type() -> String {
    "absolute".to_string()
}

impl BertConfig {
    /// Reads and validates `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks the architecture is the one [`crate::Bert`] implements.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let invalid = |field: &'static str, message: String| Error::InvalidConfig {
            path: path.to_path_buf(),
            field,
            message,
        };
        // HF's "gelu" is the exact erf form; "gelu_new" and friends are the tanh approximation,
        // which would silently shift every embedding.
        if self.hidden_act != "gelu" {
            return Err(invalid(
                "hidden_act",
                format!("`{}` is not supported (only exact `gelu`)", self.hidden_act),
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(invalid(
                "position_embedding_type",
                format!(
                    "`{}` is not supported (only `absolute`)",
                    self.position_embedding_type
                ),
            ));
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(invalid(field, "must be positive".to_string()));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(invalid(
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(invalid(
                "layer_norm_eps",
                format!("{} must be a positive number", self.layer_norm_eps),
            ));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minilm() -> BertConfig {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            hidden_act: "gelu".to_string(),
            layer_norm_eps: 1e-12,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            position_embedding_type: "absolute".to_string(),
        }
    }

    fn field_of(error: Error) -> &'static str {
        match error {
            Error::InvalidConfig { field, .. } => field,
            other => panic!("expected InvalidConfig, got {other}"),
        }
    }

    #[test]
    fn accepts_minilm_and_rejects_other_architectures() {
        let path = Path::new("config.json");
        minilm().validate(path).unwrap();
        assert_eq!(minilm().head_dim(), 32);

        let tanh_gelu = BertConfig {
            hidden_act: "gelu_new".to_string(),
            ..minilm()
        };
        let error = tanh_gelu.validate(path).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("config.json: field `hidden_act`"),
            "{error}"
        );

        let relative = BertConfig {
            position_embedding_type: "relative_key".to_string(),
            ..minilm()
        };
        assert_eq!(
            field_of(relative.validate(path).unwrap_err()),
            "position_embedding_type"
        );

        let ragged_heads = BertConfig {
            num_attention_heads: 7,
            ..minilm()
        };
        assert_eq!(
            field_of(ragged_heads.validate(path).unwrap_err()),
            "num_attention_heads"
        );

        let no_eps = BertConfig {
            layer_norm_eps: 0.0,
            ..minilm()
        };
        assert_eq!(
            field_of(no_eps.validate(path).unwrap_err()),
            "layer_norm_eps"
        );
    }

    #[test]
    fn parses_hf_json_with_defaults() {
        let json = r#"{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16, "hidden_act": "gelu",
            "layer_norm_eps": 1e-12, "max_position_embeddings": 32, "model_type": "bert"}"#;
        let config: BertConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.type_vocab_size, 2);
        assert_eq!(config.position_embedding_type, "absolute");
        config.validate(Path::new("config.json")).unwrap();
    }
}
