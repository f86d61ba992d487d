//! The command line as a person meets it: `--help` and usage errors. Needs no service.

use std::process::{Command, Output};

fn ivy_bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ivy-bench"))
        .args(args)
        .output()
        .expect("run ivy-bench")
}

#[test]
fn help_goes_to_stdout_and_exits_0() {
    // Which options the text lists is checked against the parser's own USAGE in args.rs.
    let out = ivy_bench(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.starts_with("usage: ivy-bench"), "{help}");
    assert!(help.contains("--scale-check"), "{help}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_usage_error_exits_2_with_one_line() {
    for args in [
        &["--bogus"][..],
        &["--n", "0"],
        &["--runs"],
        &["--paths", "kafka"],
        &["run", "memory"],
    ] {
        let out = ivy_bench(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
