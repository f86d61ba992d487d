//! The report's header: date, machine, load, versions (Ivy, rustc, crates, RabbitMQ, Redis),
//! the settings, and what is measured and how. It only describes; a version it cannot read
//! is written as unknown, never an error.

use std::fmt::Write as _;

use crate::args::Opts;
use crate::procfs;
use crate::raw;
use crate::scenario::{PathKind, Workload, W3_CALLS, W5_CALLS};

pub async fn redis_version(url: &str) -> String {
    let info = async {
        let mut conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut conn)
            .await
    };
    match info.await {
        Ok(info) => info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned(),
        Err(_) => "unknown".into(),
    }
}

/// RabbitMQ's and Erlang's versions from the management API (one HTTP call).
pub fn rabbitmq_version() -> String {
    let out = procfs::command_line(
        "curl",
        &[
            "-sf",
            "-m",
            "5",
            "-u",
            "guest:guest",
            "http://127.0.0.1:15672/api/overview",
        ],
    );
    match serde_json::from_str::<serde_json::Value>(&out) {
        Ok(v) => format!(
            "{} (Erlang {})",
            v["rabbitmq_version"].as_str().unwrap_or("unknown"),
            v["erlang_version"].as_str().unwrap_or("unknown")
        ),
        Err(_) => "unknown (management API not reachable)".into(),
    }
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The lines every report opens with: its title, the date, the machine, the load before the run.
pub fn opening(title: &str, load_before: &str) -> String {
    format!(
        "# {title}\n\n- **Date**: {}\n- **Machine**: {}\n- **Load average** (1/5/15 min) before \
         the run: {load_before}\n",
        procfs::command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        procfs::machine()
    )
}

/// The commit the bench was built from, as `git describe --always --dirty` gives it.
pub fn ivy_commit() -> String {
    procfs::command_line(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ],
    )
}

pub async fn header(opts: &Opts, load_before: &str) -> String {
    let mut h = String::new();
    let crates = procfs::locked_versions(&["ivy", "lapin", "redis", "tokio", "aws-sdk-sqs"])
        .into_iter()
        .map(|(n, v)| format!("{n} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let uses_amqp = opts.paths.contains(&PathKind::Amqp);
    let uses_redis = uses_amqp || opts.paths.contains(&PathKind::Sqs);
    h.push_str(&opening("Ivy benchmark", load_before));
    let _ = writeln!(
        h,
        "- **Versions**: Ivy at `{}`; {}; crates: {crates}; RabbitMQ {}; Redis {}",
        ivy_commit(),
        procfs::command_line("rustc", &["-V"]),
        if uses_amqp {
            rabbitmq_version()
        } else {
            "not used".into()
        },
        if uses_redis {
            redis_version(&opts.redis_url).await
        } else {
            "not used".into()
        },
    );
    let _ =
        writeln!(
        h,
        "- **Settings**: N = {} calls per run (W3: {} sequential calls{}{}), {} run(s) per figure \
         (median, min–max); worker concurrency {}; Ivy's worker prefetch = concurrency × {}{}; \
         Ivy's queue {}; {} calls in flight per producer (W1, W2, W4); release build{}",
        opts.n,
        opts.n.min(W3_CALLS),
        if opts.workloads.contains(&Workload::W5) {
            format!(
                "; W5: {} calls at {} per second",
                opts.n.min(W5_CALLS),
                opts.rate
            )
        } else {
            String::new()
        },
        if opts.paths.contains(&PathKind::Sqs) {
            format!("; SQS: {} calls", opts.calls(PathKind::Sqs, Workload::W1))
        } else {
            String::new()
        },
        opts.runs,
        opts.concurrency,
        opts
            .prefetch_multiplier
            .unwrap_or(ivy::DEFAULT_PREFETCH_MULTIPLIER),
        if opts.prefetch_multiplier.is_some() {
            " (`--prefetch-multiplier`)"
        } else {
            " (Ivy's default)"
        },
        if opts.ivy_priorities {
            "declared with `x-max-priority` 9 (`--ivy-priorities`)"
        } else {
            "plain (Ivy's default)"
        },
        opts.window,
        if cfg!(debug_assertions) { " — NO: debug build, figures meaningless" } else { "" },
    );
    let _ = writeln!(
        h,
        "- **Persistence**: durable classic queues, persistent messages (`delivery_mode` 2), `mandatory`, publisher confirms awaited per \
         message with many in flight; manual acks after the result is stored; results stored \
         with a 600 s TTL and published over Redis pub/sub (Redis without persistence)"
    );
    let _ = writeln!(
        h,
        "- **Raw baseline** (like-for-like with what Ivy did before issue 12: a queue with \
         `x-max-priority` 9, prefetch = concurrency): lapin + redis, same persistence and \
         in-flight window; \
         JSON call `{{id, args, pad?, reply_to?}}`; the worker replies store-then-publish \
         (`SET PX` + `PUBLISH` pipelined, as Ivy's notifier) to the producer's own channel, then \
         acks. It skips what Ivy adds: the `running` status message, the envelope's metadata, \
         the registry, retries, reconnection and typed handles. The row *raw, body padded to Ivy's \
         size* (W1, W2) is the same baseline with its bodies padded with JSON whitespace to the \
         length of Ivy's envelope for the same call: what the message size alone costs on the \
         broker (its *÷ raw* column is its ratio to the unpadded baseline)"
    );
    let _ = writeln!(
        h,
        "- **Minimal raw (the ceiling)**: lapin + redis, a plain durable classic queue (no \
         `x-max-priority`), persistent messages, no publisher confirms, no `mandatory`, prefetch \
         {} whatever the concurrency, the same per-task work, ack after the work, the reply only \
         PUBLISHed to the producer's channel (W1, W3; no `SET`). Same in-flight window. Column \
         *÷ minimal raw* is each row's tasks/s over this row's, and for W3 also p50 over its p50",
        raw::MINIMAL_PREFETCH
    );
    let _ = writeln!(
        h,
        "- **Measured**: tasks/s from the first send to the last result (W1, W3, W4) or to the \
         worker's last execution (W2); p50/p99 per call (W3); peak RSS = VmHWM of the process \
         (every run starts fresh processes: this binary re-executes itself as `ivy-bench run …` \
         for the producer and `ivy-bench worker …` for the worker); CPU = utime + stime from \
         `/proc/<pid>/stat` during the measurement (after connecting and one warm-up call). On memory the producer and worker are one process: one figure. W4 \
         encryption: AES-256-CBC + HMAC-SHA-256 both ways. *÷ raw* = the row's median tasks/s over \
         the like-for-like raw baseline's, same path and workload (W4: both Ivy rows against raw's \
         16 KiB row). RabbitMQ CPU = utime + stime of its `beam.smp` over the measurement, per \
         task (the node's pid from `IVY_BENCH_RABBITMQ_PID` or its pid file): it counts \
         everything else that uses the node at the same time\n"
    );
    h
}
