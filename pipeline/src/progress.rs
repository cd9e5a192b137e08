//! Progress reporting: the library reports through [`Progress`]; only the binary draws.

/// Receives progress of long stages. Implementations must be cheap and thread-safe.
pub trait Progress: Sync {
    fn start(&self, stage: &str, total: u64);
    fn advance(&self, n: u64);
    fn finish(&self);
    /// A one-off message (e.g. that a build resumes).
    fn note(&self, _message: &str) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// Progress on standard error: a redrawn bar with items/s and ETA on a terminal, a plain
/// line every 10% otherwise (logs, Slurm output files).
#[derive(Debug)]
pub struct Stderr {
    state: std::sync::Mutex<BarState>,
    done: std::sync::atomic::AtomicU64,
    tty: bool,
}

#[derive(Debug)]
struct BarState {
    stage: String,
    total: u64,
    started: std::time::Instant,
    drawn: std::time::Instant,
}

impl Default for Stderr {
    fn default() -> Self {
        use std::io::IsTerminal;
        let now = std::time::Instant::now();
        Self {
            state: std::sync::Mutex::new(BarState { stage: String::new(), total: 0, started: now, drawn: now }),
            done: std::sync::atomic::AtomicU64::new(0),
            tty: std::io::stderr().is_terminal(),
        }
    }
}

/// `1h02m`, `3m05s` or `12s`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// The status text: `stage  done/total (pct%)  rate/s  ETA t`.
pub fn status_line(stage: &str, done: u64, total: u64, elapsed: f64) -> String {
    let rate = if elapsed > 0.0 { done as f64 / elapsed } else { 0.0 };
    let pct = (done * 100).checked_div(total).unwrap_or(100);
    let eta = if rate > 0.0 && done < total {
        format!("  ETA {}", duration((total - done) as f64 / rate))
    } else {
        String::new()
    };
    format!("{stage}: {done}/{total} ({pct}%)  {rate:.1}/s  {}{eta}", duration(elapsed))
}

impl Progress for Stderr {
    fn start(&self, stage: &str, total: u64) {
        if let Ok(mut s) = self.state.lock() {
            let now = std::time::Instant::now();
            *s = BarState { stage: stage.to_string(), total, started: now, drawn: now };
        }
        self.done.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    fn advance(&self, n: u64) {
        let before = self.done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        let after = before + n;
        let Ok(mut s) = self.state.lock() else { return };
        let total = s.total.max(1);
        let elapsed = s.started.elapsed().as_secs_f64();
        if self.tty {
            if s.drawn.elapsed().as_millis() >= 200 || after >= total {
                s.drawn = std::time::Instant::now();
                let width = 24;
                let filled = (after.min(total) * width / total) as usize;
                let bar = format!("{}{}", "#".repeat(filled), ".".repeat(width as usize - filled));
                eprint!("\r  [{bar}] {}\x1b[K", status_line(&s.stage, after, s.total, elapsed));
            }
        } else if before * 10 / total != after * 10 / total {
            eprintln!("  {}", status_line(&s.stage, after, s.total, elapsed));
        }
    }

    fn finish(&self) {
        if self.tty
            && let Ok(s) = self.state.lock()
        {
            let done = self.done.load(std::sync::atomic::Ordering::Relaxed);
            eprintln!("\r  {}\x1b[K", status_line(&s.stage, done, s.total, s.started.elapsed().as_secs_f64()));
        }
    }

    fn note(&self, message: &str) {
        eprintln!("  {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_shows_rate_and_eta() {
        assert_eq!(status_line("images", 50, 200, 10.0), "images: 50/200 (25%)  5.0/s  10s  ETA 30s");
        assert_eq!(status_line("images", 200, 200, 100.0), "images: 200/200 (100%)  2.0/s  1m40s");
        assert_eq!(duration(3725.0), "1h02m");
    }
}
