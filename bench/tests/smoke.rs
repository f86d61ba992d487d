//! `ivy-bench --smoke` on each path: it runs every workload, both implementations where there
//! are two, and writes a complete table. Behaviour only: no figure is judged.
//!
//! The AMQP and SQS tests need the services of `scripts/services`; like the project's other
//! integration tests they fail, never skip, when a service is missing.

use std::process::Command;

fn smoke(name: &str, args: &[&str]) -> String {
    let out_file = std::env::temp_dir().join(format!("ivy-bench-{name}-{}.md", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_ivy-bench"))
        .arg("--smoke")
        .args(args)
        .arg("--out")
        .arg(&out_file)
        .output()
        .expect("run ivy-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ivy-bench --smoke {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(&out_file).expect("the report was written");
    let _ = std::fs::remove_file(&out_file);
    assert_eq!(
        written.trim(),
        stdout.trim(),
        "--out holds what was printed"
    );
    assert!(!written.contains("FAILED"), "{written}");
    for heading in [
        "**Machine**",
        "**Versions**",
        "**Settings**",
        "| Path | Workload |",
    ] {
        assert!(written.contains(heading), "no {heading} in:\n{written}");
    }
    written
}

fn rows<'a>(table: &'a str, path: &str) -> Vec<&'a str> {
    table
        .lines()
        .filter(|l| l.starts_with(&format!("| {path} |")))
        .collect()
}

#[test]
fn memory_smoke_runs_every_workload() {
    let t = smoke("memory", &["--paths", "memory"]);
    let rows = rows(&t, "memory");
    // W1, W2, W3, W4 plain and encrypted.
    assert_eq!(rows.len(), 5, "{t}");
    assert!(rows.iter().all(|r| r.contains("(one process)")), "{t}");
    let w3 = rows.iter().find(|r| r.contains("W3")).expect("a W3 row");
    // The only "a / b" cell of a memory row is W3's p50 / p99.
    assert!(w3.contains(" / "), "W3 has p50/p99: {w3}");
}

#[test]
fn amqp_smoke_measures_ivy_and_the_raw_baseline() {
    let t = smoke("amqp", &["--paths", "amqp"]);
    let rows = rows(&t, "AMQP + Redis");
    // Ivy and raw for W1..W3, raw at Ivy's message size for W1 and W2, the minimal raw
    // pipeline for W1..W3; Ivy plain, Ivy encrypted and raw for W4.
    assert_eq!(rows.len(), 14, "{t}");
    assert_eq!(
        rows.iter()
            .filter(|r| r.contains("padded to Ivy's size"))
            .count(),
        2,
        "{t}"
    );
    assert_eq!(
        rows.iter().filter(|r| r.contains("(baseline)")).count(),
        4,
        "{t}"
    );
    let minimal: Vec<&&str> = rows.iter().filter(|r| r.contains("(ceiling)")).collect();
    assert_eq!(minimal.len(), 3, "{t}");
    assert!(minimal.iter().all(|r| r.contains("minimal raw")), "{t}");
    // Ivy's W3 row compares its p50 with the minimal pipeline's.
    let w3 = rows
        .iter()
        .find(|r| r.contains("W3") && r.contains("| Ivy |"))
        .expect("Ivy's W3 row");
    assert!(w3.contains("(p50 ×"), "{t}");
    assert!(!rows.iter().any(|r| r.contains("(one process)")), "{t}");
    assert!(t.contains("RabbitMQ 3."), "{t}");
}

#[test]
fn sqs_smoke_runs_on_moto() {
    let t = smoke("sqs", &["--paths", "sqs", "--sqs-n", "20"]);
    let rows = rows(&t, "SQS (moto) + Redis");
    assert_eq!(rows.len(), 5, "{t}");
    assert!(!t.contains("skipped"), "{t}");
}
