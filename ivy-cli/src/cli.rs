//! The command line, as clap reads it: every command, option and its help text.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes: 0 success, 1 the task or the operation failed, 2 usage or configuration error.

Settings come from the environment, as for Ivy's examples; the options override them:
  IVY_BROKER_URL      amqp://user:pass@host:5672/vhost or sqs://host:port?region=…
  IVY_RESULT_URL      redis://host:6379 (for `call --wait` and `result`)
  IVY_KEYS            id:secret,… when calls and results are encrypted (never printed)
  IVY_MANAGEMENT_URL  RabbitMQ's management API (default https://<AMQP host>:15671 for
                      amqps://, http://<AMQP host>:15672 for amqp://, with the AMQP URL's
                      user and password; not sent in clear text off loopback unless asked)";

/// Inspect and operate an Ivy deployment: queue depths, dead letters, calls by name, results.
#[derive(Debug, Parser)]
#[command(name = "ivy", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The broker URL (amqp://, amqps://, sqs://)
    #[arg(long, global = true, env = "IVY_BROKER_URL", hide_env_values = true)]
    pub broker_url: Option<String>,
    /// The result store URL (redis://, rediss://, redis+sentinel://, redis+cluster://)
    #[arg(long, global = true, env = "IVY_RESULT_URL", hide_env_values = true)]
    pub result_url: Option<String>,
    /// Keys for encrypted deployments, `id:secret,…` (the first seals); prefer the environment
    #[arg(long, global = true, env = "IVY_KEYS", hide_env_values = true)]
    pub keys: Option<String>,
    /// RabbitMQ's management API, https://user:pass@host:port (user and password optional;
    /// http:// accepts clear text); default: the AMQP URL's host, https on 15671 for
    /// amqps://, http on 15672 for amqp://, and its user and password
    #[arg(
        long,
        global = true,
        env = "IVY_MANAGEMENT_URL",
        hide_env_values = true
    )]
    pub management_url: Option<String>,
    /// Do not use RabbitMQ's management API (`queues` then tells less)
    #[arg(long, global = true)]
    pub no_management: bool,
    /// Send the AMQP credentials over plain HTTP to a non-loopback management API (by
    /// default only over HTTPS, to loopback, or to an http:// --management-url)
    #[arg(long, global = true)]
    pub insecure_management: bool,
    /// How long to wait for an unreachable broker or API (e.g. 5s, 500ms)
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Print JSON for scripts instead of a table
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Messages per Ivy queue: ready, in flight, delayed, dead letters, consumers
    #[command(after_help = "\
Without queue names: every Ivy queue (a queue with its dead-letter queue beside it), which
RabbitMQ can only list through its management API. Without that API (unreachable, or
--no-management) the in-flight and delayed columns are unknown (`?`). The API's figures lag
by a few seconds; SQS's are approximate, and SQS does not know its consumers (`?`).

Example:
  $ ivy queues default
  QUEUE    READY  IN FLIGHT  DELAYED  DEAD  CONSUMERS
  default  12     4          2        1     2")]
    Queues {
        /// Ivy queue names (default: all)
        queues: Vec<String>,
    },
    /// Dead letters: list, replay, purge
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Call a task by name with JSON arguments (by parameter name)
    #[command(after_help = "\
Example:
  $ ivy call examples.add '{\"x\": 2, \"y\": 3}' --wait
  01a229b7-cae2-7691-a2d0-5b6859011246  sent to `default`
  5

Without --wait it prints the task id once the broker has the call; `ivy result ID` reads its
result later (unless --no-result). With --wait it shows the status and progress (a bar when the
task reports {\"done\": n, \"of\": m} on a terminal), then prints the result; a failed task
exits 1 with its kind, message and causes on stderr. Give --wait a --timeout: a call whose queue
no worker consumes waits until one does.

When live workers are announced (IVY_RESULT_URL set) and none runs the task, nothing is sent
and the error names the closest task names they run (--force sends anyway).")]
    Call {
        /// The task name, e.g. examples.add
        task: String,
        /// The arguments, a JSON object by parameter name, e.g. '{"x": 2, "y": 3}'
        args: String,
        /// The queue to send to (default: the task's own queue, as live workers announce
        /// it; else `default`)
        #[arg(long)]
        queue: Option<String>,
        /// Wait for the result, showing status and progress
        #[arg(long)]
        wait: bool,
        /// Fire-and-forget: no result is stored for `ivy result` (by default it is)
        #[arg(long, conflicts_with = "wait")]
        no_result: bool,
        /// Send even when live workers are announced and none of them runs the task
        #[arg(long)]
        force: bool,
        /// With --wait: give up waiting after this long (e.g. 30s, 5m); the call goes on
        #[arg(long, requires = "wait", value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// The stored result of a call, by task id
    #[command(after_help = "\
Example:
  $ ivy result 01a229b7-cae2-7691-a2d0-5b6859011246
  5")]
    Result {
        /// The task id
        id: String,
    },
    /// Cancel a call by task id: dropped before it runs, stopped if it is running
    #[command(after_help = "\
The cancellation is recorded in the result store for --ttl (default 24h), so it holds while no
worker runs and across restarts; a worker drops the call when it takes it (a call with a
countdown included), or stops it within a second if it is running, and its result is the error
`ivy.cancelled`. Exit 1 when the call has finished already (its result is stored). Ivy keeps no
record of calls still queued, so an id it has never seen is recorded like any other: check the
id (`ivy watch`, the dashboard) if in doubt.

Example:
  $ ivy cancel 01a229b7-cae2-7691-a2d0-5b6859011246
  cancelled 01a229b7-cae2-7691-a2d0-5b6859011246")]
    Cancel {
        /// The task id
        id: String,
        /// How long the cancellation is kept (e.g. 1h, 7d); past it, a call still queued runs
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        ttl: Duration,
    },
    /// Live workers: queues, tasks, running, counts so far, uptime, last seen, broker node
    #[command(after_help = "\
Workers announce themselves in the result store every 10 s (kept 30 s): a worker killed
without a word disappears within 30 s, one stopped gracefully at once. NODE is the broker
node it consumes from, when its broker URL names several (a RabbitMQ cluster).

Example:
  $ ivy workers
  WORKER              QUEUES   TASKS  RUNNING  SUCCEEDED  FAILED  RETRIED  DEAD  UP   SEEN  EVENTS  NODE
  web-1-4242-9f3c2a1b default  4      2/16     1520       3       7        4     12m  3s    on      mq-2:5672")]
    Workers,
    /// Task events as they happen, one line each (workers need events on: IVY_EVENTS=1)
    #[command(after_help = "\
Example:
  $ ivy watch --task examples.add
  14:02:11.204  received       examples.add  01a22a…  attempt=0  queue=default  worker=web-1-4242-9f3c2a1b  wait=2ms
  14:02:11.205  started        examples.add  01a22a…  attempt=0  queue=default  worker=web-1-4242-9f3c2a1b
  14:02:11.206  succeeded      examples.add  01a22a…  attempt=0  queue=default  worker=web-1-4242-9f3c2a1b  run=0.4ms")]
    Watch {
        /// Only events of this queue
        #[arg(long)]
        queue: Option<String>,
        /// Only events of this task
        #[arg(long)]
        task: Option<String>,
        /// Stop after this many events
        #[arg(long)]
        count: Option<u64>,
    },
    /// A live web page: queues, workers, recent calls, dead letters (replay, purge)
    #[cfg_attr(
        not(feature = "dashboard"),
        command(
            about = "A live web page (not in this build: reinstall `ivy` with --features dashboard)"
        )
    )]
    #[command(after_help = "\
The page updates itself (server-sent events): the server follows the task events once and
reads the queues every --refresh, however many tabs are open. Replay and purge are buttons.

It binds to 127.0.0.1 unless told otherwise; any other address needs a token (--token or
IVY_DASHBOARD_TOKEN, at least 16 characters) that every request carries: open
http://host:port/?token=… once (a cookie keeps it) or send `Authorization: Bearer …`.
Payloads sealed with keys are opened only when IVY_KEYS is given; otherwise they show as sealed.

Example:
  $ ivy dashboard --listen 127.0.0.1:8080
  ivy dashboard on http://127.0.0.1:8080/ (Ctrl-C stops)")]
    Dashboard {
        /// The address to serve on
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// The token every request must carry (required off loopback)
        #[arg(long, env = "IVY_DASHBOARD_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Served through a reverse proxy that terminates HTTPS: the token cookie is marked
        /// Secure on requests the proxy forwards with `X-Forwarded-Proto: https`
        #[arg(long)]
        behind_https_proxy: bool,
        /// How often the queues and workers are read
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        refresh: Duration,
        /// Ivy queue names to show (default: all)
        queues: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List dead letters without taking them: id, task, attempt, when, reason
    #[command(after_help = "\
Nothing is consumed: RabbitMQ's are read without acknowledgement and given back; SQS's are
hidden while being read and made visible again at once.

Example:
  $ ivy dead list default --limit 5
  ID                                    TASK           ATTEMPT  WHEN                           REASON
  01a229b7-ce01-71aa-a09a-013bc7e5c823  examples.fail  1        2026-11-29 23:50:41Z (called)  task examples.fail failed after 2 attempt(s): …

WHEN is when it was dead-lettered where the broker says (SQS), else when it was called.")]
    List {
        /// The Ivy queue (its dead letters are read)
        queue: String,
        /// At most this many
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Put dead letters back onto their work queue
    #[command(after_help = "\
A dead letter is removed only after its copy was confirmed on the work queue: a crash in
between leaves it in both (the call may run twice), never in neither.

Example:
  $ ivy dead replay default --id 01a229b7-ce01-71aa-a09a-013bc7e5c823 --reset-attempts
  replayed 1 dead letter(s) onto `default`")]
    Replay {
        /// The Ivy queue
        queue: String,
        /// Task ids to replay (repeat --id, or give several)
        #[arg(long = "id", num_args = 1.., required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Replay every dead letter
        #[arg(long)]
        all: bool,
        /// Start the calls' attempts from 0 again (so they get all their retries)
        #[arg(long)]
        reset_attempts: bool,
    },
    /// Delete every dead letter of a queue (refused without --yes)
    #[command(after_help = "\
Example:
  $ ivy dead purge default --yes
  purged 3 dead letter(s) of `default`")]
    Purge {
        /// The Ivy queue
        queue: String,
        /// Really delete them
        #[arg(long)]
        yes: bool,
    },
}

/// `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 500ms, 30s, 5m, 1h)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (ms, s, m, h, d)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
