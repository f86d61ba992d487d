//! `cargo run --example workflows` prints the results of a chain, a group, a chord and a chain
//! that fails at its middle step, on the in-memory broker (workflows, issue 14).

mod processes;

use std::time::Duration;

#[tokio::test]
async fn the_workflows_example_prints_every_result() {
    let run = tokio::process::Command::new(processes::example("workflows"))
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the example finished")
        .expect("the example ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "chain fetch -> words(limit 3) -> count: 3",
        "group of squares: 1, 4, 9, 16, 25",
        "group stream: 3 results",
        "chord: sum of the first 10 squares: 385",
        "failed chain: chain step `workflows.even` (",
        "failed, so its 1 later step(s) did not run: 9 is odd",
        "cancelled chain: the chain was cancelled; it stopped after step `workflows.nap` (",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}
