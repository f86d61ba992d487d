//! What the example binaries share besides tasks: URLs and settings from the environment, exit
//! codes, logging.

/// Reads the broker and notifier URLs from the environment.
pub fn urls() -> (String, String) {
    let broker = std::env::var("IVY_BROKER_URL").unwrap_or_else(|_| "memory://".into());
    let result = std::env::var("IVY_RESULT_URL").unwrap_or_else(|_| "memory://".into());
    (broker, result)
}

/// Refuses `memory://` for two processes, which cannot share memory.
pub fn require_shared(url: &str, var: &str) {
    if url.starts_with("memory://") {
        usage_error(format!(
            "{var}={url} cannot connect two processes; set it to a broker, e.g. \
             IVY_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2f IVY_RESULT_URL=redis://127.0.0.1:6379 \
             (or run `cargo run --example quickstart` for one process)"
        ));
    }
}

/// The keyring from `IVY_KEYS` (`id:secret,…`, first = current), or none: encryption off.
/// A key list that cannot be read is a configuration error (exit code 2).
pub fn keyring() -> ivy::Keyring {
    match std::env::var_os("IVY_KEYS") {
        Some(_) => ivy::Keyring::from_env("IVY_KEYS").unwrap_or_else(|e| usage_error(e)),
        None => ivy::Keyring::new(),
    }
}

/// The setting `var` from the environment, `default` when it is unset. A value that `parse`
/// refuses ends the process with exit code 2 and says what was expected: a typo must not
/// quietly become the default.
pub fn setting<T>(var: &str, default: T, expected: &str, parse: impl Fn(&str) -> Option<T>) -> T {
    match std::env::var(var) {
        Err(std::env::VarError::NotPresent) => default,
        Err(std::env::VarError::NotUnicode(_)) => usage_error(format!("{var} is not valid UTF-8")),
        Ok(text) => parse(text.trim()).unwrap_or_else(|| {
            usage_error(format!("{var}={text:?} is refused: expected {expected}"))
        }),
    }
}

/// Ends the process for a usage or configuration error: the message on stderr, exit code 2.
pub fn usage_error(message: impl std::fmt::Display) -> ! {
    eprintln!("error: {message}");
    std::process::exit(2)
}

/// The exit status for how `main` went: 0, or the error's one-line `Display` on stderr (never
/// a Debug dump) and exit code 2 for a configuration error, 1 for any other failure.
pub fn exit_status(outcome: ivy::Result<()>) -> std::process::ExitCode {
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let code = match e {
                ivy::Error::Url { .. } | ivy::Error::Config(_) => 2,
                _ => 1,
            };
            std::process::ExitCode::from(code)
        }
    }
}

/// Logs to stderr, `RUST_LOG` to change the level. lapin's own log lines are off unless
/// `RUST_LOG` names lapin: it logs each connection failure as a Debug dump, before Ivy reports
/// the same failure in one line (and Ivy logs every reconnection itself).
pub fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let names_lapin = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("lapin"));
    let filter = if names_lapin {
        filter
    } else {
        filter.add_directive("lapin=off".parse().expect("a valid directive"))
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
}
