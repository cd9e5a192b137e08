//! `trainer demo`: the whole story on a synthetic archive (the pipeline's demo, then an
//! ablation of vanilla MSN, the EHR model and three baselines: a random encoder, the pixels
//! and the EHR vector alone; and the verdict lines).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use trainer::experiment::{self, Arm, Setup};
use trainer::linear::{Baseline, LinearEvalConfig};
use trainer::model::VitConfig;
use trainer::pretrain::PretrainConfig;
use trainer::transform::ProbeTransform;

use crate::{devices, log, log_line, print_table, step_printer};

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Working folder (the archive, the dataset and the runs; replaced on each run).
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
    /// Subjects in the synthetic archive.
    #[arg(long, default_value_t = 600)]
    subjects: usize,
    /// Fractions of subjects in train, validate and test (most in test: the paired interval
    /// narrows with the test images, while pretraining time grows with the training ones).
    #[arg(long, default_value = "0.25,0.05,0.7")]
    split_fractions: String,
    /// Pretraining epochs of each of the two models.
    #[arg(long, default_value_t = 16)]
    epochs: usize,
    /// Seed of initialisation, views, masks and the probe (both models share it).
    #[arg(long, default_value_t = 24)]
    seed: u64,
    /// The pipeline executable (default: next to this one, then on PATH).
    #[arg(long)]
    pipeline: Option<PathBuf>,
}

/// The `pipeline` executable: --pipeline, else beside this executable, else on PATH.
fn pipeline_exe(given: Option<&PathBuf>) -> PathBuf {
    if let Some(p) = given {
        return p.clone();
    }
    let name = format!("pipeline{}", std::env::consts::EXE_SUFFIX);
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(&name)))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

pub(crate) fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let exe = pipeline_exe(args.pipeline.as_ref());
    log_line(&format!("demo 1/3: synthetic archive and dataset, with {}", exe.display()));
    // The pipeline prints the version it built (or found built) as `dataset <version>...`;
    // that version, and no other folder of `datasets/`, is the demo's dataset.
    let output = std::process::Command::new(&exe)
        .args(["--log", log().mode().name(), "demo", "--out"])
        .arg(&args.out)
        .args(["--subjects", &args.subjects.to_string()])
        .args(["--split-fractions", &args.split_fractions])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| {
            format!("running {} (build it with `cargo build --release`, or pass --pipeline)", exe.display())
        })?;
    if !output.status.success() {
        bail!("{} demo failed ({})", exe.display(), output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let version = built_version(&stdout)
        .with_context(|| format!("{} demo printed no `dataset <version>` line:\n{stdout}", exe.display()))?;
    let dataset = args.out.join("datasets").join(version);
    if !dataset.join(cxr_dataset::files::MANIFEST).is_file() {
        bail!("{} demo reported dataset {version}, but {} has no manifest", exe.display(), dataset.display());
    }
    let mut cfg = PretrainConfig::paper(VitConfig::vit_micro(), "none")
        .with_epochs(args.epochs)
        .with_batch_size(32)
        .with_seed(args.seed);
    cfg.lr = 5e-4;
    let eval = LinearEvalConfig::new(ProbeTransform::for_crop(cfg.views.global_size)).with_seed(args.seed);
    let arms = [
        Arm::vanilla(),
        Arm::Msn("demographics,scan,stay".into()),
        Arm::RandomInit,
        Arm::Baseline(Baseline::Pixels),
        Arm::Baseline(Baseline::EhrAlone),
    ];
    log_line(&format!(
        "demo 2/3: pretraining vit-micro for {} epochs, vanilla MSN and with EHR (demographics, scan, stay), \
         and the baselines: a random encoder, the pixels at 32x32, the EHR vector alone",
        args.epochs
    ));
    let runs = args.out.join("runs");
    let devices = devices();
    let setup = Setup { dataset: &dataset, eval: &eval, external: &[], devices: &devices };
    let s = experiment::ablate(&cfg, &arms, &setup, &runs, &mut step_printer(), &mut |l| log_line(l))?;
    log_line(&format!("demo 3/3: done in {:.0} s", started.elapsed().as_secs_f64()));
    print_table(&s, &runs)?;
    let delta = |ehr: &str| s.iter().find(|r| r.ehr == ehr).and_then(|r| r.delta_vs_vanilla);
    if let Some(d) = delta("demographics,scan,stay") {
        println!("EHR vs vanilla MSN: {}", verdict(d.value, d.low, d.high, "the EHR model"));
    }
    if let Some(d) = delta(Arm::RANDOM_INIT) {
        // The table's delta is random minus vanilla; this line says what pretraining bought.
        println!("vanilla MSN vs a random encoder: {}", verdict(-d.value, -d.high, -d.low, "pretraining"));
    }
    Ok(())
}

/// The version id of the first `dataset <version>: ...` or `dataset <version> already built
/// ...` line of the pipeline's standard output.
fn built_version(stdout: &str) -> Option<&str> {
    stdout.lines().find_map(|l| {
        let word = l.strip_prefix("dataset ")?.split_whitespace().next()?.trim_end_matches(':');
        (!word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric())).then_some(word)
    })
}

/// One line on a paired difference in macro AUROC and whether its interval excludes 0.
fn verdict(value: f64, low: f64, high: f64, what: &str) -> String {
    let v = if low > 0.0 {
        format!("{what} is measurably better")
    } else if high < 0.0 {
        format!("{what} is measurably worse")
    } else {
        "no measurable difference on this test set (the interval includes 0)".to_string()
    };
    format!("{value:+.3} macro AUROC (paired 95% CI {low:+.3} to {high:+.3}): {v}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_built_version_is_read_from_the_pipeline_output() {
        let out = "synthetic archive: out/demo/synthetic-mimic\n  MIMIC-IV 2.2: 600 patients\n\
                   dataset 4a2e3a4175934b6d: out/demo/datasets/4a2e3a4175934b6d\n  648 images read\n";
        assert_eq!(super::built_version(out), Some("4a2e3a4175934b6d"));
        let reused = "dataset 60cc4894aed75cb0 already built with these inputs and settings: out/x\n";
        assert_eq!(super::built_version(reused), Some("60cc4894aed75cb0"));
        assert_eq!(super::built_version("synthetic archive: out\n"), None);
    }
}
