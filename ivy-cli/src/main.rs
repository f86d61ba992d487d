//! `ivy`: the operator's command for Ivy deployments. It knows no Rust task types: it speaks
//! the wire protocol of PROTOCOL.md, so it works with any Ivy worker.
//!
//! Results go to stdout (a table, or JSON with `--json`), diagnostics to stderr. Exit codes:
//! 0 success, 1 the task or the operation failed, 2 usage or configuration.
//!
//! Cargo features: `amqp`, `sqs` (brokers, at least one), `redis` (results and events) and
//! `dashboard`; the default is `amqp`, `redis` and `dashboard`. A URL or a command of a part
//! this build left out is refused with the feature that brings it (`config::not_built`).

#[cfg(not(any(feature = "amqp", feature = "sqs")))]
compile_error!(
    "the `ivy` command needs a broker: enable the `amqp` or the `sqs` feature (or both)"
);

mod call;
mod cli;
mod config;
#[cfg(feature = "dashboard")]
mod dashboard;
mod dead;
mod live;
#[cfg(feature = "amqp")]
mod management;
mod output;
mod queues;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, DeadCommand};
use output::Failure;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Failure::Other(format!("could not start the runtime: {e}")).report(),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let settings = config::Settings::from_cli(&cli.global)?;
    match cli.command {
        Command::Queues { queues } => queues::run(&settings, queues).await,
        Command::Dead(DeadCommand::List { queue, limit }) => {
            dead::list(&settings, &queue, limit).await
        }
        Command::Dead(DeadCommand::Replay {
            queue,
            ids,
            all,
            reset_attempts,
        }) => dead::replay(&settings, &queue, ids, all, reset_attempts).await,
        Command::Dead(DeadCommand::Purge { queue, yes }) => {
            dead::purge(&settings, &queue, yes).await
        }
        Command::Call {
            task,
            args,
            queue,
            wait,
            no_result,
            force,
            timeout,
        } => {
            let how = call::How {
                queue,
                wait,
                store: !no_result,
                force,
                timeout,
            };
            call::call(&settings, &task, &args, how).await
        }
        Command::Result { id } => call::result(&settings, &id).await,
        Command::Cancel { id, ttl } => call::cancel(&settings, &id, ttl).await,
        Command::Workers => live::workers(&settings).await,
        #[cfg(feature = "dashboard")]
        Command::Dashboard {
            listen,
            token,
            behind_https_proxy,
            refresh,
            queues,
        } => dashboard::run(settings, listen, token, behind_https_proxy, queues, refresh).await,
        #[cfg(not(feature = "dashboard"))]
        Command::Dashboard { .. } => Err(config::not_built("the dashboard", "dashboard")),
        Command::Watch { queue, task, count } => {
            live::watch(&settings, queue.as_deref(), task.as_deref(), count).await
        }
    }
}
