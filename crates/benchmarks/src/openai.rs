//! A generation-only [`LanguageModel`] over an OpenAI-compatible HTTP endpoint
//! (`/v1/chat/completions` for chat prompts, `/v1/completions` for text prompts), such as a
//! local vLLM or llama.cpp server.
//!
//! Plain `http://` only (std sockets, no TLS stack): point it at a local server or a local
//! TLS-terminating proxy. The API key, if any, is read from an environment variable and only
//! ever sent in the `Authorization` header.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::error::{Error, ModelError};
use crate::model::{GenerationRequest, LanguageModel, Loglikelihood, LoglikelihoodRequest, Prompt};

#[derive(Clone, Debug)]
pub struct OpenAiEndpoint {
    host: String,
    port: u16,
    /// Path prefix, e.g. `/v1`.
    base_path: String,
    model: String,
    api_key: Option<String>,
    /// Requests in flight at once.
    pub concurrency: usize,
    pub timeout: Duration,
}

fn endpoint_error(url: &str, message: impl Into<String>) -> Error {
    Error::Endpoint {
        url: url.to_string(),
        message: message.into(),
    }
}

impl OpenAiEndpoint {
    /// `base_url` like `http://127.0.0.1:8000/v1`; `model` is the id sent in each request;
    /// `api_key_env` names the environment variable holding the key (absent or empty: no key).
    pub fn new(base_url: &str, model: &str, api_key_env: Option<&str>) -> Result<Self, Error> {
        let rest = base_url.strip_prefix("http://").ok_or_else(|| {
            endpoint_error(
                base_url,
                "only http:// endpoints are supported (no TLS built in); use a local server or proxy",
            )
        })?;
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host.to_string(),
                port.parse()
                    .map_err(|_| endpoint_error(base_url, format!("bad port `{port}`")))?,
            ),
            None => (authority.to_string(), 80),
        };
        let api_key = api_key_env
            .and_then(|name| std::env::var(name).ok())
            .filter(|key| !key.is_empty());
        Ok(Self {
            host,
            port,
            base_path: format!("/{}", path.trim_end_matches('/')).replace("//", "/"),
            model: model.to_string(),
            api_key,
            concurrency: 4,
            timeout: Duration::from_secs(600),
        })
    }

    fn url(&self, path: &str) -> String {
        format!(
            "http://{}:{}{}{}",
            self.host,
            self.port,
            self.base_path.trim_end_matches('/'),
            path
        )
    }

    fn body(&self, request: &GenerationRequest) -> (String, serde_json::Value) {
        // Endpoints accept at most 4 stop strings; the harness truncates at the rest.
        let stop: Vec<&String> = request.stop.iter().take(4).collect();
        let mut body = serde_json::json!({
            "model": self.model,
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "seed": request.seed,
        });
        if !stop.is_empty() {
            body["stop"] = serde_json::json!(stop);
        }
        match &request.prompt {
            Prompt::Chat(messages) => {
                body["messages"] = serde_json::to_value(messages).expect("messages serialise");
                ("/chat/completions".into(), body)
            }
            Prompt::Text(text) => {
                body["prompt"] = serde_json::json!(text);
                ("/completions".into(), body)
            }
        }
    }

    fn post(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value, Error> {
        let url = self.url(path);
        let full_path = format!("{}{}", self.base_path.trim_end_matches('/'), path);
        let payload = serde_json::to_vec(body).expect("JSON body");
        let address = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| endpoint_error(&url, e.to_string()))?
            .next()
            .ok_or_else(|| endpoint_error(&url, "host did not resolve"))?;
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(10))
            .map_err(|e| endpoint_error(&url, format!("connect: {e}")))?;
        stream.set_read_timeout(Some(self.timeout)).ok();
        let mut head = format!(
            "POST {full_path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.host,
            self.port,
            payload.len()
        );
        if let Some(key) = &self.api_key {
            head.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(&payload))
            .map_err(|e| endpoint_error(&url, format!("send: {e}")))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .map_err(|e| endpoint_error(&url, format!("receive: {e}")))?;
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| endpoint_error(&url, "response has no header terminator"))?;
        let head = String::from_utf8_lossy(&response[..split]).to_string();
        let mut body = response[split + 4..].to_vec();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| endpoint_error(&url, "malformed status line"))?;
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body).ok_or_else(|| endpoint_error(&url, "malformed chunked body"))?;
        }
        if status != 200 {
            let text = String::from_utf8_lossy(&body);
            return Err(endpoint_error(
                &url,
                format!(
                    "HTTP {status}: {}",
                    text.chars().take(500).collect::<String>()
                ),
            ));
        }
        serde_json::from_slice(&body)
            .map_err(|e| endpoint_error(&url, format!("response is not JSON: {e}")))
    }

    fn generate_one(&self, request: &GenerationRequest) -> Result<String, Error> {
        let (path, body) = self.body(request);
        let response = self.post(&path, &body)?;
        let choice = &response["choices"][0];
        choice["message"]["content"]
            .as_str()
            .or_else(|| choice["text"].as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                endpoint_error(
                    &self.url(&path),
                    "no choices[0].message.content or choices[0].text",
                )
            })
    }
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

impl LanguageModel for OpenAiEndpoint {
    fn name(&self) -> String {
        format!("{} @ {}", self.model, self.url(""))
    }

    fn supports_loglikelihood(&self) -> bool {
        false
    }

    fn loglikelihood(
        &self,
        _requests: &[LoglikelihoodRequest],
    ) -> Result<Vec<Loglikelihood>, ModelError> {
        Err(Box::new(Error::LoglikelihoodUnsupported {
            model: self.name(),
        }))
    }

    fn generate(&self, requests: &[GenerationRequest]) -> Result<Vec<String>, ModelError> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<std::sync::Mutex<Option<Result<String, Error>>>> = requests
            .iter()
            .map(|_| std::sync::Mutex::new(None))
            .collect();
        std::thread::scope(|scope| {
            for _ in 0..self.concurrency.clamp(1, requests.len().max(1)) {
                scope.spawn(|| {
                    loop {
                        let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(request) = requests.get(index) else {
                            break;
                        };
                        *results[index].lock().expect("unpoisoned") =
                            Some(self.generate_one(request));
                    }
                });
            }
        });
        results
            .into_iter()
            .map(|slot| {
                slot.into_inner()
                    .expect("unpoisoned")
                    .expect("every request ran")
                    .map_err(|e| Box::new(e) as ModelError)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls_and_refuses_https() {
        let endpoint = OpenAiEndpoint::new("http://127.0.0.1:8000/v1/", "m", None).unwrap();
        assert_eq!(
            endpoint.url("/chat/completions"),
            "http://127.0.0.1:8000/v1/chat/completions"
        );
        let error = OpenAiEndpoint::new("https://api.example.com/v1", "m", None).unwrap_err();
        assert!(error.to_string().contains("only http://"), "{error}");
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n5;x=1\r\npedia\r\n0\r\n\r\n").unwrap(),
            b"Wikipedia"
        );
        assert!(dechunk(b"ff\r\nshort").is_none());
    }
}
