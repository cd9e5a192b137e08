//! `trainer compare-reference`: whole-run learning parity with the reference PyTorch MSN
//! (see `trainer::parity`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use trainer::metrics::Verdict;
use trainer::parity::{CompareConfig, compare_reference, python_reference};

use crate::cli::{EvalOpts, TrainOpts};
use crate::{device, log_line, step_printer};

#[derive(Debug, Args)]
pub(crate) struct CompareArgs {
    /// The dataset version folder, OUT/<version>, both implementations train and are probed on.
    #[arg(long)]
    dataset: PathBuf,
    /// Output folder (resumed: finished stages are skipped).
    #[arg(long)]
    out: PathBuf,
    /// EHR groups and/or variables fused into the anchor branch; `none` is vanilla MSN.
    #[arg(long, default_value = "none")]
    ehr: String,
    /// Pretraining seeds; each implementation trains once per seed (the spread between seeds
    /// is the yardstick for the loss curves).
    #[arg(long, default_value = "24,25,26", value_delimiter = ',')]
    seeds: Vec<u64>,
    /// The Python with the reference's requirements (trainer/reference/requirements.txt).
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// The reference's training script (default: trainer/reference/train_msn.py of this
    /// source tree).
    #[arg(long)]
    script: Option<PathBuf>,
    /// Equivalence margin in macro AUROC: at each checkpoint burn and the reference are
    /// "equivalent" when the 90% interval of their paired difference lies within +-margin (two
    /// one-sided tests at 0.05), "different" when not and the 95% interval excludes 0, else
    /// "undecided".
    #[arg(long, default_value_t = CompareConfig::MARGIN)]
    margin: f64,
    #[command(flatten)]
    train: TrainOpts,
    #[command(flatten)]
    eval: EvalOpts,
}

pub(crate) fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    let pretrain = args.train.resolve(&args.ehr)?;
    let eval = args.eval.resolve(pretrain.views.global_size, pretrain.seed)?;
    let script = match &args.script {
        Some(s) => s.clone(),
        None => {
            let s = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/reference/train_msn.py"));
            anyhow::ensure!(s.is_file(), "{} not found; pass --script trainer/reference/train_msn.py", s.display());
            s
        }
    };
    anyhow::ensure!(args.margin > 0.0 && args.margin < 1.0, "--margin {}: expected a value in (0, 1)", args.margin);
    let cfg = CompareConfig {
        pretrain,
        eval,
        seeds: args.seeds.clone(),
        fractions: CompareConfig::FRACTIONS.to_vec(),
        margin: args.margin,
    };
    let mut reference = python_reference(args.python.clone(), script, args.dataset.clone());
    let c =
        compare_reference(&cfg, &args.dataset, &args.out, &mut reference, &device(), &mut step_printer(), &mut |l| {
            log_line(l)
        })
        .context("compare-reference")?;
    println!("{}", fs_err::read_to_string(args.out.join("comparison.md"))?);
    let count = |v: Verdict| c.rows.iter().filter(|r| r.equivalence.is_some_and(|e| e.verdict == v)).count();
    println!(
        "burn vs the reference (margin +-{}): equivalent at {} of {} checkpoints, different at {}, undecided at {}; \
         loss curves within the seed spread in {} of {} epochs",
        c.margin,
        count(Verdict::Equivalent),
        c.rows.len(),
        count(Verdict::Different),
        count(Verdict::Undecided),
        c.loss_epochs_within_spread,
        c.loss_gap.len()
    );
    println!("figures: {}, {}", args.out.join("probe-auroc.svg").display(), args.out.join("loss-curves.svg").display());
    Ok(())
}
