//! The `trainer` command line: parses arguments, picks the device, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use burn::tensor::Device;
use clap::{Args, Parser, Subcommand};
use cxr_dataset::features::EhrSelection;
use trainer::backend::{Backend, Precision};
use trainer::data::ImageSource;
use trainer::experiment::{self, RunSummary};
use trainer::linear::{LinearEvalConfig, ProbeKind, Source, Uncertain, linear_eval, load_encoder, random_encoder};
use trainer::model::VitConfig;
use trainer::parallel::{AllReduce, Devices};
use trainer::pretrain::{CheckpointChoice, Preset, PretrainConfig, PretrainSplit, StepMetrics, pretrain_with};
use trainer::report;
use trainer::transform::ProbeTransform;

mod compare_command;
mod demo_command;
use compare_command::{CompareArgs, compare};
use demo_command::{DemoArgs, demo};

/// The exit statuses, in `--help` (see `trainer::Error::exit_code`).
const EXIT_CODES: &str = "Exit status: 0 done; 1 internal error; 2 usage (unknown flag or value); 3 invalid \
setting; 4 unusable input (dataset, run folder, config or results file, weights, model record); 5 I/O; 6 device \
(driver, NCCL, a failed data-parallel step); 7 the reference PyTorch code failed.";

/// See `mimalloc` in the workspace manifest.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// EHR-augmented MSN pretraining and linear evaluation of Vision Transformers.
#[derive(Debug, Parser)]
#[command(name = "trainer", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Where the model runs: cpu (burn-flex), or, in a build with that feature, wgpu (a GPU
    /// through Vulkan, Metal or DX12; `--features wgpu`), cuda or cuda:N (an NVIDIA GPU through
    /// burn-cuda; `--features cuda`) or ndarray (burn-ndarray on the CPU; `--features ndarray`,
    /// or `openblas` for its matrix products through OpenBLAS). A comma-separated list
    /// (`cuda:0,cuda:1,...`) pretrains data-parallel: each batch (--batch-size is the global
    /// batch) split over the devices, gradients summed; evaluation runs on the first device.
    /// `cpu,cpu` runs that code on one CPU (a check; small models can also train faster so).
    #[arg(long, visible_alias = "devices", global = true, default_value = "cpu")]
    device: String,
    /// How the devices of a --device list exchange their sums: nccl (CUDA GPUs; needs
    /// libnccl.so.2 at run time; the default for a list of CUDA GPUs) or host (through host
    /// memory; every backend, the default otherwise).
    #[arg(long, global = true, value_enum)]
    all_reduce: Option<AllReduce>,
    /// Float type of parameters, activations and gradients: f32, or half precision (f16,
    /// bf16) on --device wgpu or cuda.
    #[arg(long, global = true, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pretrain a ViT with (EHR-augmented) MSN on a dataset built by `pipeline build`.
    Pretrain(Box<PretrainArgs>),
    /// Linear evaluation of a pretrained (or random) encoder, or of a baseline: by default a
    /// logistic regression per label on standardised frozen features, its L2 strength chosen
    /// on validation macro AUROC (or --probe sgd: the reference's Adam probe with early
    /// stopping; fine-tuning); test AUROC/AP with bootstrap CIs, external test sets, figures
    /// and report.html.
    LinearEval(Box<LinearEvalArgs>),
    /// Pretrain, then linear-evaluate, into one run folder with its report.html (resumable).
    Run(Box<RunArgs>),
    /// Run vanilla MSN and every EHR choice of a grid with the same seed and budget
    /// (resumable), then write the comparison table (Markdown, CSV), chart and page.
    Ablate(Box<AblateArgs>),
    /// The whole story on a small synthetic archive: generate it, build the dataset, pretrain
    /// a vit-micro with and without EHR, linear-evaluate both and three baselines (a random
    /// encoder, the pixels at 32x32, the EHR vector alone), print the table, the verdicts and
    /// the report.
    Demo(DemoArgs),
    /// Learning parity with the reference PyTorch MSN: pretrain both on the dataset with the
    /// same config and seeds, probe each at 0, 1/8, 1/4, 1/2 and all of the budget, and write
    /// the paired comparison table, the probe AUROC and loss-curve figures.
    CompareReference(Box<CompareArgs>),
    /// Import a PyTorch checkpoint of the reference code (a Lightning .ckpt whose state_dict
    /// holds the target encoder as `backbone.*`, torchvision's ViT names; or .pt/.pth, or
    /// .safetensors) as a run folder for `linear-eval --checkpoint`.
    ImportTorch {
        /// The checkpoint file.
        file: PathBuf,
        /// The ViT it holds.
        #[arg(long, default_value = "vit-tiny", value_parser = VitConfig::PRESETS)]
        model: String,
        /// Prefix of the encoder's tensors.
        #[arg(long, default_value = "backbone.")]
        prefix: String,
        /// The run folder to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Time pretraining steps on synthetic images in memory (no dataset): views, EMA,
    /// forward, backward and optimizer, median seconds each, images/s and peak memory. The
    /// PyTorch counterpart is trainer/bench/torch_msn_step.py; trainer/bench/compare_torch.py
    /// runs both back to back and prints the ratio.
    Bench(Box<BenchArgs>),
    /// Print the dataset columns an --ehr choice feeds to the model, and the EHR vector width.
    EhrColumns {
        /// Groups (demographics, scan, stay) and/or variables (sex, age-norm, age-bins5,
        /// age-bins10, view, orientation, mortality, icu), comma-separated; `none` = vanilla MSN.
        #[arg(long, default_value = "demographics,scan,stay")]
        ehr: String,
    },
}

#[derive(Debug, Args)]
struct PretrainArgs {
    /// The dataset version folder, OUT/<version> (verified before use).
    #[arg(long)]
    dataset: PathBuf,
    /// Run folder: config.json, metrics.jsonl and checkpoints go there.
    #[arg(long)]
    out: PathBuf,
    /// EHR groups and/or variables fused into the anchor branch (see `ehr-columns`); `none`
    /// is vanilla MSN.
    #[arg(long, default_value = "demographics,scan,stay")]
    ehr: String,
    /// Continue the run in --out from its last checkpoint, with its config.json (only
    /// --max-steps may change).
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    train: TrainOpts,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// EHR groups and/or variables fused into the anchor branch; `none` is vanilla MSN.
    #[arg(long, default_value = "demographics,scan,stay")]
    ehr: String,
    /// Timed steps (the medians are printed).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Side of the synthetic source images (the pipeline's shards are 256 by default).
    #[arg(long, default_value_t = 256)]
    image_side: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// The model and its settings; the batch size defaults to 8 here.
    #[command(flatten)]
    train: TrainOpts,
}

/// Pretraining settings shared by `pretrain`, `run`, `ablate`, `bench` and `demo`.
#[derive(Debug, Args)]
pub(crate) struct TrainOpts {
    /// Backbone: vit-tiny (192 wide, 6 heads, the paper's), vit-small, vit-tiny-deit (3 heads),
    /// vit-micro (96 wide, 4 layers, 64x64 input: demos and laptops).
    #[arg(long, default_value = "vit-tiny", value_parser = VitConfig::PRESETS)]
    model: String,
    /// The configuration the other settings start from.
    #[arg(long, value_enum, default_value_t = Preset::Paper)]
    preset: Preset,
    /// A JSON file of config fields (a previous run's whole config.json, or only the fields to
    /// change, nested as in config.json, e.g. {"lr": 0.002, "views": {"focal_views": 4}}):
    /// they replace those of --preset and --model; the other flags override the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Pretraining epochs (100 in the paper).
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of initialisation, views, masks and the probe (24 by default).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop pretraining after this many steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// The images pretrained on [default: train].
    #[arg(long, value_enum)]
    pretrain_split: Option<PretrainSplit>,
    /// Write a checkpoint every this many steps (and at each epoch end and when stopping).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Side of the target and anchor views (the model's input size: 224 for vit-tiny) and of
    /// the focal views (96).
    #[arg(long)]
    global_size: Option<usize>,
    #[arg(long)]
    focal_size: Option<usize>,
    /// Where the pretraining images are held [default: auto].
    #[arg(long, value_enum)]
    images: Option<ImageSource>,
}

impl TrainOpts {
    pub(crate) fn resolve(&self, ehr: &str) -> anyhow::Result<PretrainConfig> {
        let vit =
            VitConfig::preset(&self.model).ok_or_else(|| trainer::Error::Config(format!("--model {}", self.model)))?;
        let base = self.preset.config(vit, ehr);
        let mut cfg = match &self.config {
            Some(path) => base.with_overrides_from(path)?,
            None => base,
        };
        cfg.ehr = ehr.to_string();
        if let Some(v) = self.epochs {
            cfg.epochs = v;
        }
        if let Some(v) = self.batch_size {
            cfg.batch_size = v;
        }
        if let Some(v) = self.lr {
            cfg.lr = v;
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if self.max_steps.is_some() {
            cfg.max_steps = self.max_steps;
        }
        if let Some(v) = self.checkpoint_every {
            cfg.checkpoint_every = v;
        }
        if let Some(v) = self.pretrain_split {
            cfg.pretrain_split = v;
        }
        if let Some(v) = self.global_size {
            cfg.views.global_size = v;
        }
        if let Some(v) = self.focal_size {
            cfg.views.focal_size = v;
        }
        if let Some(v) = self.images {
            cfg.images = v;
        }
        if cfg.batch_size == 0 || cfg.epochs == 0 {
            return Err(trainer::Error::Config("--batch-size and --epochs must be at least 1".into()).into());
        }
        if cfg.views.global_size % cfg.vit.patch_size != 0 || cfg.views.focal_size % cfg.vit.patch_size != 0 {
            return Err(trainer::Error::Config(format!(
                "view sizes must be multiples of the patch size {}",
                cfg.vit.patch_size
            ))
            .into());
        }
        Ok(cfg)
    }
}

impl PretrainArgs {
    fn resolve(&self) -> anyhow::Result<PretrainConfig> {
        if self.resume {
            let path = self.out.join("config.json");
            let mut cfg = PretrainConfig::read(&path)?;
            cfg.max_steps = self.train.max_steps;
            return Ok(cfg);
        }
        self.train.resolve(&self.ehr)
    }
}

/// Linear-evaluation settings shared by `linear-eval`, `run`, `ablate` and `demo`.
#[derive(Debug, Args)]
pub(crate) struct EvalOpts {
    /// The classifier on frozen features: logistic (a logistic regression per label on
    /// standardised features, solved to convergence, L2 strength chosen on validation macro
    /// AUROC) or sgd (a linear head trained by Adam with early stopping, as the reference).
    /// --finetune and --no-cache always train by sgd.
    #[arg(long, value_enum, default_value_t = ProbeKind::Logistic)]
    probe: ProbeKind,
    /// The pretraining checkpoint evaluated: lowest-loss (the end of the epoch with the lowest
    /// mean training loss, as the reference; the last checkpoint when a run has none) or last.
    #[arg(long, value_enum, default_value_t = CheckpointChoice::LowestLoss)]
    select: CheckpointChoice,
    /// --probe sgd: train on the raw features instead of standardised ones.
    #[arg(long)]
    no_standardize: bool,
    /// Fraction of the training images the probe trains on (0.01, 0.05, 0.1, 1.0 in the paper),
    /// sampled at random with the seed.
    #[arg(long, default_value_t = 1.0)]
    fraction: f64,
    /// Fine-tune the encoder with the probe instead of freezing it (slow: every epoch runs the
    /// encoder forward and backward on augmented images).
    #[arg(long)]
    finetune: bool,
    /// With a frozen encoder, train on augmented images (the reference probe's flips and
    /// affine maps) instead of cached eval-transform features.
    #[arg(long)]
    no_cache: bool,
    /// sgd: most probe epochs (early stopping on validation macro AUROC usually ends sooner).
    #[arg(long, default_value_t = 100)]
    probe_epochs: usize,
    /// sgd: probe epochs without a better validation macro AUROC before stopping.
    #[arg(long, default_value_t = 5)]
    patience: usize,
    /// sgd: probe batch size.
    #[arg(long, default_value_t = 64)]
    probe_batch_size: usize,
    /// sgd: Adam learning rate of the probe (cosine schedule).
    #[arg(long, default_value_t = 1e-4)]
    probe_lr: f64,
    /// What uncertain labels become.
    #[arg(long, value_enum, default_value_t = Uncertain::Dataset)]
    uncertain: Uncertain,
    /// Bootstrap resamples of the test set for the 95% intervals.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Probe input side (default: the pretraining view size, 224 for vit-tiny) and the side
    /// images are resized to before the centre crop (default: crop * 256 / 224).
    #[arg(long)]
    crop: Option<usize>,
    #[arg(long)]
    resize: Option<usize>,
    /// Another dataset built by `pipeline build-eval` (e.g. CheXpert) to test the probe on,
    /// labels matched by name; repeatable.
    #[arg(long, value_name = "DIR")]
    test_dataset: Vec<PathBuf>,
}

impl EvalOpts {
    pub(crate) fn resolve(&self, default_crop: usize, seed: u64) -> anyhow::Result<LinearEvalConfig> {
        let crop = self.crop.unwrap_or(default_crop);
        let mut t = ProbeTransform::for_crop(crop);
        if let Some(r) = self.resize {
            t.resize = r;
        }
        Ok(LinearEvalConfig::new(t)
            .with_probe(self.probe)
            .with_standardize(!self.no_standardize)
            .with_checkpoint(self.select)
            .with_fraction(self.fraction)
            .with_finetune(self.finetune)
            .with_cache_features(!self.no_cache)
            .with_epochs(self.probe_epochs)
            .with_patience(self.patience)
            .with_batch_size(self.probe_batch_size)
            .with_lr(self.probe_lr)
            .with_uncertain(self.uncertain)
            .with_bootstrap(self.bootstrap)
            .with_seed(seed))
    }
}

#[derive(Debug, Args)]
struct LinearEvalArgs {
    /// A pretraining run folder: the target (EMA) encoder of its checkpoint chosen by
    /// --select is evaluated.
    #[arg(long, value_name = "RUN", required_unless_present_any = ["random_init", "baseline"], conflicts_with_all = ["random_init", "baseline"])]
    checkpoint: Option<PathBuf>,
    /// Evaluate a randomly initialised encoder of this model instead (a baseline).
    #[arg(long, value_name = "MODEL", value_parser = VitConfig::PRESETS, conflicts_with = "baseline")]
    random_init: Option<String>,
    /// Evaluate a baseline without an encoder: pixels (the image area-downsampled to 32x32)
    /// or ehr-alone (the EHR vector of demographics, scan and stay).
    #[arg(long, value_parser = Source::BASELINES)]
    baseline: Option<String>,
    /// The dataset the probe trains, validates and tests on (MIMIC-CXR, or NIH with its own
    /// labels).
    #[arg(long)]
    dataset: PathBuf,
    /// Output folder (default: RUN/linear-eval-<dataset kind>-<fraction>[-finetune]).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 24)]
    seed: u64,
    #[command(flatten)]
    eval: EvalOpts,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[arg(long)]
    dataset: PathBuf,
    /// Run folder (resumed if it holds an unfinished run).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "demographics,scan,stay")]
    ehr: String,
    #[command(flatten)]
    train: TrainOpts,
    #[command(flatten)]
    eval: EvalOpts,
}

#[derive(Debug, Args)]
struct AblateArgs {
    #[arg(long)]
    dataset: PathBuf,
    /// Folder of the runs (one per EHR choice) and of the comparison table.
    #[arg(long)]
    out: PathBuf,
    /// quick: vanilla MSN, each group, all three (5 runs); paper: vanilla, every combination
    /// of the groups and each single variable (16 runs).
    #[arg(long, default_value = "quick", value_parser = ["quick", "paper"])]
    grid: String,
    /// Your own list of EHR choices instead of a grid, separated by `;` (e.g.
    /// "none;sex;demographics,stay"); include `none` for the deltas against vanilla MSN, and
    /// the baselines (no pretraining) `random-init` (a randomly initialised encoder),
    /// `pixels` (the image at 32x32) and `ehr-alone` (the EHR vector of demographics, scan and
    /// stay) to see what the encoder adds.
    #[arg(long, conflicts_with = "grid")]
    choices: Option<String>,
    #[command(flatten)]
    train: TrainOpts,
    #[command(flatten)]
    eval: EvalOpts,
}

/// Prints pretraining progress: a status line on a terminal, a line every 50 steps otherwise.
fn step_printer() -> impl FnMut(&StepMetrics, usize) {
    let mut started = None;
    let mut first_step = None;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
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
        if tty {
            eprint!("\r{line}\x1b[K");
            if m.step + 1 == stop {
                eprintln!();
            }
        } else if (m.step + 1).is_multiple_of(50) || m.step + 1 == stop {
            eprintln!("{line}");
        }
        if m.step + 1 == stop {
            started = None;
            first_step = None;
        }
    }
}

fn log_line(line: &str) {
    eprintln!("{line}");
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
    let _ = DEVICES.set(Devices::parse(&cli.device, cli.precision, cli.all_reduce).context("--device, --precision")?);
    match cli.command {
        Command::Pretrain(args) => {
            let cfg = args.resolve()?;
            eprintln!(
                "pretraining {} ({} preset), ehr {}, into {}",
                cfg.vit.name(),
                cfg.preset,
                cfg.ehr,
                args.out.display()
            );
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
        }
        Command::LinearEval(args) => {
            let device = device();
            let (source, cache, crop): (Source, PathBuf, usize) =
                match (&args.checkpoint, &args.random_init, &args.baseline) {
                    (Some(run), _, _) => {
                        let e = load_encoder(run, args.eval.select, &device)?;
                        let crop = e.crop;
                        (e.into(), run.join("features"), crop)
                    }
                    (None, Some(model), _) => {
                        let vit = VitConfig::preset(model)
                            .ok_or_else(|| trainer::Error::Config(format!("--random-init {model}")))?;
                        let crop = vit.image_size;
                        (random_encoder(&vit, args.seed, &device).into(), PathBuf::new(), crop)
                    }
                    (None, None, Some(name)) => {
                        let b = Source::baseline(name)
                            .ok_or_else(|| trainer::Error::Config(format!("--baseline {name}")))?;
                        (b, PathBuf::new(), 224)
                    }
                    (None, None, None) => {
                        return Err(trainer::Error::Config(
                            "give --checkpoint RUN, --random-init MODEL or --baseline NAME".into(),
                        )
                        .into());
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
                    return Err(
                        trainer::Error::Config("--out is required with --random-init and --baseline".into()).into()
                    );
                }
            };
            let cache = if cache.as_os_str().is_empty() { out.join("features") } else { cache };
            let r =
                linear_eval(&cfg, source, &args.dataset, &args.eval.test_dataset, &out, &cache, &device, &mut |l| {
                    log_line(l)
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
            println!("{}", r.result.markdown());
            println!("results: {}", out.join("results.json").display());
            println!("report: {}", out.join("report.html").display());
        }
        Command::Run(args) => {
            let cfg = args.train.resolve(&args.ehr)?;
            let eval = args.eval.resolve(cfg.views.global_size, cfg.seed)?;
            let s = experiment::run(
                &cfg,
                &eval,
                &args.dataset,
                &args.eval.test_dataset,
                &args.out,
                &devices(),
                &mut step_printer(),
                &mut |l| log_line(l),
            )?;
            println!(
                "ehr {}: test macro AUROC {}",
                s.ehr,
                s.macro_auroc.map_or("undefined".into(), |e| format!("{:.4} ({:.4}-{:.4})", e.value, e.low, e.high))
            );
            println!("report: {}", args.out.join("report.html").display());
        }
        Command::Ablate(args) => {
            let cfg = args.train.resolve("none")?;
            let eval = args.eval.resolve(cfg.views.global_size, cfg.seed)?;
            let choices = match &args.choices {
                Some(c) => c.split(';').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
                None => experiment::grid(&args.grid)?,
            };
            let s = experiment::ablate(
                &cfg,
                &eval,
                &choices,
                &args.dataset,
                &args.eval.test_dataset,
                &args.out,
                &devices(),
                &mut step_printer(),
                &mut |l| log_line(l),
            )?;
            print_table(&s, &args.out)?;
        }
        Command::Demo(args) => demo(&args)?,
        Command::CompareReference(args) => compare(&args)?,
        Command::ImportTorch { file, model, prefix, out } => {
            let vit = VitConfig::preset(&model).ok_or_else(|| trainer::Error::Config(format!("--model {model}")))?;
            let i = trainer::import::import_torch(&file, &vit, &prefix, &out, &device())?;
            println!(
                "imported {} encoder tensors ({prefix}*) from {} (sha256 {}); {} other tensors not read",
                i.tensors,
                file.display(),
                &i.sha256[..16],
                i.other
            );
            println!("next: trainer linear-eval --checkpoint {} --dataset OUT/<version>", out.display());
        }
        Command::Bench(args) => {
            let mut pretrain = args.train.resolve(&args.ehr)?;
            if args.train.batch_size.is_none() {
                pretrain.batch_size = 8;
            }
            let cfg = trainer::bench::BenchConfig {
                pretrain,
                image_side: args.image_side,
                warmup: args.warmup,
                steps: args.steps,
            };
            let total = args.warmup + args.steps;
            let main_device = cli.device.split(',').next().unwrap_or_default().trim();
            let backend: Backend = main_device.parse().context("--device")?;
            let r = trainer::bench::bench(&cfg, &device(), &mut |s| {
                eprint!("\rstep {}/{total}{}", s + 1, if s < args.warmup { " (warmup)" } else { "" });
            })?;
            eprintln!();
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
        }
        Command::EhrColumns { ehr } => {
            let sel: EhrSelection = ehr.parse().map_err(|e| trainer::Error::Config(format!("--ehr {ehr}: {e}")))?;
            println!("ehr: {sel}");
            println!("width: {}", sel.width());
            for c in sel.columns() {
                println!("{c}");
            }
        }
    }
    Ok(())
}

/// The exit status of a failed run: the kind of the first trainer error in the chain (1 for
/// anything else).
fn exit_code(err: &anyhow::Error) -> u8 {
    err.chain().find_map(|e| e.downcast_ref::<trainer::Error>()).map_or(1, trainer::Error::exit_code)
}

fn main() -> ExitCode {
    trainer::memory::keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(exit_code(&err))
        }
    }
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
