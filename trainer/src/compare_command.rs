//! `trainer compare-reference`: whole-run learning parity with the reference PyTorch MSN
//! (see `trainer::parity`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
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
    let cfg = CompareConfig { pretrain, eval, seeds: args.seeds.clone(), fractions: CompareConfig::FRACTIONS.to_vec() };
    let mut reference = python_reference(args.python.clone(), script, args.dataset.clone());
    let c =
        compare_reference(&cfg, &args.dataset, &args.out, &mut reference, &device(), &mut step_printer(), &mut |l| {
            log_line(l)
        })
        .context("compare-reference")?;
    println!("{}", fs_err::read_to_string(args.out.join("comparison.md"))?);
    let within = c.rows.iter().filter(|r| r.within).count();
    println!(
        "burn within the paired 95% CI of the reference at {within} of {} checkpoints; loss curves within the seed \
         spread in {} of {} epochs",
        c.rows.len(),
        c.loss_epochs_within_spread,
        c.loss_gap.len()
    );
    println!("figures: {}, {}", args.out.join("probe-auroc.svg").display(), args.out.join("loss-curves.svg").display());
    Ok(())
}
