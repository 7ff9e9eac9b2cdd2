//! The LLM side of clustering's labelling seam: any [`ChatBackend`] (a hosted API, vLLM,
//! tuneloop's own serve) names clusters, asked for JSON that follows
//! [`clustering::label::label_json_schema`] and parsed tolerantly.

use std::future::Future;

use clustering::label::{
    ClusterDescription, ClusterLabeller, label_json_schema, label_prompt, parse_label_response,
};
use records::clusters::ClusterLabel;

use crate::client::ChatBackend;
use crate::request::{ChatRequest, JsonSchema, Message};
use crate::{Error, Result};

/// Labels clusters with one chat request each (greedy, schema-constrained where the server
/// supports it).
#[derive(Debug, Clone)]
pub struct ChatClusterLabeller<B> {
    backend: B,
    max_tokens: u32,
}

impl<B: ChatBackend> ChatClusterLabeller<B> {
    pub fn new(backend: B) -> Self {
        Self {
            backend,
            max_tokens: 256,
        }
    }

    /// The request sent for one cluster.
    pub fn request(&self, description: &ClusterDescription) -> ChatRequest {
        let prompt = label_prompt(description);
        ChatRequest {
            messages: vec![Message::system(prompt.system), Message::user(prompt.user)],
            temperature: Some(0.0),
            max_tokens: Some(self.max_tokens),
            seed: Some(0),
            json_schema: Some(JsonSchema {
                name: "cluster_label".into(),
                schema: label_json_schema(),
                strict: true,
            }),
            logprobs: None,
            stop: Vec::new(),
        }
    }
}

impl<B: ChatBackend> ClusterLabeller for ChatClusterLabeller<B> {
    type Error = Error;

    fn label(
        &self,
        description: &ClusterDescription,
    ) -> impl Future<Output = Result<ClusterLabel>> + Send {
        let request = self.request(description);
        async move {
            let response = self.backend.complete(request).await?;
            // The label records which model named it, so reports tell LLM labels apart.
            parse_label_response(&response.content, &response.model).map_err(Error::from)
        }
    }
}
