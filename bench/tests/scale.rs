//! `ivy-bench --scale --smoke`: every cost curve runs at tiny sizes and writes a complete
//! table, each with its growth line. Behaviour only: no figure is judged.
//!
//! It needs RabbitMQ and Redis (`scripts/services`); like the project's other integration
//! tests it fails, never skips, when a service is missing.

use std::process::Command;

#[test]
fn scale_smoke_writes_every_curve() {
    let out_file = std::env::temp_dir().join(format!("ivy-bench-scale-{}.md", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_ivy-bench"))
        .args(["--scale", "--smoke", "--out"])
        .arg(&out_file)
        .output()
        .expect("run ivy-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ivy-bench --scale --smoke failed:\n{stdout}\n{}",
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
    for heading in ["**Machine**", "**Versions**", "**Settings**"] {
        assert!(written.contains(heading), "no {heading} in:\n{written}");
    }
    // Each curve: its heading, then (per series) one row per size and a growth line.
    for (title, first_column, series, sizes) in [
        ("A backlog drained by one worker", "| N calls |", 1, 2),
        ("Handles waiting in one producer", "| N handles |", 1, 2),
        ("Groups and chords", "| series | N members |", 2, 2),
        ("Chains against plain calls", "| k steps |", 1, 2),
        ("A worker consuming many queues", "| k queues |", 1, 2),
        ("Limits that never bind", "| series | N calls |", 3, 2),
    ] {
        let section = written
            .split("\n## ")
            .find(|s| s.starts_with(title))
            .unwrap_or_else(|| panic!("no section {title}:\n{written}"));
        let table: Vec<&str> = section.lines().filter(|l| l.starts_with('|')).collect();
        assert!(table[0].starts_with(first_column), "{title}: {}", table[0]);
        let columns = table[0].matches('|').count();
        // Heading, rule, then the rows: every row as wide as the heading.
        assert_eq!(table.len(), 2 + series * (sizes + 1), "{title}:\n{section}");
        assert!(
            table.iter().all(|r| r.matches('|').count() == columns),
            "{title}:\n{section}"
        );
        let growth = table.iter().filter(|r| r.contains("*growth ")).count();
        assert_eq!(
            growth, series,
            "{title}: one growth line per series\n{section}"
        );
        // Every cell of a point's row holds a figure.
        for row in table[2..].iter().filter(|r| !r.contains("*growth")) {
            assert!(
                !row.contains("| – |"),
                "{title}: a figure is missing: {row}"
            );
        }
    }
}
