//! The `trainer` command line: parses arguments, picks the device, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use burn::tensor::Device;
use clap::Parser;
use cxr_dataset::features::EhrSelection;
use cxr_dataset::log::{LogMode, Reporter};
use trainer::backend::Backend;
use trainer::experiment::{self, RunSummary, Setup};
use trainer::linear::{Source, linear_eval, load_encoder, random_encoder};
use trainer::model::VitPreset;
use trainer::parallel::Devices;
use trainer::pretrain::{StepMetrics, pretrain_with};
use trainer::report;

mod cli;
mod compare_command;
mod demo_command;
use cli::{AblateArgs, BenchArgs, Cli, Command, LinearEvalArgs, PretrainArgs, RunArgs};
use compare_command::compare;
use demo_command::demo;
/// See `mimalloc` in the workspace manifest.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
/// Reports pretraining progress through the log: a status line on a terminal, a line every
/// 50 steps otherwise, a `step` event per step in JSON.
fn step_printer() -> impl FnMut(&StepMetrics, usize) {
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
        log().event("step", fields, &line, true, last || (m.step + 1).is_multiple_of(50));
        if last {
            started = None;
            first_step = None;
        }
    }
}

/// The run's reporter (`--log`), set once by `run`.
static LOG: std::sync::OnceLock<Reporter> = std::sync::OnceLock::new();

fn log() -> &'static Reporter {
    LOG.get_or_init(|| Reporter::new(LogMode::Human))
}

fn log_line(line: &str) {
    log().line(line);
}

/// The training devices (with autodiff) of `--device`, `--precision` and `--all-reduce`, set
/// once by `run`.
static DEVICES: std::sync::OnceLock<Devices> = std::sync::OnceLock::new();

fn devices() -> Devices {
    DEVICES.get().cloned().unwrap_or_else(|| (&Device::flex().autodiff()).into())
}

/// The main training device (evaluation, import, bench).
fn device() -> Device {
    devices().main().clone()
}

fn print_table(summaries: &[RunSummary], dir: &std::path::Path) -> anyhow::Result<()> {
    let md = fs_err::read_to_string(dir.join("ablation.md"))?;
    println!("{md}");
    for s in summaries {
        println!("{}: {}/report.html", s.ehr, s.run);
    }
    println!("comparison: {}", dir.join("ablation.html").display());
    Ok(())
}
fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = LOG.set(Reporter::new(cli.log));
    let _ = DEVICES.set(Devices::parse(&cli.device, cli.precision, cli.all_reduce).context("--device, --precision")?);
    match cli.command {
        Command::Pretrain(args) => pretrain_command(&args),
        Command::LinearEval(args) => linear_eval_command(&args),
        Command::Run(args) => run_command(&args),
        Command::Ablate(args) => ablate_command(&args),
        Command::Demo(args) => demo(&args),
        Command::CompareReference(args) => compare(&args),
        Command::ImportTorch { file, model, prefix, out } => import_command(&file, model, &prefix, &out),
        Command::Bench(args) => bench_command(&args, &cli.device),
        Command::EhrColumns { ehr } => ehr_columns_command(&ehr),
    }
}

/// `trainer pretrain`.
fn pretrain_command(args: &PretrainArgs) -> anyhow::Result<()> {
    let cfg = args.resolve()?;
    log_line(&format!(
        "pretraining {} ({} preset), ehr {}, into {}",
        cfg.vit.name(),
        cfg.preset,
        cfg.ehr,
        args.out.display()
    ));
    let s = pretrain_with(&cfg, &args.dataset, &args.out, &devices(), args.resume, &mut step_printer())?;
    println!(
        "{} steps, {} images in {:.1} s ({:.1} images/s); loss {:.4} -> {:.4}; metrics in {}",
        s.steps,
        s.images,
        s.seconds,
        s.images as f64 / s.seconds,
        s.first_loss,
        s.last_loss,
        s.run.join("metrics.jsonl").display()
    );
    Ok(())
}

/// `trainer linear-eval`: a run's encoder, a random one or a baseline, probed.
fn linear_eval_command(args: &LinearEvalArgs) -> anyhow::Result<()> {
    let device = device();
    let (source, cache, crop): (Source, PathBuf, usize) = match (&args.checkpoint, &args.random_init, &args.baseline) {
        (Some(run), _, _) => {
            let e = load_encoder(run, args.eval.select, &device)?;
            let crop = e.crop;
            (e.into(), run.join("features"), crop)
        }
        (None, Some(model), _) => {
            let vit = model.config();
            let crop = vit.image_size;
            (random_encoder(&vit, args.seed, &device).into(), PathBuf::new(), crop)
        }
        (None, None, Some(b)) => (b.source(), PathBuf::new(), 224),
        (None, None, None) => {
            return Err(
                trainer::Error::Config("give --checkpoint RUN, --random-init MODEL or --baseline NAME".into()).into()
            );
        }
    };
    let cfg = args.eval.resolve(crop, args.seed)?;
    let out = match (&args.out, &args.checkpoint) {
        (Some(o), _) => o.clone(),
        (None, Some(run)) => {
            let kind = trainer::data::Dataset::open(&args.dataset)?.kind;
            let ft = if cfg.finetune { "-finetune" } else { "" };
            run.join(format!("linear-eval-{kind}-{}{ft}", cfg.fraction))
        }
        (None, None) => {
            return Err(trainer::Error::Config("--out is required with --random-init and --baseline".into()).into());
        }
    };
    let cache = if cache.as_os_str().is_empty() { out.join("features") } else { cache };
    let r =
        linear_eval(&cfg, source, &args.dataset, &args.eval.test_dataset, &out, &cache, &device, &mut |l| log_line(l))?;
    report::linear_eval_report(&out, &r.result, &r.history, &r.test)?;
    let figures = [
        ("probe-curves.svg", "Linear probe: loss and validation AUROC"),
        ("auroc.svg", "Test AUROC per label (95% CI)"),
        ("roc.svg", "ROC curves"),
        ("embedding.svg", "Test embeddings (PCA)"),
        ("tsne.svg", "Test embeddings (t-SNE)"),
        ("external-0-auroc.svg", "External test AUROC per label"),
        ("external-1-auroc.svg", "External test AUROC per label"),
    ];
    report::page(&out, "report.html", "Linear evaluation", &report::linear_eval_sections(&r.result), &figures)?;
    println!("{}", r.result.markdown());
    println!("results: {}", out.join("results.json").display());
    println!("report: {}", out.join("report.html").display());
    Ok(())
}

/// `trainer run`.
fn run_command(args: &RunArgs) -> anyhow::Result<()> {
    let cfg = args.train.resolve("none")?;
    let eval = args.eval.resolve(cfg.views.global_size, cfg.seed)?;
    let devices = devices();
    let setup = Setup { dataset: &args.dataset, eval: &eval, external: &args.eval.test_dataset, devices: &devices };
    let s = experiment::run(&args.ehr, &cfg, &setup, &args.out, &mut step_printer(), &mut |l| log_line(l))?;
    println!(
        "ehr {}: test macro AUROC {}",
        s.ehr,
        s.macro_auroc.map_or("undefined".into(), |e| format!("{:.4} ({:.4}-{:.4})", e.value, e.low, e.high))
    );
    println!("report: {}", args.out.join("report.html").display());
    Ok(())
}

/// `trainer ablate`.
fn ablate_command(args: &AblateArgs) -> anyhow::Result<()> {
    let cfg = args.train.resolve("none")?;
    let eval = args.eval.resolve(cfg.views.global_size, cfg.seed)?;
    let arms = if args.choices.is_empty() { args.grid.arms() } else { args.choices.clone() };
    let devices = devices();
    let setup = Setup { dataset: &args.dataset, eval: &eval, external: &args.eval.test_dataset, devices: &devices };
    let s = experiment::ablate(&cfg, &arms, &setup, &args.out, &mut step_printer(), &mut |l| log_line(l))?;
    print_table(&s, &args.out)?;
    Ok(())
}

/// `trainer import-torch`.
fn import_command(file: &std::path::Path, model: VitPreset, prefix: &str, out: &std::path::Path) -> anyhow::Result<()> {
    let vit = model.config();
    let i = trainer::import::import_torch(file, &vit, prefix, out, &device())?;
    println!(
        "imported {} encoder tensors ({prefix}*) from {} (sha256 {}); {} other tensors not read",
        i.tensors,
        file.display(),
        &i.sha256[..16],
        i.other
    );
    println!("next: trainer linear-eval --checkpoint {} --dataset OUT/<version>", out.display());
    Ok(())
}

/// `trainer bench` on the main device of `device_list`.
fn bench_command(args: &BenchArgs, device_list: &str) -> anyhow::Result<()> {
    let mut pretrain = args.train.resolve(&args.ehr)?;
    if args.train.batch_size.is_none() {
        pretrain.batch_size = 8;
    }
    let cfg =
        trainer::bench::BenchConfig { pretrain, image_side: args.image_side, warmup: args.warmup, steps: args.steps };
    let total = args.warmup + args.steps;
    let main_device = device_list.split(',').next().unwrap_or_default().trim();
    let backend: Backend = main_device.parse().context("--device")?;
    let r = trainer::bench::bench(&cfg, &device(), &mut |s| {
        let line = format!("step {}/{total}{}", s + 1, if s < args.warmup { " (warmup)" } else { "" });
        log().event("bench-step", serde_json::json!({ "step": s + 1, "total": total }), &line, true, s + 1 == total);
    })?;
    let s = r.seconds;
    println!(
        "{}, {} threads: {}, batch {}, views 2x{} + {}x{}, EHR width {}",
        backend.label(),
        r.threads,
        r.model,
        r.batch_size,
        r.global_size,
        r.focal_views,
        r.focal_size,
        r.ehr_width
    );
    println!(
        "median seconds over {} steps: views {:.3} (worker thread), ema {:.3}, forward {:.3}, backward {:.3}, optimizer {:.3}, step {:.3}",
        r.steps, s.views, s.ema, s.forward, s.backward, s.optimizer, s.step
    );
    let rss = r.peak_rss_mb.map_or_else(|| "unknown".into(), |m| format!("{m:.0} MB"));
    println!("{:.2} images/s (model step), peak RSS {rss}", r.images_per_second);
    if let Some(path) = &args.json {
        fs_err::write(path, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(())
}

/// `trainer ehr-columns`.
fn ehr_columns_command(ehr: &str) -> anyhow::Result<()> {
    let sel: EhrSelection = ehr.parse().map_err(|e| trainer::Error::Config(format!("--ehr {ehr}: {e}")))?;
    println!("ehr: {sel}");
    println!("width: {}", sel.width());
    for c in sel.columns() {
        println!("{c}");
    }
    Ok(())
}

/// The exit status of a failed run: the kind of the first trainer error in the chain (1 for
/// anything else).
fn exit_code(err: &anyhow::Error) -> u8 {
    cxr_dataset::log::exit_status(err.as_ref(), trainer::Error::exit_code)
}

fn main() -> ExitCode {
    trainer::memory::keep_freed_memory();
    // The command runs first: it sets the reporter's mode (`--log`).
    let outcome = run(Cli::parse());
    log().exit(outcome, exit_code)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Failures exit with their kind's status: a setting 3, a missing dataset 4, a bad flag
    /// value is clap's 2.
    #[test]
    fn failures_exit_with_their_kinds_status() {
        let status = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("trainer").chain(args.iter().copied())).unwrap();
            exit_code(&run(cli).unwrap_err())
        };
        let dir = std::env::temp_dir().join(format!("trainer-exit-{}", std::process::id()));
        let out = dir.to_str().unwrap();
        assert_eq!(status(&["pretrain", "--dataset", out, "--out", out, "--batch-size", "0"]), 3);
        assert_eq!(status(&["pretrain", "--dataset", out, "--out", out, "--ehr", "nonsense"]), 3);
        assert_eq!(status(&["pretrain", "--dataset", out, "--out", out]), 4);
        let bad = Cli::try_parse_from(["trainer", "--precision", "f64", "pretrain", "--dataset", out, "--out", out]);
        assert_eq!(bad.unwrap_err().exit_code(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
