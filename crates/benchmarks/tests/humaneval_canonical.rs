//! The sandbox accepts every canonical HumanEval solution and rejects wrong ones.
//! Needs assets/data/humaneval.jsonl (`cargo xtask assets`).

use std::time::Instant;

use benchmarks::data::{default_data_dir, load_humaneval};
use benchmarks::humaneval::{HumanEvalMode, program};
use benchmarks::sandbox::{RunStatus, Sandbox, SandboxLimits};

#[test]
fn all_canonical_solutions_pass_and_wrong_ones_fail() {
    let problems = load_humaneval(&default_data_dir()).expect("HumanEval data");
    assert_eq!(problems.len(), 164);
    let sandbox = Sandbox::new(SandboxLimits::default()).unwrap();
    let programs: Vec<String> = problems
        .iter()
        .map(|p| program(p, &p.canonical_solution, HumanEvalMode::Completion))
        .collect();
    let start = Instant::now();
    let outcomes = sandbox.run_all(&programs, 2).unwrap();
    let elapsed = start.elapsed();
    let failures: Vec<String> = problems
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| !o.passed())
        .map(|(p, o)| format!("{}: {}", p.task_id, o.describe()))
        .collect();
    assert!(
        failures.is_empty(),
        "canonical solutions failed: {failures:#?}"
    );
    eprintln!(
        "164 canonical solutions passed in {elapsed:?} ({})",
        sandbox.isolation().summary()
    );

    // Wrong solutions: a wrong value, an exception, a syntax error, and two that exit 0 from
    // inside the function so the asserts never run (a pass under the bare reference protocol).
    let p = &problems[0];
    for wrong in [
        "    return not any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n",
        "    raise ValueError('no')\n",
        "    return (\n",
        "    import sys\n    sys.exit(0)\n",
        "    import os\n    os._exit(0)\n",
    ] {
        let outcome = sandbox
            .run(&program(p, wrong, HumanEvalMode::Completion))
            .unwrap();
        if wrong.contains("exit(0)") {
            assert_eq!(
                outcome.status,
                RunStatus::ExitedEarly,
                "{wrong:?}: {outcome:?}"
            );
        } else {
            assert!(
                matches!(outcome.status, RunStatus::Failed { exit_code: 1 }),
                "{wrong:?}: {outcome:?}"
            );
        }
    }
}
