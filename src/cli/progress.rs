//! Signs of life on stderr for work that can take seconds (compiling a large model, the
//! conformance suite, benchmark rounds, profiles): a bar or a spinner with the elapsed time,
//! drawn only when stderr is a terminal (never into a log or a pipe) and cleared when done.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The display now on stderr, if any: notes print around it.
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Prints a line on stderr without garbling a progress display that is showing.
pub fn note(line: &str) {
    let shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match shown {
        Some(b) => b.suspend(|| eprintln!("{line}")),
        None => eprintln!("{line}"),
    }
}

/// A progress display; does nothing off a terminal. Cleared when dropped.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    fn make(len: Option<u64>, message: &str) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let (bar, template) = match len {
            Some(n) => (
                ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                "{msg} [{bar:30}] {pos}/{len} ({elapsed})",
            ),
            None => (
                ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
                "{spinner} {msg} ({elapsed})",
            ),
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        *SHOWN.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
        Progress(Some(bar))
    }

    /// A spinner for work of unknown length.
    pub fn spinner(message: &str) -> Progress {
        Progress::make(None, message)
    }

    /// A bar over `len` steps.
    pub fn bar(len: usize, message: &str) -> Progress {
        Progress::make(Some(len as u64), message)
    }

    pub fn inc(&self) {
        if let Some(b) = &self.0 {
            b.inc(1);
        }
    }

    pub fn set_message(&self, message: &str) {
        if let Some(b) = &self.0 {
            b.set_message(message.to_string());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
            *SHOWN.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}
