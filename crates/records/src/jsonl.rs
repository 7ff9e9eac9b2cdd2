//! JSON Lines files: one serde record per line.
//!
//! Writes are atomic (a temporary file in the same directory, fsynced, then renamed over the
//! target, then the directory fsynced), so a reader never sees a half-written file, a crash
//! leaves the old file intact, and a write reported done survives a power cut. Reads name the
//! file and the 1-based line of the first bad record.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Writes `records` to `path` as JSONL, atomically; returns how many records were written.
///
/// Missing parent directories are created. On any error the target file is left untouched.
pub fn write_jsonl_atomic<T, I>(path: impl AsRef<Path>, records: I) -> Result<usize>
where
    T: Serialize,
    I: IntoIterator<Item = T>,
{
    let path = path.as_ref();
    write_atomic_with(path, |writer| {
        let mut count = 0;
        for (index, record) in records.into_iter().enumerate() {
            serde_json::to_writer(&mut *writer, &record).map_err(|source| {
                if source.is_io() {
                    Error::Io {
                        path: path.to_path_buf(),
                        source: source.into(),
                    }
                } else {
                    Error::Serialise {
                        path: path.to_path_buf(),
                        index,
                        source,
                    }
                }
            })?;
            writer.write_all(b"\n").map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
            count += 1;
        }
        Ok(count)
    })
}

/// Writes `contents` to `path` atomically (temp file in the same directory + rename), creating
/// missing parent directories.
pub fn write_atomic(path: impl AsRef<Path>, contents: &[u8]) -> Result<()> {
    let path = path.as_ref();
    write_atomic_with(path, |writer| {
        writer.write_all(contents).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// Runs `write` against a buffered temporary file next to `path`, then renames it into place
/// and syncs the directory. Missing parent directories are created first: every caller that
/// places a file gets them, so none can fail on a fresh checkout where `runs/` does not exist.
pub fn write_atomic_with<R>(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<R>,
) -> Result<R> {
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let parent = parent_dir(path);
    std::fs::create_dir_all(parent).map_err(|source| Error::Io {
        path: parent.to_path_buf(),
        source,
    })?;
    let temp_path = temp_sibling(path);
    let file = File::create(&temp_path).map_err(io_error)?;
    let mut writer = BufWriter::new(file);
    let outcome = write(&mut writer).and_then(|value| {
        let file = writer
            .into_inner()
            .map_err(|error| io_error(error.into_error()))?;
        file.sync_all().map_err(io_error)?;
        Ok(value)
    });
    match outcome {
        Ok(value) => {
            std::fs::rename(&temp_path, path).map_err(|source| {
                let _ = std::fs::remove_file(&temp_path);
                io_error(source)
            })?;
            sync_dir(parent)?;
            Ok(value)
        }
        Err(error) => {
            let _ = std::fs::remove_file(&temp_path);
            Err(error)
        }
    }
}

/// The directory `path` is placed in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Flushes a directory's entries to disk, so that a rename into it (or a file created in it)
/// survives a power cut: the rename itself is only durable once the directory is synced (what
/// SQLite and PostgreSQL do after renaming a file into place). Unix only; elsewhere a no-op,
/// since directories cannot be opened for syncing.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(test)]
    tests::DIR_SYNCS.with(|count| count.set(count.get() + 1));
    #[cfg(unix)]
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    Ok(())
}

/// Builds a directory at `dir` whole or not at all: `fill` writes into a temporary sibling,
/// which then replaces `dir` (an existing one is moved aside first and removed after), and the
/// parent directory is synced. If `fill` fails, nothing at `dir` changes and the temporary
/// directory is removed. Missing parent directories are created.
pub fn replace_dir_atomically<T, E: From<Error>>(
    dir: impl AsRef<Path>,
    fill: impl FnOnce(&Path) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let dir = dir.as_ref();
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let parent = parent_dir(dir);
    let name = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a directory to replace needs a name",
            ),
        })?;
    std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    let unique = unique_suffix();
    let mut staging = StagingDir {
        path: parent.join(format!(".{name}.tmp-{unique}")),
        keep: false,
    };
    std::fs::create_dir(&staging.path).map_err(io_error(&staging.path))?;
    let value = fill(&staging.path)?;
    // The files inside are complete; make their entries durable before the swap.
    sync_dir(&staging.path)?;

    let backup = parent.join(format!(".{name}.old-{unique}"));
    let had_previous = dir.exists();
    if had_previous {
        std::fs::rename(dir, &backup).map_err(io_error(dir))?;
    }
    if let Err(source) = std::fs::rename(&staging.path, dir) {
        if had_previous {
            let _ = std::fs::rename(&backup, dir);
        }
        return Err(Error::Io {
            path: dir.to_path_buf(),
            source,
        }
        .into());
    }
    staging.keep = true;
    sync_dir(parent)?;
    if had_previous {
        std::fs::remove_dir_all(&backup).map_err(io_error(&backup))?;
    }
    Ok(value)
}

/// A temporary directory removed on drop unless kept.
struct StagingDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// `<pid>-<counter>`: unique among this process's writers, distinct from other processes'.
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `dir/.name.tmp.<pid>-<counter>`: same directory (so rename is atomic), unique per writer.
fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_owned());
    parent_dir(path).join(format!(".{name}.tmp.{}", unique_suffix()))
}

/// Reads every record of a JSONL file. Blank lines are skipped; a bad line is an error naming
/// `file:line`.
pub fn read_jsonl<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<Vec<T>> {
    JsonlReader::open(path)?.collect()
}

/// Streams records from a JSONL file, one `Result` per non-blank line.
pub struct JsonlReader<T> {
    path: PathBuf,
    lines: std::io::Lines<BufReader<File>>,
    line_number: usize,
    _record: std::marker::PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for JsonlReader<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlReader")
            .field("path", &self.path)
            .field("line_number", &self.line_number)
            .finish()
    }
}

impl<T: DeserializeOwned> JsonlReader<T> {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path,
            lines: BufReader::new(file).lines(),
            line_number: 0,
            _record: std::marker::PhantomData,
        })
    }
}

impl<T> JsonlReader<T> {
    /// The 1-based line of the record last returned (for errors found after parsing).
    pub fn line_number(&self) -> usize {
        self.line_number
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl<T: DeserializeOwned> Iterator for JsonlReader<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let line = self.lines.next()?;
            self.line_number += 1;
            let line = match line {
                Ok(line) => line,
                Err(source) => {
                    return Some(Err(Error::Io {
                        path: self.path.clone(),
                        source,
                    }));
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            return Some(
                serde_json::from_str(&line).map_err(|source| Error::InvalidLine {
                    path: self.path.clone(),
                    line: self.line_number,
                    source,
                }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    thread_local! {
        /// Directory syncs made by this thread (tests run on their own threads).
        pub(super) static DIR_SYNCS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn writes_create_missing_parents_and_sync_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs/phase1a/demo-data/train.jsonl");
        let before = DIR_SYNCS.with(|count| count.get());
        write_jsonl_atomic(
            &path,
            [Row {
                id: "a".into(),
                value: 1,
            }],
        )
        .unwrap();
        assert_eq!(DIR_SYNCS.with(|count| count.get()), before + 1);
        assert_eq!(read_jsonl::<Row>(&path).unwrap().len(), 1);
        write_atomic(dir.path().join("a/b/report.md"), b"x").unwrap();
        assert_eq!(DIR_SYNCS.with(|count| count.get()), before + 2);
        assert_eq!(
            std::fs::read(dir.path().join("a/b/report.md")).unwrap(),
            b"x"
        );
        // A failed write syncs nothing and leaves no directory entry behind.
        let bad: Vec<std::collections::HashMap<(u8, u8), u8>> =
            vec![std::collections::HashMap::from([((1, 2), 3)])];
        write_jsonl_atomic(dir.path().join("c/bad.jsonl"), &bad).unwrap_err();
        assert_eq!(DIR_SYNCS.with(|count| count.get()), before + 2);
        assert_eq!(std::fs::read_dir(dir.path().join("c")).unwrap().count(), 0);
    }

    #[test]
    fn directories_are_replaced_whole_or_not_at_all() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("runs/model");
        let syncs = DIR_SYNCS.with(|count| count.get());
        replace_dir_atomically::<_, Error>(&dir, |staging| write_atomic(staging.join("a"), b"1"))
            .unwrap();
        // The file's own sync, the staging directory's and the parent's.
        assert_eq!(DIR_SYNCS.with(|count| count.get()), syncs + 3);
        let failed: Result<()> = replace_dir_atomically(&dir, |staging| {
            write_atomic(staging.join("b"), b"2")?;
            Err(Error::Io {
                path: staging.to_path_buf(),
                source: std::io::Error::other("fill failed"),
            })
        });
        failed.unwrap_err();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"1");
        assert!(!dir.join("b").exists());
        replace_dir_atomically::<_, Error>(&dir, |staging| write_atomic(staging.join("b"), b"2"))
            .unwrap();
        assert!(!dir.join("a").exists() && dir.join("b").exists());
        // Only the directory itself is left in the parent: no staging or backup copies.
        assert_eq!(
            std::fs::read_dir(root.path().join("runs")).unwrap().count(),
            1
        );
    }

    #[test]
    fn sync_dir_names_a_directory_it_cannot_open() {
        let error = sync_dir(Path::new("definitely/not/a/dir")).unwrap_err();
        assert!(
            error.to_string().contains("definitely/not/a/dir"),
            "{error}"
        );
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Row {
        id: String,
        value: i64,
    }

    #[test]
    fn round_trip_preserves_records_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        let rows: Vec<Row> = (0..5)
            .map(|i| Row {
                id: format!("r{i}"),
                value: i * 10 - 7,
            })
            .collect();
        assert_eq!(write_jsonl_atomic(&path, &rows).unwrap(), 5);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 5);
        assert_eq!(text.lines().next().unwrap(), r#"{"id":"r0","value":-7}"#);
        let back: Vec<Row> = read_jsonl(&path).unwrap();
        assert_eq!(back, rows);
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn bad_line_error_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        std::fs::write(
            &path,
            "{\"id\":\"a\",\"value\":1}\n\n{\"id\":\"b\",\"value\":\"two\"}\n",
        )
        .unwrap();
        let error = read_jsonl::<Row>(&path).unwrap_err();
        match &error {
            Error::InvalidLine { line, .. } => assert_eq!(*line, 3),
            other => panic!("unexpected error {other:?}"),
        }
        let message = error.to_string();
        assert!(message.contains("bad.jsonl:3:"), "{message}");
    }

    #[test]
    fn missing_file_error_names_path() {
        let error = read_jsonl::<Row>("definitely/not/here.jsonl").unwrap_err();
        assert!(matches!(error, Error::Io { .. }));
        assert!(error.to_string().contains("definitely/not/here.jsonl"));
    }

    #[test]
    fn failed_write_leaves_existing_file_untouched() {
        use std::collections::HashMap;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keep.jsonl");
        std::fs::write(&path, "old\n").unwrap();
        // A map with non-string keys cannot be serialised as JSON.
        let bad: Vec<HashMap<(u8, u8), u8>> = vec![HashMap::new(), HashMap::from([((1, 2), 3)])];
        let error = write_jsonl_atomic(&path, &bad).unwrap_err();
        assert!(
            matches!(error, Error::Serialise { index: 1, .. }),
            "{error:?}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_atomic_replaces_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.md");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second");
    }
}
