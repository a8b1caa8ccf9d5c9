//! A terminal progress bar on stderr:
//!   "  42/200 [=====>      ] 21% loss 1.234 lr 9.8e-05 gnorm 0.71 312 tok/s ETA 0:03:12"
//! Spec: this file   Test: tests/runout.rs (progress_*)
//!
//! On a terminal (std::io::IsTerminal) the bar is redrawn in place with "\r" + ESC[K (clear to end of line);
//! elsewhere (a log file, CI) it prints one plain line every `line_every` steps and at the last step, so logs
//! stay readable. `println` prints a message above the bar without garbling it.
//! ETA = (total - step) * (moving average of seconds per step over the last `ETA_WINDOW` updates), so a slow
//! first step (compilation, cache warm-up) stops mattering after a few updates.
//! Contract easy to miss: `render` is pure (no I/O, no clock), so the line format is testable.

use crate::train::log::format_hms;
use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Width of the bar between the brackets, in characters.
const BAR_WIDTH: usize = 30;
/// Updates averaged for the ETA: long enough to smooth step-time noise, short enough to follow a change.
const ETA_WINDOW: usize = 20;
/// Plain-line interval when stderr is not a terminal, until `set_line_every`.
const DEFAULT_LINE_EVERY: usize = 10;

pub struct Progress {
    total: usize,
    is_tty: bool,
    line_every: usize,
    /// (steps advanced, seconds taken) of the last updates.
    window: VecDeque<(usize, f64)>,
    last_step: usize,
    last_time: Instant,
    /// The last rendered bar (redrawn after `println`), and whether it is on screen now.
    last_line: Option<String>,
    on_screen: bool,
    /// Whether the last update was printed (non-terminal mode), so `finish` prints the final state once.
    last_printed: bool,
}

/// Learning rates as Python's "%.1e" / `{:.1e}`: "9.8e-05" (two exponent digits, sign always).
pub fn format_sci(x: f64, decimals: usize) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let s = format!("{x:.decimals$e}");
    let (m, e) = s.split_once('e').expect("{:e} has an exponent");
    let e: i32 = e.parse().expect("{:e} exponent is an integer");
    format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

impl Progress {
    /// A bar for steps `start_step..=total` (start_step > 0 when resuming).
    pub fn new(total: usize, start_step: usize) -> Self {
        Progress {
            total,
            is_tty: std::io::stderr().is_terminal(),
            line_every: DEFAULT_LINE_EVERY,
            window: VecDeque::with_capacity(ETA_WINDOW),
            last_step: start_step,
            last_time: Instant::now(),
            last_line: None,
            on_screen: false,
            last_printed: true,
        }
    }
    /// Plain-line interval in steps when stderr is not a terminal (0 is taken as 1).
    pub fn set_line_every(&mut self, n: usize) {
        self.line_every = n.max(1);
    }
    /// Whether output goes to a terminal (in-place redraw) or is line-based.
    pub fn is_terminal(&self) -> bool {
        self.is_tty
    }

    /// Restarts the step clock at `now` (`Instant::now()` normally): call it right before the first step so that
    /// model loading is not counted as step time.
    pub fn reset_clock(&mut self, now: Instant) {
        self.last_time = now;
    }

    /// Records that `step` was reached at `now` (feeds the ETA). Steps that do not advance are ignored.
    pub fn observe(&mut self, step: usize, now: Instant) {
        if step <= self.last_step {
            return;
        }
        let secs = now.saturating_duration_since(self.last_time).as_secs_f64();
        if self.window.len() == ETA_WINDOW {
            self.window.pop_front();
        }
        self.window.push_back((step - self.last_step, secs));
        self.last_step = step;
        self.last_time = now;
    }
    /// Seconds left: (total - last step) * moving-average seconds per step; None before the first observation.
    pub fn eta_secs(&self) -> Option<f64> {
        let steps: usize = self.window.iter().map(|w| w.0).sum();
        if steps == 0 {
            return None;
        }
        let secs: f64 = self.window.iter().map(|w| w.1).sum();
        Some(self.total.saturating_sub(self.last_step) as f64 * secs / steps as f64)
    }

    /// The bar line for these values (pure: no I/O). `eta_secs` None prints "ETA --:--:--"; non-finite loss or
    /// grad norm print "nan"/"inf" so a divergence is visible.
    pub fn render(
        &self,
        step: usize,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens_per_s: f64,
        eta_secs: Option<f64>,
    ) -> String {
        let total = self.total.max(1);
        let done = step.min(total);
        let w = self.total.to_string().len();
        let filled = BAR_WIDTH * done / total;
        let bar = if filled >= BAR_WIDTH {
            "=".repeat(BAR_WIDTH)
        } else if filled == 0 {
            format!(">{}", " ".repeat(BAR_WIDTH - 1))
        } else {
            format!("{}>{}", "=".repeat(filled - 1), " ".repeat(BAR_WIDTH - filled))
        };
        let pct = 100 * done / total;
        let eta = match eta_secs {
            Some(s) if s.is_finite() => format_hms(s),
            _ => "--:--:--".to_string(),
        };
        format!(
            "{step:>w$}/{} [{bar}] {pct}% loss {loss:.3} lr {} gnorm {grad_norm:.2} {tokens_per_s:.0} tok/s ETA {eta}",
            self.total,
            format_sci(lr, 1)
        )
    }

    fn write_stderr(s: &str) {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(s.as_bytes());
        let _ = e.flush();
    }

    /// Records the step time and redraws (terminal) or prints a line every `line_every` steps (otherwise).
    pub fn update(&mut self, step: usize, loss: f64, lr: f64, grad_norm: f64, tokens_per_s: f64) {
        self.observe(step, Instant::now());
        let line = self.render(step, loss, lr, grad_norm, tokens_per_s, self.eta_secs());
        if self.is_tty {
            Self::write_stderr(&format!("\r{line}\x1b[K"));
            self.on_screen = true;
            self.last_printed = true;
        } else if step.is_multiple_of(self.line_every) || step >= self.total {
            Self::write_stderr(&format!("{line}\n"));
            self.last_printed = true;
        } else {
            self.last_printed = false;
        }
        self.last_line = Some(line);
    }

    /// Prints `msg` on its own line above the bar, then redraws the bar (terminal), or just prints it.
    pub fn println(&mut self, msg: &str) {
        if self.is_tty && self.on_screen {
            let bar = self.last_line.as_deref().unwrap_or("");
            Self::write_stderr(&format!("\r\x1b[K{msg}\n{bar}\x1b[K"));
        } else {
            Self::write_stderr(&format!("{msg}\n"));
        }
    }

    /// Ends the bar: moves past it on a terminal; prints the last state if it was not printed yet otherwise.
    pub fn finish(&mut self) {
        if self.is_tty {
            if self.on_screen {
                Self::write_stderr("\n");
                self.on_screen = false;
            }
        } else if !self.last_printed {
            if let Some(line) = &self.last_line {
                Self::write_stderr(&format!("{line}\n"));
            }
            self.last_printed = true;
        }
    }
}

impl Drop for Progress {
    /// Leaves the cursor on a fresh line if the caller forgot `finish` (or unwound past it).
    fn drop(&mut self) {
        if self.is_tty && self.on_screen {
            Self::write_stderr("\n");
        }
    }
}

/// A rate for display: whole numbers from 10 up, two significant digits below (a 1B model on a
/// software device does 0.3 tokens/s, which `{:.0}` would show as 0).
pub fn rate(x: f64) -> String {
    if x >= 10.0 || x == 0.0 || !x.is_finite() {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}
