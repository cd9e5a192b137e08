//! What every command is given: the reporter of `--log` and the training devices of
//! `--device`, `--precision` and `--all-reduce`, resolved once from the arguments.

use burn::tensor::Device;
use cxr_dataset::log::Reporter;
use trainer::backend::{Backend, Precision};
use trainer::experiment::RunSummary;
use trainer::parallel::Devices;
use trainer::pretrain::StepMetrics;

/// A command's reporter and devices.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) log: Reporter,
    /// The training devices (with autodiff), the first the main one.
    pub(crate) devices: Devices,
    /// What `--device` named, in order.
    pub(crate) backends: Vec<Backend>,
    /// `--precision`: the float type the networks compute in.
    pub(crate) precision: Precision,
}

impl Session {
    /// A log line (standard error, as `--log` says).
    pub(crate) fn line(&self, line: &str) {
        self.log.line(line);
    }

    /// The main training device (evaluation, import, bench).
    pub(crate) fn device(&self) -> Device {
        self.devices.main().clone()
    }

    /// Reports pretraining progress through the log: a status line on a terminal, a line
    /// every 50 steps otherwise, a `step` event per step in JSON.
    pub(crate) fn step_printer(&self) -> impl FnMut(&StepMetrics, usize) + '_ {
        let mut started = None;
        let mut first_step = None;
        move |m: &StepMetrics, stop: usize| {
            let t0 = *started.get_or_insert_with(std::time::Instant::now);
            let first = *first_step.get_or_insert(m.step);
            let done = m.step + 1 - first;
            let rate = done as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            let eta = (stop - m.step - 1) as f64 / rate.max(1e-9);
            let line = format!(
                "step {}/{stop}  epoch {}  loss {:.4} (ce {:.4}, me-max {:.4})  lr {:.2e}  {:.2} images/s  ETA {:.0} s",
                m.step + 1,
                m.epoch,
                m.loss,
                m.cross_entropy,
                m.me_max,
                m.lr,
                m.images_per_second,
                eta
            );
            let mut fields =
                serde_json::to_value(m).unwrap_or_else(|e| serde_json::json!({ "unserialisable": e.to_string() }));
            fields["stop"] = stop.into();
            let last = m.step + 1 == stop;
            self.log.event("step", fields, &line, true, last || (m.step + 1).is_multiple_of(50));
            if last {
                started = None;
                first_step = None;
            }
        }
    }
}

/// Prints an ablation's table (`dir/ablation.md`) and where its pages are.
pub(crate) fn print_table(summaries: &[RunSummary], dir: &std::path::Path) -> anyhow::Result<()> {
    let md = fs_err::read_to_string(dir.join("ablation.md"))?;
    say!("{md}");
    for s in summaries {
        say!("{}: {}/report.html", s.ehr, s.run);
    }
    say!("comparison: {}", dir.join("ablation.html").display());
    Ok(())
}
