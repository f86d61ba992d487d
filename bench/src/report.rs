//! Figures from samples (median, spread, percentiles) and the Markdown table.

use std::fmt::Write as _;
use std::time::Duration;

use crate::procfs::Usage;
use crate::scenario::{PathKind, Side, Workload};

/// One run of one scenario (sent as JSON from the `run` process to the parent).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// Calls measured.
    pub tasks: u64,
    /// From the first send to the last result (W1, W3, W4) or the last execution (W2).
    pub elapsed: Duration,
    /// Per-call latencies (W3 only).
    pub latencies: Vec<Duration>,
    /// The producer process (for memory: producer and worker together): CPU during the run,
    /// peak RSS during the run.
    pub producer: Usage,
    /// The worker process, when it has its own.
    pub worker: Option<Usage>,
    /// On SQS: the requests producer and worker sent to SQS, from their start (warm-up call
    /// and idle long polls included).
    #[serde(default)]
    pub sqs_requests: Option<u64>,
    /// RabbitMQ's CPU seconds (its `beam.smp`) during the measurement, when it could be read.
    /// Everything else using that node counts too.
    #[serde(default)]
    pub broker_cpu_s: Option<f64>,
}

impl Sample {
    fn tasks_per_s(&self) -> f64 {
        self.tasks as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What became of one scenario.
#[derive(Clone, Debug)]
pub enum Outcome {
    Samples(Vec<Sample>),
    Skipped(String),
    Failed(String),
}

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    pub path: PathKind,
    pub workload: Workload,
    pub side: Side,
    pub outcome: Outcome,
}

/// The median of `v` (the mean of the middle two for an even count); 0 when empty.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len().is_multiple_of(2) {
        (s[m - 1] + s[m]) / 2.0
    } else {
        s[m]
    }
}

/// The `p`-th percentile (nearest rank) of `v`.
pub fn percentile(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let mut s = v.to_vec();
    s.sort();
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// Aggregated figures of a row with samples.
#[derive(Clone, Debug)]
pub struct Figures {
    pub tps: f64,
    pub tps_min: f64,
    pub tps_max: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub producer_rss_mib: f64,
    pub worker_rss_mib: Option<f64>,
    pub producer_cpu_per_1k: f64,
    pub worker_cpu_per_1k: Option<f64>,
    /// RabbitMQ's CPU milliseconds per task (median), where measured.
    pub broker_cpu_ms: Option<f64>,
    /// SQS requests per task, producer and worker together (median), where counted.
    pub sqs_per_task: Option<f64>,
}

pub fn figures(samples: &[Sample]) -> Figures {
    let tps: Vec<f64> = samples.iter().map(Sample::tasks_per_s).collect();
    let (tps_min, tps_max) = min_max(&tps);
    let with_latencies: Vec<&Sample> = samples.iter().filter(|s| !s.latencies.is_empty()).collect();
    let pct = |p: f64| -> Option<f64> {
        (!with_latencies.is_empty()).then(|| {
            median(
                &with_latencies
                    .iter()
                    .map(|s| percentile(&s.latencies, p).as_secs_f64() * 1000.0)
                    .collect::<Vec<_>>(),
            )
        })
    };
    let per_1k = |u: &Usage, tasks: u64| u.cpu_s * 1000.0 / tasks.max(1) as f64;
    let workers: Vec<(Usage, u64)> = samples
        .iter()
        .filter_map(|s| s.worker.map(|w| (w, s.tasks)))
        .collect();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let broker: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.broker_cpu_s.map(|c| c * 1000.0 / s.tasks.max(1) as f64))
        .collect();
    // The warm-up call counts: both sides count their requests from their start.
    let sqs: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.sqs_requests.map(|r| r as f64 / (s.tasks + 1) as f64))
        .collect();
    Figures {
        broker_cpu_ms: (!broker.is_empty()).then(|| median(&broker)),
        sqs_per_task: (!sqs.is_empty()).then(|| median(&sqs)),
        tps: median(&tps),
        tps_min,
        tps_max,
        p50_ms: pct(50.0),
        p99_ms: pct(99.0),
        producer_rss_mib: samples
            .iter()
            .map(|s| mib(s.producer.peak_rss_kib))
            .fold(0.0, f64::max),
        worker_rss_mib: (!workers.is_empty()).then(|| {
            workers
                .iter()
                .map(|(w, _)| mib(w.peak_rss_kib))
                .fold(0.0, f64::max)
        }),
        producer_cpu_per_1k: median(
            &samples
                .iter()
                .map(|s| per_1k(&s.producer, s.tasks))
                .collect::<Vec<_>>(),
        ),
        worker_cpu_per_1k: (!workers.is_empty()).then(|| {
            median(
                &workers
                    .iter()
                    .map(|(w, t)| per_1k(w, *t))
                    .collect::<Vec<_>>(),
            )
        }),
    }
}

/// The Markdown table of `rows`, with the ratios to the like-for-like raw baseline and to the
/// minimal raw pipeline where those rows exist.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| Path | Workload | Implementation | tasks/s median (min–max) \
         | SQS requests per task | p50 / p99 ms \
         | peak RSS MiB producer / worker | CPU s per 1k tasks producer / worker \
         | RabbitMQ CPU ms per task | ÷ raw tasks/s | ÷ minimal raw tasks/s (W3: p50 ×) |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for row in rows {
        let path = row.path.label();
        let workload = row.workload.label();
        let side = row.side.label(row.workload);
        let f = match &row.outcome {
            Outcome::Skipped(why) => {
                let _ = writeln!(
                    out,
                    "| {path} | {workload} | {side} | skipped: {why} | | | | | | | |"
                );
                continue;
            }
            Outcome::Failed(why) => {
                let why = why.replace('|', "/").replace('\n', " ");
                let _ = writeln!(
                    out,
                    "| {path} | {workload} | {side} | **FAILED**: {why} | | | | | | | |"
                );
                continue;
            }
            Outcome::Samples(s) => figures(s),
        };
        let latency = match (f.p50_ms, f.p99_ms) {
            (Some(p50), Some(p99)) => format!("{p50:.2} / {p99:.2}"),
            _ => "–".into(),
        };
        let rss = match f.worker_rss_mib {
            Some(w) => format!("{:.1} / {w:.1}", f.producer_rss_mib),
            None => format!("{:.1} (one process)", f.producer_rss_mib),
        };
        let cpu = match f.worker_cpu_per_1k {
            Some(w) => format!("{:.3} / {w:.3}", f.producer_cpu_per_1k),
            None => format!("{:.3} (one process)", f.producer_cpu_per_1k),
        };
        let ratio_to = |baseline: Side, name: &str| {
            if row.side == baseline {
                return format!("({name})");
            }
            let Some(b) = baseline_figures(rows, row.path, row.workload, baseline) else {
                return "–".into();
            };
            match (row.workload, f.p50_ms, b.p50_ms) {
                (Workload::W3, Some(p50), Some(base)) if baseline == Side::RawMinimal => {
                    format!("{:.2} (p50 ×{:.2})", f.tps / b.tps, p50 / base)
                }
                _ => format!("{:.2}", f.tps / b.tps),
            }
        };
        let sqs = f
            .sqs_per_task
            .map_or_else(|| "–".into(), |r| format!("**{r:.2}**"));
        let broker = f
            .broker_cpu_ms
            .map_or_else(|| "–".into(), |ms| format!("{ms:.3}"));
        let _ = writeln!(
            out,
            "| {path} | {workload} | {side} | {:.0} ({:.0}–{:.0}) | {sqs} | {latency} | {rss} | {cpu} \
             | {broker} | {} | {} |",
            f.tps,
            f.tps_min,
            f.tps_max,
            ratio_to(Side::Raw, "baseline"),
            ratio_to(Side::RawMinimal, "ceiling"),
        );
    }
    out
}

fn baseline_figures(
    rows: &[Row],
    path: PathKind,
    workload: Workload,
    side: Side,
) -> Option<Figures> {
    rows.iter()
        .find(|r| r.path == path && r.workload == workload && r.side == side)
        .and_then(|r| match &r.outcome {
            Outcome::Samples(s) => Some(figures(s)),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let ms: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&ms, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&ms, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&ms[..1], 99.0), Duration::from_millis(1));
    }

    #[test]
    fn ratio_against_raw() {
        let sample = |tps: u64| Sample {
            tasks: tps,
            elapsed: Duration::from_secs(1),
            latencies: vec![],
            producer: Usage::default(),
            worker: Some(Usage::default()),
            sqs_requests: None,
            broker_cpu_s: Some(0.5),
        };
        let rows = vec![
            Row {
                path: PathKind::Amqp,
                workload: Workload::W1,
                side: Side::Ivy,
                outcome: Outcome::Samples(vec![sample(500)]),
            },
            Row {
                path: PathKind::Amqp,
                workload: Workload::W1,
                side: Side::Raw,
                outcome: Outcome::Samples(vec![sample(1000)]),
            },
            Row {
                path: PathKind::Amqp,
                workload: Workload::W1,
                side: Side::RawMinimal,
                outcome: Outcome::Samples(vec![sample(2000)]),
            },
        ];
        let t = table(&rows);
        let ivy = t
            .lines()
            .find(|l| l.contains("| Ivy |"))
            .expect("Ivy's row");
        assert!(ivy.ends_with("| 0.50 | 0.25 |"), "{t}");
        assert!(
            ivy.contains("| 1.000 |"),
            "RabbitMQ's 0.5 s over 500 tasks: {t}"
        );
        assert!(t.contains("(baseline)"), "{t}");
        assert!(t.contains("(ceiling)"), "{t}");
    }
}
