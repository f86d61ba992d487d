//! Parsing of `#[task(...)]` options.

use std::time::Duration;

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::{LitInt, LitStr, Path};

const KEYS: &str = "name, queue, priority, max_retries, retry_backoff, retry_backoff_max, \
                    timeout, rate_limit, max_concurrency, blocking, no_retry_on, crate";

/// The options as written, each with where it was written.
#[derive(Default)]
pub struct TaskArgs {
    pub name: Option<LitStr>,
    pub queue: Option<LitStr>,
    pub priority: Option<u8>,
    pub max_retries: Option<u32>,
    pub retry_backoff: Option<DurationArg>,
    pub retry_backoff_max: Option<DurationArg>,
    pub timeout: Option<DurationArg>,
    /// `rate_limit = "100/s"`: runs and the period in seconds.
    pub rate_limit: Option<(u32, u64)>,
    pub max_concurrency: Option<u32>,
    pub blocking: Option<Span>,
    /// A function `fn(&E) -> bool` saying which errors are permanent (not retried).
    pub no_retry_on: Option<Path>,
    pub krate: Option<Path>,
    seen: Vec<String>,
}

/// A duration option: its value and the literal it was written as.
pub struct DurationArg {
    pub value: Duration,
    pub lit: LitStr,
}

impl TaskArgs {
    pub fn parse(attr: proc_macro2::TokenStream) -> syn::Result<Self> {
        let mut args = TaskArgs::default();
        if attr.is_empty() {
            return Ok(args);
        }
        let parser = syn::meta::parser(|meta| args.one(meta));
        syn::parse::Parser::parse2(parser, attr)?;
        args.check_backoff()?;
        Ok(args)
    }

    /// Retries wait `retry_backoff`, doubled each time up to `retry_backoff_max`: a maximum below
    /// the start is a mistake in one of the two.
    fn check_backoff(&self) -> syn::Result<()> {
        match (&self.retry_backoff, &self.retry_backoff_max) {
            (Some(start), Some(max)) if max.value < start.value => Err(syn::Error::new(
                max.lit.span(),
                format!(
                    "`retry_backoff_max = {:?}` is shorter than `retry_backoff = {:?}`: retries wait `retry_backoff`, doubled each time up to `retry_backoff_max`",
                    max.lit.value(),
                    start.lit.value()
                ),
            )),
            _ => Ok(()),
        }
    }

    fn once(&mut self, meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<()> {
        if self.seen.iter().any(|k| k == key) {
            return Err(meta.error(format!("duplicate option `{key}`")));
        }
        self.seen.push(key.to_string());
        Ok(())
    }

    fn one(&mut self, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
        let key = match meta.path.get_ident() {
            Some(ident) => ident.to_string(),
            None => return Err(meta.error(format!("unknown option; expected one of: {KEYS}"))),
        };
        match key.as_str() {
            "name" => {
                self.once(&meta, &key)?;
                let lit: LitStr = meta.value()?.parse()?;
                check_name(&lit)?;
                self.name = Some(lit);
            }
            "queue" => {
                self.once(&meta, &key)?;
                let lit: LitStr = meta.value()?.parse()?;
                if lit.value().trim().is_empty() {
                    return Err(syn::Error::new(
                        lit.span(),
                        "the queue name must not be empty",
                    ));
                }
                self.queue = Some(lit);
            }
            "priority" => {
                self.once(&meta, &key)?;
                let lit: LitInt = meta.value()?.parse()?;
                let p: u8 = lit.base10_parse()?;
                if p > 9 {
                    return Err(syn::Error::new(lit.span(), "priority goes from 0 to 9"));
                }
                self.priority = Some(p);
            }
            "max_retries" => {
                self.once(&meta, &key)?;
                let lit: LitInt = meta.value()?.parse()?;
                self.max_retries = Some(lit.base10_parse()?);
            }
            "retry_backoff" | "retry_backoff_max" | "timeout" => {
                self.once(&meta, &key)?;
                let lit: LitStr = meta.value()?.parse()?;
                let value = parse_duration(&lit)?;
                if key == "timeout" && value.is_zero() {
                    return Err(syn::Error::new(lit.span(), "a timeout must be above zero"));
                }
                let d = Some(DurationArg { value, lit });
                match key.as_str() {
                    "retry_backoff" => self.retry_backoff = d,
                    "retry_backoff_max" => self.retry_backoff_max = d,
                    _ => self.timeout = d,
                }
            }
            "rate_limit" => {
                self.once(&meta, &key)?;
                let lit: LitStr = meta.value()?.parse()?;
                self.rate_limit = Some(parse_rate(&lit)?);
            }
            "max_concurrency" => {
                self.once(&meta, &key)?;
                let lit: LitInt = meta.value()?.parse()?;
                let n: u32 = lit.base10_parse()?;
                if n == 0 {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`max_concurrency` must be at least 1 (leave it out for no limit)",
                    ));
                }
                self.max_concurrency = Some(n);
            }
            "blocking" => {
                self.once(&meta, &key)?;
                if meta.input.peek(syn::Token![=]) {
                    return Err(meta.error("`blocking` takes no value"));
                }
                self.blocking = Some(meta.path.get_ident().expect("checked").span());
            }
            "no_retry_on" => {
                self.once(&meta, &key)?;
                self.no_retry_on = Some(meta.value()?.parse()?);
            }
            "crate" => {
                self.once(&meta, &key)?;
                let lit: LitStr = meta.value()?.parse()?;
                self.krate = Some(lit.parse()?);
            }
            _ => return Err(meta.error(format!("unknown option `{key}`; expected one of: {KEYS}"))),
        }
        Ok(())
    }
}

fn check_name(lit: &LitStr) -> syn::Result<()> {
    let name = lit.value();
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(syn::Error::new(
            lit.span(),
            "a task name is made of ASCII letters, digits, `.`, `_`, `-` and `:`, like `testpackage.factorial`",
        ))
    }
}

/// `"100/s"`, `"20/m"`, `"5/h"`: a count above zero per second, minute or hour.
fn parse_rate(lit: &LitStr) -> syn::Result<(u32, u64)> {
    let bad = || {
        syn::Error::new(
            lit.span(),
            "expected a rate such as \"100/s\", \"20/m\" or \"5/h\" (runs per second, minute or hour)",
        )
    };
    let text = lit.value();
    let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    if count == 0 {
        return Err(syn::Error::new(
            lit.span(),
            "a rate limit must allow at least 1 run per period (leave it out for no limit)",
        ));
    }
    let per_secs = match unit.trim() {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        _ => return Err(bad()),
    };
    Ok((count, per_secs))
}

/// `"250ms"`, `"30s"`, `"5m"`, `"2h"`. The generated code carries durations as `u64`
/// milliseconds, so a longer one is an error here rather than a panic or a truncated value.
fn parse_duration(lit: &LitStr) -> syn::Result<Duration> {
    let text = lit.value();
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = match num.parse() {
        Ok(n) => n,
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => {
            return Err(too_long(lit));
        }
        Err(_) => return Err(bad_duration(lit)),
    };
    let ms_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad_duration(lit)),
    };
    let ms = n.checked_mul(ms_per_unit).ok_or_else(|| too_long(lit))?;
    Ok(Duration::from_millis(ms))
}

fn bad_duration(lit: &LitStr) -> syn::Error {
    syn::Error::new(
        lit.span(),
        "expected a duration such as \"250ms\", \"30s\", \"5m\" or \"1h\"",
    )
}

fn too_long(lit: &LitStr) -> syn::Error {
    syn::Error::new(
        lit.span(),
        format!(
            "this duration is too long: the longest is {}ms (about 584 million years)",
            u64::MAX
        ),
    )
}
