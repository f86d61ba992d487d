//! `ivy-chaos`: the chaos run (`scripts/chaos`). Calls with results go through real RabbitMQ,
//! SQS (a moto server) and Redis, all of the run's own, while it kills workers with SIGKILL,
//! stops, restarts and freezes RabbitMQ, takes Redis down for longer than a handle's re-read
//! interval, and restarts moto. Each call's fate is counted: sent, confirmed, result received,
//! executions (recorded by the task in files that survive every fault). The run fails on any
//! lost call, lost result, duplicated, wrong or failed result; extra runs are reported only
//! (delivery is at least once).
//!
//! `ivy-chaos run …` drives a run; `ivy-chaos worker …` is one of its worker processes.

mod calls;
mod faults;
mod path;
mod report;
mod services;
mod task;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faults::Fault;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "\
usage: ivy-chaos run --dir DIR [--short] [--cluster] [--paths amqp,sqs,cluster,redis-cluster] [--n N]
                     [--sqs-n N] [--cluster-n N] [--seed S] [--redis-down SECS]
                     [--rabbitmq-node SCRIPT]
       ivy-chaos worker --broker URL --results URL --queue Q --concurrency C --executions FILE

run: starts a RabbitMQ node `ivy-chaos` on 127.0.0.1:5682 (scripts/rabbitmq-node), a Redis on
6390 and a moto server on 4571, sends N calls with results on each path while injecting
faults, prints the table and exits 1 on any lost call or result. The cluster path goes through
the test clusters (scripts/rabbitmq-cluster, redis-sentinel and redis-cluster, which
scripts/chaos starts when they are not up) and SIGKILLs their nodes. --short: 500 AMQP, 120 SQS and 300 cluster calls, one fault of each
kind (the scripts/test step). --cluster: the cluster path only. Defaults: N 10000, SQS N 1000,
cluster N 5000, Redis down 20 s (over the handles' 15 s re-read interval).";

#[derive(Debug)]
struct RunArgs {
    dir: PathBuf,
    short: bool,
    amqp: bool,
    sqs: bool,
    cluster: bool,
    redis_cluster: bool,
    n: Option<u64>,
    sqs_n: Option<u64>,
    cluster_n: Option<u64>,
    seed: u64,
    redis_down: u64,
    node_script: PathBuf,
}

fn parse_run(mut p: lexopt::Parser) -> Result<RunArgs, lexopt::Error> {
    use lexopt::prelude::*;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    let mut a = RunArgs {
        dir: PathBuf::new(),
        short: false,
        amqp: true,
        sqs: true,
        cluster: true,
        redis_cluster: true,
        n: None,
        sqs_n: None,
        cluster_n: None,
        seed,
        redis_down: 20,
        node_script: PathBuf::from("scripts/rabbitmq-node"),
    };
    while let Some(arg) = p.next()? {
        match arg {
            Long("dir") => a.dir = p.value()?.into(),
            Long("short") => a.short = true,
            Long("cluster") => {
                (a.amqp, a.sqs, a.cluster, a.redis_cluster) = (false, false, true, true)
            }
            Long("paths") => {
                let v: String = p.value()?.parse()?;
                a.amqp = false;
                a.sqs = false;
                a.cluster = false;
                a.redis_cluster = false;
                for w in v.split(',') {
                    match w {
                        "amqp" => a.amqp = true,
                        "sqs" => a.sqs = true,
                        "cluster" => a.cluster = true,
                        "redis-cluster" => a.redis_cluster = true,
                        _ => {
                            return Err(format!(
                                "unknown path `{w}` (known: amqp, sqs, cluster, redis-cluster)"
                            )
                            .into())
                        }
                    }
                }
            }
            Long("n") => a.n = Some(p.value()?.parse()?),
            Long("sqs-n") => a.sqs_n = Some(p.value()?.parse()?),
            Long("cluster-n") => a.cluster_n = Some(p.value()?.parse()?),
            Long("seed") => a.seed = p.value()?.parse()?,
            Long("redis-down") => a.redis_down = p.value()?.parse()?,
            Long("rabbitmq-node") => a.node_script = p.value()?.into(),
            _ => return Err(arg.unexpected()),
        }
    }
    if a.dir.as_os_str().is_empty() {
        return Err("--dir is required".into());
    }
    Ok(a)
}

fn parse_worker(mut p: lexopt::Parser) -> Result<(workers::WorkerSpec, PathBuf), lexopt::Error> {
    use lexopt::prelude::*;
    let mut spec = workers::WorkerSpec {
        broker: String::new(),
        results: String::new(),
        queue: String::new(),
        concurrency: 8,
    };
    let mut executions = PathBuf::new();
    while let Some(arg) = p.next()? {
        match arg {
            Long("broker") => spec.broker = p.value()?.parse()?,
            Long("results") => spec.results = p.value()?.parse()?,
            Long("queue") => spec.queue = p.value()?.parse()?,
            Long("concurrency") => spec.concurrency = p.value()?.parse()?,
            Long("executions") => executions = p.value()?.into(),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok((spec, executions))
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut p = lexopt::Parser::from_env();
    let sub = match p.next() {
        Ok(Some(lexopt::Arg::Value(v))) => v.to_string_lossy().into_owned(),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match sub.as_str() {
        "worker" => {
            let (spec, executions) = match parse_worker(p) {
                Ok(x) => x,
                Err(e) => return usage_error(e),
            };
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            match workers::worker_main(spec, executions).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ivy-chaos worker: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        "run" => {
            let args = match parse_run(p) {
                Ok(a) => a,
                Err(e) => return usage_error(e),
            };
            // The producer's own log (its reconnects, gaps, re-reads), beside the workers'.
            if std::fs::create_dir_all(&args.dir).is_ok() {
                if let Ok(file) = std::fs::File::create(args.dir.join("producer.log")) {
                    tracing_subscriber::fmt()
                        .with_ansi(false)
                        .with_writer(std::sync::Mutex::new(file))
                        .with_env_filter(
                            tracing_subscriber::EnvFilter::try_from_default_env()
                                .unwrap_or_else(|_| "info".into()),
                        )
                        .init();
                }
            }
            match run(args).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("ivy-chaos: the run could not be completed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn usage_error(e: lexopt::Error) -> ExitCode {
    eprintln!("ivy-chaos: {e}\n{USAGE}");
    ExitCode::from(2)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The AMQP path: workers killed, RabbitMQ stopped three ways, Redis down.
fn amqp_plan(a: &RunArgs, url: String) -> path::PathPlan {
    let redis = Fault::RedisDown(secs(a.redis_down));
    let faults = if a.short {
        vec![
            Fault::KillWorker,
            Fault::RabbitStopApp(secs(2)),
            Fault::RabbitFreeze(secs(5)),
            Fault::RabbitRestart(secs(2)),
            redis,
        ]
    } else {
        vec![
            Fault::KillWorker,
            Fault::RabbitStopApp(secs(3)),
            Fault::RabbitFreeze(secs(8)),
            Fault::KillWorker,
            Fault::RabbitRestart(secs(3)),
            redis,
            Fault::KillWorker,
        ]
    };
    path::PathPlan {
        tag: "amqp",
        broker_url: url,
        results_url: None,
        calls: calls::CallPlan {
            n: a.n.unwrap_or(if a.short { 500 } else { 10_000 }),
            window: 200,
            queue: "chaos-amqp".into(),
            seed: a.seed,
            long: None,
            stuck_after: secs(120),
        },
        workers: 2,
        concurrency: 8,
        faults,
        // Twice the handles' 15 s re-read interval: a result stored but not heard of is read
        // by then.
        settle: secs(40),
    }
}

/// SQS's visibility timeout in the run, and how long the long calls last.
const VISIBILITY_SECS: u32 = 2;
const LONG_MS: u64 = 5_000;

/// The SQS path: two workers on one queue, calls longer than the visibility timeout, workers
/// killed mid-task, moto restarted.
fn sqs_plan(a: &RunArgs, url: String) -> path::PathPlan {
    let faults = if a.short {
        vec![Fault::KillWorker, Fault::MotoRestart]
    } else {
        vec![Fault::KillWorker, Fault::MotoRestart, Fault::KillWorker]
    };
    path::PathPlan {
        tag: "sqs",
        broker_url: url,
        results_url: None,
        calls: calls::CallPlan {
            n: a.sqs_n.unwrap_or(if a.short { 120 } else { 1_000 }),
            window: 40,
            queue: "chaos-sqs".into(),
            seed: a.seed,
            long: Some((20, LONG_MS)),
            // Lost by moto: they stop holding the window after a while.
            stuck_after: secs(10),
        },
        workers: 2,
        concurrency: 8,
        faults,
        // Past the visibility timeout and a long call: a call still hidden would be back and done.
        settle: Duration::from_millis(LONG_MS) + secs(u64::from(VISIBILITY_SECS) + 8),
    }
}

/// The cluster path, RabbitMQ cluster + Redis Sentinel: the RabbitMQ node a worker consumes
/// from SIGKILLed, then the one the producer publishes to, then the Redis primary.
fn cluster_plan(a: &RunArgs) -> path::PathPlan {
    path::PathPlan {
        tag: "cluster",
        broker_url: services::RABBIT_CLUSTER_URL.to_owned(),
        results_url: Some(services::SENTINEL_URL.to_owned()),
        calls: calls::CallPlan {
            n: a.cluster_n.unwrap_or(if a.short { 300 } else { 5_000 }),
            window: 100,
            queue: "chaos-cluster".into(),
            seed: a.seed,
            long: None,
            stuck_after: secs(120),
        },
        workers: 2,
        concurrency: 8,
        faults: vec![
            Fault::KillWorkersNode,
            Fault::KillProducersNode,
            Fault::KillSentinelPrimary,
        ],
        settle: secs(40),
    }
}

/// The Redis Cluster path, RabbitMQ cluster + Redis Cluster: a Redis Cluster primary
/// SIGKILLed.
fn redis_cluster_plan(a: &RunArgs) -> path::PathPlan {
    let mut plan = cluster_plan(a);
    plan.tag = "redis-cluster";
    plan.results_url = Some(services::REDIS_CLUSTER_URL.to_owned());
    plan.calls.queue = "chaos-redis-cluster".into();
    plan.calls.n = a.cluster_n.unwrap_or(if a.short { 300 } else { 5_000 }) / 2;
    plan.faults = vec![Fault::KillRedisClusterPrimary];
    plan
}

async fn run(a: RunArgs) -> Result<bool, BoxError> {
    std::fs::create_dir_all(&a.dir)?;
    eprintln!(
        "ivy-chaos: seed {} (repeat with --seed {}), files in {}",
        a.seed,
        a.seed,
        a.dir.display()
    );
    let redis = services::Redis::new(6390, &a.dir);
    let rabbit = services::Rabbit::new(a.node_script.clone(), "ivy-chaos", 5682);
    let mut moto = services::Moto::new(4571, &a.dir);
    let scripts = a
        .node_script
        .parent()
        .map_or_else(|| PathBuf::from("scripts"), PathBuf::from);
    let clusters = services::Clusters::new(scripts);
    let outcome = run_paths(&a, &redis, &rabbit, &mut moto, &clusters).await;
    // Whatever happened, nothing the run started is left running.
    if a.amqp {
        rabbit.stop_at_end();
    }
    moto.stop_at_end();
    redis.stop_at_end();
    let counts = outcome?;
    println!("{}", report::table(&counts));
    let failed = counts.iter().any(report::Counts::failed);
    if failed {
        eprintln!(
            "ivy-chaos: FAILED: calls or results were lost (seed {}; logs in {})",
            a.seed,
            a.dir.display()
        );
    }
    Ok(!failed)
}

async fn run_paths(
    a: &RunArgs,
    redis: &services::Redis,
    rabbit: &services::Rabbit,
    moto: &mut services::Moto,
    clusters: &services::Clusters,
) -> Result<Vec<report::Counts>, BoxError> {
    redis.start(true).await?;
    // The RabbitMQ node boots (10-20 s here) while the SQS path runs.
    let boot = async {
        if a.amqp {
            eprintln!("ivy-chaos: starting RabbitMQ node ivy-chaos on 127.0.0.1:5682");
            rabbit.start().await?;
            eprintln!("ivy-chaos: RabbitMQ node ivy-chaos is up");
        }
        Ok::<_, BoxError>(())
    };
    let sqs = async {
        if !a.sqs {
            return Ok(None);
        }
        moto.start().await?;
        let plan = sqs_plan(a, moto.url(VISIBILITY_SECS));
        let s = path::Services {
            rabbit: None,
            redis,
            moto: Some(moto),
            clusters: None,
            dir: &a.dir,
        };
        Ok::<_, BoxError>(Some(path::run(plan, s).await?))
    };
    let (booted, sqs) = tokio::join!(boot, sqs);
    let mut counts = Vec::new();
    booted?;
    if a.amqp {
        let plan = amqp_plan(a, rabbit.url());
        let s = path::Services {
            rabbit: Some(rabbit),
            redis,
            moto: None,
            clusters: None,
            dir: &a.dir,
        };
        counts.push(path::run(plan, s).await?);
    }
    if a.cluster {
        let s = path::Services {
            rabbit: None,
            redis,
            moto: None,
            clusters: Some(clusters),
            dir: &a.dir,
        };
        counts.push(path::run(cluster_plan(a), s).await?);
    }
    if a.redis_cluster {
        let s = path::Services {
            rabbit: None,
            redis,
            moto: None,
            clusters: Some(clusters),
            dir: &a.dir,
        };
        counts.push(path::run(redis_cluster_plan(a), s).await?);
    }
    counts.extend(sqs?);
    Ok(counts)
}
