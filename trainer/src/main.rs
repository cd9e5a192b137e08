//! The `trainer` command line: parses arguments, picks the device, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use burn::config::Config;
use burn::tensor::Device;
use clap::{Args, Parser, Subcommand};
use cxr_dataset::features::EhrSelection;
use trainer::model::VitConfig;
use trainer::pretrain::{PretrainConfig, StepMetrics, pretrain_with};

/// See `mimalloc` in the workspace manifest.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// EHR-augmented MSN pretraining and linear evaluation of Vision Transformers.
#[derive(Debug, Parser)]
#[command(name = "trainer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pretrain a ViT with (EHR-augmented) MSN on a dataset built by `pipeline build`.
    Pretrain(Box<PretrainArgs>),
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
    /// Run folder: config.json and metrics.jsonl go there.
    #[arg(long)]
    out: PathBuf,
    /// EHR groups and/or variables fused into the anchor branch (see `ehr-columns`); `none`
    /// is vanilla MSN.
    #[arg(long, default_value = "demographics,scan,stay")]
    ehr: String,
    /// Backbone: vit-tiny (192 wide, 6 heads, the paper's), vit-small, vit-tiny-deit (3 heads).
    #[arg(long, default_value = "vit-tiny", value_parser = ["vit-tiny", "vit-small", "vit-tiny-deit"])]
    model: String,
    /// paper (the reference code's behaviour) or msn (the original MSN's).
    #[arg(long, default_value = "paper", value_parser = ["paper", "msn"])]
    preset: String,
    /// A config.json to start from (e.g. a previous run's); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// train (training-split images only) or all (every image, as the reference).
    #[arg(long, value_parser = ["train", "all"])]
    pretrain_split: Option<String>,
    /// Continue the run in --out from its last checkpoint, with its config.json (only
    /// --max-steps may change).
    #[arg(long)]
    resume: bool,
    /// Write a checkpoint every this many steps (and at each epoch end and when stopping).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Side of the target and anchor views (224 in the paper) and of the focal views (96).
    #[arg(long)]
    global_size: Option<usize>,
    #[arg(long)]
    focal_size: Option<usize>,
}

impl PretrainArgs {
    fn resolve(&self) -> anyhow::Result<PretrainConfig> {
        let vit = match self.model.as_str() {
            "vit-small" => VitConfig::vit_small(),
            "vit-tiny-deit" => VitConfig::vit_tiny_deit(),
            _ => VitConfig::vit_tiny(),
        };
        if self.resume {
            let path = self.out.join("config.json");
            let mut cfg = PretrainConfig::load(&path).with_context(|| format!("reading {}", path.display()))?;
            cfg.max_steps = self.max_steps;
            return Ok(cfg);
        }
        let mut cfg = match &self.config {
            Some(path) => PretrainConfig::load(path).with_context(|| format!("reading {}", path.display()))?,
            None if self.preset == "msn" => PretrainConfig::msn(vit, &self.ehr),
            None => PretrainConfig::paper(vit, &self.ehr),
        };
        cfg.ehr.clone_from(&self.ehr);
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
        if let Some(v) = &self.pretrain_split {
            cfg.pretrain_split.clone_from(v);
        }
        if let Some(v) = self.global_size {
            cfg.views.global_size = v;
        }
        if let Some(v) = self.focal_size {
            cfg.views.focal_size = v;
        }
        if cfg.batch_size == 0 || cfg.epochs == 0 {
            bail!("--batch-size and --epochs must be at least 1");
        }
        if cfg.views.global_size % cfg.vit.patch_size != 0 || cfg.views.focal_size % cfg.vit.patch_size != 0 {
            bail!("view sizes must be multiples of the patch size {}", cfg.vit.patch_size);
        }
        Ok(cfg)
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Pretrain(args) => {
            let cfg = args.resolve()?;
            // The one place the backend is chosen: burn-flex on the CPU, with autodiff.
            let device = Device::flex().autodiff();
            eprintln!(
                "pretraining {} ({} preset), ehr {}, into {}",
                args.model,
                cfg.preset,
                cfg.ehr,
                args.out.display()
            );
            let started = std::time::Instant::now();
            let mut first_step = None;
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut report = |m: &StepMetrics, stop: usize| {
                let first = *first_step.get_or_insert(m.step);
                let done = m.step + 1 - first;
                let rate = done as f64 / started.elapsed().as_secs_f64();
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
                } else if (m.step + 1).is_multiple_of(50) || m.step + 1 == stop {
                    eprintln!("{line}");
                }
            };
            let s = pretrain_with(&cfg, &args.dataset, &args.out, &device, args.resume, &mut report)?;
            if tty {
                eprintln!();
            }
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
        Command::EhrColumns { ehr } => {
            let sel: EhrSelection = ehr.parse().map_err(|e| anyhow::anyhow!("--ehr {ehr}: {e}"))?;
            println!("ehr: {sel}");
            println!("width: {}", sel.width());
            for c in sel.columns() {
                println!("{c}");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
