//! `trainer compare-reference`: whole-run learning parity with the reference PyTorch MSN
//! (see `trainer::parity`).

use std::path::PathBuf;

use anyhow::Context;
use trainer::metrics::Verdict;
use trainer::parity::{CompareConfig, compare_reference, python_reference};

use crate::cli::CompareArgs;
use crate::session::Session;

pub(crate) fn compare(session: &Session, args: &CompareArgs) -> anyhow::Result<()> {
    let pretrain = args.train.resolve(&args.ehr, session.precision)?;
    let eval = args.eval.resolve(pretrain.views.global_size, pretrain.seed)?;
    let script = match &args.script {
        Some(s) => s.clone(),
        None => {
            let s = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../reference/train_msn.py"));
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
    let c = compare_reference(
        &cfg,
        &args.dataset,
        &args.out,
        &mut reference,
        &session.device(),
        &mut session.step_printer(),
        &mut |l| session.line(l),
    )
    .context("compare-reference")?;
    say!("{}", fs_err::read_to_string(args.out.join("comparison.md"))?);
    let count = |v: Verdict| c.rows.iter().filter(|r| r.equivalence.is_some_and(|e| e.verdict == v)).count();
    say!(
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
    say!("figures: {}, {}", args.out.join("probe-auroc.svg").display(), args.out.join("loss-curves.svg").display());
    Ok(())
}
