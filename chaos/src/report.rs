//! Counting what happened to every call, and the table the run prints.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::calls::{CallPlan, Record};
use crate::faults::Fault;

/// What [`count`] reads.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub tag: &'static str,
    pub records: &'a [Record],
    /// Calls handed to the producer (the first `sent` records).
    pub sent: u64,
    pub executions: &'a crate::task::Executions,
    /// Calls sent and not yet settled when each fault began.
    pub in_flight_at_faults: &'a [u64],
    pub killed: &'a [String],
    pub plan: &'a CallPlan,
    pub faults: &'a [Fault],
    pub moto_back: Option<Instant>,
    pub elapsed: Duration,
    pub workers_started: usize,
    /// When each fault struck, and its share of the calls.
    pub struck: &'a [Struck],
}

/// One fault as it happened: when, and the calls of its share (the burst sent just before
/// it and the trickle sent while it lasted).
#[derive(Clone, Debug)]
pub struct Struck {
    pub fault: Fault,
    pub at: Instant,
    pub calls: std::ops::Range<u64>,
}

/// The figures of one fault's share of the calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultRow {
    pub fault: String,
    pub sent: u64,
    pub confirmed: u64,
    pub lost_calls: u64,
    pub lost_results: u64,
    pub extra_runs: u64,
    /// From the fault to the first result of a call sent after it.
    pub flowing_again: Option<Duration>,
    /// The longest a call of its share waited for its result, from its send.
    pub longest_wait: Option<Duration>,
}

/// The figures of one path.
#[derive(Debug, Default)]
pub struct Counts {
    pub tag: &'static str,
    pub faults: String,
    /// The fewest calls in flight when a fault began.
    pub min_in_flight: u64,
    /// Runs cut short by a SIGKILL (started in a killed worker, never finished).
    pub interrupted: u64,
    /// A few of the errors `delayed_call` returned.
    pub send_errors: Vec<(u64, String)>,
    pub elapsed: Duration,
    pub workers_started: usize,
    pub sent: u64,
    pub confirmed: u64,
    /// `delayed_call` returned an error: the caller knows the call may not exist.
    pub not_confirmed: u64,
    /// ... of which ran anyway (an unknown outcome that turned out sent).
    pub not_confirmed_ran: u64,
    pub results: u64,
    /// Confirmed, never ran, no result: Ivy lost the call.
    pub lost_calls: Vec<u64>,
    /// Confirmed and ran, but the caller got no result.
    pub lost_results: Vec<u64>,
    /// Confirmed before moto came back from its restart, never ran, no result: lost by moto.
    pub lost_by_broker: Vec<u64>,
    /// Calls confirmed once moto was back from its restart (none without a moto restart).
    pub confirmed_after_restart: Option<u64>,
    /// Handles that yielded an error instead of the value.
    pub error_results: Vec<(u64, String)>,
    /// Handles that yielded another call's value.
    pub wrong_results: Vec<u64>,
    /// Results of one call seen more than once (by different handles).
    pub duplicated_results: u64,
    pub executions: u64,
    /// Executions beyond one per call.
    pub extra_runs: u64,
    /// Extra runs of calls that never ran in a worker that was killed.
    pub extra_runs_no_kill: u64,
    pub long_calls: u64,
    pub long_extra_runs: u64,
    /// Per fault.
    pub per_fault: Vec<FaultRow>,
}

impl Counts {
    /// A call or a result lost by Ivy, or a wrong, duplicated or failed result.
    pub fn failed(&self) -> bool {
        !self.lost_calls.is_empty()
            || !self.lost_results.is_empty()
            || !self.error_results.is_empty()
            || !self.wrong_results.is_empty()
            || self.duplicated_results > 0
    }
}

pub fn count(i: Inputs<'_>) -> Counts {
    let mut runs_of: HashMap<u64, Vec<u32>> = HashMap::new();
    for &(n, pid) in &i.executions.runs {
        runs_of.entry(n).or_default().push(pid);
    }
    let killed: Vec<u32> = i.killed.iter().filter_map(|p| p.parse().ok()).collect();
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for f in i.faults {
        match kinds.iter_mut().find(|(k, _)| *k == f.kind()) {
            Some((_, c)) => *c += 1,
            None => kinds.push((f.kind(), 1)),
        }
    }
    let mut c = Counts {
        tag: i.tag,
        faults: kinds
            .iter()
            .map(|(k, n)| format!("{n}× {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        elapsed: i.elapsed,
        workers_started: i.workers_started,
        executions: i.executions.runs.len() as u64,
        min_in_flight: i.in_flight_at_faults.iter().copied().min().unwrap_or(0),
        interrupted: i
            .executions
            .unfinished
            .iter()
            .filter(|(_, pid)| killed.contains(pid))
            .count() as u64,
        sent: i.sent,
        confirmed_after_restart: i.moto_back.map(|_| 0),
        ..Counts::default()
    };
    let mut seen: HashMap<u64, u64> = HashMap::new();
    for (n, r) in i.records.iter().enumerate().take(i.sent as usize) {
        let n = n as u64;
        let runs = runs_of.get(&n).map_or(&[][..], Vec::as_slice);
        let extra = runs.len().saturating_sub(1) as u64;
        c.extra_runs += extra;
        if !runs.iter().any(|p| killed.contains(p)) {
            c.extra_runs_no_kill += extra;
        }
        if i.plan.is_long(n) {
            c.long_calls += 1;
            c.long_extra_runs += extra;
        }
        if let Some(e) = &r.send_error {
            if c.send_errors.len() < 5 {
                c.send_errors.push((n, e.clone()));
            }
            c.not_confirmed += 1;
            c.not_confirmed_ran += u64::from(!runs.is_empty());
            continue;
        }
        let Some(confirmed_at) = r.confirmed_at else {
            // Sent but neither confirmed nor refused when the run ended: the publish hung.
            c.lost_calls.push(n);
            continue;
        };
        c.confirmed += 1;
        if let (Some(back), Some(after)) = (i.moto_back, c.confirmed_after_restart.as_mut()) {
            *after += u64::from(confirmed_at >= back);
        }
        match &r.result {
            Some(Ok(v)) => {
                c.results += 1;
                *seen.entry(*v).or_default() += 1;
                if *v != n {
                    c.wrong_results.push(n);
                }
            }
            Some(Err(e)) => {
                c.results += 1;
                c.error_results.push((n, e.clone()));
            }
            None if !runs.is_empty() => c.lost_results.push(n),
            None if i.moto_back.is_some_and(|back| confirmed_at < back) => c.lost_by_broker.push(n),
            None => c.lost_calls.push(n),
        }
    }
    c.duplicated_results = seen.values().map(|k| k.saturating_sub(1)).sum();
    c.per_fault = i
        .struck
        .iter()
        .map(|s| fault_row(s, &i, &runs_of, &c))
        .collect();
    c
}

/// The figures of `s`'s share of the calls, with what `c` found lost.
fn fault_row(s: &Struck, i: &Inputs<'_>, runs_of: &HashMap<u64, Vec<u32>>, c: &Counts) -> FaultRow {
    let share = s.calls.start..s.calls.end.min(i.sent);
    let records = &i.records[share.start as usize..share.end as usize];
    let in_share = |n: &u64| share.contains(n);
    FaultRow {
        fault: s.fault.to_string(),
        sent: share.end.saturating_sub(share.start),
        confirmed: records.iter().filter(|r| r.confirmed_at.is_some()).count() as u64,
        lost_calls: c.lost_calls.iter().filter(|n| in_share(n)).count() as u64,
        lost_results: c.lost_results.iter().filter(|n| in_share(n)).count() as u64,
        extra_runs: share
            .clone()
            .map(|n| {
                runs_of
                    .get(&n)
                    .map_or(0, |r| r.len().saturating_sub(1) as u64)
            })
            .sum(),
        flowing_again: i
            .records
            .iter()
            .filter(|r| r.sent_at.is_some_and(|t| t >= s.at))
            .filter_map(|r| r.result_at)
            .min()
            .map(|t| t - s.at),
        longest_wait: records
            .iter()
            .filter_map(|r| Some(r.result_at? - r.sent_at?))
            .max(),
    }
}

fn list(v: &[u64]) -> String {
    let shown: Vec<String> = v.iter().take(20).map(u64::to_string).collect();
    let more = if v.len() > 20 {
        format!(" … ({} in all)", v.len())
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(" "))
}

/// The table, one column per path, and the details of anything lost.
pub fn table(paths: &[Counts]) -> String {
    let mut out = String::new();
    let head: Vec<String> = paths.iter().map(|c| c.tag.to_uppercase()).collect();
    out.push_str(&format!("| | {} |\n", head.join(" | ")));
    out.push_str(&format!("|---|{}\n", "---|".repeat(paths.len())));
    let row = |out: &mut String, name: &str, f: &dyn Fn(&Counts) -> String| {
        let cells: Vec<String> = paths.iter().map(f).collect();
        out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    };
    row(&mut out, "faults injected", &|c| c.faults.clone());
    row(
        &mut out,
        "calls in flight when a fault began (fewest)",
        &|c| c.min_in_flight.to_string(),
    );
    row(&mut out, "runs cut short by a SIGKILL", &|c| {
        c.interrupted.to_string()
    });
    row(&mut out, "worker processes started", &|c| {
        c.workers_started.to_string()
    });
    row(&mut out, "wall time", &|c| {
        format!("{:.0} s", c.elapsed.as_secs_f64())
    });
    row(&mut out, "calls sent", &|c| c.sent.to_string());
    row(&mut out, "confirmed", &|c| c.confirmed.to_string());
    row(&mut out, "not confirmed (error to the caller)", &|c| {
        format!("{} ({} of them ran)", c.not_confirmed, c.not_confirmed_ran)
    });
    row(&mut out, "results received by the producer", &|c| {
        c.results.to_string()
    });
    row(&mut out, "executions", &|c| c.executions.to_string());
    row(&mut out, "**lost calls** (confirmed, never ran)", &|c| {
        c.lost_calls.len().to_string()
    });
    row(
        &mut out,
        "**results lost to the caller** (ran, no result)",
        &|c| c.lost_results.len().to_string(),
    );
    row(
        &mut out,
        "confirmed after moto was back from its restart",
        &|c| {
            c.confirmed_after_restart
                .map_or("–".into(), |k| k.to_string())
        },
    );
    row(
        &mut out,
        "lost by the broker's restart (confirmed before moto was back, never ran)",
        &|c| match c.confirmed_after_restart {
            Some(_) => c.lost_by_broker.len().to_string(),
            None => "–".into(),
        },
    );
    row(
        &mut out,
        "**duplicated results seen by the caller**",
        &|c| c.duplicated_results.to_string(),
    );
    row(&mut out, "**error or wrong results**", &|c| {
        (c.error_results.len() + c.wrong_results.len()).to_string()
    });
    row(&mut out, "extra runs (executions beyond one)", &|c| {
        c.extra_runs.to_string()
    });
    row(
        &mut out,
        "… of calls that never ran in a killed worker",
        &|c| c.extra_runs_no_kill.to_string(),
    );
    row(
        &mut out,
        "long calls (past the visibility timeout) / their extra runs",
        &|c| format!("{} / {}", c.long_calls, c.long_extra_runs),
    );
    for c in paths.iter().filter(|c| !c.per_fault.is_empty()) {
        out.push_str(&format!(
            "\n{}, per fault (each fault's share: the calls sent just before it and while it \
             lasted)\n\n| fault | sent | confirmed | lost calls | results lost | extra runs | \
             calls flow again after | longest wait for a result |\n|---|---|---|---|---|---|---|---|\n",
            c.tag.to_uppercase()
        ));
        for f in &c.per_fault {
            let secs = |d: Option<Duration>| {
                d.map_or("–".into(), |d| format!("{:.1} s", d.as_secs_f64()))
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                f.fault,
                f.sent,
                f.confirmed,
                f.lost_calls,
                f.lost_results,
                f.extra_runs,
                secs(f.flowing_again),
                secs(f.longest_wait),
            ));
        }
    }
    for c in paths {
        let tag = c.tag;
        if !c.lost_calls.is_empty() {
            out.push_str(&format!("\n{tag}: lost calls: {}", list(&c.lost_calls)));
        }
        if !c.lost_results.is_empty() {
            out.push_str(&format!("\n{tag}: results lost: {}", list(&c.lost_results)));
        }
        if !c.lost_by_broker.is_empty() {
            out.push_str(&format!(
                "\n{tag}: lost by the broker's restart: {}",
                list(&c.lost_by_broker)
            ));
        }
        if !c.wrong_results.is_empty() {
            out.push_str(&format!(
                "\n{tag}: wrong results: {}",
                list(&c.wrong_results)
            ));
        }
        for (n, e) in &c.send_errors {
            out.push_str(&format!("\n{tag}: call {n} not confirmed: {e}"));
        }
        for (n, e) in c.error_results.iter().take(10) {
            out.push_str(&format!("\n{tag}: call {n} failed: {e}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Executions;

    fn plan() -> CallPlan {
        CallPlan {
            n: 8,
            window: 1,
            queue: "q".into(),
            seed: 1,
            long: None,
            stuck_after: Duration::from_secs(1),
        }
    }

    fn ok(at: Instant, v: u64) -> Record {
        Record {
            sent_at: Some(at),
            confirmed_at: Some(at),
            result: Some(Ok(v)),
            result_at: Some(at + Duration::from_millis(10 * v)),
            ..Record::default()
        }
    }

    /// Every fate a call can have, each counted where the table says.
    #[test]
    fn counts_each_fate() {
        let t0 = Instant::now();
        let back = t0 + Duration::from_secs(5);
        let after = back + Duration::from_secs(1);
        let waiting = |at| Record {
            confirmed_at: Some(at),
            ..Record::default()
        };
        let records = vec![
            ok(t0, 0),      // 0: fine, ran twice (once in a killed worker)
            ok(t0, 0),      // 1: another call's value: wrong, and 0 seen twice
            waiting(after), // 2: confirmed after moto was back, never ran: lost call
            waiting(t0),    // 3: confirmed before moto was back, never ran: lost by moto
            waiting(after), // 4: ran, no result: result lost
            Record {
                send_error: Some("refused".into()),
                ..Record::default()
            }, // 5: not confirmed, ran anyway
            Record {
                confirmed_at: Some(after),
                result: Some(Err("task failed".into())),
                ..Record::default()
            }, // 6: an error result
            Record::default(), // 7: never sent
        ];
        let executions = Executions {
            runs: vec![(0, 10), (0, 11), (1, 11), (4, 11), (5, 11), (6, 11)],
            unfinished: vec![(2, 10), (3, 11)],
        };
        let c = count(Inputs {
            tag: "sqs",
            records: &records,
            sent: 7,
            executions: &executions,
            in_flight_at_faults: &[3, 2],
            killed: &["10".to_owned()],
            plan: &plan(),
            faults: &[Fault::KillWorker, Fault::MotoRestart],
            moto_back: Some(back),
            elapsed: Duration::from_secs(1),
            workers_started: 3,
            struck: &[
                Struck {
                    fault: Fault::KillWorker,
                    at: t0,
                    calls: 0..4,
                },
                Struck {
                    fault: Fault::MotoRestart,
                    at: after,
                    calls: 4..8,
                },
            ],
        });
        assert_eq!(
            (c.sent, c.confirmed, c.not_confirmed, c.not_confirmed_ran),
            (7, 6, 1, 1)
        );
        assert_eq!(c.lost_calls, [2]);
        assert_eq!(c.lost_results, [4]);
        assert_eq!(c.lost_by_broker, [3]);
        assert_eq!(c.wrong_results, [1]);
        assert_eq!(c.error_results.len(), 1);
        assert_eq!(c.duplicated_results, 1);
        assert_eq!(c.results, 3);
        assert_eq!(
            (c.executions, c.extra_runs, c.extra_runs_no_kill),
            (6, 1, 0)
        );
        assert_eq!((c.interrupted, c.min_in_flight), (1, 2));
        assert_eq!(c.confirmed_after_restart, Some(3));
        assert!(c.failed());
        let first = &c.per_fault[0];
        assert_eq!(
            (
                first.sent,
                first.confirmed,
                first.lost_calls,
                first.lost_results
            ),
            (4, 4, 1, 0)
        );
        assert_eq!(
            (first.extra_runs, first.flowing_again),
            (1, Some(Duration::ZERO))
        );
        let second = &c.per_fault[1];
        assert_eq!(
            (second.sent, second.confirmed, second.lost_results),
            (3, 2, 1)
        );
        assert_eq!(
            second.flowing_again, None,
            "no call sent after it got a result"
        );
        let table = table(&[c]);
        assert!(
            table.contains("| **lost calls** (confirmed, never ran) | 1 |"),
            "{table}"
        );
    }

    /// A run where every call got its own result once passes, extra runs or not.
    #[test]
    fn extra_runs_do_not_fail_a_run() {
        let t0 = Instant::now();
        let records: Vec<Record> = (0..3).map(|n| ok(t0, n)).collect();
        let executions = Executions {
            runs: vec![(0, 1), (1, 1), (2, 1), (2, 2)],
            unfinished: vec![],
        };
        let c = count(Inputs {
            tag: "amqp",
            records: &records,
            sent: 3,
            executions: &executions,
            in_flight_at_faults: &[],
            killed: &[],
            plan: &plan(),
            faults: &[],
            moto_back: None,
            elapsed: Duration::from_secs(1),
            workers_started: 2,
            struck: &[],
        });
        assert_eq!((c.extra_runs, c.extra_runs_no_kill), (1, 1));
        assert!(!c.failed(), "{c:?}");
    }
}
