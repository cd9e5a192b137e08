//! The commands but `demo` and `compare-reference`: each resolves its arguments into the
//! library's settings, calls the library and prints what it made.

use std::path::{Path, PathBuf};

use cxr_dataset::features::EhrSelection;
use trainer::experiment::{self, PairedBootstrap, Setup};
use trainer::linear::{self, Source, load_encoder, random_encoder};
use trainer::model::VitPreset;
use trainer::pretrain::pretrain_with;
use trainer::report;

use crate::cli::{AblateArgs, BenchArgs, LinearEvalArgs, PairedDeltaArgs, PretrainArgs, RunArgs};
use crate::pooled::{per_pair_table, verdict};
use crate::session::{Session, print_table};

/// `trainer pretrain`.
pub(crate) fn pretrain(s: &Session, args: &PretrainArgs) -> anyhow::Result<()> {
    let cfg = args.resolve(s.precision)?;
    s.line(&format!(
        "pretraining {} ({} preset), ehr {}, into {}",
        cfg.vit.name(),
        cfg.preset,
        cfg.ehr.spelling(),
        args.out.display()
    ));
    let r = pretrain_with(&cfg, &args.dataset, &args.out, &s.devices, args.resume, &mut s.step_printer())?;
    say!(
        "{} steps, {} images in {:.1} s ({:.1} images/s); loss {:.4} -> {:.4}; metrics in {}",
        r.steps,
        r.images,
        r.seconds,
        r.images as f64 / r.seconds,
        r.first_loss,
        r.last_loss,
        r.run.join("metrics.jsonl").display()
    );
    Ok(())
}

/// `trainer linear-eval`: a run's encoder, a random one or a baseline, probed.
pub(crate) fn linear_eval(s: &Session, args: &LinearEvalArgs) -> anyhow::Result<()> {
    let device = s.device();
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
        linear::linear_eval(&cfg, source, &args.dataset, &args.eval.test_dataset, &out, &cache, &device, &mut |l| {
            s.line(l)
        })?;
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
    say!("{}", r.result.markdown());
    say!("results: {}", out.join("results.json").display());
    say!("report: {}", out.join("report.html").display());
    Ok(())
}

/// `trainer run`.
pub(crate) fn run(s: &Session, args: &RunArgs) -> anyhow::Result<()> {
    let cfg = args.train.resolve(&EhrSelection::none(), s.precision)?;
    let eval = args.eval.resolve(cfg.views.global_size, cfg.seed)?;
    let setup = Setup { dataset: &args.dataset, eval: &eval, external: &args.eval.test_dataset, devices: &s.devices };
    let r = experiment::run(&args.ehr, &cfg, &setup, &args.out, &mut s.step_printer(), &mut |l| s.line(l))?;
    say!(
        "ehr {}: test macro AUROC {}",
        r.ehr,
        r.macro_auroc.map_or("undefined".into(), |e| format!("{:.4} ({:.4}-{:.4})", e.value, e.low, e.high))
    );
    say!("report: {}", args.out.join("report.html").display());
    Ok(())
}

/// `trainer ablate`.
pub(crate) fn ablate(s: &Session, args: &AblateArgs) -> anyhow::Result<()> {
    let cfg = args.train.resolve(&EhrSelection::none(), s.precision)?;
    let eval = args.eval.resolve(cfg.views.global_size, cfg.seed)?;
    let arms = if args.choices.is_empty() { args.grid.arms() } else { args.choices.clone() };
    let setup = Setup { dataset: &args.dataset, eval: &eval, external: &args.eval.test_dataset, devices: &s.devices };
    let r = experiment::ablate(&cfg, &arms, &setup, &args.out, &mut s.step_printer(), &mut |l| s.line(l))?;
    print_table(&r, &args.out)?;
    Ok(())
}

/// `trainer import-torch`.
pub(crate) fn import(s: &Session, file: &Path, model: VitPreset, prefix: &str, out: &Path) -> anyhow::Result<()> {
    let vit = model.config();
    let i = trainer::import::import_torch(file, &vit, prefix, out, &s.device())?;
    say!(
        "imported {} encoder tensors ({prefix}*) from {} (sha256 {}); {} other tensors not read",
        i.tensors,
        file.display(),
        &i.sha256[..16],
        i.other
    );
    say!("next: trainer linear-eval --checkpoint {} --dataset OUT/<version>", out.display());
    Ok(())
}

/// `trainer bench` on the main device.
pub(crate) fn bench(s: &Session, args: &BenchArgs) -> anyhow::Result<()> {
    let mut pretrain = args.train.resolve(&args.ehr, s.precision)?;
    if args.train.batch_size.is_none() {
        pretrain.batch_size = 8;
    }
    let cfg =
        trainer::bench::BenchConfig { pretrain, image_side: args.image_side, warmup: args.warmup, steps: args.steps };
    let total = args.warmup + args.steps;
    let backend = s.backends.first().copied().unwrap_or_default();
    let r = trainer::bench::bench(&cfg, &s.device(), &mut |k| {
        let line = format!("step {}/{total}{}", k + 1, if k < args.warmup { " (warmup)" } else { "" });
        s.log.event("bench-step", serde_json::json!({ "step": k + 1, "total": total }), &line, true, k + 1 == total);
    })?;
    let t = r.seconds;
    say!(
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
    say!(
        "median seconds over {} steps: views {:.3} (worker thread), ema {:.3}, forward {:.3}, backward {:.3}, optimizer {:.3}, step {:.3}",
        r.steps,
        t.views,
        t.ema,
        t.forward,
        t.backward,
        t.optimizer,
        t.step
    );
    let rss = r.peak_rss_mb.map_or_else(|| "unknown".into(), |m| format!("{m:.0} MB"));
    say!("{:.2} images/s (model step), peak RSS {rss}", r.images_per_second);
    if let Some(path) = &args.json {
        fs_err::write(path, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(())
}

/// `trainer selftest`: every golden case on the main device, a line each; fails (exit 1)
/// naming the cases that did not pass.
pub(crate) fn selftest(s: &Session, golden: Option<PathBuf>) -> anyhow::Result<()> {
    let precision = s.precision;
    use trainer::selftest::{self, Golden};
    let golden = match golden {
        Some(dir) if !dir.is_dir() => anyhow::bail!(trainer::Error::Input {
            path: dir,
            message: "no such folder of golden cases (--golden)".into()
        }),
        Some(dir) => Golden::Dir(dir),
        None => Golden::Shipped,
    };
    let backend = s.backends.first().copied().unwrap_or_default();
    let plain = backend.device(precision)?;
    let tol = selftest::Tolerances::for_precision(precision);
    let widened = if precision == trainer::backend::Precision::F32 {
        ""
    } else {
        "; wider for a case that records float32_vs_float64"
    };
    say!(
        "{} ({precision:?}): {} golden cases; tolerances: outputs {:.0e}, losses {:.0e}, gradients {:.0e} (relative{widened})",
        backend.label(),
        selftest::CASES.len(),
        tol.output,
        tol.loss,
        tol.gradient
    );
    let mut failed = Vec::new();
    for name in selftest::CASES {
        let result = selftest::run(&golden, name, &plain, &s.device(), precision);
        say!("{}", result.line());
        if !result.passed() {
            failed.push(name);
        }
    }
    if failed.is_empty() {
        say!("all {} cases passed", selftest::CASES.len());
        Ok(())
    } else {
        anyhow::bail!("selftest: {} of {} cases failed: {}", failed.len(), selftest::CASES.len(), failed.join(", "))
    }
}

/// `trainer ehr-columns`: the columns of a selection, in a given dataset or in any.
pub(crate) fn ehr_columns(ehr: &EhrSelection, dataset: Option<&Path>) -> anyhow::Result<()> {
    let (columns, optional) = match dataset {
        Some(dir) => (trainer::data::Dataset::open(dir)?.ehr_columns(ehr)?, Vec::new()),
        None => {
            let optional: Vec<&str> = ehr.variables().iter().flat_map(|v| v.optional_columns()).copied().collect();
            (ehr.columns(), optional)
        }
    };
    say!("ehr: {ehr}");
    say!("width: {}", columns.len());
    for c in &columns {
        say!("{c}");
    }
    if !optional.is_empty() {
        say!("(plus, in a dataset whose build made them: {}; pass --dataset to see)", optional.join(", "));
    }
    Ok(())
}

/// `trainer paired-delta`.
pub(crate) fn paired_delta(args: &PairedDeltaArgs) -> anyhow::Result<()> {
    if args.a.len() != args.b.len() {
        let (a, b) = (args.a.len(), args.b.len());
        return Err(trainer::Error::Config(format!("--a was given {a} times and --b {b}: one of each per pair")).into());
    }
    if !(args.margin > 0.0 && args.margin < 1.0) {
        return Err(trainer::Error::Config(format!("--margin {}: expected a value in (0, 1)", args.margin)).into());
    }
    let pairs: Vec<(String, PathBuf, PathBuf)> = args
        .a
        .iter()
        .zip(&args.b)
        .enumerate()
        .map(|(k, (a, b))| (format!("pair {}", k + 1), a.clone(), b.clone()))
        .collect();
    let bootstrap =
        PairedBootstrap { resamples: args.bootstrap, unit: args.bootstrap_unit, seed: args.seed, margin: args.margin };
    let p = experiment::pooled_delta(&pairs, bootstrap)?;
    for (name, a, b) in &pairs {
        say!("{name}: {} minus {}", b.display(), a.display());
    }
    say!("{}", per_pair_table(&[("b minus a", &p)]));
    say!("b vs a: {}", verdict(&p, "b", "pairs"));
    say!("{}", p.intervals);
    if let Some(path) = &args.json {
        fs_err::write(path, serde_json::to_string_pretty(&p)?)?;
    }
    Ok(())
}
