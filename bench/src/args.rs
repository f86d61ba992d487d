//! The command line: the options a person gives (`ivy-bench [options]`, listed in [`USAGE`])
//! and the two subcommands by which the bench re-executes itself, `run …` (one scenario once)
//! and `worker …` (the worker process). Both ends of each subcommand, the parent writing it and
//! the child reading it, live here so that they cannot drift apart. It parses and validates
//! only: it starts nothing and touches no service.

use std::ffi::OsString;
use std::fmt::Display;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use lexopt::prelude::*;
use lexopt::Parser;

use crate::error::BoxError;
use crate::scenario::{
    Kind, PathKind, Side, Spec, Workload, SQS_DEFAULT_CALLS, W3_CALLS, W5_CALLS, W5_RATE,
};
use crate::tasks;

/// What `--help` prints.
pub const USAGE: &str = "\
usage: ivy-bench [options]
  --n N               calls per run (default 10000)
  --runs R            runs per figure; figures are the median, with the min–max spread (default 5)
  --paths P,..        memory, amqp, sqs (default memory,amqp)
  --workloads W,..    W1 (results), W2 (fire-and-forget), W3 (latency), W4 (16 KiB payload),
                      W5 (calls with results at a steady --rate, each its own caller)
                      (default W1,W2,W3,W4)
  --rate R            W5's calls per second (default 20)
  --concurrency C     worker concurrency (default 16); the like-for-like raw baseline's prefetch
  --prefetch-multiplier M
                      Ivy's worker prefetches C × M (default: Ivy's default)
  --ivy-priorities    Ivy declares its queue with x-max-priority (`priority_queues=*`)
  --window K          calls in flight per producer in W1, W2, W4 (default 1000)
  --sqs-n N           calls per run on SQS, which moto keeps slow (default min(N, 300))
  --smoke             N=200, runs=1: checks that everything works, judges nothing
  --scale-check       also W1 on memory at N and 10×N: CPU per task must not grow with N
  --handoff           only the max_concurrency handoff scenario (AMQP + Redis): 12 calls of
                      400 ms, max_concurrency 2, two workers, against the ideal 2.4 s and an
                      unlimited one-worker baseline; --runs applies
  --scale             only the cost curves (AMQP + Redis): a backlog, waiting handles, groups
                      and chords, chains, queues per worker, limits, each as the work grows;
                      with --smoke, tiny sizes (checks the curves work, judges nothing)
  --scale-max N       the largest backlog of --scale (default 1000000)
  --out FILE          where the Markdown report goes (default bench/results/latest.md;
                      with --handoff bench/results/handoff.md, with --scale
                      bench/results/scale.md)
  -h, --help          this text
Service URLs: IVY_TEST_AMQP_URL, IVY_TEST_REDIS_URL, IVY_TEST_SQS_URL (as scripts/services).
IVY_BENCH_EVENTS=1 runs Ivy's worker with task events on (to measure their cost).";

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// Every scenario, each run in a child process, then the report.
    Bench(Opts),
    /// One scenario once, in this process: a child of [`Command::Bench`].
    Run(RunArgs),
    /// A worker process: a child of a `run` process.
    Worker(Spec),
    /// A process of `--scale` (`scale-point …` or `scale-worker …`), whole command line;
    /// `scale/mod.rs` reads it.
    ScaleChild(Vec<OsString>),
    /// `-h` or `--help`.
    Help,
}

/// The options of the whole bench; a `run` child gets the ones its run needs.
#[derive(Clone, Debug)]
pub struct Opts {
    pub n: u64,
    pub runs: usize,
    pub paths: Vec<PathKind>,
    pub workloads: Vec<Workload>,
    pub concurrency: usize,
    pub prefetch_multiplier: Option<usize>,
    pub ivy_priorities: bool,
    pub window: usize,
    /// W5's calls per second.
    pub rate: f64,
    pub sqs_n: Option<u64>,
    pub smoke: bool,
    pub scale_check: bool,
    /// Only the `max_concurrency` handoff scenario (`handoff.rs`).
    pub handoff: bool,
    /// Only the cost curves (`scale/`).
    pub scale: bool,
    /// The largest backlog of the cost curves.
    pub scale_max: u64,
    pub out: PathBuf,
    pub amqp_url: String,
    pub redis_url: String,
    pub sqs_url: String,
}

impl Opts {
    /// The defaults, with the service URLs from the environment.
    fn defaults() -> Self {
        let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        Opts {
            n: 10_000,
            runs: 5,
            paths: vec![PathKind::Memory, PathKind::Amqp],
            workloads: vec![Workload::W1, Workload::W2, Workload::W3, Workload::W4],
            concurrency: 16,
            prefetch_multiplier: None,
            ivy_priorities: false,
            window: 1000,
            rate: W5_RATE,
            sqs_n: None,
            smoke: false,
            scale_check: false,
            handoff: false,
            scale: false,
            scale_max: 1_000_000,
            out: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results/latest.md")),
            amqp_url: env("IVY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            redis_url: env("IVY_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
            sqs_url: env("IVY_TEST_SQS_URL", "sqs://127.0.0.1:4566?region=us-east-1"),
        }
    }

    /// Calls per run on `path` for `workload`.
    pub fn calls(&self, path: PathKind, workload: Workload) -> u64 {
        let n = match path {
            PathKind::Sqs => self.sqs_n.unwrap_or(self.n.min(SQS_DEFAULT_CALLS)),
            _ => self.n,
        };
        match workload {
            Workload::W3 => n.min(W3_CALLS),
            Workload::W5 => n.min(W5_CALLS),
            _ => n,
        }
    }

    /// How long one run may take before it counts as failed (a hang, a lost message).
    pub fn run_limit(&self, n: u64) -> Duration {
        Duration::from_secs(60) + Duration::from_millis(20) * u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// The `run` subcommand: `ivy-bench run PATH WORKLOAD SIDE N COUNTER [options]`.
#[derive(Clone, Debug)]
pub struct RunArgs {
    pub path: PathKind,
    pub workload: Workload,
    pub side: Side,
    /// Calls in the run.
    pub n: u64,
    /// The run's number, for unique SQS queue names.
    pub counter: u64,
    pub opts: Opts,
}

const RUN_USAGE: &str = "usage: ivy-bench run PATH WORKLOAD SIDE N COUNTER [options]";

/// Reads a command line (without the program name). `run` and `worker` are subcommands only
/// as the first argument, where the parent writes them.
pub fn parse<I>(args: I) -> Result<Command, lexopt::Error>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut args = args.into_iter().map(Into::into).peekable();
    let sub = args.peek().and_then(|a| a.to_str()).map(str::to_owned);
    match sub.as_deref() {
        Some("worker") => {
            args.next();
            parse_worker(&mut Parser::from_args(args)).map(Command::Worker)
        }
        Some("run") => {
            args.next();
            parse_run(&mut Parser::from_args(args))
        }
        Some("scale-point" | "scale-worker") => Ok(Command::ScaleChild(args.collect())),
        _ => {
            let opts = parse_opts(&mut Parser::from_args(args), |value| {
                Err(lexopt::Error::UnexpectedArgument(value))
            })?;
            Ok(opts.map_or(Command::Help, Command::Bench))
        }
    }
}

/// The options of [`USAGE`]; `None` for `--help`. `positional` takes each bare argument.
fn parse_opts(
    parser: &mut Parser,
    mut positional: impl FnMut(OsString) -> Result<(), lexopt::Error>,
) -> Result<Option<Opts>, lexopt::Error> {
    let mut o = Opts::defaults();
    // Kept apart because an explicit --n or --runs wins over --smoke's, in either order.
    let (mut n, mut runs) = (None, None);
    let mut out = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("n") => n = Some(number(parser, "n")?),
            Long("runs") => runs = Some(number(parser, "runs")?),
            Long("paths") => o.paths = list(parser.value()?, PathKind::parse)?,
            Long("workloads") => o.workloads = list(parser.value()?, Workload::parse)?,
            Long("concurrency") => o.concurrency = number(parser, "concurrency")?,
            Long("prefetch-multiplier") => {
                o.prefetch_multiplier = Some(number(parser, "prefetch-multiplier")?);
            }
            Long("ivy-priorities") => o.ivy_priorities = true,
            Long("window") => o.window = number(parser, "window")?,
            Long("rate") => o.rate = number(parser, "rate")?,
            Long("sqs-n") => o.sqs_n = Some(number(parser, "sqs-n")?),
            Long("smoke") => o.smoke = true,
            Long("scale-check") => o.scale_check = true,
            Long("handoff") => o.handoff = true,
            Long("scale") => o.scale = true,
            Long("scale-max") => o.scale_max = number(parser, "scale-max")?,
            Long("out") => out = Some(PathBuf::from(parser.value()?)),
            Short('h') | Long("help") => return Ok(None),
            Value(value) => positional(value)?,
            _ => return Err(arg.unexpected()),
        }
    }
    if o.smoke {
        o.n = 200;
        o.runs = 1;
    }
    if let Some(n) = n {
        o.n = n;
    }
    if let Some(r) = runs {
        o.runs = r;
    }
    if let Some(out) = out {
        o.out = out;
    } else if o.handoff {
        // Its own file: the handoff report does not replace the main one.
        o.out.set_file_name("handoff.md");
    } else if o.scale {
        o.out.set_file_name("scale.md");
    }
    if o.n == 0 || o.runs == 0 || o.concurrency == 0 || o.window == 0 {
        return Err("--n, --runs, --concurrency and --window must be at least 1".into());
    }
    if o.scale_max < 10_000 && o.scale && !o.smoke {
        return Err("--scale-max must be at least 10000".into());
    }
    if !(o.rate.is_finite() && o.rate > 0.0) {
        return Err("--rate must be a number of calls per second above 0".into());
    }
    if o.prefetch_multiplier == Some(0) {
        return Err("--prefetch-multiplier must be at least 1".into());
    }
    Ok(Some(o))
}

fn parse_run(parser: &mut Parser) -> Result<Command, lexopt::Error> {
    let mut words = Vec::new();
    let opts = parse_opts(parser, |value| {
        words.push(value.string()?);
        Ok(())
    })?;
    let Some(opts) = opts else {
        return Ok(Command::Help);
    };
    let [path, workload, side, n, counter] = words.as_slice() else {
        return Err(RUN_USAGE.into());
    };
    let custom = lexopt::Error::Custom;
    Ok(Command::Run(RunArgs {
        path: PathKind::parse(path).map_err(custom)?,
        workload: Workload::parse(workload).map_err(custom)?,
        side: Side::parse(side).map_err(custom)?,
        n: parse_word(n, "N")?,
        counter: parse_word(counter, "COUNTER")?,
        opts,
    }))
}

/// The arguments of a `run` child, which [`parse`] reads back as [`Command::Run`]; the
/// child takes the service URLs from the same environment.
pub fn run_args(
    opts: &Opts,
    path: PathKind,
    workload: Workload,
    side: Side,
    n: u64,
    counter: u64,
) -> Vec<String> {
    let mut args = vec![
        "run".to_owned(),
        path.key().to_owned(),
        workload.key().to_owned(),
        side.key().to_owned(),
        n.to_string(),
        counter.to_string(),
        "--concurrency".to_owned(),
        opts.concurrency.to_string(),
        "--window".to_owned(),
        opts.window.to_string(),
        "--rate".to_owned(),
        opts.rate.to_string(),
    ];
    if let Some(m) = opts.prefetch_multiplier {
        args.push("--prefetch-multiplier".to_owned());
        args.push(m.to_string());
    }
    if opts.ivy_priorities {
        args.push("--ivy-priorities".to_owned());
    }
    args
}

/// The arguments of a worker child, which [`parse`] reads back as [`Command::Worker`].
pub fn worker_args(spec: &Spec) -> Vec<String> {
    let mut args = vec![
        "worker".to_owned(),
        "--kind".into(),
        match spec.kind {
            Kind::Ivy => "ivy".into(),
            Kind::Raw => "raw".into(),
            Kind::RawMinimal => "raw-minimal".into(),
        },
        "--broker".into(),
        spec.broker.clone(),
        "--notifier".into(),
        spec.notifier.clone(),
        "--queue".into(),
        spec.queue.clone(),
        "--concurrency".into(),
        spec.concurrency.to_string(),
        "--expect".into(),
        spec.expect.to_string(),
    ];
    if spec.encrypted {
        args.push("--encrypted".into());
    }
    if let Some(m) = spec.prefetch_multiplier {
        args.push("--prefetch-multiplier".into());
        args.push(m.to_string());
    }
    args
}

/// Reads what [`worker_args`] wrote (after `worker`).
fn parse_worker(parser: &mut Parser) -> Result<Spec, lexopt::Error> {
    let mut spec = Spec {
        kind: Kind::Ivy,
        broker: String::new(),
        notifier: String::new(),
        queue: tasks::IVY_QUEUE.to_owned(),
        concurrency: 16,
        expect: 0,
        encrypted: false,
        prefetch_multiplier: None,
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Long("kind") => {
                spec.kind = match parser.value()?.string()?.as_str() {
                    "ivy" => Kind::Ivy,
                    "raw" => Kind::Raw,
                    "raw-minimal" => Kind::RawMinimal,
                    other => return Err(format!("unknown worker kind {other}").into()),
                }
            }
            Long("broker") => spec.broker = parser.value()?.string()?,
            Long("notifier") => spec.notifier = parser.value()?.string()?,
            Long("queue") => spec.queue = parser.value()?.string()?,
            Long("concurrency") => spec.concurrency = number(parser, "concurrency")?,
            Long("expect") => spec.expect = number(parser, "expect")?,
            Long("encrypted") => spec.encrypted = true,
            Long("prefetch-multiplier") => {
                spec.prefetch_multiplier = Some(number(parser, "prefetch-multiplier")?);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(spec)
}

/// The value of `--flag` as a number; the error names the flag.
fn number<T>(parser: &mut Parser, flag: &str) -> Result<T, lexopt::Error>
where
    T: FromStr,
    T::Err: Display,
{
    parse_word(&parser.value()?.string()?, &format!("--{flag}"))
}

fn parse_word<T>(word: &str, what: &str) -> Result<T, lexopt::Error>
where
    T: FromStr,
    T::Err: Display,
{
    word.parse()
        .map_err(|e| format!("{what}: cannot parse {word:?}: {e}").into())
}

/// A comma-separated list; empty items are skipped, so `W1,` is `W1`.
fn list<T>(
    value: OsString,
    item: fn(&str) -> Result<T, BoxError>,
) -> Result<Vec<T>, lexopt::Error> {
    value
        .string()?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| item(s).map_err(lexopt::Error::Custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_bench(args: &[&str]) -> Result<Opts, lexopt::Error> {
        match parse(args)? {
            Command::Bench(o) => Ok(o),
            other => panic!("not the bench: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let o = parse_bench(&[]).unwrap();
        assert_eq!((o.n, o.runs), (10_000, 5));
        assert_eq!(o.paths, [PathKind::Memory, PathKind::Amqp]);
        assert_eq!(o.workloads.len(), 4);
        assert!(o.out.ends_with("bench/results/latest.md"));
        assert_eq!(o.calls(PathKind::Amqp, Workload::W3), 1000);
        assert_eq!(o.calls(PathKind::Sqs, Workload::W1), SQS_DEFAULT_CALLS);
    }

    #[test]
    fn options_and_smoke() {
        let o = parse_bench(&[
            "--n",
            "50",
            "--runs=3",
            "--paths",
            "sqs,memory",
            "--workloads",
            "w3",
        ])
        .unwrap();
        assert_eq!((o.n, o.runs), (50, 3));
        assert_eq!(o.paths, [PathKind::Sqs, PathKind::Memory]);
        assert_eq!(o.workloads, [Workload::W3]);
        assert_eq!(o.calls(PathKind::Memory, Workload::W3), 50);
        let s = parse_bench(&["--smoke"]).unwrap();
        assert_eq!((s.n, s.runs), (200, 1));
        // An explicit --n wins over --smoke's.
        assert_eq!(parse_bench(&["--smoke", "--n", "7"]).unwrap().n, 7);
        assert!(parse_bench(&["--paths", "kafka"]).is_err());
        assert!(parse_bench(&["--n", "0"]).is_err());
        assert!(parse_bench(&["--bogus"]).is_err());
    }

    #[test]
    fn usage_errors_are_one_line_and_name_the_culprit() {
        for (args, culprit) in [
            (&["--bogus"][..], "--bogus"),
            (&["--n", "many"], "--n"),
            (&["--out"], "--out"),
            (&["stray"], "stray"),
            (&["--paths", "kafka"], "kafka"),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(culprit), "{args:?}: {e}");
            assert!(!e.contains('\n'), "{args:?}: {e}");
        }
    }

    #[test]
    fn help() {
        assert!(matches!(parse(["--help"]), Ok(Command::Help)));
        assert!(matches!(parse(["--n", "3", "-h"]), Ok(Command::Help)));
        for flag in [
            "--n",
            "--runs",
            "--paths",
            "--workloads",
            "--concurrency",
            "--prefetch-multiplier",
            "--ivy-priorities",
            "--window",
            "--sqs-n",
            "--smoke",
            "--scale-check",
            "--handoff",
            "--scale",
            "--scale-max",
            "--out",
        ] {
            assert!(USAGE.contains(&format!("  {flag} ")), "{flag}");
        }
    }

    #[test]
    fn run_args_read_back() {
        let opts = parse_bench(&[
            "--concurrency",
            "3",
            "--window",
            "9",
            "--prefetch-multiplier",
            "2",
            "--ivy-priorities",
        ])
        .unwrap();
        let args = run_args(
            &opts,
            PathKind::Sqs,
            Workload::W4,
            Side::IvyEncrypted,
            77,
            5,
        );
        let Command::Run(run) = parse(&args).unwrap() else {
            panic!("not a run: {args:?}")
        };
        assert_eq!(
            (run.path, run.workload, run.side, run.n, run.counter),
            (PathKind::Sqs, Workload::W4, Side::IvyEncrypted, 77, 5)
        );
        assert_eq!((run.opts.concurrency, run.opts.window), (3, 9));
        assert_eq!(run.opts.prefetch_multiplier, Some(2));
        assert!(run.opts.ivy_priorities);
        assert!(parse(["run", "memory", "W1", "ivy", "10"]).is_err());
        assert!(parse(["run", "memory", "W1", "ivy", "ten", "1"]).is_err());
        assert!(parse(["run", "memory", "W1", "ivy", "10", "1", "extra"]).is_err());
    }

    #[test]
    fn worker_args_read_back() {
        for (kind, encrypted) in [
            (Kind::Ivy, true),
            (Kind::Raw, false),
            (Kind::RawMinimal, false),
        ] {
            let spec = Spec {
                kind,
                broker: "amqp://h/%2f".into(),
                notifier: "redis://h".into(),
                queue: "q-1".into(),
                concurrency: 4,
                expect: 123,
                encrypted,
                prefetch_multiplier: encrypted.then_some(3),
            };
            let args = worker_args(&spec);
            let Command::Worker(back) = parse(&args).unwrap() else {
                panic!("not a worker: {args:?}")
            };
            assert_eq!(back, spec);
        }
        assert!(parse(["worker", "--kind", "kafka"]).is_err());
        assert!(parse(["worker", "--bogus"]).is_err());
    }
}
