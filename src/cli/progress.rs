//! Progress bars for the long commands, drawn on stderr only when it is a terminal: a script
//! that captures the output, or a test, sees exactly what it saw before.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a bar redraws on its own (a spinner's tick, the elapsed time).
const TICK: Duration = Duration::from_millis(120);

fn on_stderr(len: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    bar.enable_steady_tick(TICK);
    bar
}

/// A bar of `len` items (set it later with `set_length` when not known yet), e.g. orders
/// replayed or records checked.
pub fn bar(what: &'static str, len: u64) -> ProgressBar {
    let bar = on_stderr(Some(len));
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg} [{bar:40}] {pos}/{len} {unit} ({per_sec}, {eta} left)",
    ) {
        bar.set_style(
            style
                .with_key(
                    "unit",
                    move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(what);
                    },
                )
                .progress_chars("=> "),
        );
    }
    bar
}

/// Bytes written, of a length not known in advance (an export); the message says what else
/// to count, e.g. the rows.
pub fn bytes() -> ProgressBar {
    let bar = on_stderr(None);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg} {binary_bytes} ({binary_bytes_per_sec}, {elapsed})",
    ) {
        bar.set_style(style);
    }
    bar
}
