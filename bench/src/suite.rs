//! The parent process: every scenario's runs, each in a fresh `ivy-bench run …` child, then
//! the Markdown report on stdout and in `--out`, and the `--scale-check` table. It measures
//! nothing itself; the children do.

use std::fmt::Write as _;

use crate::args::{self, Opts};
use crate::error::BoxError;
use crate::header;
use crate::report::{self, Outcome, Row, Sample};
use crate::run::SAMPLE_PREFIX;
use crate::scenario::{sides, PathKind, Side, Workload};

/// Runs one scenario once in a fresh `ivy-bench run …` process (which starts its own worker
/// process where there is one), so each run's peak RSS is its own.
async fn run_in_child(
    opts: &Opts,
    path: PathKind,
    workload: Workload,
    side: Side,
    n: u64,
    counter: u64,
) -> Result<Sample, BoxError> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args(args::run_args(opts, path, workload, side, n, counter))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let limit = opts.run_limit(n) * 2;
    let out = match tokio::time::timeout(limit, cmd.output()).await {
        Ok(out) => out?,
        Err(_) => return Err(format!("no end within {limit:?}").into()),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let last = stderr.lines().rev().take(5).collect::<Vec<_>>();
        let last = last.into_iter().rev().collect::<Vec<_>>().join(" / ");
        return Err(format!("the run process failed ({}): {last}", out.status).into());
    }
    if !stderr.trim().is_empty() {
        eprint!("{stderr}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(SAMPLE_PREFIX))
        .ok_or("the run process printed no sample")?;
    Ok(serde_json::from_str(line)?)
}

/// Whether the SQS path can run: `None`, or why not.
async fn sqs_unavailable(url: &str) -> Option<Outcome> {
    match ivy::backends::broker_from_url(url).await {
        Ok(_) => None,
        Err(ivy::Error::Url { reason, .. }) => {
            Some(Outcome::Skipped(format!("no sqs backend ({reason})")))
        }
        Err(e) => Some(Outcome::Failed(format!("SQS at {url} unusable: {e}"))),
    }
}

pub async fn bench(opts: Opts) -> Result<bool, BoxError> {
    let load_before = header::load_average();
    if opts.handoff {
        let section = crate::handoff::section(&opts).await?;
        let mut doc = crate::handoff::header(&opts, &load_before).await;
        doc.push_str(&section);
        let _ = writeln!(
            doc,
            "\nLoad average after the run: {}",
            header::load_average()
        );
        return write_report(&opts, &doc).map(|()| true);
    }
    let mut counter = 0;
    let mut rows: Vec<Row> = Vec::new();
    for &path in &opts.paths {
        let unavailable = if path == PathKind::Sqs {
            sqs_unavailable(&opts.sqs_url).await
        } else {
            None
        };
        for &workload in &opts.workloads {
            let n = opts.calls(path, workload);
            let sides = sides(path, workload);
            let mut samples: Vec<Result<Vec<Sample>, String>> = vec![Ok(Vec::new()); sides.len()];
            if let Some(why) = &unavailable {
                for &side in &sides {
                    rows.push(Row {
                        path,
                        workload,
                        side,
                        outcome: why.clone(),
                    });
                }
                if let Outcome::Skipped(why) = why {
                    eprintln!("{} {}: skipped: {why}", path.label(), workload.label());
                }
                continue;
            }
            // Runs alternate between implementations, so drift in the machine's load hits all.
            for run in 1..=opts.runs {
                for (i, &side) in sides.iter().enumerate() {
                    let Ok(done) = &mut samples[i] else { continue };
                    counter += 1;
                    let result = run_in_child(&opts, path, workload, side, n, counter).await;
                    match result {
                        Ok(s) => {
                            eprintln!(
                                "{} | {} | {} | run {run}/{}: {:.0} tasks/s",
                                path.label(),
                                workload.label(),
                                side.label(workload),
                                opts.runs,
                                s.tasks as f64 / s.elapsed.as_secs_f64()
                            );
                            done.push(s);
                        }
                        Err(e) => {
                            eprintln!(
                                "{} | {} | {} | run {run}: FAILED: {e}",
                                path.label(),
                                workload.label(),
                                side.label(workload)
                            );
                            samples[i] = Err(e.to_string());
                        }
                    }
                }
            }
            for (side, s) in sides.into_iter().zip(samples) {
                rows.push(Row {
                    path,
                    workload,
                    side,
                    outcome: match s {
                        Ok(s) => Outcome::Samples(s),
                        Err(e) => Outcome::Failed(e),
                    },
                });
            }
        }
    }

    let mut doc = header::header(&opts, &load_before).await;
    doc.push_str(&report::table(&rows));
    let _ = writeln!(
        doc,
        "\nLoad average after the run: {}",
        header::load_average()
    );
    if opts.scale_check {
        doc.push_str(&scale_check(&opts).await?);
    }
    write_report(&opts, &doc)?;
    Ok(!rows.iter().any(|r| matches!(r.outcome, Outcome::Failed(_))))
}

/// Prints the report and writes it to `--out`.
fn write_report(opts: &Opts, doc: &str) -> Result<(), BoxError> {
    println!("{doc}");
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&opts.out, doc)?;
    eprintln!("written to {}", opts.out.display());
    Ok(())
}

/// W1 on memory at N and at 10×N: per-task CPU should not grow with N.
async fn scale_check(opts: &Opts) -> Result<String, BoxError> {
    let mut out = String::from(
        "\n## Per-task cost against N (W1, memory, producer and worker in one process)\n\n\
         | N | tasks/s median | CPU µs per task (median) | peak RSS MiB |\n|---|---|---|---|\n",
    );
    for n in [opts.n, opts.n * 10] {
        let mut samples = Vec::new();
        for run in 0..opts.runs {
            samples.push(
                run_in_child(
                    opts,
                    PathKind::Memory,
                    Workload::W1,
                    Side::Ivy,
                    n,
                    run as u64,
                )
                .await?,
            );
        }
        let f = report::figures(&samples);
        eprintln!("scale check N={n}: {:.0} tasks/s", f.tps);
        let _ = writeln!(
            out,
            "| {n} | {:.0} | {:.1} | {:.1} |",
            f.tps,
            f.producer_cpu_per_1k * 1000.0,
            f.producer_rss_mib
        );
    }
    Ok(out)
}
