//! `trainer demo`: the whole story on a synthetic archive (the pipeline's demo, then per seed
//! an ablation of vanilla MSN, the EHR model and a random encoder, with two more baselines on
//! the first seed: the pixels and the EHR vector alone; and the two verdict lines, pooled over
//! the seeds).

use std::path::PathBuf;

use anyhow::{Context, bail};
use cxr_dataset::features::{EhrSelection, Group};
use trainer::experiment::{self, Arm, PairedBootstrap, Setup};
use trainer::linear::{Baseline, LinearEvalConfig};
use trainer::model::VitConfig;
use trainer::pretrain::PretrainConfig;
use trainer::transform::ProbeTransform;

use crate::cli::DemoArgs;
use crate::pooled::{per_pair_table, verdict};
use crate::session::Session;

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

pub(crate) fn demo(session: &Session, args: &DemoArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut distinct = args.seeds.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.is_empty() || distinct.len() != args.seeds.len() {
        bail!("--seeds {}: each seed once", seeds_text(&args.seeds));
    }
    let exe = pipeline_exe(args.pipeline.as_ref());
    session.line(&format!("demo 1/3: synthetic archive and dataset, with {}", exe.display()));
    // The pipeline prints the version it built (or found built) as `dataset <version>...`;
    // that version, and no other folder of `datasets/`, is the demo's dataset.
    let output = std::process::Command::new(&exe)
        .args(["--log", session.log.mode().name(), "demo", "--out"])
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
    let mut cfg = PretrainConfig::paper(VitConfig::vit_micro(), EhrSelection::none())
        .with_epochs(args.epochs)
        .with_batch_size(32);
    cfg.lr = 5e-4;
    let compared = [Arm::vanilla(), Arm::Msn(EhrSelection::groups(&Group::ALL)), Arm::RandomInit];
    let baselines = [Arm::Baseline(Baseline::Pixels), Arm::Baseline(Baseline::EhrAlone)];
    session.line(&format!(
        "demo 2/3: per seed ({}), pretraining vit-micro for {} epochs, vanilla MSN and with EHR (demographics, \
         scan, stay), and a random encoder; on the first seed also the pixels at 32x32 and the EHR vector alone",
        seeds_text(&args.seeds),
        args.epochs
    ));
    let runs = args.out.join("runs");
    let mut first_table = None;
    for (k, &seed) in args.seeds.iter().enumerate() {
        let eval = LinearEvalConfig::new(ProbeTransform::for_crop(cfg.views.global_size)).with_seed(seed);
        let setup = Setup { dataset: &dataset, eval: &eval, external: &[], devices: &session.devices };
        let arms: Vec<Arm> = compared.iter().chain(if k == 0 { &baselines[..] } else { &[] }).cloned().collect();
        session.line(&format!("seed {seed} ({}/{})", k + 1, args.seeds.len()));
        let dir = runs.join(format!("seed-{seed}"));
        let s = experiment::ablate(
            &cfg.clone().with_seed(seed),
            &arms,
            &setup,
            &dir,
            &mut session.step_printer(),
            &mut |l| session.line(l),
        )?;
        first_table.get_or_insert((s, dir));
    }
    session.line(&format!("demo 3/3: done in {:.0} s", started.elapsed().as_secs_f64()));
    if let Some((s, dir)) = &first_table {
        say!("seed {}:", args.seeds[0]);
        crate::session::print_table(s, dir)?;
    }
    let eval = LinearEvalConfig::new(ProbeTransform::for_crop(cfg.views.global_size)).with_seed(args.seeds[0]);
    let bootstrap = PairedBootstrap::of(&eval, args.margin);
    let pairs = |a: &Arm, b: &Arm| -> Vec<_> {
        let probe = |seed: u64, arm: &Arm| runs.join(format!("seed-{seed}")).join(arm.run_name()).join("linear-eval");
        args.seeds.iter().map(|&s| (format!("seed {s}"), probe(s, a), probe(s, b))).collect()
    };
    let ehr = experiment::pooled_delta(&pairs(&compared[0], &compared[1]), bootstrap)?;
    let pretraining = experiment::pooled_delta(&pairs(&compared[2], &compared[0]), bootstrap)?;
    let lines = [
        format!("EHR vs vanilla MSN: {}", verdict(&ehr, "the EHR model", "seeds")),
        format!("vanilla MSN vs a random encoder: {}", verdict(&pretraining, "pretraining", "seeds")),
    ];
    let doc = serde_json::json!({ "ehr_vs_vanilla": ehr, "vanilla_vs_random_init": pretraining, "lines": lines });
    fs_err::write(runs.join("verdicts.json"), serde_json::to_string_pretty(&doc)?)?;
    let md = format!(
        "# Demo verdicts\n\n{}\n\n{}\n\n{}\n",
        lines.join("\n\n"),
        per_pair_table(&[("EHR minus vanilla MSN", &ehr), ("vanilla MSN minus random encoder", &pretraining)]),
        ehr.intervals
    );
    fs_err::write(runs.join("verdicts.md"), md)?;
    for l in &lines {
        say!("{l}");
    }
    say!("verdicts: {}", runs.join("verdicts.md").display());
    Ok(())
}

fn seeds_text(seeds: &[u64]) -> String {
    seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// The version id of the first `dataset <version>: ...` or `dataset <version> already built
/// ...` line of the pipeline's standard output.
fn built_version(stdout: &str) -> Option<&str> {
    stdout.lines().find_map(|l| {
        let word = l.strip_prefix("dataset ")?.split_whitespace().next()?.trim_end_matches(':');
        (!word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric())).then_some(word)
    })
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
