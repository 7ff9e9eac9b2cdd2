//! GPU memory in use, sampled by `nvidia-smi` every 20 ms in the background.
//!
//! tch exposes none of PyTorch's caching-allocator statistics, so this reads the device-wide
//! figure instead: it includes the CUDA context and everything the caching allocator keeps
//! reserved, i.e. what `torch.cuda.max_memory_reserved()` plus the context would show, and
//! more than `max_memory_allocated()`. The HF baseline script records all three.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct MemoryPoller {
    child: std::sync::Mutex<Child>,
    current: Arc<AtomicU64>,
    peak: Arc<AtomicU64>,
}

impl MemoryPoller {
    /// Starts polling GPU `index`; `None` when `nvidia-smi` cannot be started.
    pub fn start(index: usize) -> Option<Self> {
        let mut child = Command::new("nvidia-smi")
            .args([
                "--query-gpu=memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "20",
                "-i",
            ])
            .arg(index.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take()?;
        let current = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU64::new(0));
        let (current_writer, peak_writer) = (current.clone(), peak.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(mib) = line.trim().parse::<u64>() {
                    current_writer.store(mib, Ordering::Relaxed);
                    peak_writer.fetch_max(mib, Ordering::Relaxed);
                }
            }
        });
        let poller = Self {
            child: std::sync::Mutex::new(child),
            current,
            peak,
        };
        // Wait for the first sample so that `current` is meaningful from the start.
        for _ in 0..100 {
            if poller.current_mib() > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(poller)
    }

    pub fn current_mib(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    /// Highest sample so far; waits one sampling period so the latest state is included.
    pub fn peak_mib(&self) -> u64 {
        std::thread::sleep(std::time::Duration::from_millis(60));
        self.peak.load(Ordering::Relaxed)
    }
}

impl MemoryPoller {
    /// Stops sampling (the process-wide poller lives in a static, which is never dropped).
    pub fn stop(&self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MemoryPoller {
    fn drop(&mut self) {
        self.stop();
    }
}

static GLOBAL: std::sync::OnceLock<Option<MemoryPoller>> = std::sync::OnceLock::new();

/// Starts the process-wide poller for GPU `index` (once); later calls return the same one.
pub fn start_global(index: usize) -> Option<&'static MemoryPoller> {
    GLOBAL.get_or_init(|| MemoryPoller::start(index)).as_ref()
}

/// The latest sample of the process-wide poller, if one runs.
pub fn memory_now() -> Option<u64> {
    GLOBAL
        .get()
        .and_then(Option::as_ref)
        .map(MemoryPoller::current_mib)
}

/// The GPU index of a `cuda` / `cuda:N` device spec.
pub fn gpu_index(spec: &str) -> usize {
    spec.strip_prefix("cuda:")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
