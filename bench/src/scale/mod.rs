//! The cost curves (`ivy-bench --scale`, issue 24): per-unit CPU, latency and memory while the
//! work doubles, on AMQP + Redis. Six curves: a backlog drained by one worker, handles waiting
//! in one producer, groups and chords, chains against plain calls, a worker on many queues,
//! and tasks whose limits never bind. Each point (one size of one curve) runs in a fresh
//! `ivy-bench scale-point …` process with its own `ivy-bench scale-worker …`, so peak RSS and
//! CPU are the point's. The parent prints one table per curve with the growth of each
//! per-unit figure from the smallest size to the largest; it judges nothing, it only flags.
//!
//! Where things live: `point.rs` the worker process and the helpers every point uses,
//! `backlog.rs`, `handles.rs`, `flows.rs` (groups, chords, chains), `queues.rs` and
//! `limits.rs` the curves, `table.rs` the Markdown.

mod backlog;
mod flows;
mod handles;
mod limits;
mod point;
mod queues;
mod table;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::time::Instant;

use crate::args::Opts;
use crate::error::BoxError;
use crate::tasks::executed;
use crate::{header, procfs};

/// One point's figures, by column key.
pub type Figures = BTreeMap<String, f64>;

/// Figures from `(key, value)` pairs.
pub fn figures(pairs: &[(&str, f64)]) -> Figures {
    pairs.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
}

/// How a point hands its figures to the parent.
const POINT_PREFIX: &str = "POINT ";

/// Concurrency of every curve's worker (the bench's default).
const CONCURRENCY: usize = 16;

/// A column of a curve's table.
pub struct Col {
    pub key: &'static str,
    pub header: &'static str,
    pub digits: usize,
    pub growth: Growth,
}

/// What the growth line says of a column.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    /// A total: no growth figure.
    None,
    /// A per-unit cost: its growth, flagged above [`FLAG`].
    Cost,
    /// A per-unit figure that is no cost (a rate): its growth, never flagged.
    Shown,
}

/// Growth of a per-unit cost above which the table flags it.
pub const FLAG: f64 = 1.5;

/// One curve: its sizes, its series (variants measured at each size) and its table.
pub struct Curve {
    pub key: &'static str,
    pub title: &'static str,
    pub what: &'static str,
    /// What N counts (the first column's heading).
    pub n_header: &'static str,
    pub series: &'static [&'static str],
    pub ns: Vec<u64>,
    pub cols: &'static [Col],
}

/// The curves of a run: `--smoke` gives tiny sizes; the backlog stops at `--scale-max`.
fn plan(opts: &Opts) -> Vec<Curve> {
    let pick = |full: &[u64], smoke: &[u64]| {
        if opts.smoke {
            smoke.to_vec()
        } else {
            full.to_vec()
        }
    };
    let mut backlog: Vec<u64> = pick(&[10_000, 100_000, 1_000_000], &[100, 200])
        .into_iter()
        .filter(|&n| n <= opts.scale_max || opts.smoke)
        .collect();
    if !opts.smoke && backlog.last() != Some(&opts.scale_max) {
        backlog.push(opts.scale_max);
    }
    vec![
        backlog::curve(backlog),
        handles::curve(pick(&[1_000, 10_000, 100_000], &[100, 200])),
        flows::group_curve(pick(&[100, 1_000, 10_000], &[10, 20])),
        flows::chain_curve(pick(&[1, 2, 5, 10], &[1, 3])),
        queues::curve(pick(&[1, 10, 100, 1_000], &[1, 3])),
        limits::curve(pick(&[2_000, 20_000], &[100, 200])),
    ]
}

/// The outcome of one point.
pub type PointResult = Result<Figures, String>;

/// `ivy-bench --scale`: every point of every curve in a child process, then the report.
pub async fn bench(opts: Opts) -> Result<bool, BoxError> {
    let load_before = header::load_average();
    let started = Instant::now();
    let mut sections = String::new();
    let mut all_ok = true;
    for curve in plan(&opts) {
        let mut results: Vec<(&str, u64, PointResult)> = Vec::new();
        for &series in curve.series {
            for &n in &curve.ns {
                let t = Instant::now();
                let r = run_point(curve.key, series, n, opts.smoke).await;
                match &r {
                    Ok(f) => eprintln!(
                        "scale | {} | {series} | N={n}: {:.1} s {}",
                        curve.key,
                        t.elapsed().as_secs_f64(),
                        table::brief(&curve, f)
                    ),
                    Err(e) => {
                        all_ok = false;
                        eprintln!("scale | {} | {series} | N={n}: FAILED: {e}", curve.key);
                    }
                }
                results.push((series, n, r.map_err(|e| e.to_string())));
            }
        }
        sections.push_str(&table::section(&curve, &results));
    }
    let mut doc = report_header(&opts, &load_before).await;
    doc.push_str(&sections);
    let _ = writeln!(
        doc,
        "\nWhole run: {:.0} s. Load average after the run: {}",
        started.elapsed().as_secs_f64(),
        header::load_average()
    );
    println!("{doc}");
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&opts.out, &doc)?;
    eprintln!("written to {}", opts.out.display());
    Ok(all_ok)
}

/// Runs one point in a fresh `ivy-bench scale-point …` process.
async fn run_point(curve: &str, series: &str, n: u64, smoke: bool) -> Result<Figures, BoxError> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args(["scale-point", curve, series, &n.to_string()]);
    if smoke {
        cmd.arg("--smoke");
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let limit = point::limit_for(n) * 4;
    let out = match tokio::time::timeout(limit, cmd.output()).await {
        Ok(out) => out?,
        Err(_) => return Err(format!("no end within {limit:?}").into()),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let last = stderr.lines().rev().take(3).collect::<Vec<_>>();
        let last = last.into_iter().rev().collect::<Vec<_>>().join(" / ");
        return Err(format!("the point's process failed ({}): {last}", out.status).into());
    }
    if !stderr.trim().is_empty() {
        eprint!("{stderr}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(POINT_PREFIX))
        .ok_or("the point's process printed no figures")?;
    Ok(serde_json::from_str(line)?)
}

/// `scale-point CURVE SERIES N [--smoke]` and `scale-worker …`: the child processes.
pub async fn child_main(args: Vec<OsString>) -> Result<(), BoxError> {
    let words: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    match words.as_slice() {
        ["scale-worker", ..] => point::worker_main(&args[1..]).await,
        ["scale-point", curve, series, n, rest @ ..] => {
            let n: u64 = n.parse().map_err(|_| POINT_USAGE)?;
            let smoke = rest == ["--smoke"];
            let urls = point::Urls::from_env();
            let figures = match *curve {
                "backlog" => backlog::point(&urls, n).await?,
                "handles" => handles::point(&urls, n).await?,
                "flows" => flows::group_point(&urls, series, n).await?,
                "chain" => flows::chain_point(&urls, n, smoke).await?,
                "queues" => queues::point(&urls, n, smoke).await?,
                "limits" => limits::point(&urls, series, n).await?,
                other => return Err(format!("unknown curve {other}").into()),
            };
            println!("{POINT_PREFIX}{}", serde_json::to_string(&figures)?);
            Ok(())
        }
        _ => Err(POINT_USAGE.into()),
    }
}

const POINT_USAGE: &str = "usage: ivy-bench scale-point CURVE SERIES N [--smoke]";

/// The report's header: date, machine, load, versions, settings.
async fn report_header(opts: &Opts, load_before: &str) -> String {
    let mut h = header::opening("Ivy cost curves (`ivy-bench --scale`)", load_before);
    let _ = writeln!(
        h,
        "- **Versions**: Ivy at `{}`; {}; RabbitMQ {}; Redis {}",
        header::ivy_commit(),
        procfs::command_line("rustc", &["-V"]),
        header::rabbitmq_version(),
        header::redis_version(&opts.redis_url).await,
    );
    let _ = writeln!(
        h,
        "- **Settings**: AMQP + Redis; one worker of concurrency {CONCURRENCY}, Ivy's default \
         prefetch; durable queues, persistent messages, publisher confirms; {}{}",
        if opts.smoke {
            "`--smoke`: tiny sizes, figures meaningless"
        } else {
            "one run per point"
        },
        if cfg!(debug_assertions) {
            "; NO: debug build, figures meaningless"
        } else {
            "; release build"
        },
    );
    let _ = writeln!(
        h,
        "- **Measured**: every point runs in fresh processes (`ivy-bench scale-point …` for the \
         producer, `ivy-bench scale-worker …` for the worker), so peak RSS (VmHWM) is the \
         point's; CPU = utime + stime from `/proc/<pid>/stat` over the measured part; Redis \
         figures from `INFO` (server-wide: whatever else uses the server counts too). *growth* \
         is each per-unit figure at the largest N over the smallest; a cost that grows more \
         than ×{FLAG} is flagged **(> {FLAG})**"
    );
    h
}

/// The trivial task of the backlog, handles and queues curves is `crate::tasks::add`; these
/// are the curves' own.
///
/// A group or chord member: its finish time in epoch µs.
#[ivy::task(name = "scale.stamp")]
pub async fn stamp(i: u64) -> u64 {
    executed();
    let _ = i;
    point::now_us()
}

/// A chord's callback: the last member's finish time and its own start, in epoch µs.
#[ivy::task(name = "scale.gather")]
pub async fn gather(times: Vec<u64>) -> (u64, u64) {
    let start = point::now_us();
    executed();
    (times.into_iter().max().unwrap_or(0), start)
}

/// A chain step, or the same as a plain call.
#[ivy::task(name = "scale.step")]
pub async fn step(x: u64) -> u64 {
    executed();
    x + 1
}

/// `add` with a rate limit that never binds (a million a second).
#[ivy::task(name = "scale.rated", rate_limit = "1000000/s")]
pub async fn rated(x: u64) -> u64 {
    executed();
    x + 1
}

/// `add` with a concurrency limit that never binds (above the worker's concurrency).
#[ivy::task(name = "scale.slotted", max_concurrency = 1000)]
pub async fn slotted(x: u64) -> u64 {
    executed();
    x + 1
}

/// `add` with no limit: the limits curve's baseline.
#[ivy::task(name = "scale.free")]
pub async fn free(x: u64) -> u64 {
    executed();
    x + 1
}
