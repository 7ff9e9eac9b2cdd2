//! Many requests at once: results in input order, every failure reported per item.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinSet;

use crate::client::LlmClient;
use crate::error::{Error, Result};
use crate::request::{ChatRequest, ChatResponse, CompletionRequest};

/// Whether a batch draws a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    /// On stderr when stderr is a terminal, hidden otherwise (CI, tests, pipes).
    #[default]
    Auto,
    Hidden,
}

/// Outcome of [`LlmClient::chat_batch`].
#[derive(Debug)]
pub struct BatchReport {
    /// One entry per input request, in input order.
    pub results: Vec<Result<ChatResponse>>,
    pub counts: BatchCounts,
    /// Spend added during this batch (ledger total after minus before).
    pub spend_usd: f64,
    /// The ledger's running total after the batch.
    pub total_spend_usd: f64,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchCounts {
    /// Answered (over HTTP or from the ledger).
    pub ok: usize,
    /// Of `ok`, answered from the ledger without HTTP.
    pub from_ledger: usize,
    pub failed: usize,
    /// `failed` by [`Error::kind`].
    pub failed_by_kind: BTreeMap<&'static str, usize>,
}

impl BatchReport {
    /// Answers per second of wall time.
    pub fn rate_per_sec(&self) -> f64 {
        self.results.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl LlmClient {
    /// Runs all requests (concurrency, rate limits and budget as configured) and returns one
    /// result per request in input order. Finished requests come from the ledger, so rerunning
    /// an interrupted batch pays only for what did not finish.
    ///
    /// With [`crate::ClientConfig::provider_batch`] set, the requests go through the
    /// provider's Batch API instead (see [`crate::ProviderBatch`]): same ledger, budget and
    /// results, at the batch price, answered within the batch's completion window.
    pub async fn chat_batch(&self, requests: Vec<ChatRequest>, progress: Progress) -> BatchReport {
        if let Some(settings) = &self.config().provider_batch {
            let calls = requests.into_iter().map(|r| self.chat_call(r)).collect();
            return self.provider_batch(calls, progress, settings).await;
        }
        self.batch(requests, progress, |client, request| async move {
            client.chat(request).await
        })
        .await
    }

    /// [`LlmClient::chat_batch`] for text completions.
    pub async fn completion_batch(
        &self,
        requests: Vec<CompletionRequest>,
        progress: Progress,
    ) -> BatchReport {
        if let Some(settings) = &self.config().provider_batch {
            let calls = requests
                .into_iter()
                .map(|r| self.completion_call(r))
                .collect();
            return self.provider_batch(calls, progress, settings).await;
        }
        self.batch(requests, progress, |client, request| async move {
            client.completion(request).await
        })
        .await
    }

    async fn batch<R, F, Fut>(&self, requests: Vec<R>, progress: Progress, call: F) -> BatchReport
    where
        R: Send + 'static,
        F: Fn(LlmClient, R) -> Fut,
        Fut: std::future::Future<Output = Result<ChatResponse>> + Send + 'static,
    {
        let started = Instant::now();
        let spent_before = self.spent_usd();
        let total = requests.len();
        let bar = progress_bar(total as u64, progress);
        // Keep a bounded number of tasks alive; each one waits for an HTTP slot inside `chat`.
        let window = self.config().max_concurrency * 4 + 16;
        let mut results: Vec<Option<Result<ChatResponse>>> = (0..total).map(|_| None).collect();
        let mut task_index = HashMap::new();
        let mut tasks = JoinSet::new();
        let mut queue = requests.into_iter().enumerate();
        let mut failed = 0usize;
        loop {
            while tasks.len() < window {
                let Some((index, request)) = queue.next() else {
                    break;
                };
                let answer = call(self.clone(), request);
                let handle = tasks.spawn(async move { (index, answer.await) });
                task_index.insert(handle.id(), index);
            }
            let Some(joined) = tasks.join_next_with_id().await else {
                break;
            };
            let (index, result) = match joined {
                Ok((_, (index, result))) => (index, result),
                Err(e) => {
                    let index = task_index[&e.id()];
                    let reason = if e.is_panic() {
                        "task panicked"
                    } else {
                        "task cancelled"
                    };
                    (
                        index,
                        Err(Error::ItemLost {
                            index,
                            reason: reason.into(),
                        }),
                    )
                }
            };
            failed += usize::from(result.is_err());
            results[index] = Some(result);
            bar.set_message(format!(
                "failed {} | ${:.4}",
                failed,
                self.spent_usd() - spent_before
            ));
            bar.inc(1);
        }
        bar.finish();
        self.batch_report(results, started, spent_before)
    }

    /// The report of a batch: one result per request (an index without one is reported lost),
    /// counted, with the spend since `spent_before`.
    pub(crate) fn batch_report(
        &self,
        results: Vec<Option<Result<ChatResponse>>>,
        started: Instant,
        spent_before: f64,
    ) -> BatchReport {
        let results = results
            .into_iter()
            .enumerate()
            .map(|(index, r)| {
                r.unwrap_or_else(|| {
                    Err(Error::ItemLost {
                        index,
                        reason: "no result recorded".into(),
                    })
                })
            })
            .collect::<Vec<_>>();
        let mut counts = BatchCounts::default();
        for result in &results {
            match result {
                Ok(r) => {
                    counts.ok += 1;
                    counts.from_ledger += usize::from(r.from_ledger);
                }
                Err(e) => {
                    counts.failed += 1;
                    *counts.failed_by_kind.entry(e.kind()).or_default() += 1;
                }
            }
        }
        let total_spend_usd = self.spent_usd();
        BatchReport {
            results,
            counts,
            spend_usd: total_spend_usd - spent_before,
            total_spend_usd,
            elapsed: started.elapsed(),
        }
    }
}

pub(crate) fn progress_bar(len: u64, progress: Progress) -> ProgressBar {
    let visible = progress == Progress::Auto && std::io::stderr().is_terminal();
    let target = if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} done | {per_sec} | ETA {eta} | {msg}",
        )
        .expect("valid progress template"),
    );
    bar
}
