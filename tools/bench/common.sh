# Shared preamble of the CPU comparison scripts (sourced, not run): the repository root as the
# working directory, the knobs every script reads, one build helper, and a log directory that
# is removed on exit.
#
# Environment: PYTHON (the peer's interpreter; default python3), ROUNDS (3), THREADS (2:
# RAYON_NUM_THREADS for Rust, torch.set_num_threads / OMP / MKL for Python), TUNELOOP_ASSETS
# (default assets), PROFILE (dev: the workspace builds the kernel crates and every dependency
# at opt-level 3 without debug assertions, so dev runs the kernels as release does),
# CARGO_TARGET_DIR (default target).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
python=${PYTHON:-python3}
rounds=${ROUNDS:-3}
threads=${THREADS:-2}
assets=${TUNELOOP_ASSETS:-assets}
profile=${PROFILE:-dev}
target=${CARGO_TARGET_DIR:-target}
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# build_example EXAMPLE: builds it without timing pressure (niced; the timed runs are not) and
# sets $bin to its path. Workspace-wide, so dependency features unify as in the workspace build
# and an existing `cargo build --workspace` is reused instead of recompiling dependencies.
build_example() {
  nice -n 10 cargo build --quiet --profile "$profile" --workspace --example "$1"
  local dir=$profile
  [[ $profile == dev ]] && dir=debug
  bin=$target/$dir/examples/$1
}

# The machine and its load before the first timed run.
machine_header() {
  lscpu | grep -E "^Model name|^CPU\(s\)" || true
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "load before: $(uptime)"
}
