//! The durable request ledger (SQLite, WAL mode).
//!
//! Two tables. `requests`: one row per request hash with its status (`pending` → `done` or
//! `failed`), the answer, tokens and cost. `attempts`: one row per HTTP attempt, written
//! *before* the attempt is sent with the attempt's upper-bound cost, and settled to its real
//! cost afterwards. Total spend is the sum over `attempts`, so an attempt that was in flight when
//! the process was killed stays counted at its upper bound: the running total may over-count
//! what the provider billed, never under-count it. `synchronous = NORMAL` in WAL mode survives a
//! killed process (only an OS crash can lose the last commits).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, Result};
use crate::request::ChatResponse;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    hash TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request_json TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    content TEXT,
    finish_reason TEXT,
    response_model TEXT,
    response_json TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cost_usd REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_unix_ms INTEGER NOT NULL,
    updated_unix_ms INTEGER NOT NULL,
    logprobs_json TEXT
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    started_unix_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    http_status INTEGER,
    cost_usd REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_by_hash ON attempts(hash);
CREATE TABLE IF NOT EXISTS provider_batches (
    key TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('submitting', 'submitted', 'closed')),
    provider_status TEXT,
    input_file_id TEXT,
    batch_id TEXT,
    created_unix_ms INTEGER NOT NULL,
    updated_unix_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS provider_batch_members (
    batch_key TEXT NOT NULL,
    hash TEXT NOT NULL,
    attempt_id INTEGER NOT NULL,
    bound_usd REAL NOT NULL,
    is_chat INTEGER NOT NULL,
    prompt_tokens_bound INTEGER NOT NULL,
    max_tokens INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (batch_key, hash)
);
CREATE INDEX IF NOT EXISTS provider_batch_members_by_hash ON provider_batch_members(hash);
";

/// Status of a provider batch whose answers are all in `requests` (or failed there): it is no
/// longer waited for.
pub(crate) const BATCH_CLOSED: &str = "closed";

/// Outcome of an attempt whose row was written before sending and never settled (process killed).
pub const OUTCOME_IN_FLIGHT: &str = "in_flight";

/// A settled attempt.
#[derive(Debug)]
pub(crate) struct AttemptRecord<'a> {
    pub outcome: &'a str,
    pub http_status: Option<u16>,
    pub cost_usd: f64,
}

/// One request of a provider batch, as recorded before the batch was submitted.
#[derive(Debug, Clone)]
pub(crate) struct BatchMember {
    pub hash: String,
    /// Its attempt row, counted at `bound_usd` until the batch's answers are read.
    pub attempt_id: i64,
    pub bound_usd: f64,
    pub is_chat: bool,
    pub prompt_tokens_bound: u64,
    pub max_tokens: u64,
    /// The request body as sent (one line of the uploaded file, without its envelope).
    pub body: String,
}

/// A provider batch the ledger knows of: submitted, or about to be.
#[derive(Debug, Clone)]
pub(crate) struct BatchRow {
    /// Ours: sent as the batch's metadata, so a create whose answer was lost can be found.
    pub key: String,
    /// `/v1/chat/completions` or `/v1/completions`.
    pub route: String,
    pub input_file_id: Option<String>,
    pub batch_id: Option<String>,
    pub created_unix_ms: i64,
}

/// How one member of a closed batch ended.
pub(crate) enum MemberOutcome<'a> {
    Answered {
        response: &'a ChatResponse,
        body: &'a str,
    },
    Failed {
        error: String,
        attempt: AttemptRecord<'a>,
    },
}

/// Counts of ledger rows by status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct LedgerCounts {
    pub done: u64,
    pub failed: u64,
    pub pending: u64,
    pub attempts: u64,
    /// Attempts the client gave up on while the server may still have answered (a timeout or a
    /// stalled stream): each may have been billed, and its retry is paid again.
    #[serde(default)]
    pub abandoned: u64,
}

#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Ledger {
    /// Opens or creates the ledger at `path` (and its parent folder).
    pub fn open(path: &Path) -> Result<Self> {
        let db_err = |source| Error::Ledger {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::Config {
                field: "ledger_path".into(),
                reason: format!("cannot create {}: {e}", parent.display()),
            })?;
        }
        let conn = Connection::open(path).map_err(db_err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Config {
                field: "ledger_path".into(),
                reason: format!("{}: SQLite refused WAL mode (got {mode})", path.display()),
            });
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        // Ledgers written before log-probabilities existed lack the column: add it, so their
        // rows keep answering (with no log-probabilities, which they never asked for).
        let has_logprobs: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('requests') WHERE name = 'logprobs_json'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(db_err)?
            > 0;
        if !has_logprobs {
            conn.execute_batch("ALTER TABLE requests ADD COLUMN logprobs_json TEXT")
                .map_err(db_err)?;
        }
        Ok(Self {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().expect("ledger lock");
        f(&mut conn).map_err(|source| Error::Ledger {
            path: self.path.clone(),
            source,
        })
    }

    /// Sum of every attempt's counted cost, including attempts left in flight by a killed run.
    pub fn total_spend_usd(&self) -> Result<f64> {
        self.with(|c| {
            c.query_row(
                "SELECT COALESCE(SUM(cost_usd), 0.0) FROM attempts",
                [],
                |r| r.get(0),
            )
        })
    }

    pub fn counts(&self) -> Result<LedgerCounts> {
        self.with(|c| {
            let mut counts = LedgerCounts::default();
            let mut stmt = c.prepare("SELECT status, COUNT(*) FROM requests GROUP BY status")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            for row in rows {
                let (status, n) = row?;
                match status.as_str() {
                    "done" => counts.done = n,
                    "failed" => counts.failed = n,
                    _ => counts.pending = n,
                }
            }
            counts.attempts =
                c.query_row("SELECT COUNT(*) FROM attempts", [], |r| r.get::<_, i64>(0))? as u64;
            counts.abandoned = c.query_row(
                "SELECT COUNT(*) FROM attempts WHERE outcome IN ('timeout', 'stream_stalled')",
                [],
                |r| r.get::<_, i64>(0),
            )? as u64;
            Ok(counts)
        })
    }

    /// The stored answer for `hash` if that request finished.
    pub fn lookup_done(&self, hash: &str) -> Result<Option<ChatResponse>> {
        let found = self.with(|c| {
            c.prepare_cached(
                "SELECT content, finish_reason, response_model, prompt_tokens, completion_tokens,
                        cost_usd, logprobs_json
                 FROM requests WHERE hash = ?1 AND status = 'done'",
            )?
            .query_row([hash], |r| {
                let response = ChatResponse {
                    content: r.get(0)?,
                    finish_reason: r.get(1)?,
                    model: r.get(2)?,
                    prompt_tokens: r.get::<_, i64>(3)? as u64,
                    completion_tokens: r.get::<_, i64>(4)? as u64,
                    cost_usd: r.get(5)?,
                    request_hash: hash.to_owned(),
                    attempts: 0,
                    from_ledger: true,
                    logprobs: None,
                };
                Ok((response, r.get::<_, Option<String>>(6)?))
            })
            .optional()
        })?;
        let Some((mut response, logprobs)) = found else {
            return Ok(None);
        };
        if let Some(json) = logprobs {
            response.logprobs =
                Some(serde_json::from_str(&json).map_err(|e| Error::LedgerRow {
                    path: self.path.clone(),
                    hash: hash.to_owned(),
                    field: "logprobs_json",
                    reason: e.to_string(),
                })?);
        }
        Ok(Some(response))
    }

    /// Records that `hash` is about to be sent (a new row, or a failed/pending one reset).
    pub(crate) fn mark_pending(&self, hash: &str, model: &str, request_json: &str) -> Result<()> {
        self.with(|c| mark_pending(c, hash, model, request_json, now_ms()))
    }

    /// Writes an attempt row counted at `reserved_usd` before the attempt is sent.
    pub(crate) fn begin_attempt(&self, hash: &str, reserved_usd: f64) -> Result<i64> {
        self.with(|c| begin_attempt(c, hash, reserved_usd, now_ms()))
    }

    /// Settles an attempt that did not produce the answer.
    pub(crate) fn finish_attempt(&self, attempt_id: i64, record: &AttemptRecord<'_>) -> Result<()> {
        self.with(|c| finish_attempt(c, attempt_id, record))
    }

    /// Settles the successful attempt and marks the request done, in one transaction.
    pub(crate) fn complete(
        &self,
        attempt_id: i64,
        response: &ChatResponse,
        response_json: &str,
        attempts: u32,
    ) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            complete(&tx, attempt_id, response, response_json, attempts, now_ms())?;
            tx.commit()
        })
    }

    /// Marks the request failed with a (redacted) error text.
    pub(crate) fn fail(&self, hash: &str, error: &str, attempts: u32) -> Result<()> {
        self.with(|c| fail(c, hash, error, attempts, now_ms()))
    }

    /// Records a provider batch before anything is uploaded (and returns its row): its row, and for every member the
    /// request row (pending) and an attempt counted at its upper bound, in one transaction. A
    /// process killed after this point keeps the batch's bound in the total spend and finds the
    /// batch again on rerun instead of paying for a second one.
    pub(crate) fn begin_provider_batch(
        &self,
        key: &str,
        route: &str,
        model: &str,
        members: &mut [(BatchMember, String)],
    ) -> Result<BatchRow> {
        let now = now_ms();
        self.with(|c| {
            let tx = c.transaction()?;
            tx.prepare_cached(
                "INSERT INTO provider_batches (key, route, status, created_unix_ms, updated_unix_ms)
                 VALUES (?1, ?2, 'submitting', ?3, ?3)",
            )?
            .execute(params![key, route, now])?;
            for (member, request_json) in members.iter_mut() {
                mark_pending(&tx, &member.hash, model, request_json, now)?;
                member.attempt_id = begin_attempt(&tx, &member.hash, member.bound_usd, now)?;
                tx.prepare_cached(
                    "INSERT INTO provider_batch_members (batch_key, hash, attempt_id, bound_usd,
                         is_chat, prompt_tokens_bound, max_tokens, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    key,
                    member.hash,
                    member.attempt_id,
                    member.bound_usd,
                    member.is_chat,
                    member.prompt_tokens_bound as i64,
                    member.max_tokens as i64,
                    member.body
                ])?;
            }
            tx.commit()
        })?;
        Ok(BatchRow {
            key: key.to_owned(),
            route: route.to_owned(),
            input_file_id: None,
            batch_id: None,
            created_unix_ms: now,
        })
    }

    /// Records what the provider said about a batch: its uploaded file, then its id and
    /// status (which makes the batch `submitted`).
    pub(crate) fn update_provider_batch(
        &self,
        key: &str,
        input_file_id: Option<&str>,
        submitted: Option<(&str, &str)>,
    ) -> Result<()> {
        let now = now_ms();
        let (batch_id, provider_status) = submitted.unzip();
        self.with(|c| {
            c.prepare_cached(
                "UPDATE provider_batches SET input_file_id = COALESCE(?2, input_file_id),
                        batch_id = COALESCE(?3, batch_id),
                        provider_status = COALESCE(?4, provider_status),
                        status = CASE WHEN ?3 IS NULL THEN status ELSE 'submitted' END,
                        updated_unix_ms = ?5
                 WHERE key = ?1",
            )?
            .execute(params![key, input_file_id, batch_id, provider_status, now])
            .map(drop)
        })
    }

    /// Batches not yet closed that hold at least one of `hashes`.
    pub(crate) fn open_provider_batches(&self, hashes: &[&str]) -> Result<Vec<BatchRow>> {
        self.with(|c| {
            let mut keys = Vec::new();
            let mut stmt = c.prepare_cached(
                "SELECT DISTINCT m.batch_key FROM provider_batch_members m
                 JOIN provider_batches b ON b.key = m.batch_key
                 WHERE m.hash = ?1 AND b.status != ?2",
            )?;
            for hash in hashes {
                for key in stmt.query_map(params![hash, BATCH_CLOSED], |r| r.get::<_, String>(0))? {
                    let key = key?;
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
            }
            let mut rows = Vec::new();
            for key in keys {
                rows.push(c.query_row(
                    "SELECT key, route, input_file_id, batch_id, created_unix_ms
                     FROM provider_batches WHERE key = ?1",
                    [&key],
                    |r| {
                        Ok(BatchRow {
                            key: r.get(0)?,
                            route: r.get(1)?,
                            input_file_id: r.get(2)?,
                            batch_id: r.get(3)?,
                            created_unix_ms: r.get(4)?,
                        })
                    },
                )?);
            }
            Ok(rows)
        })
    }

    /// The members of a batch, in the order they were recorded (the uploaded file's order).
    pub(crate) fn provider_batch_members(&self, key: &str) -> Result<Vec<BatchMember>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT hash, attempt_id, bound_usd, is_chat, prompt_tokens_bound, max_tokens, body
                 FROM provider_batch_members WHERE batch_key = ?1 ORDER BY rowid",
            )?
            .query_map([key], |r| {
                Ok(BatchMember {
                    hash: r.get(0)?,
                    attempt_id: r.get(1)?,
                    bound_usd: r.get(2)?,
                    is_chat: r.get(3)?,
                    prompt_tokens_bound: r.get::<_, i64>(4)? as u64,
                    max_tokens: r.get::<_, i64>(5)? as u64,
                    body: r.get(6)?,
                })
            })?
            .collect()
        })
    }

    /// Settles every member of a finished batch (answer or failure, each attempt at its real
    /// cost) and closes the batch, in one transaction: a kill mid-way leaves the batch open and
    /// its answers are read again from the provider's output file.
    pub(crate) fn close_provider_batch(
        &self,
        key: &str,
        provider_status: &str,
        outcomes: &[(&BatchMember, MemberOutcome<'_>)],
    ) -> Result<()> {
        let now = now_ms();
        self.with(|c| {
            let tx = c.transaction()?;
            for (member, outcome) in outcomes {
                match outcome {
                    MemberOutcome::Answered { response, body } => {
                        complete(&tx, member.attempt_id, response, body, 1, now)?;
                    }
                    MemberOutcome::Failed { error, attempt } => {
                        finish_attempt(&tx, member.attempt_id, attempt)?;
                        fail(&tx, &member.hash, error, 1, now)?;
                    }
                }
            }
            tx.prepare_cached(
                "UPDATE provider_batches SET status = ?2, updated_unix_ms = ?3, provider_status = ?4
                 WHERE key = ?1",
            )?
            .execute(params![key, BATCH_CLOSED, now, provider_status])?;
            tx.commit()
        })
    }
}

// Each row write exists once: the single-call methods above and a provider batch's
// transactions both use these.

fn mark_pending(
    c: &Connection,
    hash: &str,
    model: &str,
    request_json: &str,
    now: i64,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO requests (hash, model, request_json, status, created_unix_ms,
                               updated_unix_ms)
         VALUES (?1, ?2, ?3, 'pending', ?4, ?4)
         ON CONFLICT(hash) DO UPDATE SET status = 'pending', error = NULL, updated_unix_ms = ?4
         WHERE status != 'done'",
    )?
    .execute(params![hash, model, request_json, now])
    .map(drop)
}

fn begin_attempt(c: &Connection, hash: &str, reserved_usd: f64, now: i64) -> rusqlite::Result<i64> {
    c.prepare_cached(
        "INSERT INTO attempts (hash, started_unix_ms, outcome, cost_usd) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![hash, now, OUTCOME_IN_FLIGHT, reserved_usd])?;
    Ok(c.last_insert_rowid())
}

fn finish_attempt(
    c: &Connection,
    attempt_id: i64,
    record: &AttemptRecord<'_>,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE attempts SET outcome = ?2, http_status = ?3, cost_usd = ?4 WHERE id = ?1",
    )?
    .execute(params![
        attempt_id,
        record.outcome,
        record.http_status,
        record.cost_usd
    ])
    .map(drop)
}

/// Settles the answering attempt and stores the answer (not a transaction by itself).
fn complete(
    c: &Connection,
    attempt_id: i64,
    response: &ChatResponse,
    response_json: &str,
    attempts: u32,
    now: i64,
) -> rusqlite::Result<()> {
    let logprobs = response
        .logprobs
        .as_ref()
        .map(|l| serde_json::to_string(l).expect("log-probabilities serialise"));
    c.prepare_cached(
        "UPDATE attempts SET outcome = 'ok', http_status = 200, cost_usd = ?2 WHERE id = ?1",
    )?
    .execute(params![attempt_id, response.cost_usd])?;
    c.prepare_cached(
        "UPDATE requests SET status = 'done', content = ?2, finish_reason = ?3,
                response_model = ?4, response_json = ?5, prompt_tokens = ?6,
                completion_tokens = ?7, cost_usd = ?8, attempts = attempts + ?9,
                error = NULL, updated_unix_ms = ?10, logprobs_json = ?11
         WHERE hash = ?1",
    )?
    .execute(params![
        response.request_hash,
        response.content,
        response.finish_reason,
        response.model,
        response_json,
        response.prompt_tokens as i64,
        response.completion_tokens as i64,
        response.cost_usd,
        attempts,
        now,
        logprobs
    ])
    .map(drop)
}

fn fail(c: &Connection, hash: &str, error: &str, attempts: u32, now: i64) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE requests SET status = 'failed', error = ?2, attempts = attempts + ?3,
                updated_unix_ms = ?4
         WHERE hash = ?1 AND status != 'done'",
    )?
    .execute(params![hash, error, attempts, now])
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(hash: &str) -> ChatResponse {
        ChatResponse {
            content: "hello".into(),
            finish_reason: Some("stop".into()),
            model: "m".into(),
            prompt_tokens: 3,
            completion_tokens: 1,
            cost_usd: 0.25,
            request_hash: hash.into(),
            attempts: 1,
            from_ledger: false,
            logprobs: None,
        }
    }

    #[test]
    fn rows_survive_reopen_and_in_flight_attempts_stay_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ledger.sqlite");
        {
            let ledger = Ledger::open(&path).unwrap();
            ledger.mark_pending("a", "m", "{}").unwrap();
            let id = ledger.begin_attempt("a", 1.0).unwrap();
            assert_eq!(ledger.total_spend_usd().unwrap(), 1.0);
            ledger.complete(id, &response("a"), "{}", 1).unwrap();
            assert_eq!(ledger.total_spend_usd().unwrap(), 0.25);

            ledger.mark_pending("b", "m", "{}").unwrap();
            let id = ledger.begin_attempt("b", 0.5).unwrap();
            let record = AttemptRecord {
                outcome: "timeout",
                http_status: None,
                cost_usd: 0.0,
            };
            ledger.finish_attempt(id, &record).unwrap();
            ledger.fail("b", "timed out", 1).unwrap();
            // "c" is left in flight, as if the process died mid-request.
            ledger.mark_pending("c", "m", "{}").unwrap();
            ledger.begin_attempt("c", 0.125).unwrap();
        }
        let ledger = Ledger::open(&path).unwrap();
        assert_eq!(ledger.total_spend_usd().unwrap(), 0.25 + 0.125);
        let done = ledger.lookup_done("a").unwrap().unwrap();
        assert_eq!(done.content, "hello");
        assert!(done.from_ledger);
        assert!(ledger.lookup_done("b").unwrap().is_none());
        assert!(ledger.lookup_done("c").unwrap().is_none());
        assert_eq!(
            ledger.counts().unwrap(),
            LedgerCounts {
                done: 1,
                failed: 1,
                pending: 1,
                attempts: 3,
                abandoned: 1,
            }
        );
        // A done row is never reset to pending.
        ledger.mark_pending("a", "m", "{}").unwrap();
        assert!(ledger.lookup_done("a").unwrap().is_some());
        ledger.fail("a", "x", 1).unwrap();
        assert!(ledger.lookup_done("a").unwrap().is_some());
    }

    #[test]
    fn a_ledger_from_before_logprobs_gains_the_column_and_keeps_answering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            let old_schema = SCHEMA.replace(",\n    logprobs_json TEXT", "");
            assert!(!old_schema.contains("logprobs_json"));
            conn.execute_batch(&old_schema).unwrap();
            conn.execute(
                "INSERT INTO requests (hash, model, request_json, status, content, finish_reason,
                                       response_model, prompt_tokens, completion_tokens,
                                       created_unix_ms, updated_unix_ms)
                 VALUES ('old', 'm', '{}', 'done', 'hi', 'stop', 'm', 1, 1, 0, 0)",
                [],
            )
            .unwrap();
        }
        let ledger = Ledger::open(&path).unwrap();
        let old = ledger.lookup_done("old").unwrap().unwrap();
        assert_eq!((old.content.as_str(), old.logprobs), ("hi", None));
        let mut with_logprobs = response("new");
        with_logprobs.logprobs = Some(vec![crate::TokenLogprob {
            token: "hello".into(),
            logprob: Some(-0.5),
            text_offset: Some(0),
            top_logprobs: vec![crate::TopLogprob {
                token: "hello".into(),
                logprob: -0.5,
            }],
        }]);
        ledger.mark_pending("new", "m", "{}").unwrap();
        let id = ledger.begin_attempt("new", 0.0).unwrap();
        ledger.complete(id, &with_logprobs, "{}", 1).unwrap();
        drop(ledger);
        // Opening again does not try to add the column twice.
        let ledger = Ledger::open(&path).unwrap();
        let stored = ledger.lookup_done("new").unwrap().unwrap();
        assert_eq!(stored.logprobs, with_logprobs.logprobs);
    }
}
