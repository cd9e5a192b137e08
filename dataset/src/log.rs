//! How both binaries report, on standard error (results go to standard output): log lines,
//! the progress of long stages and per-step events, in one of three [`LogMode`]s: `human`
//! (a status line redrawn on a terminal, a plain line at every tenth of a stage otherwise,
//! e.g. in a Slurm output file), `quiet` (nothing but errors) or `json` (one JSON object per
//! line: `{"event": "log" | "progress" | "step" | "error", ...}`, for log collectors).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// How a [`Reporter`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogMode {
    /// Text for people: a redrawn status line on a terminal, plain lines otherwise.
    #[default]
    Human,
    /// Errors only.
    Quiet,
    /// One JSON object per line.
    Json,
}

impl LogMode {
    /// The names `FromStr` takes (the `--log` values).
    pub const NAMES: [&'static str; 3] = ["human", "quiet", "json"];

    pub fn name(self) -> &'static str {
        match self {
            Self::Human => "human",
            Self::Quiet => "quiet",
            Self::Json => "json",
        }
    }
}

impl std::str::FromStr for LogMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "human" => Ok(Self::Human),
            "quiet" => Ok(Self::Quiet),
            "json" => Ok(Self::Json),
            other => Err(format!("--log {other}: choose human, quiet or json")),
        }
    }
}

/// Writes log lines, progress and events in its [`LogMode`]. Cheap to call from many
/// threads.
#[derive(Debug)]
pub struct Reporter {
    mode: LogMode,
    tty: bool,
    stage: Mutex<Stage>,
    done: AtomicU64,
}

#[derive(Debug)]
struct Stage {
    name: String,
    total: u64,
    started: Instant,
    drawn: Instant,
}

impl Reporter {
    /// A reporter on standard error (redrawing only when that is a terminal).
    pub fn new(mode: LogMode) -> Self {
        Self::with_terminal(mode, std::io::stderr().is_terminal())
    }

    fn with_terminal(mode: LogMode, tty: bool) -> Self {
        let now = Instant::now();
        let stage = Stage { name: String::new(), total: 0, started: now, drawn: now };
        Self { mode, tty: tty && mode == LogMode::Human, stage: Mutex::new(stage), done: AtomicU64::new(0) }
    }

    pub fn mode(&self) -> LogMode {
        self.mode
    }

    /// A log line.
    pub fn line(&self, message: &str) {
        match self.mode {
            LogMode::Human => emit(message),
            LogMode::Quiet => {}
            LogMode::Json => emit(&json_line("log", serde_json::json!({ "message": message }))),
        }
    }

    /// An error (written in every mode).
    pub fn error(&self, message: &str, exit_code: u8) {
        match self.mode {
            LogMode::Json => {
                emit(&json_line("error", serde_json::json!({ "message": message, "exit_code": exit_code })));
            }
            LogMode::Human | LogMode::Quiet => emit(message),
        }
    }

    /// What a binary's `main` returns for the outcome of its command: success, or the error
    /// reported (with its causes) and the exit status `status` gives it.
    pub fn exit<E: AsRef<dyn std::error::Error + 'static>>(
        &self,
        outcome: Result<(), E>,
        status: impl FnOnce(&E) -> u8,
    ) -> std::process::ExitCode {
        match outcome {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                let code = status(&err);
                self.error(&error_text(err.as_ref()), code);
                std::process::ExitCode::from(code)
            }
        }
    }

    /// A structured event (`fields`: a JSON object): in JSON mode one line of it; in human
    /// mode `human` (redrawn in place on a terminal when `transient`; otherwise written when
    /// `keep`, e.g. every 50th training step).
    pub fn event(&self, kind: &str, fields: serde_json::Value, human: &str, transient: bool, keep: bool) {
        match self.mode {
            LogMode::Json => emit(&json_line(kind, fields)),
            LogMode::Quiet => {}
            LogMode::Human if self.tty && transient => redraw(human, keep),
            LogMode::Human if keep => emit(human),
            LogMode::Human => {}
        }
    }

    /// A stage of `total` items starts.
    pub fn start(&self, stage: &str, total: u64) {
        if let Ok(mut s) = self.stage.lock() {
            let now = Instant::now();
            *s = Stage { name: stage.to_string(), total, started: now, drawn: now };
        }
        self.done.store(0, Ordering::Relaxed);
    }

    /// `n` more items of the stage are done.
    pub fn advance(&self, n: u64) {
        let before = self.done.fetch_add(n, Ordering::Relaxed);
        let after = before + n;
        let Ok(mut s) = self.stage.lock() else { return };
        let total = s.total.max(1);
        let elapsed = s.started.elapsed().as_secs_f64();
        let tenth = before * 10 / total != after * 10 / total;
        match self.mode {
            LogMode::Quiet => {}
            LogMode::Json if tenth => emit(&progress_json(&s.name, after, s.total, elapsed)),
            LogMode::Json => {}
            LogMode::Human if self.tty => {
                if s.drawn.elapsed().as_millis() >= 200 || after >= total {
                    s.drawn = Instant::now();
                    let width = 24;
                    let filled = (after.min(total) * width / total) as usize;
                    let bar = format!("{}{}", "#".repeat(filled), ".".repeat(width as usize - filled));
                    redraw(&format!("  [{bar}] {}", status_line(&s.name, after, s.total, elapsed)), false);
                }
            }
            LogMode::Human if tenth => emit(&format!("  {}", status_line(&s.name, after, s.total, elapsed))),
            LogMode::Human => {}
        }
    }

    /// The stage is over.
    pub fn finish(&self) {
        if self.tty
            && let Ok(s) = self.stage.lock()
        {
            let done = self.done.load(Ordering::Relaxed);
            redraw(&format!("  {}", status_line(&s.name, done, s.total, s.started.elapsed().as_secs_f64())), true);
        }
    }
}

/// Forwards what libraries log through `tracing` at warning level and above (dicom-rs
/// reports odd files this way) to `sink` as (level, target, message): without a subscriber
/// those lines vanish. [`forward_library_warnings`] installs one that feeds a [`Reporter`].
pub struct LibraryLog<F> {
    sink: F,
}

impl<F> std::fmt::Debug for LibraryLog<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LibraryLog")
    }
}

impl<F: Fn(&str, &str, &str) + Send + Sync + 'static> LibraryLog<F> {
    pub fn new(sink: F) -> Self {
        Self { sink }
    }
}

/// The fields of an event as text: the message, then `name=value` for the others.
#[derive(Default)]
struct EventText(String);

impl tracing::field::Visit for EventText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let sep = if self.0.is_empty() { "" } else { " " };
        let _ = if field.name() == "message" {
            write!(self.0, "{sep}{value:?}")
        } else {
            write!(self.0, "{sep}{}={value:?}", field.name())
        };
    }
}

impl<F: Fn(&str, &str, &str) + Send + Sync + 'static> tracing::Subscriber for LibraryLog<F> {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = EventText::default();
        event.record(&mut text);
        let m = event.metadata();
        (self.sink)(&m.level().to_string().to_lowercase(), m.target(), &text.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Installs, for the whole process, a [`LibraryLog`] that writes each warning as a line of
/// a [`Reporter`] in `mode` (`{"event": "library", "level", "target", "message"}` in JSON).
/// A second call does nothing.
pub fn forward_library_warnings(mode: LogMode) {
    let reporter = Reporter::new(mode);
    let log = LibraryLog::new(move |level: &str, target: &str, message: &str| {
        let fields = serde_json::json!({ "level": level, "target": target, "message": message });
        reporter.event("library", fields, &format!("{level} from {target}: {message}"), false, true);
    });
    let _ = tracing::subscriber::set_global_default(log);
}

/// `error: <err>` and each of its sources on a `caused by:` line.
pub fn error_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("error: {err}");
    let mut source = err.source();
    while let Some(s) = source {
        text += &format!("\n  caused by: {s}");
        source = s.source();
    }
    text
}

/// Writes `lines` to standard output, one per line, and flushes it. A failed write (a closed
/// pipe, as in `trainer selftest | head`, or a full disk behind a redirection) comes back as
/// an error naming standard output (each binary's I/O error, exit 5), never a panic as with
/// `println!` and never a silent success: a script may read a result from the last line.
pub fn say<S: std::fmt::Display>(lines: impl IntoIterator<Item = S>) -> std::io::Result<()> {
    say_to(&mut std::io::stdout().lock(), lines)
}

/// [`say`] to `out`.
pub fn say_to<S: std::fmt::Display>(out: &mut impl Write, lines: impl IntoIterator<Item = S>) -> std::io::Result<()> {
    let written = lines.into_iter().try_for_each(|line| writeln!(out, "{line}")).and_then(|()| out.flush());
    written.map_err(|e| std::io::Error::new(e.kind(), format!("writing to standard output: {e}")))
}

/// The exit status of a failure: `code` of the first `T` in the chain of `err` and its
/// sources, or 1 (an internal error) when there is none.
pub fn exit_status<T: std::error::Error + 'static>(
    err: &(dyn std::error::Error + 'static),
    code: impl Fn(&T) -> u8,
) -> u8 {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<T>() {
            return code(t);
        }
        next = e.source();
    }
    1
}

fn emit(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// `line` over the current terminal line; `end` moves on to a new line.
fn redraw(line: &str, end: bool) {
    let _ = write!(std::io::stderr().lock(), "\r{line}\x1b[K{}", if end { "\n" } else { "" });
}

/// `{"event": kind, ...fields}` on one line.
fn json_line(kind: &str, fields: serde_json::Value) -> String {
    let mut object = serde_json::Map::new();
    object.insert("event".into(), kind.into());
    if let serde_json::Value::Object(f) = fields {
        object.extend(f);
    }
    serde_json::Value::Object(object).to_string()
}

fn progress_json(stage: &str, done: u64, total: u64, elapsed: f64) -> String {
    json_line("progress", serde_json::json!({ "stage": stage, "done": done, "total": total, "seconds": elapsed }))
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

/// The status text: `stage: done/total (pct%)  rate/s  elapsed  ETA t`.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A library's `tracing` warning reaches the sink with its level, target and fields;
    /// debug lines do not.
    #[test]
    fn library_warnings_are_forwarded() {
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        let log = LibraryLog::new(move |level: &str, target: &str, message: &str| {
            into.lock().unwrap().push(format!("{level}|{target}|{message}"));
        });
        tracing::subscriber::with_default(log, || {
            tracing::warn!(target: "dicom_object::meta", tag = 7, "Unexpected off-group tag");
            tracing::debug!(target: "dicom_object::meta", "not shown");
        });
        assert_eq!(*seen.lock().unwrap(), ["warn|dicom_object::meta|Unexpected off-group tag tag=7"]);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("setting")]
    struct Setting;

    #[derive(Debug, thiserror::Error)]
    #[error("while building")]
    struct Context(#[source] Setting);

    /// The exit status is the first error of the wanted type in the chain, wherever it is; an
    /// error of another type is internal (1).
    #[test]
    fn exit_status_finds_the_error_kind_in_the_chain() {
        let status = |e: &(dyn std::error::Error + 'static)| exit_status::<Setting>(e, |_| 3);
        assert_eq!(status(&Setting), 3);
        assert_eq!(status(&Context(Setting)), 3);
        assert_eq!(status(&std::io::Error::other("disk")), 1);
        assert_eq!(error_text(&Context(Setting)), "error: while building\n  caused by: setting");
    }

    #[test]
    fn status_line_shows_rate_and_eta() {
        assert_eq!(status_line("images", 50, 200, 10.0), "images: 50/200 (25%)  5.0/s  10s  ETA 30s");
        assert_eq!(status_line("images", 200, 200, 100.0), "images: 200/200 (100%)  2.0/s  1m40s");
        assert_eq!(duration(3725.0), "1h02m");
    }

    #[test]
    fn json_lines_carry_the_event_and_its_fields() {
        let line = json_line("step", serde_json::json!({ "step": 3, "loss": 1.5 }));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!((v["event"].as_str(), v["step"].as_u64(), v["loss"].as_f64()), (Some("step"), Some(3), Some(1.5)));
        assert!(!line.contains('\n'));
        let p: serde_json::Value = serde_json::from_str(&progress_json("images", 5, 10, 2.0)).unwrap();
        assert_eq!(
            (p["event"].as_str(), p["stage"].as_str(), p["done"].as_u64()),
            (Some("progress"), Some("images"), Some(5))
        );
    }

    #[test]
    fn an_error_lists_its_causes() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("reading x")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(error_text(&Outer(std::io::Error::other("disk full"))), "error: reading x\n  caused by: disk full");
    }

    #[test]
    fn only_a_terminal_in_human_mode_redraws() {
        assert!(Reporter::with_terminal(LogMode::Human, true).tty);
        assert!(!Reporter::with_terminal(LogMode::Json, true).tty);
        assert!(!Reporter::with_terminal(LogMode::Human, false).tty);
    }
}
