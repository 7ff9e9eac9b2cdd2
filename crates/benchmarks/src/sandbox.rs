//! Runs untrusted Python programs (model-written HumanEval solutions) so that a hostile or
//! broken program fails instead of harming the machine or the harness.
//!
//! Each program runs in its own `python3 -I -B` process, in a fresh temporary directory, with an
//! empty environment (only a minimal `PATH`) and these limits set between `fork` and `exec`:
//!
//! - rlimits: CPU seconds, address space, file size, open files, processes, no core dumps;
//! - its own session and process group, killed with `SIGKILL` on the wall-clock timeout or when
//!   its output passes the cap (stdout and stderr are read concurrently, so a flood cannot block it);
//! - where the OS allows (probed once in [`Sandbox::new`], reported in [`Isolation`]):
//!   - an unprivileged, never-used uid/gid (when the harness runs as root): the process loses all
//!     capabilities, `RLIMIT_NPROC` binds (it counts per uid, and root is exempt), and every process
//!     of that uid can be killed at the end even if it left the process group;
//!   - a new network namespace: only a loopback interface that is down, so no connection succeeds;
//!   - a new mount namespace in which every mount is read-only except the program's directory.
//!
//! What is not done: no seccomp filter, no cgroup (memory is bounded per process by
//! `RLIMIT_AS`, so `RLIMIT_NPROC × RLIMIT_AS` bounds a fork-and-allocate program), no PID namespace
//! (the program can see other processes in `/proc`, but not signal or trace them once it runs
//! under its own uid).

use std::ffi::CString;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Resource limits for one program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxLimits {
    /// Wall-clock time after which the whole process group is killed.
    pub wall_timeout: Duration,
    /// `RLIMIT_CPU` (soft limit; the hard limit is one second more).
    pub cpu_seconds: u64,
    /// `RLIMIT_AS` per process.
    pub address_space_bytes: u64,
    /// `RLIMIT_FSIZE`: the largest file the program may write.
    pub file_size_bytes: u64,
    /// `RLIMIT_NOFILE`.
    pub open_files: u64,
    /// `RLIMIT_NPROC`: processes (and threads) of the sandbox uid.
    pub processes: u64,
    /// Bytes of stdout plus stderr kept; a program writing more is killed.
    pub output_bytes: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            wall_timeout: Duration::from_secs(10),
            cpu_seconds: 10,
            address_space_bytes: 4 << 30,
            file_size_bytes: 16 << 20,
            open_files: 64,
            processes: 32,
            output_bytes: 1 << 20,
        }
    }
}

/// Which isolation features were in force for a run (probed on this machine).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    /// The program ran under a fresh unprivileged uid/gid (only possible when the harness is root).
    pub unprivileged_uid: bool,
    /// The program ran in a new network namespace (no usable network interface).
    pub network_namespace: bool,
    /// Every mount was read-only for the program except its own directory.
    pub read_only_filesystem: bool,
    /// `RLIMIT_NPROC` applies (root is exempt from it, so it binds only under an unprivileged uid).
    pub process_limit_binds: bool,
    /// Why a feature is off, where it is.
    pub notes: Vec<String>,
}

impl Isolation {
    /// One line for reports, e.g. `uid+netns+ro-fs+nproc`.
    pub fn summary(&self) -> String {
        let mut parts = vec!["rlimits", "pgroup-kill", "clean-env", "tempdir"];
        for (on, name) in [
            (self.unprivileged_uid, "unprivileged-uid"),
            (self.network_namespace, "netns"),
            (self.read_only_filesystem, "ro-fs"),
            (self.process_limit_binds, "nproc"),
        ] {
            if on {
                parts.push(name);
            }
        }
        parts.join("+")
    }
}

/// Which limit stopped a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceLimit {
    Cpu,
    Memory,
    FileSize,
    Processes,
    Output,
}

/// How a program ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum RunStatus {
    Passed,
    Failed {
        exit_code: i32,
    },
    /// Exited with status 0 before its last line ran (`sys.exit(0)` or `os._exit(0)` inside the
    /// code under test would otherwise skip the tests and count as a pass).
    ExitedEarly,
    TimedOut,
    KilledBySignal {
        signal: i32,
    },
    ResourceLimit {
        limit: ResourceLimit,
    },
}

/// The outcome of one sandboxed program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub stdout: String,
    pub stderr: String,
    /// Output beyond [`SandboxLimits::output_bytes`] was discarded.
    pub output_truncated: bool,
    pub wall_time: Duration,
    /// Processes of the sandbox uid still alive after the kill (0 unless containment failed;
    /// only counted when the program ran under its own uid).
    pub stray_processes: usize,
    pub isolation: Isolation,
}

impl RunOutcome {
    pub fn passed(&self) -> bool {
        self.status == RunStatus::Passed
    }

    /// A short description for records: `passed`, `failed (exit 1): AssertionError`, ...
    pub fn describe(&self) -> String {
        let last_line = self
            .stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>();
        match self.status {
            RunStatus::Passed => "passed".to_string(),
            RunStatus::Failed { exit_code } => format!("failed (exit {exit_code}): {last_line}"),
            RunStatus::ExitedEarly => {
                "exited with status 0 before the end of the program".to_string()
            }
            RunStatus::TimedOut => format!("timed out after {:.1}s", self.wall_time.as_secs_f64()),
            RunStatus::KilledBySignal { signal } => format!("killed by signal {signal}"),
            RunStatus::ResourceLimit { limit } => format!("resource limit: {limit:?}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feature {
    UnprivilegedUid,
    NetworkNamespace,
    ReadOnlyFilesystem,
}

/// A Python interpreter plus limits and the isolation this machine allows.
#[derive(Debug)]
pub struct Sandbox {
    python: PathBuf,
    limits: SandboxLimits,
    isolation: Isolation,
    features: Vec<Feature>,
}

/// First uid/gid handed to sandboxed programs; far above any real account. Each run gets its
/// own, so `RLIMIT_NPROC` counts one program's processes and `kill(-1)` under it reaches only them.
const SANDBOX_UID_BASE: u32 = 2_100_000_000;

/// Runs handed out so far by this process (shared by every `Sandbox` in it).
static SANDBOX_RUNS: AtomicU32 = AtomicU32::new(0);

/// A uid no other run (in this process, or in another process with a different pid slot) uses.
fn fresh_uid() -> u32 {
    let pid_slot = std::process::id() % 10_000;
    SANDBOX_UID_BASE + pid_slot * 10_000 + SANDBOX_RUNS.fetch_add(1, Ordering::Relaxed) % 10_000
}

impl Sandbox {
    /// A sandbox with the default interpreter: `$TUNELOOP_SANDBOX_PYTHON`, else the first of
    /// `/usr/bin/python3`, `/usr/local/bin/python3` (system interpreters an unprivileged uid can
    /// read), else `python3` on `PATH`.
    pub fn new(limits: SandboxLimits) -> Result<Self> {
        Self::with_python(default_python()?, limits)
    }

    /// A sandbox running `python`. Probes which isolation features work here by running a
    /// trivial program under each; a feature that fails is left off and noted in [`Isolation`].
    pub fn with_python(python: PathBuf, limits: SandboxLimits) -> Result<Self> {
        let is_root = unsafe { libc::geteuid() } == 0;
        let mut sandbox = Sandbox {
            python,
            limits,
            isolation: Isolation::default(),
            features: Vec::new(),
        };
        // Plain run first: if even that fails, the interpreter is unusable.
        let plain = sandbox.run("pass\n")?;
        if !plain.passed() {
            return Err(Error::Sandbox {
                message: format!(
                    "{} cannot run a trivial program: {}",
                    sandbox.python.display(),
                    plain.describe()
                ),
            });
        }
        let mut notes = Vec::new();
        for feature in [
            Feature::UnprivilegedUid,
            Feature::NetworkNamespace,
            Feature::ReadOnlyFilesystem,
        ] {
            if feature == Feature::UnprivilegedUid && !is_root {
                notes.push("not root: runs under the harness's own uid".to_string());
                continue;
            }
            sandbox.features.push(feature);
            match sandbox.run("pass\n") {
                Ok(outcome) if outcome.passed() => {}
                Ok(outcome) => {
                    sandbox.features.pop();
                    notes.push(format!("{feature:?} off: probe {}", outcome.describe()));
                }
                Err(error) => {
                    sandbox.features.pop();
                    notes.push(format!("{feature:?} off: {error}"));
                }
            }
        }
        if sandbox.features.contains(&Feature::ReadOnlyFilesystem)
            && !sandbox.features.contains(&Feature::UnprivilegedUid)
            && is_root
        {
            notes.push(
                "read-only mounts without a uid drop: a root program could remount them".into(),
            );
        }
        let unprivileged_uid = sandbox.features.contains(&Feature::UnprivilegedUid);
        sandbox.isolation = Isolation {
            unprivileged_uid,
            network_namespace: sandbox.features.contains(&Feature::NetworkNamespace),
            read_only_filesystem: sandbox.features.contains(&Feature::ReadOnlyFilesystem),
            process_limit_binds: unprivileged_uid || !is_root,
            notes,
        };
        Ok(sandbox)
    }

    pub fn python(&self) -> &Path {
        &self.python
    }

    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// The isolation in force for every run of this sandbox.
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// Runs `program` (Python source) and reports how it ended. Errors only when the sandbox
    /// itself fails (no temporary directory, cannot spawn); anything the program does is an outcome.
    ///
    /// A line printing a random marker is appended; a program that exits 0 without printing it
    /// ended early and is reported as [`RunStatus::ExitedEarly`]. The marker is removed from stdout.
    pub fn run(&self, program: &str) -> Result<RunOutcome> {
        let marker = completion_marker();
        let program = format!("{program}\nprint({marker:?}, flush=True)\n");
        let workdir = tempfile::Builder::new()
            .prefix("tuneloop-sandbox-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let script = workdir.path().join("program.py");
        std::fs::write(&script, &program).map_err(|e| Error::io(&script, e))?;

        let uid = self
            .features
            .contains(&Feature::UnprivilegedUid)
            .then(fresh_uid);
        if let Some(uid) = uid {
            std::os::unix::fs::chown(workdir.path(), Some(uid), Some(uid))
                .map_err(|e| Error::io(workdir.path(), e))?;
        }

        let setup = ChildSetup {
            limits: self.limits.clone(),
            uid,
            network_namespace: self.features.contains(&Feature::NetworkNamespace),
            read_only_filesystem: self.features.contains(&Feature::ReadOnlyFilesystem),
            workdir: CString::new(workdir.path().as_os_str().as_bytes()).map_err(|_| {
                Error::Sandbox {
                    message: format!("{} contains a NUL byte", workdir.path().display()),
                }
            })?,
        };
        let mut command = Command::new(&self.python);
        command
            .args(["-I", "-B", "program.py"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir(workdir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec; `ChildSetup::apply` only makes
        // async-signal-safe system calls on data prepared before the fork (no allocation, no locks).
        unsafe {
            command.pre_exec(move || setup.apply());
        }
        let started = Instant::now();
        let child = command.spawn().map_err(|e| Error::Sandbox {
            message: format!("cannot start {}: {e}", self.python.display()),
        })?;
        let mut outcome = self.supervise(child, started, uid);
        outcome.isolation = self.isolation.clone();
        let completed = match outcome.stdout.strip_suffix(&format!("{marker}\n")) {
            Some(rest) => {
                outcome.stdout = rest.to_string();
                true
            }
            None => false,
        };
        if outcome.status == RunStatus::Passed && !completed {
            outcome.status = RunStatus::ExitedEarly;
        }
        drop(workdir);
        Ok(outcome)
    }

    /// Runs every program on `workers` threads; outcomes in input order.
    pub fn run_all(&self, programs: &[String], workers: usize) -> Result<Vec<RunOutcome>> {
        let next = AtomicUsize::new(0);
        let mut slots: Vec<Option<Result<RunOutcome>>> =
            (0..programs.len()).map(|_| None).collect();
        let results = std::sync::Mutex::new(&mut slots);
        std::thread::scope(|scope| {
            for _ in 0..workers.max(1) {
                scope.spawn(|| {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= programs.len() {
                            break;
                        }
                        let outcome = self.run(&programs[index]);
                        results
                            .lock()
                            .expect("no worker panics while holding the lock")[index] =
                            Some(outcome);
                    }
                });
            }
        });
        slots
            .into_iter()
            .map(|slot| slot.expect("every index was run"))
            .collect()
    }

    /// Waits for the child while draining its output; kills everything it started at the end.
    fn supervise(&self, mut child: Child, started: Instant, uid: Option<u32>) -> RunOutcome {
        let deadline = started + self.limits.wall_timeout;
        let mut streams = [
            CappedStream::new(child.stdout.take().map(|s| s.into())),
            CappedStream::new(child.stderr.take().map(|s| s.into())),
        ];
        let cap = self.limits.output_bytes;
        let mut timed_out = false;
        let mut output_exceeded = false;
        let exit_status = loop {
            let wait_ms = deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .clamp(1, 20) as i32;
            poll_readable(&mut streams, wait_ms);
            for stream in &mut streams {
                stream.read_available(cap);
            }
            let total_after: usize = streams.iter().map(|s| s.total).sum();
            if total_after > cap {
                output_exceeded = true;
                kill_group(child.id());
                break child.wait().ok();
            }
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => {}
                Err(_) => break None,
            }
            if Instant::now() >= deadline {
                timed_out = true;
                kill_group(child.id());
                break child.wait().ok();
            }
        };
        // The program has ended; whatever it left behind goes now, before the last read, so a
        // background child holding the pipes open cannot stall us.
        kill_group(child.id());
        let stray_processes = uid.map(kill_uid).unwrap_or(0);
        for stream in &mut streams {
            stream.read_available(cap);
        }
        let wall_time = started.elapsed();
        let stdout = String::from_utf8_lossy(&streams[0].kept).into_owned();
        let stderr = String::from_utf8_lossy(&streams[1].kept).into_owned();
        let output_truncated = streams.iter().any(|s| s.total > s.kept.len());
        let status = classify(exit_status, timed_out, output_exceeded, &stderr);
        RunOutcome {
            status,
            stdout,
            stderr,
            output_truncated,
            wall_time,
            stray_processes,
            isolation: Isolation::default(),
        }
    }
}

/// A string the program cannot guess: per run, from the clock, the pid and a counter.
fn completion_marker() -> String {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = crate::stats::SplitMix64::new(
        nanos
            ^ (u64::from(std::process::id()) << 32)
            ^ u64::from(RUNS.fetch_add(1, Ordering::Relaxed)),
    );
    format!(
        "__tuneloop_done_{:016x}{:016x}__",
        rng.next_u64(),
        rng.next_u64()
    )
}

fn default_python() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("TUNELOOP_SANDBOX_PYTHON") {
        return Ok(PathBuf::from(path));
    }
    for candidate in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if Path::new(candidate).is_file() {
            return Ok(PathBuf::from(candidate));
        }
    }
    // Resolve through the interpreter itself: PATH entries may be shims that need the environment
    // the sandbox clears.
    let output = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .map_err(|e| Error::Sandbox {
            message: format!("no python3 found (set TUNELOOP_SANDBOX_PYTHON): {e}"),
        })?;
    let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || path.is_empty() {
        return Err(Error::Sandbox {
            message: "python3 did not report its executable; set TUNELOOP_SANDBOX_PYTHON".into(),
        });
    }
    Ok(PathBuf::from(path))
}

fn classify(
    exit_status: Option<std::process::ExitStatus>,
    timed_out: bool,
    output_exceeded: bool,
    stderr: &str,
) -> RunStatus {
    if output_exceeded {
        return RunStatus::ResourceLimit {
            limit: ResourceLimit::Output,
        };
    }
    if timed_out {
        return RunStatus::TimedOut;
    }
    let Some(status) = exit_status else {
        return RunStatus::KilledBySignal {
            signal: libc::SIGKILL,
        };
    };
    if let Some(signal) = status.signal() {
        return match signal {
            libc::SIGXCPU => RunStatus::ResourceLimit {
                limit: ResourceLimit::Cpu,
            },
            libc::SIGXFSZ => RunStatus::ResourceLimit {
                limit: ResourceLimit::FileSize,
            },
            signal => RunStatus::KilledBySignal { signal },
        };
    }
    let exit_code = status.code().unwrap_or(-1);
    if exit_code == 0 {
        return RunStatus::Passed;
    }
    // Python turns limit hits into exceptions; the last traceback line names them.
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let limit = if last.starts_with("MemoryError") {
        Some(ResourceLimit::Memory)
    } else if last.contains("[Errno 11] Resource temporarily unavailable") {
        Some(ResourceLimit::Processes)
    } else if last.contains("[Errno 27] File too large") {
        Some(ResourceLimit::FileSize)
    } else {
        None
    };
    match limit {
        Some(limit) => RunStatus::ResourceLimit { limit },
        None => RunStatus::Failed { exit_code },
    }
}

/// Everything the child does between `fork` and `exec`, prepared in the parent.
struct ChildSetup {
    limits: SandboxLimits,
    uid: Option<u32>,
    network_namespace: bool,
    read_only_filesystem: bool,
    workdir: CString,
}

/// `struct mount_attr` of `mount_setattr(2)` (not in the libc crate).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;

fn check(ret: libc::c_long) -> std::io::Result<()> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl ChildSetup {
    /// Runs in the forked child: only async-signal-safe system calls.
    fn apply(&self) -> std::io::Result<()> {
        // SAFETY: plain system calls on valid pointers to data owned by `self`.
        unsafe {
            check(libc::setsid() as libc::c_long)?;
            let limit = |resource, soft: u64, hard: u64| {
                let value = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                check(libc::setrlimit(resource, &value) as libc::c_long)
            };
            let l = &self.limits;
            limit(libc::RLIMIT_CORE, 0, 0)?;
            limit(libc::RLIMIT_CPU, l.cpu_seconds, l.cpu_seconds + 1)?;
            limit(
                libc::RLIMIT_AS,
                l.address_space_bytes,
                l.address_space_bytes,
            )?;
            limit(libc::RLIMIT_FSIZE, l.file_size_bytes, l.file_size_bytes)?;
            limit(libc::RLIMIT_NOFILE, l.open_files, l.open_files)?;
            limit(libc::RLIMIT_NPROC, l.processes, l.processes)?;
            if self.network_namespace {
                check(libc::unshare(libc::CLONE_NEWNET) as libc::c_long)?;
            }
            if self.read_only_filesystem {
                check(libc::unshare(libc::CLONE_NEWNS) as libc::c_long)?;
                // Keep our mount changes from propagating back to the host's namespace.
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) as libc::c_long)?;
                // The program's directory becomes its own mount so it can stay writable.
                check(libc::mount(
                    self.workdir.as_ptr(),
                    self.workdir.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) as libc::c_long)?;
                let read_only = MountAttr {
                    attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
                    attr_clr: 0,
                    propagation: 0,
                    userns_fd: 0,
                };
                check(libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    c"/".as_ptr(),
                    libc::AT_RECURSIVE as libc::c_uint,
                    &read_only as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                ))?;
                let writable = MountAttr {
                    attr_set: 0,
                    attr_clr: MOUNT_ATTR_RDONLY,
                    propagation: 0,
                    userns_fd: 0,
                };
                check(libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    self.workdir.as_ptr(),
                    0 as libc::c_uint,
                    &writable as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                ))?;
                // The working directory still points at the mount underneath; re-enter it.
                check(libc::chdir(self.workdir.as_ptr()) as libc::c_long)?;
            }
            if let Some(uid) = self.uid {
                check(libc::setgroups(0, std::ptr::null()) as libc::c_long)?;
                check(libc::setgid(uid) as libc::c_long)?;
                check(libc::setuid(uid) as libc::c_long)?;
            }
            // After the uid change, which clears it: die with the harness.
            check(
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) as libc::c_long,
            )?;
            check(
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) as libc::c_long,
            )?;
        }
        Ok(())
    }
}

/// Kills the program's process group (its session leader's pid is the group id).
fn kill_group(pid: u32) {
    // SAFETY: signalling a process group we created; ESRCH when it is already gone is fine.
    unsafe {
        libc::killpg(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Kills every process running under the sandbox uid, including ones that left the process
/// group (`setsid`), and returns how many could not be killed. Processes are found in /proc and
/// signalled through a pidfd after re-checking their uid, so a recycled pid is never hit.
fn kill_uid(uid: u32) -> usize {
    for _ in 0..200 {
        let pids = processes_of_uid(uid);
        if pids.is_empty() {
            return 0;
        }
        for pid in pids {
            // SAFETY: pidfd syscalls on a pid from /proc; the fd is closed below.
            unsafe {
                let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
                if pidfd < 0 {
                    continue; // already gone
                }
                if process_uid(pid) == Some(uid) {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        pidfd,
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    );
                }
                libc::close(pidfd as libc::c_int);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    processes_of_uid(uid).len()
}

/// Real uid of a live (not zombie) process, from /proc.
fn process_uid(pid: libc::pid_t) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
    };
    if matches!(field("State:"), Some("Z" | "X")) {
        return None;
    }
    field("Uid:")?.parse().ok()
}

/// Live processes whose real uid is `uid`.
fn processes_of_uid(uid: u32) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| process_uid(pid) == Some(uid))
        .collect()
}

/// One of the child's output pipes: keeps the first bytes up to the cap, counts (and discards)
/// the rest.
struct CappedStream {
    pipe: Option<std::fs::File>,
    kept: Vec<u8>,
    total: usize,
}

impl CappedStream {
    fn new(pipe: Option<std::os::fd::OwnedFd>) -> Self {
        let pipe = pipe.map(std::fs::File::from);
        if let Some(file) = &pipe {
            // SAFETY: fcntl on a pipe we own.
            unsafe {
                let fd = file.as_raw_fd();
                let flags = libc::fcntl(fd, libc::F_GETFL);
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        Self {
            pipe,
            kept: Vec::new(),
            total: 0,
        }
    }

    /// Reads what is available without blocking (at most a few MiB per call so the caller can
    /// check the clock); closes the pipe at end of file.
    fn read_available(&mut self, cap: usize) {
        let Some(pipe) = &mut self.pipe else {
            return;
        };
        let mut buffer = [0u8; 65536];
        for _ in 0..64 {
            match pipe.read(&mut buffer) {
                Ok(0) => {
                    self.pipe = None;
                    return;
                }
                Ok(n) => {
                    let room = cap.saturating_sub(self.kept.len());
                    self.kept.extend_from_slice(&buffer[..n.min(room)]);
                    self.total += n;
                    if self.total > cap {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return, // WouldBlock: nothing more for now
            }
        }
    }
}

fn poll_readable(streams: &mut [CappedStream; 2], timeout_ms: i32) {
    let mut fds: Vec<libc::pollfd> = streams
        .iter()
        .filter_map(|s| s.pipe.as_ref())
        .map(|p| libc::pollfd {
            fd: p.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    if fds.is_empty() {
        std::thread::sleep(Duration::from_millis(timeout_ms as u64));
        return;
    }
    // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
    unsafe {
        libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_reads_python_limit_errors() {
        let failed = std::process::ExitStatus::from_raw(1 << 8);
        assert_eq!(
            classify(Some(failed), false, false, "Traceback\nMemoryError\n"),
            RunStatus::ResourceLimit {
                limit: ResourceLimit::Memory
            }
        );
        assert_eq!(
            classify(Some(failed), false, false, "AssertionError\n"),
            RunStatus::Failed { exit_code: 1 }
        );
        let xcpu = std::process::ExitStatus::from_raw(libc::SIGXCPU);
        assert_eq!(
            classify(Some(xcpu), false, false, ""),
            RunStatus::ResourceLimit {
                limit: ResourceLimit::Cpu
            }
        );
        assert_eq!(classify(Some(failed), true, false, ""), RunStatus::TimedOut);
    }
}
