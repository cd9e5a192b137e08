//! The `trainer` command line's arguments: clap structs, every choice a `ValueEnum`, each
//! resolved once into the library's typed settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use cxr_dataset::features::EhrSelection;
use cxr_dataset::log::LogMode;
use trainer::backend::{Backend, Precision};
use trainer::data::ImageSource;
use trainer::experiment::{Arm, Grid};
use trainer::linear::{Baseline, LinearEvalConfig, ProbeKind, ProbeUncertain};
use trainer::metrics::BootstrapUnit;
use trainer::model::VitPreset;
use trainer::parallel::AllReduce;
use trainer::parity::CompareConfig;
use trainer::pretrain::{CheckpointChoice, Preset, PretrainConfig, PretrainSplit};
use trainer::transform::ProbeTransform;

/// The exit statuses, in `--help` (see `trainer::Error::exit_code`).
pub(crate) const EXIT_CODES: &str = "Exit status: 0 done; 1 internal error; 2 usage (unknown flag or value); 3 invalid \
setting; 4 unusable input (dataset, run folder, config or results file, weights, model record); 5 I/O; 6 device \
(driver, NCCL, a failed data-parallel step); 7 the reference PyTorch code failed.";

/// EHR-augmented MSN pretraining and linear evaluation of Vision Transformers.
#[derive(Debug, Parser)]
#[command(name = "trainer", version, about, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    /// Where the model runs: cpu (burn-flex), or, in a build with that feature, wgpu (a GPU
    /// through Vulkan, Metal or DX12; `--features wgpu`), cuda or cuda:N (an NVIDIA GPU through
    /// burn-cuda; `--features cuda`) or ndarray (burn-ndarray on the CPU; `--features ndarray`,
    /// or `openblas` for its matrix products through OpenBLAS). A comma-separated list
    /// (`cuda:0,cuda:1,...`) pretrains data-parallel: each batch (--batch-size is the global
    /// batch) split over the devices, gradients summed; evaluation runs on the first device.
    /// `cpu,cpu` runs that code on one CPU (a check of it; on 2 cores no faster than one
    /// replica).
    #[arg(long, visible_alias = "devices", global = true, value_delimiter = ',', default_value = "cpu")]
    pub(crate) device: Vec<Backend>,
    /// How the devices of a --device list exchange their sums: nccl (CUDA GPUs; needs
    /// libnccl.so.2 at run time; the default for a list of CUDA GPUs) or host (through host
    /// memory; every backend, the default otherwise).
    #[arg(long, global = true, value_enum)]
    pub(crate) all_reduce: Option<AllReduce>,
    /// The float type the networks compute in: f32, or bf16 (mixed precision: parameters,
    /// gradients, the optimizer's state and the EMA target stay f32; LayerNorm, BatchNorm,
    /// softmax and the MSN loss in f32), or f16 (the same, and pretraining scales the loss
    /// dynamically: from 65536, halved and the step skipped when a gradient overflows,
    /// doubled after 2000 good steps; `loss_scale` in metrics.jsonl). On cuda and on wgpu
    /// with `--features vulkan`; on cpu it runs, rounding to the half type, as a check.
    #[arg(long, global = true, value_enum, default_value_t = Precision::F32)]
    pub(crate) precision: Precision,
    /// How progress and log lines are written to standard error: human (a status line on a
    /// terminal, a line every 50 steps otherwise), quiet (errors only) or json (one JSON
    /// object a line, a `step` event per training step). Results go to standard output.
    #[arg(long, global = true, default_value = "human", value_parser = log_values())]
    pub(crate) log: LogMode,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
        #[arg(long, value_enum, default_value_t = VitPreset::VitTiny)]
        model: VitPreset,
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
    /// Parity with the reference PyTorch code on this machine: the golden cases (a ViT
    /// forward, the position-embedding resize, the crops, the projection head, three MSN
    /// losses with their gradients, a whole EHR-fused step, AUROC) run on --device with
    /// --precision, one line per case with its largest error and tolerance (a failed case lists
    /// every quantity it compared). The cases are
    /// shipped in the binary; exit 0 only if every case passes, 1 if one fails. Run it on a
    /// new GPU, driver or build.
    Selftest {
        /// A folder of golden cases in the shared/golden layout (`<case>.json` and
        /// `<case>.safetensors`) to compare against instead; a case it lacks is taken from
        /// the shipped copy, and the line says which was used.
        #[arg(long, value_name = "DIR")]
        golden: Option<PathBuf>,
    },
    /// The difference in test macro AUROC between two sets of linear evaluations (e.g. the
    /// same two arms over several seeds), paired on the same resampled test patients: per pair
    /// and averaged over the pairs, with the 95% and 90% intervals and the equivalence verdict.
    PairedDelta(PairedDeltaArgs),
    /// Print the dataset columns an --ehr choice feeds to the model, and the EHR vector width.
    EhrColumns {
        /// Groups (demographics, scan, stay) and/or variables (sex, age-norm, age-bins5,
        /// age-bins10, race, view, orientation, mortality, icu), comma-separated; `none` =
        /// vanilla MSN.
        #[arg(long, default_value = "demographics,scan,stay")]
        ehr: EhrSelection,
        /// A built dataset version: list the columns it has for the choice, including the
        /// optional ones its build made (view_unknown, orientation_unknown with `--missing
        /// unknown`, view_other with `--keep-rare-views`).
        #[arg(long, value_name = "DIR")]
        dataset: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct PretrainArgs {
    /// The dataset version folder, OUT/<version> (verified before use).
    #[arg(long)]
    pub(crate) dataset: PathBuf,
    /// Run folder: config.json, metrics.jsonl and checkpoints go there.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// EHR groups and/or variables fused into the anchor branch (see `ehr-columns`); `none`
    /// is vanilla MSN.
    #[arg(long, default_value = "demographics,scan,stay")]
    pub(crate) ehr: EhrSelection,
    /// Continue the run in --out from its last checkpoint, with its config.json (only
    /// --max-steps may change).
    #[arg(long)]
    pub(crate) resume: bool,
    #[command(flatten)]
    pub(crate) train: TrainOpts,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// EHR groups and/or variables fused into the anchor branch; `none` is vanilla MSN.
    #[arg(long, default_value = "demographics,scan,stay")]
    pub(crate) ehr: EhrSelection,
    /// Timed steps (the medians are printed).
    #[arg(long, default_value_t = 10)]
    pub(crate) steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub(crate) warmup: usize,
    /// Side of the synthetic source images (the pipeline's shards are 256 by default).
    #[arg(long, default_value_t = 256)]
    pub(crate) image_side: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// The model and its settings; the batch size defaults to 8 here.
    #[command(flatten)]
    pub(crate) train: TrainOpts,
}

/// Pretraining settings shared by `pretrain`, `run`, `ablate`, `bench` and `demo`.
#[derive(Debug, Args)]
pub(crate) struct TrainOpts {
    /// The backbone.
    #[arg(long, value_enum, default_value_t = VitPreset::VitTiny)]
    pub(crate) model: VitPreset,
    /// The configuration the other settings start from.
    #[arg(long, value_enum, default_value_t = Preset::Paper)]
    pub(crate) preset: Preset,
    /// A JSON file of config fields (a previous run's whole config.json, or only the fields to
    /// change, nested as in config.json, e.g. {"lr": 0.002, "views": {"focal_views": 4}}):
    /// they replace those of --preset and --model; the other flags override the file.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Pretraining epochs (100 in the paper).
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    /// Seed of initialisation, views, masks and the probe (24 by default).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Stop pretraining after this many steps.
    #[arg(long)]
    pub(crate) max_steps: Option<usize>,
    /// The images pretrained on [default: train].
    #[arg(long, value_enum)]
    pub(crate) pretrain_split: Option<PretrainSplit>,
    /// Write a checkpoint every this many steps (and at each epoch end and when stopping).
    #[arg(long)]
    pub(crate) checkpoint_every: Option<usize>,
    /// Side of the target and anchor views (the model's input size: 224 for vit-tiny) and of
    /// the focal views (96).
    #[arg(long)]
    pub(crate) global_size: Option<usize>,
    #[arg(long)]
    pub(crate) focal_size: Option<usize>,
    /// Where the pretraining images are held [default: auto].
    #[arg(long, value_enum)]
    pub(crate) images: Option<ImageSource>,
}

impl TrainOpts {
    /// The pretraining settings: the preset, `--config`, then the flags; `precision` is the
    /// global `--precision`.
    pub(crate) fn resolve(&self, ehr: &EhrSelection, precision: Precision) -> anyhow::Result<PretrainConfig> {
        let vit = self.model.config();
        let base = self.preset.config(vit, ehr.clone());
        let mut cfg = match &self.config {
            Some(path) => base.with_overrides_from(path)?,
            None => base,
        };
        cfg.ehr = ehr.clone();
        cfg.precision = precision;
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
    /// A resumed run keeps its `config.json` (its precision too).
    pub(crate) fn resolve(&self, precision: Precision) -> anyhow::Result<PretrainConfig> {
        if self.resume {
            let path = self.out.join("config.json");
            let mut cfg = PretrainConfig::read(&path)?;
            cfg.max_steps = self.train.max_steps;
            return Ok(cfg);
        }
        self.train.resolve(&self.ehr, precision)
    }
}

/// Linear-evaluation settings shared by `linear-eval`, `run`, `ablate` and `demo`.
#[derive(Debug, Args)]
pub(crate) struct EvalOpts {
    /// The classifier on frozen features: logistic (a logistic regression per label on
    /// standardised features, solved to convergence, L2 strength chosen on validation macro
    /// AUROC), sgd (a linear head trained by Adam with early stopping, as the reference), or
    /// paper (the paper's linear evaluation, to set beside its tables: the sgd head trained
    /// on augmented images through the frozen encoder, raw features; with the default
    /// --probe-lr, --probe-epochs and --patience, which are the paper's; slow, as every epoch
    /// runs the encoder). --finetune and --no-cache always train the linear head.
    #[arg(long, value_enum, default_value_t = ProbeKind::Logistic)]
    pub(crate) probe: ProbeKind,
    /// The pretraining checkpoint evaluated: lowest-loss (the end of the epoch with the lowest
    /// mean training loss, as the reference; the last checkpoint when a run has none) or last.
    #[arg(long, value_enum, default_value_t = CheckpointChoice::LowestLoss)]
    pub(crate) select: CheckpointChoice,
    /// --probe sgd: train on the raw features instead of standardised ones.
    #[arg(long)]
    pub(crate) no_standardize: bool,
    /// Fraction of the training images the probe trains on (0.01, 0.05, 0.1, 1.0 in the paper),
    /// sampled at random with the seed.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) fraction: f64,
    /// Fine-tune the encoder with the probe instead of freezing it (slow: every epoch runs the
    /// encoder forward and backward on augmented images).
    #[arg(long)]
    pub(crate) finetune: bool,
    /// With a frozen encoder, train on augmented images (the reference probe's flips and
    /// affine maps) instead of cached eval-transform features.
    #[arg(long)]
    pub(crate) no_cache: bool,
    /// sgd: most probe epochs (early stopping on validation macro AUROC usually ends sooner).
    #[arg(long, default_value_t = 100)]
    pub(crate) probe_epochs: usize,
    /// sgd: probe epochs without a better validation macro AUROC before stopping.
    #[arg(long, default_value_t = 5)]
    pub(crate) patience: usize,
    /// sgd: probe batch size.
    #[arg(long, default_value_t = 64)]
    pub(crate) probe_batch_size: usize,
    /// sgd: Adam learning rate of the probe (cosine schedule).
    #[arg(long, default_value_t = 1e-4)]
    pub(crate) probe_lr: f64,
    /// What uncertain labels become.
    #[arg(long, value_enum, default_value_t = ProbeUncertain::Dataset)]
    pub(crate) uncertain: ProbeUncertain,
    /// Bootstrap resamples of the test set for the 95% intervals.
    #[arg(long, default_value_t = 1000)]
    pub(crate) bootstrap: usize,
    /// What a bootstrap resample draws: test patients, each with all of its images (images of
    /// one patient are correlated), or images as if independent (narrower intervals).
    #[arg(long, value_enum, default_value_t = BootstrapUnit::Patient)]
    pub(crate) bootstrap_unit: BootstrapUnit,
    /// Probe input side (default: the pretraining view size, 224 for vit-tiny) and the side
    /// images are resized to before the centre crop (default: crop * 256 / 224).
    #[arg(long)]
    pub(crate) crop: Option<usize>,
    #[arg(long)]
    pub(crate) resize: Option<usize>,
    /// Another dataset built by `pipeline build-eval` (e.g. CheXpert) to test the probe on,
    /// labels matched by name; repeatable.
    #[arg(long, value_name = "DIR")]
    pub(crate) test_dataset: Vec<PathBuf>,
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
            .with_bootstrap_unit(self.bootstrap_unit)
            .with_seed(seed))
    }
}

#[derive(Debug, Args)]
pub(crate) struct LinearEvalArgs {
    /// A pretraining run folder: the target (EMA) encoder of its checkpoint chosen by
    /// --select is evaluated.
    #[arg(long, value_name = "RUN", required_unless_present_any = ["random_init", "baseline"], conflicts_with_all = ["random_init", "baseline"])]
    pub(crate) checkpoint: Option<PathBuf>,
    /// Evaluate a randomly initialised encoder of this model instead (a baseline).
    #[arg(long, value_name = "MODEL", value_enum, conflicts_with = "baseline")]
    pub(crate) random_init: Option<VitPreset>,
    /// Evaluate a baseline without an encoder instead.
    #[arg(long, value_enum)]
    pub(crate) baseline: Option<Baseline>,
    /// The dataset the probe trains, validates and tests on (MIMIC-CXR, or NIH with its own
    /// labels).
    #[arg(long)]
    pub(crate) dataset: PathBuf,
    /// Output folder (default: RUN/linear-eval-<dataset kind>-<fraction>[-finetune]).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    #[arg(long, default_value_t = 24)]
    pub(crate) seed: u64,
    #[command(flatten)]
    pub(crate) eval: EvalOpts,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[arg(long)]
    pub(crate) dataset: PathBuf,
    /// Run folder (resumed if it holds an unfinished run).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// What to run: an EHR selection (as `trainer pretrain --ehr`; `none` = vanilla MSN), or a
    /// baseline without pretraining: `random-init` (a randomly initialised encoder), `pixels`
    /// (the image at 32x32) or `ehr-alone` (the EHR vector of demographics, scan and stay).
    #[arg(long, default_value = "demographics,scan,stay")]
    pub(crate) ehr: Arm,
    #[command(flatten)]
    pub(crate) train: TrainOpts,
    #[command(flatten)]
    pub(crate) eval: EvalOpts,
}

#[derive(Debug, Args)]
pub(crate) struct AblateArgs {
    #[arg(long)]
    pub(crate) dataset: PathBuf,
    /// Folder of the runs (one per EHR choice) and of the comparison table.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// The runs, when --choices does not list them.
    #[arg(long, value_enum, default_value_t = Grid::Quick)]
    pub(crate) grid: Grid,
    /// Your own list of EHR choices instead of a grid, separated by `;` (e.g.
    /// "none;sex;demographics,stay"); include `none` for the deltas against vanilla MSN, and
    /// the baselines (no pretraining) `random-init` (a randomly initialised encoder),
    /// `pixels` (the image at 32x32) and `ehr-alone` (the EHR vector of demographics, scan and
    /// stay) to see what the encoder adds.
    #[arg(long, value_delimiter = ';', conflicts_with = "grid")]
    pub(crate) choices: Vec<Arm>,
    #[command(flatten)]
    pub(crate) train: TrainOpts,
    #[command(flatten)]
    pub(crate) eval: EvalOpts,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Working folder (the archive, the dataset and the runs; replaced on each run).
    #[arg(long, default_value = "out/demo")]
    pub(crate) out: PathBuf,
    /// Subjects in the synthetic archive.
    #[arg(long, default_value_t = 600)]
    pub(crate) subjects: usize,
    /// Fractions of subjects in train, validate and test (most in test: the paired interval
    /// narrows with the test images, while pretraining time grows with the training ones).
    #[arg(long, default_value = "0.25,0.05,0.7")]
    pub(crate) split_fractions: String,
    /// Pretraining epochs of each of the two models.
    #[arg(long, default_value_t = 16)]
    pub(crate) epochs: usize,
    /// Seeds of initialisation, views, masks and the probe: both models and the random
    /// encoder train once per seed (into `runs/seed-<S>/`), and the verdicts average the
    /// paired differences over the seeds.
    #[arg(long, default_value = "24,25,26", value_delimiter = ',')]
    pub(crate) seeds: Vec<u64>,
    /// The equivalence margin of the verdicts, in macro AUROC: a pooled difference whose 90%
    /// interval lies within +-margin is "equivalent".
    #[arg(long, default_value_t = 0.01)]
    pub(crate) margin: f64,
    /// The pipeline executable (default: next to this one, then on PATH).
    #[arg(long)]
    pub(crate) pipeline: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct CompareArgs {
    /// The dataset version folder, OUT/<version>, both implementations train and are probed on.
    #[arg(long)]
    pub(crate) dataset: PathBuf,
    /// Output folder (resumed: finished stages are skipped).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// EHR groups and/or variables fused into the anchor branch; `none` is vanilla MSN.
    #[arg(long, default_value = "none")]
    pub(crate) ehr: EhrSelection,
    /// Pretraining seeds; each implementation trains once per seed (the spread between seeds
    /// is the yardstick for the loss curves).
    #[arg(long, default_value = "24,25,26", value_delimiter = ',')]
    pub(crate) seeds: Vec<u64>,
    /// The Python with the reference's requirements (trainer/reference/requirements.txt).
    #[arg(long, default_value = "python3")]
    pub(crate) python: PathBuf,
    /// The reference's training script (default: trainer/reference/train_msn.py of this
    /// source tree).
    #[arg(long)]
    pub(crate) script: Option<PathBuf>,
    /// Equivalence margin in macro AUROC: at each checkpoint burn and the reference are
    /// "equivalent" when the 90% interval of their paired difference lies within +-margin (two
    /// one-sided tests at 0.05), "different" when not and the 95% interval excludes 0, else
    /// "undecided".
    #[arg(long, default_value_t = CompareConfig::MARGIN)]
    pub(crate) margin: f64,
    #[command(flatten)]
    pub(crate) train: TrainOpts,
    #[command(flatten)]
    pub(crate) eval: EvalOpts,
}

#[derive(Debug, Args)]
pub(crate) struct PairedDeltaArgs {
    /// Linear-evaluation folders (each with test-scores.json: `linear-eval/` of a run, or a
    /// `compare-reference` probe) of the first arm, one per pair, repeatable.
    #[arg(long, value_name = "DIR", required = true)]
    pub(crate) a: Vec<PathBuf>,
    /// The second arm's, in the same order: the difference is b minus a. All tested on the
    /// same rows.
    #[arg(long, value_name = "DIR", required = true)]
    pub(crate) b: Vec<PathBuf>,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 1000)]
    pub(crate) bootstrap: usize,
    /// What a resample draws: test patients (each with all of its images) or images.
    #[arg(long, value_enum, default_value_t = BootstrapUnit::Patient)]
    pub(crate) bootstrap_unit: BootstrapUnit,
    /// Seed of the resamples.
    #[arg(long, default_value_t = 24)]
    pub(crate) seed: u64,
    /// Equivalence margin in macro AUROC (equivalent: the 90% interval within +-margin).
    #[arg(long, default_value_t = CompareConfig::MARGIN)]
    pub(crate) margin: f64,
    /// Also write the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
}

/// The `--log` values, listed in `--help`.
fn log_values() -> impl clap::builder::TypedValueParser<Value = LogMode> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(LogMode::NAMES).map(|s| s.parse::<LogMode>().expect("a listed value"))
}
