//! The model thread: burn tensors are not async, so one dedicated thread owns the model and
//! answers queued requests. Requests that are waiting together and share sampling settings
//! (temperature, top_p) run as one batched [`generate_streaming`] call; each keeps its own
//! seed, token limit and stop strings, and gets its text as it is produced.
//!
//! Batching is static: a batch runs until its last sequence ends, and requests that arrive
//! meanwhile wait for the next batch. A request whose receiver is gone (client disconnected)
//! is ended at its next step, so it stops costing compute.
//!
//! The same thread scores token sequences ([`ScoreRequest`]: log-probabilities of a prompt
//! or of an answer, for `logprobs`): one forward pass each, run before the next batch.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use llama::generate::{
    DecodeGraphs, FinishReason, GenerationConfig, TokenStep, generate_streaming_with,
};
use llama::loglikelihood::{PositionLogprobs, score_tokens};
use llama::{Pretrained, Tokenizer};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::json_constraint::{JsonGrammar, JsonState, TokenMask};

/// How the engine batches.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineOptions {
    /// Most requests decoded together in one batch.
    pub max_batch: usize,
    /// Most requests waiting or running; more are refused (HTTP 503).
    pub max_queue: usize,
    /// After a request arrives at an idle engine, wait this long for companions before
    /// starting the batch (requests sent "at the same time" arrive a few ms apart).
    pub batch_window: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_batch: 8,
            max_queue: 256,
            batch_window: Duration::from_millis(5),
        }
    }
}

/// Sampling settings that must be equal for requests to share a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: f32,
}

impl Sampling {
    /// Greedy ignores `top_p`, so all greedy requests batch together.
    pub fn new(temperature: f32, top_p: f32) -> Self {
        if temperature <= 0.0 {
            Self {
                temperature: 0.0,
                top_p: 1.0,
            }
        } else {
            Self { temperature, top_p }
        }
    }
}

/// One request for the model thread.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub sampling: Sampling,
    pub seed: u64,
    pub max_tokens: usize,
    /// Text-level stop strings: the answer ends before the first occurrence of any.
    pub stop: Vec<String>,
    /// Structured output: every token is chosen among those the grammar allows, and the
    /// answer ends when the JSON value is complete.
    pub constraint: Option<Constraint>,
}

/// A grammar and the vocabulary it is matched against.
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    pub grammar: Arc<JsonGrammar>,
    pub tokens: Arc<TokenMask>,
}

/// What the model thread sends back for one request, in order: deltas, then one `Done` (or
/// one `Failed`). Deltas concatenated are the whole answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Delta(String),
    Done {
        finish_reason: FinishReason,
        /// Tokens the model produced for this request, including the end-of-turn token when
        /// it stopped on one (it was generated, so it is counted, as vLLM does).
        completion_tokens: usize,
        /// The generated token ids without a stop token (they may run past a text-level stop
        /// string, whose text is not in the deltas).
        tokens: Vec<u32>,
    },
    Failed(String),
}

/// Counters of what the model thread did (for logs, tests and benchmarks).
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Batches decoded.
    pub batches: AtomicU64,
    /// Requests decoded (a request counts once, in the batch that ran it).
    pub requests: AtomicU64,
    /// The most requests decoded together so far.
    pub largest_batch: AtomicUsize,
}

/// Log-probabilities of `tokens[from..]` with the `top_k` most likely tokens at each of
/// those positions (see [`score_tokens`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRequest {
    pub tokens: Vec<u32>,
    pub from: usize,
    pub top_k: usize,
}

/// What a [`ScoreRequest`] gets back: one entry per scored position, or why it failed.
pub type ScoreResult = std::result::Result<Vec<PositionLogprobs>, String>;

struct Job {
    request: GenerationRequest,
    events: UnboundedSender<Event>,
}

struct ScoreJob {
    request: ScoreRequest,
    reply: oneshot::Sender<ScoreResult>,
}

/// What the model thread is asked to do.
enum Work {
    Generate(Job),
    Score(ScoreJob),
}

/// Handle to the model thread. Dropping the last handle lets the thread finish its current
/// batch and exit; [`Engine::shutdown`] also waits for it.
pub struct Engine {
    jobs: Option<mpsc::Sender<Work>>,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    stats: Arc<EngineStats>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .field("max_queue", &self.max_queue)
            .finish_non_exhaustive()
    }
}

/// Returned by [`Engine::submit`] when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    pub queued: usize,
}

/// Counts a job as queued until it is finished or dropped.
struct QueueSlot(Arc<AtomicUsize>);

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Engine {
    /// Starts the model thread for `model`.
    pub fn start(model: Pretrained, options: EngineOptions) -> Result<Self> {
        if options.max_batch == 0 {
            return Err(Error::InvalidOption {
                option: "max_batch",
                reason: "must be at least 1".into(),
            });
        }
        if options.max_queue == 0 {
            return Err(Error::InvalidOption {
                option: "max_queue",
                reason: "must be at least 1".into(),
            });
        }
        let (jobs, receiver) = mpsc::channel::<Work>();
        let queued = Arc::new(AtomicUsize::new(0));
        let thread_queued = queued.clone();
        let max_queue = options.max_queue;
        let stats = Arc::new(EngineStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("serve-model".into())
            .spawn(move || run(model, options, receiver, thread_queued, &thread_stats))
            .map_err(|source| Error::Thread { source })?;
        Ok(Self {
            jobs: Some(jobs),
            queued,
            max_queue,
            stats,
            thread: Some(thread),
        })
    }

    /// Queues a request; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the request.
    pub fn submit(
        &self,
        request: GenerationRequest,
    ) -> std::result::Result<UnboundedReceiver<Event>, QueueFull> {
        let (events, receiver) = unbounded_channel();
        self.send(Work::Generate(Job { request, events }))?;
        Ok(receiver)
    }

    /// Queues a scoring request (it counts against the same queue limit); the answer arrives
    /// on the returned receiver, which sees a closed channel if the model thread is gone.
    pub fn submit_score(
        &self,
        request: ScoreRequest,
    ) -> std::result::Result<oneshot::Receiver<ScoreResult>, QueueFull> {
        let (reply, receiver) = oneshot::channel();
        self.send(Work::Score(ScoreJob { request, reply }))?;
        Ok(receiver)
    }

    fn send(&self, work: Work) -> std::result::Result<(), QueueFull> {
        let queued = self.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= self.max_queue {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(QueueFull { queued });
        }
        let sent = self.jobs.as_ref().map(|jobs| jobs.send(work));
        if !matches!(sent, Some(Ok(()))) {
            // The model thread is gone (it panicked): the receiver sees a closed channel.
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }

    pub fn stats(&self) -> Arc<EngineStats> {
        self.stats.clone()
    }

    /// Requests waiting or running.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Stops taking requests, lets the running batch finish and joins the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the model thread panicked");
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    model: Pretrained,
    options: EngineOptions,
    receiver: mpsc::Receiver<Work>,
    queued: Arc<AtomicUsize>,
    stats: &EngineStats,
) {
    let stop_token_ids = model.stop_token_ids();
    // The model never changes while the engine runs, so decode graphs captured for one batch
    // serve every later batch of the same shape.
    let graphs = DecodeGraphs::new();
    let mut pending: VecDeque<(Job, QueueSlot)> = VecDeque::new();
    let mut scores: VecDeque<(ScoreJob, QueueSlot)> = VecDeque::new();
    let slot = || QueueSlot(queued.clone());
    let take = |work: Work,
                pending: &mut VecDeque<(Job, QueueSlot)>,
                scores: &mut VecDeque<(ScoreJob, QueueSlot)>| match work {
        Work::Generate(job) => pending.push_back((job, slot())),
        Work::Score(job) => scores.push_back((job, slot())),
    };
    loop {
        if pending.is_empty() && scores.is_empty() {
            let Ok(work) = receiver.recv() else {
                return;
            };
            take(work, &mut pending, &mut scores);
            if !pending.is_empty() {
                let deadline = Instant::now() + options.batch_window;
                while pending.len() < options.max_batch {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match receiver.recv_timeout(left) {
                        Ok(work) => take(work, &mut pending, &mut scores),
                        Err(_) => break,
                    }
                }
            }
        }
        while let Ok(work) = receiver.try_recv() {
            take(work, &mut pending, &mut scores);
        }
        // Scores first: one forward pass each, short next to a batch of decoding.
        while let Some((job, _slot)) = scores.pop_front() {
            if job.reply.is_closed() {
                continue;
            }
            let device = model.model.device();
            let request = &job.request;
            let result = score_tokens(
                &model.model,
                &request.tokens,
                request.from,
                request.top_k,
                &device,
            )
            .map_err(|e| format!("scoring failed: {e}"));
            let _ = job.reply.send(result);
        }
        // Requests whose client left while they waited are dropped unanswered.
        pending.retain(|(job, _)| !job.events.is_closed());
        let Some((first, _)) = pending.front() else {
            continue;
        };
        let sampling = first.request.sampling;
        let mut batch = Vec::new();
        let mut rest = VecDeque::new();
        for entry in pending.drain(..) {
            if batch.len() < options.max_batch && entry.0.request.sampling == sampling {
                batch.push(entry);
            } else {
                rest.push_back(entry);
            }
        }
        pending = rest;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats
            .largest_batch
            .fetch_max(batch.len(), Ordering::Relaxed);
        run_batch(&model, &graphs, &stop_token_ids, sampling, batch);
    }
}

/// Runs one batch and reports every request's text as it grows.
fn run_batch(
    model: &Pretrained,
    graphs: &DecodeGraphs,
    stop_token_ids: &[u32],
    sampling: Sampling,
    batch: Vec<(Job, QueueSlot)>,
) {
    let started = Instant::now();
    let jobs: Vec<&Job> = batch.iter().map(|(job, _)| job).collect();
    let prompts: Vec<Vec<u32>> = jobs.iter().map(|j| j.request.prompt.clone()).collect();
    let seeds: Vec<u64> = jobs.iter().map(|j| j.request.seed).collect();
    let config = GenerationConfig {
        max_new_tokens: jobs.iter().map(|j| j.request.max_tokens).max().unwrap_or(1),
        temperature: sampling.temperature,
        top_p: sampling.top_p,
        seed: 0,
        stop_token_ids: stop_token_ids.to_vec(),
        stop_sequences: Vec::new(),
        batch_size: jobs.len(),
    };
    let mut texts: Vec<TextStream> = jobs.iter().map(|_| TextStream::default()).collect();
    let tokenizer = &model.tokenizer;
    // Structured outputs: each constrained request's grammar state, shared by the mask (which
    // reads it before a token is chosen) and `on_step` (which moves it over the chosen token).
    let states: RefCell<Vec<Option<Grammar>>> = RefCell::new(
        jobs.iter()
            .map(|job| job.request.constraint.as_ref().map(Grammar::start))
            .collect(),
    );
    let constrained = states.borrow().iter().any(Option::is_some);
    let mut on_step = |step: TokenStep<'_>| -> Option<FinishReason> {
        let job = jobs[step.prompt_index];
        let text = &mut texts[step.prompt_index];
        let grammar = match states.borrow_mut()[step.prompt_index].as_mut() {
            Some(grammar) => grammar.follow(step.tokens),
            None => GrammarProgress::Open,
        };
        on_token(job, text, tokenizer, step, grammar)
    };
    let mut mask = |prompt_index: usize, logits: &mut [f32]| {
        if let Some(grammar) = states.borrow_mut()[prompt_index].as_mut() {
            grammar.restrict(logits);
        }
    };
    let result = generate_streaming_with(
        &model.model,
        graphs,
        &prompts,
        &config,
        &model.model.device(),
        Some(&seeds),
        constrained.then_some(&mut mask as &mut llama::generate::LogitsMask<'_>),
        &mut on_step,
    );
    if let Err(error) = result {
        for (job, text) in jobs.iter().zip(&texts) {
            if !text.done {
                let _ = job
                    .events
                    .send(Event::Failed(format!("generation failed: {error}")));
            }
        }
    }
    tracing::debug!(
        batch = jobs.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "batch done"
    );
}

/// One constrained request's place in its grammar.
struct Grammar {
    constraint: Constraint,
    state: JsonState,
    /// Tokens of the answer the state has moved over.
    followed: usize,
    /// The mask found no token to allow (a grammar with no way on; not expected with a
    /// byte-level vocabulary): the request is failed rather than answered unconstrained.
    stuck: bool,
}

/// Where a request stands against its grammar after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrammarProgress {
    /// Unconstrained, or the value is still open.
    Open,
    /// The JSON value is complete: the answer ends here.
    Complete,
    /// The grammar could not continue (see [`Grammar::stuck`]).
    Stuck,
}

impl Grammar {
    fn start(constraint: &Constraint) -> Self {
        Self {
            state: constraint.grammar.start(),
            constraint: constraint.clone(),
            followed: 0,
            stuck: false,
        }
    }

    /// Moves over the tokens of `answer` not yet followed (a stop token never enters it).
    fn follow(&mut self, answer: &[u32]) -> GrammarProgress {
        let Constraint { grammar, tokens } = &self.constraint;
        for &token in &answer[self.followed.min(answer.len())..] {
            if !tokens.advance(grammar, &mut self.state, token) {
                self.stuck = true;
            }
        }
        self.followed = answer.len();
        if self.stuck {
            GrammarProgress::Stuck
        } else if self.state.is_complete() {
            GrammarProgress::Complete
        } else {
            GrammarProgress::Open
        }
    }

    fn restrict(&mut self, logits: &mut [f32]) {
        let Constraint { grammar, tokens } = &self.constraint;
        if tokens.restrict(grammar, &self.state, logits) == 0 {
            self.stuck = true;
        }
    }
}

/// Handles one new token of one request: decode, look for stop strings, send the text that is
/// safe to show, and decide whether the request is over.
fn on_token(
    job: &Job,
    text: &mut TextStream,
    tokenizer: &Tokenizer,
    step: TokenStep<'_>,
    grammar: GrammarProgress,
) -> Option<FinishReason> {
    if text.done {
        return Some(FinishReason::Stop);
    }
    if grammar == GrammarProgress::Stuck {
        text.done = true;
        let _ = job.events.send(Event::Failed(
            "constrained decoding reached a state that no token of the vocabulary continues".into(),
        ));
        return Some(FinishReason::Stop);
    }
    if job.events.is_closed() {
        text.done = true;
        return Some(FinishReason::Stop);
    }
    let decoded = match tokenizer.decode(step.tokens, true) {
        Ok(decoded) => decoded,
        Err(error) => {
            text.done = true;
            let _ = job
                .events
                .send(Event::Failed(format!("decoding failed: {error}")));
            return Some(FinishReason::Stop);
        }
    };
    let at_limit = step.tokens.len() >= job.request.max_tokens;
    let complete = grammar == GrammarProgress::Complete;
    let ending = step.finished.is_some() || at_limit || complete;
    let advance = text.advance(&decoded, &job.request.stop, ending);
    if let Some(delta) = advance.delta {
        let _ = job.events.send(Event::Delta(delta));
    }
    let (finish_reason, completion_tokens) = if advance.stopped {
        (FinishReason::Stop, step.tokens.len())
    } else if let Some(reason) = step.finished {
        // A stop token ends the sequence without entering `tokens`; it was still generated.
        let extra = usize::from(reason == FinishReason::Stop);
        (reason, step.tokens.len() + extra)
    } else if complete {
        // The value is whole: nothing but an end of turn could follow.
        (FinishReason::Stop, step.tokens.len())
    } else if at_limit {
        (FinishReason::Length, step.tokens.len())
    } else {
        return None;
    };
    text.done = true;
    let _ = job.events.send(Event::Done {
        finish_reason,
        completion_tokens,
        tokens: step.tokens.to_vec(),
    });
    Some(finish_reason)
}

/// Incremental detokenisation: from the full decoded text at each step, the part that can be
/// shown now. Holds back an incomplete UTF-8 character (decoded as U+FFFD until its last byte
/// arrives) and any tail that could be the start of a stop string.
#[derive(Debug, Default)]
pub struct TextStream {
    /// Bytes of the decoded text already sent.
    sent: usize,
    done: bool,
}

/// What [`TextStream::advance`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    pub delta: Option<String>,
    /// A stop string was found; the text before it has been sent in full.
    pub stopped: bool,
}

impl TextStream {
    /// `text` is the decode of all tokens so far; `last` flushes everything held back.
    pub fn advance(&mut self, text: &str, stops: &[String], last: bool) -> Advance {
        if !text.is_char_boundary(self.sent.min(text.len())) || text.len() < self.sent {
            // Decoding more tokens never rewrites earlier text for byte-level BPE; if a
            // tokenizer ever did, wait for the end rather than send inconsistent text.
            return Advance {
                delta: None,
                stopped: false,
            };
        }
        let longest_stop = stops.iter().map(String::len).max().unwrap_or(0);
        let mut search_from = self.sent.saturating_sub(longest_stop);
        while !text.is_char_boundary(search_from) {
            search_from -= 1;
        }
        let stop_at = stops
            .iter()
            .filter_map(|stop| text[search_from..].find(stop.as_str()))
            .map(|at| (at + search_from).max(self.sent))
            .min();
        let (end, stopped) = match stop_at {
            Some(at) => (at, true),
            None if last => (text.len(), false),
            None => {
                let mut end = text.len() - held_back(text, self.sent, stops);
                let unfinished_char = text[self.sent..end].strip_suffix('\u{FFFD}');
                if let Some(before) = unfinished_char {
                    end = self.sent + before.len();
                }
                (end, false)
            }
        };
        let delta = (end > self.sent).then(|| text[self.sent..end].to_owned());
        self.sent = self.sent.max(end);
        Advance { delta, stopped }
    }
}

/// Length of the longest tail of `text` (after byte `sent`) that is a proper prefix of a stop
/// string, which must not be shown until it is clear whether the stop string follows.
fn held_back(text: &str, sent: usize, stops: &[String]) -> usize {
    let unsent = &text[sent..];
    stops
        .iter()
        .flat_map(|stop| {
            (1..stop.len())
                .filter(|&k| stop.is_char_boundary(k))
                .filter(|&k| unsent.ends_with(&stop[..k]))
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(steps: &[&str], stops: &[&str]) -> (Vec<String>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut stream = TextStream::default();
        let mut deltas = Vec::new();
        let mut stopped = false;
        for (i, text) in steps.iter().enumerate() {
            let advance = stream.advance(text, &stops, i + 1 == steps.len());
            deltas.extend(advance.delta);
            if advance.stopped {
                stopped = true;
                break;
            }
        }
        (deltas, stopped)
    }

    #[test]
    fn deltas_add_up_to_the_text() {
        let (deltas, stopped) = feed(&["The", "The cap", "The capital"], &[]);
        assert_eq!(deltas, ["The", " cap", "ital"]);
        assert!(!stopped);
    }

    #[test]
    fn an_unfinished_character_waits_for_its_last_byte() {
        let (deltas, _) = feed(&["caf", "caf\u{FFFD}", "café", "café!"], &[]);
        assert_eq!(deltas, ["caf", "é", "!"]);
        // At the end whatever is there is the answer.
        let (deltas, _) = feed(&["x", "x\u{FFFD}"], &[]);
        assert_eq!(deltas.concat(), "x\u{FFFD}");
    }

    #[test]
    fn stop_strings_end_the_text_and_are_never_shown() {
        let (deltas, stopped) = feed(
            &["Hello", "Hello\nUs", "Hello\nUser:", "Hello\nUser: hi"],
            &["\nUser:"],
        );
        assert_eq!(deltas.concat(), "Hello");
        assert!(stopped);
        // A partial match is held back, then released when it turns out not to be the stop.
        let (deltas, stopped) = feed(&["a#", "a##", "a##b"], &["###"]);
        assert_eq!(deltas, ["a", "##b"]);
        assert!(!stopped);
        // The earliest of several stop strings wins, even inside one step.
        let (deltas, stopped) = feed(&["one two three"], &["three", "two"]);
        assert_eq!(deltas.concat(), "one ");
        assert!(stopped);
    }
}
