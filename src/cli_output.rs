//! How the command line ends: an error printed with each cause once, and a closed output pipe ending quietly.

use std::any::Any;
use std::io;

/// Exit code when whoever reads standard output stopped reading (`pivtap admin audit | head -1`):
/// 141, what a shell reports for a program ended by SIGPIPE, as `cat` or `grep` would be. The
/// output was cut short, so a script with `set -o pipefail` must not take it for a complete
/// run; without pipefail the pipeline's status is the reader's. Nothing is printed.
pub const EXIT_OUTPUT_CLOSED: u8 = 141;

/// The one line printed for a failed command: the error and its causes, outermost first,
/// joined by `: `, each cause once.
///
/// The workspace's convention for errors: a message says what failed at its level and may
/// carry its cause's text, so a one-line log (`%error`) is complete on its own; the cause is
/// still returned by [`std::error::Error::source`], so code can inspect it (downcast a
/// `PivError` for the exit code, find the TLS problem behind a request). Both may hold, so a
/// printer of the whole chain (this one; `{:#}` is not used for that) leaves out a cause whose
/// text is already shown. A message never repeats a stable code its printer adds (the server's
/// messages for `conflict` do not start with "conflict:").
#[must_use]
pub fn error_report(error: &anyhow::Error) -> String {
    let mut report = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if message.is_empty() || report.contains(&message) {
            continue;
        }
        if !report.is_empty() {
            report.push_str(": ");
        }
        report.push_str(&message);
    }
    report
}

/// True when `error` (or a cause) is a write to a pipe nobody reads any more.
#[must_use]
pub fn is_output_closed(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Makes `println!` into a closed pipe end the process with [`EXIT_OUTPUT_CLOSED`] and no
/// message, where it would panic (exit 101): Rust ignores SIGPIPE, so the write fails with
/// EPIPE and `println!` panics on it. Other panics are reported as before.
pub fn end_quietly_when_output_closes() {
    let report_panic = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if is_closed_output_panic(info.payload()) {
            std::process::exit(i32::from(EXIT_OUTPUT_CLOSED));
        }
        report_panic(info);
    }));
}

/// True for the panic of `print!`/`println!` on a broken pipe ("failed printing to stdout:
/// Broken pipe (os error 32)").
fn is_closed_output_panic(payload: &(dyn Any + Send)) -> bool {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    message.starts_with("failed printing to std") && message.contains("Broken pipe")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that shows its cause in its message and also returns it as its source.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct ReadError {
        path: &'static str,
        source: io::Error,
    }

    #[test]
    fn each_cause_is_printed_once() {
        let inner = io::Error::new(io::ErrorKind::NotFound, "No such file or directory");
        let error = anyhow::Error::new(ReadError {
            path: "/x",
            source: inner,
        })
        .context("cannot start");
        assert_eq!(
            error_report(&error),
            "cannot start: cannot read /x: No such file or directory"
        );
        // A cause that is not in the message is still printed.
        let chained = anyhow::Error::new(io::Error::other("disk full")).context("cannot save");
        assert_eq!(error_report(&chained), "cannot save: disk full");
    }

    #[test]
    fn a_broken_pipe_is_recognised_through_context_and_in_a_print_panic() {
        let closed = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("cannot write the event");
        assert!(is_output_closed(&closed));
        assert!(!is_output_closed(&anyhow::anyhow!("Broken pipe")));
        let payload: Box<dyn Any + Send> =
            Box::new("failed printing to stdout: Broken pipe (os error 32)".to_owned());
        assert!(is_closed_output_panic(payload.as_ref()));
        let other: Box<dyn Any + Send> = Box::new("index out of bounds");
        assert!(!is_closed_output_panic(other.as_ref()));
    }
}
