//! `ivy-bench`: Ivy against the raw RabbitMQ + Redis ceiling, in one run.
//!
//! Run it with `scripts/bench` (services first, then a release build). Per path (memory,
//! AMQP + Redis, SQS + Redis) and workload (W1 throughput with results, W2 fire-and-forget,
//! W3 sequential latency, W4 a 16 KiB argument with and without encryption) it measures Ivy
//! and, on AMQP, a raw baseline written directly on lapin and redis (see `raw.rs`). Every run
//! starts fresh processes, this binary re-executed: `ivy-bench run …` for the producer (on
//! memory, producer and worker together) and `ivy-bench worker …` for the worker, so each
//! peak RSS is the run's own and producer and worker are measured apart. It prints a Markdown
//! table and writes it to `--out`. Nothing here judges the figures: tests check behaviour only.
//!
//! Where things live: `args.rs` the command line (the user's options and the internal
//! `run`/`worker` subcommands), `scenario.rs` paths, workloads and sides, `suite.rs` the parent
//! that runs every scenario in child processes and writes the report, `run.rs` one run in a
//! `run` process, `worker_proc.rs` the worker process, `ivy_side.rs` and `raw.rs` the two
//! implementations, `header.rs` and `report.rs` the report, `procfs.rs` CPU, RSS and versions,
//! `handoff.rs` the `max_concurrency` handoff scenario (`--handoff`), `scale/` the cost curves
//! (`--scale`).

mod args;
mod error;
mod handoff;
mod header;
mod ivy_side;
mod procfs;
mod raw;
mod report;
mod run;
mod scale;
mod scenario;
mod suite;
mod tasks;
mod worker_proc;

use crate::args::Command;

/// Exit status of a usage error (0 ok, 1 a scenario or the bench failed).
const USAGE_ERROR: u8 = 2;

fn main() -> std::process::ExitCode {
    let command = match args::parse(std::env::args_os().skip(1)) {
        Ok(Command::Help) => {
            println!("{}", args::USAGE);
            return std::process::ExitCode::SUCCESS;
        }
        Ok(command) => command,
        Err(e) => {
            eprintln!("ivy-bench: {e} (see ivy-bench --help)");
            return std::process::ExitCode::from(USAGE_ERROR);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ivy-bench: cannot start tokio: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match command {
        Command::Bench(opts) if opts.scale => runtime.block_on(scale::bench(opts)),
        Command::Bench(opts) => runtime.block_on(suite::bench(opts)),
        Command::ScaleChild(args) => runtime.block_on(scale::child_main(args)).map(|()| true),
        Command::Run(run) => runtime.block_on(run::child_run(run)).map(|()| true),
        Command::Worker(spec) => runtime
            .block_on(worker_proc::child_main(spec))
            .map(|()| true),
        Command::Help => Ok(true),
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("ivy-bench: some scenarios FAILED (see the table)");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ivy-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
