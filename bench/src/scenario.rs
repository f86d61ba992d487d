//! What a scenario is: a path (where calls travel), a workload (what is measured) and a side
//! (who does the work), with the names the command line and the report give them, and which
//! sides each path and workload measure. Plain data: it runs nothing.

use crate::error::BoxError;

/// Where calls travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    Memory,
    Amqp,
    Sqs,
}

impl PathKind {
    pub fn parse(s: &str) -> Result<Self, BoxError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "memory" => Ok(PathKind::Memory),
            "amqp" => Ok(PathKind::Amqp),
            "sqs" => Ok(PathKind::Sqs),
            other => Err(format!("unknown path `{other}` (memory, amqp, sqs)").into()),
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            PathKind::Memory => "memory",
            PathKind::Amqp => "amqp",
            PathKind::Sqs => "sqs",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            PathKind::Memory => "memory",
            PathKind::Amqp => "AMQP + Redis",
            PathKind::Sqs => "SQS (moto) + Redis",
        }
    }
}

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    W1,
    W2,
    W3,
    W4,
    /// Calls with results arriving at a steady rate, each from a caller of its own (a web
    /// service's requests): what a producer and worker pay when calls come one at a time.
    W5,
}

impl Workload {
    pub fn parse(s: &str) -> Result<Self, BoxError> {
        match s.trim().to_ascii_uppercase().as_str() {
            "W1" => Ok(Workload::W1),
            "W2" => Ok(Workload::W2),
            "W3" => Ok(Workload::W3),
            "W4" => Ok(Workload::W4),
            "W5" => Ok(Workload::W5),
            other => Err(format!("unknown workload `{other}` (W1, W2, W3, W4, W5)").into()),
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Workload::W1 => "W1",
            Workload::W2 => "W2",
            Workload::W3 => "W3",
            Workload::W4 => "W4",
            Workload::W5 => "W5",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Workload::W1 => "W1 results",
            Workload::W2 => "W2 fire-and-forget",
            Workload::W3 => "W3 sequential latency",
            Workload::W4 => "W4 16 KiB argument",
            Workload::W5 => "W5 steady stream",
        }
    }
}

/// Who does the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Ivy,
    IvyEncrypted,
    Raw,
    /// The raw baseline with its bodies padded to the length of Ivy's envelope for the same
    /// call: what the message size alone costs on the broker.
    RawSized,
    /// The minimal persistent pipeline (plain queue, no confirms, prefetch 100, reply by
    /// PUBLISH): the ceiling, not like-for-like.
    RawMinimal,
}

impl Side {
    pub fn key(self) -> &'static str {
        match self {
            Side::Ivy => "ivy",
            Side::IvyEncrypted => "ivy-encrypted",
            Side::Raw => "raw",
            Side::RawSized => "raw-sized",
            Side::RawMinimal => "raw-minimal",
        }
    }

    pub fn parse(s: &str) -> Result<Self, BoxError> {
        match s {
            "ivy" => Ok(Side::Ivy),
            "ivy-encrypted" => Ok(Side::IvyEncrypted),
            "raw" => Ok(Side::Raw),
            "raw-sized" => Ok(Side::RawSized),
            "raw-minimal" => Ok(Side::RawMinimal),
            other => Err(format!("unknown implementation `{other}`").into()),
        }
    }

    pub fn label(self, workload: Workload) -> &'static str {
        match (self, workload) {
            (Side::Ivy, Workload::W4) => "Ivy, plain",
            (Side::Ivy, _) => "Ivy",
            (Side::IvyEncrypted, _) => "Ivy, encrypted",
            (Side::Raw, _) => "raw lapin + redis",
            (Side::RawSized, _) => "raw, body padded to Ivy's size",
            (Side::RawMinimal, _) => "minimal raw (plain queue, no confirms, prefetch 100)",
        }
    }

    /// The raw worker this side runs, if it is a raw side.
    pub fn raw_kind(self) -> Option<Kind> {
        match self {
            Side::Ivy | Side::IvyEncrypted => None,
            Side::Raw | Side::RawSized => Some(Kind::Raw),
            Side::RawMinimal => Some(Kind::RawMinimal),
        }
    }
}

/// The 16 KiB argument of W4.
pub const PAD_BYTES: usize = 16 * 1024;
/// W3's number of sequential calls (or N if smaller).
pub const W3_CALLS: u64 = 1000;
/// W5's number of calls (or N if smaller): at its default rate, 15 s.
pub const W5_CALLS: u64 = 300;
/// W5's default rate, calls per second.
pub const W5_RATE: f64 = 20.0;
/// Calls per SQS run unless `--sqs-n` says otherwise: moto answers every request on a new
/// connection and manages a few dozen calls per second here, so N would take many minutes.
pub const SQS_DEFAULT_CALLS: u64 = 300;

/// The implementations measured for a path and workload.
pub fn sides(path: PathKind, workload: Workload) -> Vec<Side> {
    let mut sides = vec![Side::Ivy];
    if workload == Workload::W4 {
        sides.push(Side::IvyEncrypted);
    }
    if path == PathKind::Amqp && workload != Workload::W5 {
        sides.push(Side::Raw);
        if matches!(workload, Workload::W1 | Workload::W2) {
            sides.push(Side::RawSized);
        }
        if workload != Workload::W4 {
            sides.push(Side::RawMinimal);
        }
    }
    sides
}

/// Which worker the child runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `ivy::Worker`.
    Ivy,
    /// The raw lapin + redis worker, like-for-like.
    Raw,
    /// The minimal raw pipeline's worker.
    RawMinimal,
}

/// What the child is told, on its command line (written and read in `args.rs`, run by `worker_proc.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub kind: Kind,
    pub broker: String,
    pub notifier: String,
    pub queue: String,
    pub concurrency: usize,
    /// Calls expected after the warm-up call.
    pub expect: u64,
    pub encrypted: bool,
    /// Ivy's worker: `Worker::prefetch_multiplier`, when not Ivy's default.
    pub prefetch_multiplier: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_runs_only_on_amqp() {
        assert_eq!(
            sides(PathKind::Amqp, Workload::W1),
            [Side::Ivy, Side::Raw, Side::RawSized, Side::RawMinimal]
        );
        assert_eq!(
            sides(PathKind::Amqp, Workload::W3),
            [Side::Ivy, Side::Raw, Side::RawMinimal]
        );
        assert_eq!(
            sides(PathKind::Amqp, Workload::W4),
            [Side::Ivy, Side::IvyEncrypted, Side::Raw]
        );
        assert_eq!(sides(PathKind::Memory, Workload::W2), [Side::Ivy]);
        assert_eq!(
            sides(PathKind::Sqs, Workload::W4),
            [Side::Ivy, Side::IvyEncrypted]
        );
    }
}
