//! Hostile programs run in the sandbox: each is contained, scored as a failure within a bounded
//! time, and the sandbox keeps working afterwards. Where this machine cannot enforce an isolation
//! feature, the test asserts that the sandbox says so and that its report is true.

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use benchmarks::sandbox::{ResourceLimit, RunStatus, Sandbox, SandboxLimits};

fn sandbox() -> Sandbox {
    let limits = SandboxLimits {
        wall_timeout: Duration::from_secs(3),
        cpu_seconds: 3,
        ..SandboxLimits::default()
    };
    Sandbox::new(limits).expect("python3 is needed for the HumanEval sandbox")
}

/// Bound for any hostile program: wall timeout plus kill and reap.
const BOUND: Duration = Duration::from_secs(8);

#[test]
fn hostile_programs_are_contained_and_the_sandbox_keeps_working() {
    let sandbox = sandbox();
    let isolation = sandbox.isolation().clone();
    eprintln!(
        "isolation in force: {} {:?}",
        isolation.summary(),
        isolation.notes
    );

    // A normal program passes (and sees its own directory as cwd).
    let ok = sandbox
        .run("import os\nassert os.listdir('.') == ['program.py'], os.listdir('.')\nprint('ok')\n")
        .unwrap();
    assert!(ok.passed(), "{ok:?}");
    assert_eq!(ok.stdout, "ok\n");

    // Fork bomb: processes limited (when NPROC binds), all killed at the end.
    let start = Instant::now();
    let outcome = sandbox
        .run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
        .unwrap();
    assert!(!outcome.passed(), "{outcome:?}");
    assert!(
        start.elapsed() < BOUND,
        "fork bomb took {:?}",
        start.elapsed()
    );
    assert_eq!(
        outcome.stray_processes, 0,
        "fork bomb left processes: {outcome:?}"
    );

    // Fork bomb whose children escape the process group with setsid.
    let outcome = sandbox
        .run("import os, time\nfor _ in range(5):\n    if os.fork() == 0:\n        os.setsid()\n        time.sleep(1000)\n")
        .unwrap();
    assert_eq!(
        outcome.status,
        RunStatus::Passed,
        "parent exits 0: {outcome:?}"
    );
    if isolation.unprivileged_uid {
        assert_eq!(
            outcome.stray_processes, 0,
            "setsid children survived: {outcome:?}"
        );
    }

    // 50 GB allocation: the address-space limit turns it into MemoryError.
    let start = Instant::now();
    let outcome = sandbox
        .run("x = bytearray(50 * 10**9)\nprint(len(x))\n")
        .unwrap();
    assert_eq!(
        outcome.status,
        RunStatus::ResourceLimit {
            limit: ResourceLimit::Memory
        },
        "{outcome:?}"
    );
    assert!(start.elapsed() < BOUND);

    // Infinite loop: wall clock (or CPU limit) stops it.
    let start = Instant::now();
    let outcome = sandbox.run("while True:\n    pass\n").unwrap();
    assert!(
        matches!(
            outcome.status,
            RunStatus::TimedOut
                | RunStatus::ResourceLimit {
                    limit: ResourceLimit::Cpu
                }
        ),
        "{outcome:?}"
    );
    assert!(start.elapsed() < BOUND, "{:?}", start.elapsed());

    // Long sleep uses no CPU: only the wall clock stops it.
    let start = Instant::now();
    let outcome = sandbox.run("import time\ntime.sleep(3600)\n").unwrap();
    assert_eq!(outcome.status, RunStatus::TimedOut, "{outcome:?}");
    assert!(start.elapsed() < BOUND);

    // Output flood (unbounded): killed at the output cap, harness memory bounded by the cap.
    let start = Instant::now();
    let outcome = sandbox
        .run("import sys\nchunk = 'x' * (1 << 20)\nwhile True:\n    sys.stdout.write(chunk)\n")
        .unwrap();
    assert_eq!(
        outcome.status,
        RunStatus::ResourceLimit {
            limit: ResourceLimit::Output
        },
        "{:?}",
        outcome.status
    );
    assert!(outcome.output_truncated);
    assert!(outcome.stdout.len() <= sandbox.limits().output_bytes);
    assert!(start.elapsed() < BOUND);

    // Socket connect to a listener the test opens on loopback.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let outcome = sandbox
        .run(&format!(
            "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'escaped')\n"
        ))
        .unwrap();
    let mut received = Vec::new();
    if let Ok((mut stream, _)) = listener.accept() {
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let _ = stream.read_to_end(&mut received);
    }
    if isolation.network_namespace {
        assert!(
            !outcome.passed(),
            "connect succeeded despite netns: {outcome:?}"
        );
        assert!(received.is_empty(), "listener received {received:?}");
    } else {
        // No network namespace here: the report must admit the connection was possible.
        assert!(outcome.passed() && received == b"escaped", "{outcome:?}");
        eprintln!("WARNING: no network namespace; sandboxed programs can reach the network");
    }

    // Write outside its directory: into a directory the test owns, and into /tmp.
    let owned = tempfile::tempdir().unwrap();
    let owned_target = owned.path().join("escaped.txt");
    let tmp_target = std::env::temp_dir().join(format!("tuneloop-escape-{}", std::process::id()));
    let outcome = sandbox
        .run(&format!(
            "ok = 0\nfor path in [{:?}, {:?}]:\n    try:\n        open(path, 'w').write('escaped')\n        ok += 1\n    except OSError as e:\n        print(path, e)\nassert ok > 0, ok\n",
            owned_target.to_str().unwrap(),
            tmp_target.to_str().unwrap()
        ))
        .unwrap();
    let owned_written = owned_target.exists();
    let tmp_written = tmp_target.exists();
    let _ = std::fs::remove_file(&tmp_target);
    if isolation.read_only_filesystem {
        assert!(!owned_written && !tmp_written, "{outcome:?}");
        assert!(!outcome.passed(), "{outcome:?}");
    } else if isolation.unprivileged_uid {
        // Only permissions protect: the test's 0700 directory, but not world-writable /tmp.
        assert!(!owned_written, "{outcome:?}");
        assert!(
            tmp_written,
            "report says /tmp is writable; it was not: {outcome:?}"
        );
    } else {
        eprintln!("WARNING: sandboxed programs can write anywhere the harness user can");
    }

    // Afterwards the sandbox still runs a normal program.
    let outcome = sandbox.run("print(sum(range(10)))\n").unwrap();
    assert!(outcome.passed(), "{outcome:?}");
    assert_eq!(outcome.stdout.trim(), "45");
}

#[test]
fn file_size_and_open_file_limits_hold() {
    let sandbox = sandbox();
    let outcome = sandbox
        .run("with open('big', 'wb') as f:\n    f.write(b'x' * (64 << 20))\n")
        .unwrap();
    assert_eq!(
        outcome.status,
        RunStatus::ResourceLimit {
            limit: ResourceLimit::FileSize
        },
        "{outcome:?}"
    );
    let outcome = sandbox
        .run("files = [open('f%d' % i, 'w') for i in range(1000)]\n")
        .unwrap();
    assert!(
        matches!(outcome.status, RunStatus::Failed { .. }),
        "{outcome:?}"
    );
    assert!(
        outcome.stderr.contains("Too many open files"),
        "{}",
        outcome.stderr
    );
    // The environment is empty apart from PATH (and LC_CTYPE, set by Python's C-locale coercion); isolated mode ignores PYTHON* variables.
    let outcome = sandbox
        .run("import os, sys\nassert set(os.environ) <= {'PATH', 'LC_CTYPE'}, dict(os.environ)\nassert sys.flags.isolated == 1\n")
        .unwrap();
    assert!(outcome.passed(), "{outcome:?}");
}
