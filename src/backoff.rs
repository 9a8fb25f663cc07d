//! Exponential backoff with jitter: how every retry loop in fleet waits (the agent's send loop,
//! its command fetches and reports, the CLI waiting out a controller's 503).
//!
//! A value: it computes waits and never sleeps itself, so callers keep their own cancellation.

use std::time::Duration;

/// The wait before the next retry: starts at `min`, doubles after each failure up to `max`, and
/// is back at `min` after a success. Each wait is jittered to between half and all of the
/// current step, so many agents that failed together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            step: min,
        }
    }

    /// The step the next failure waits (before jitter): for logs.
    pub fn current(&self) -> Duration {
        self.step
    }

    /// The longest step.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// A failure: the jittered wait before retrying; the step after it doubles.
    pub fn failed(&mut self) -> Duration {
        let wait = jitter(self.step);
        self.step = (self.step * 2).min(self.max);
        wait
    }

    /// A success: the next failure waits from `min` again.
    pub fn succeeded(&mut self) {
        self.step = self.min;
    }
}

/// Somewhere between half and all of `base`.
pub fn jitter(base: Duration) -> Duration {
    base.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_max_jittered_and_resets_on_success() {
        let min = Duration::from_millis(100);
        let max = Duration::from_millis(700);
        let mut backoff = Backoff::new(min, max);
        let steps = [100, 200, 400, 700, 700];
        for step in steps {
            assert_eq!(backoff.current(), Duration::from_millis(step));
            let wait = backoff.failed();
            assert!(
                wait >= Duration::from_millis(step) / 2 && wait <= Duration::from_millis(step),
                "a wait of {wait:?} for a step of {step} ms"
            );
        }
        backoff.succeeded();
        assert_eq!(backoff.current(), min);
    }
}
