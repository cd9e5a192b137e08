//! `trainer demo`: the whole story on a synthetic archive (the pipeline's demo, then per seed
//! an ablation of vanilla MSN, the EHR model and a random encoder, with two more baselines on
//! the first seed: the pixels and the EHR vector alone; and the two verdict lines, pooled over
//! the seeds).

use std::path::PathBuf;

use anyhow::{Context, bail};
use cxr_dataset::features::{EhrSelection, Group};
use trainer::experiment::{self, Arm, SeedPooled, Setup};
use trainer::linear::{Baseline, LinearEvalConfig};
use trainer::metrics::Verdict;
use trainer::model::VitConfig;
use trainer::pretrain::PretrainConfig;
use trainer::transform::ProbeTransform;

use crate::cli::DemoArgs;
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
        println!("seed {}:", args.seeds[0]);
        crate::session::print_table(s, dir)?;
    }
    let eval = LinearEvalConfig::new(ProbeTransform::for_crop(cfg.views.global_size)).with_seed(args.seeds[0]);
    let pairs = |a: &Arm, b: &Arm| -> Vec<_> {
        args.seeds
            .iter()
            .map(|s| {
                (runs.join(format!("seed-{s}")).join(a.run_name()), runs.join(format!("seed-{s}")).join(b.run_name()))
            })
            .collect()
    };
    let ehr = experiment::pooled_delta(&args.seeds, &pairs(&compared[0], &compared[1]), &eval, args.margin)?;
    let pretraining = experiment::pooled_delta(&args.seeds, &pairs(&compared[2], &compared[0]), &eval, args.margin)?;
    let lines = [
        format!("EHR vs vanilla MSN: {}", verdict(&ehr, "the EHR model")),
        format!("vanilla MSN vs a random encoder: {}", verdict(&pretraining, "pretraining")),
    ];
    let doc = serde_json::json!({ "ehr_vs_vanilla": ehr, "vanilla_vs_random_init": pretraining, "lines": lines });
    fs_err::write(runs.join("verdicts.json"), serde_json::to_string_pretty(&doc)?)?;
    let md = format!(
        "# Demo verdicts\n\n{}\n\n{}\n\n{}\n",
        lines.join("\n\n"),
        per_seed_table(&[("EHR minus vanilla MSN", &ehr), ("vanilla MSN minus random encoder", &pretraining)]),
        ehr.intervals
    );
    fs_err::write(runs.join("verdicts.md"), md)?;
    for l in &lines {
        println!("{l}");
    }
    println!("verdicts: {}", runs.join("verdicts.md").display());
    Ok(())
}

fn seeds_text(seeds: &[u64]) -> String {
    seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// Each seed's paired difference of each comparison, as a Markdown table.
fn per_seed_table(rows: &[(&str, &SeedPooled)]) -> String {
    let Some((_, first)) = rows.first() else { return String::new() };
    let mut s = String::from("| difference in macro AUROC |");
    for seed in &first.seeds {
        s += &format!(" seed {seed} |");
    }
    s += " pooled (95% CI) | pooled 90% CI |\n|---|";
    s += &"---|".repeat(first.seeds.len() + 2);
    s += "\n";
    let signed = |e: &trainer::metrics::Estimate| format!("{:+.3} ({:+.3} to {:+.3})", e.value, e.low, e.high);
    for (what, p) in rows {
        s += &format!("| {what} |");
        for e in &p.per_seed {
            s += &format!(" {} |", e.as_ref().map_or("undefined".into(), signed));
        }
        match &p.pooled {
            Some(q) => s += &format!(" {} | {:+.3} to {:+.3} |\n", signed(&q.delta), q.low90, q.high90),
            None => s += " undefined | |\n",
        }
    }
    s
}

/// The version id of the first `dataset <version>: ...` or `dataset <version> already built
/// ...` line of the pipeline's standard output.
fn built_version(stdout: &str) -> Option<&str> {
    stdout.lines().find_map(|l| {
        let word = l.strip_prefix("dataset ")?.split_whitespace().next()?.trim_end_matches(':');
        (!word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric())).then_some(word)
    })
}

/// One line on a difference pooled over seeds: its value and intervals, and what the
/// equivalence test says of it.
fn verdict(p: &SeedPooled, what: &str) -> String {
    let Some(q) = &p.pooled else { return "undefined (no label has both classes in the test set)".into() };
    let d = &q.delta;
    let v = match q.verdict {
        Verdict::Different if d.value > 0.0 => format!("{what} is measurably better"),
        Verdict::Different => format!("{what} is measurably worse"),
        Verdict::Equivalent => format!("equivalent within +-{} (the 90% interval lies inside it)", q.margin),
        Verdict::Undecided => format!(
            "no measurable difference, nor shown to be within +-{} (the 95% interval includes 0 and the 90% one \
             crosses the margin)",
            q.margin
        ),
    };
    format!(
        "{:+.3} macro AUROC, mean of {} seeds (paired 95% CI {:+.3} to {:+.3}; 90% CI {:+.3} to {:+.3}): {v}",
        d.value,
        p.seeds.len(),
        d.low,
        d.high,
        q.low90,
        q.high90
    )
}

#[cfg(test)]
mod tests {
    use trainer::experiment::SeedPooled;
    use trainer::metrics::{Equivalence, Estimate, Verdict};

    fn pooled(value: f64, low: f64, high: f64, low90: f64, high90: f64, verdict: Verdict) -> SeedPooled {
        let delta = Estimate { value, low, high };
        SeedPooled {
            seeds: vec![24, 25, 26],
            per_seed: vec![Some(delta); 3],
            pooled: Some(Equivalence { delta, low90, high90, margin: 0.01, verdict }),
            intervals: String::new(),
        }
    }

    #[test]
    fn verdict_lines_say_what_the_equivalence_test_found() {
        let v = |p: &SeedPooled| super::verdict(p, "pretraining");
        let better = v(&pooled(0.02, 0.01, 0.03, 0.012, 0.028, Verdict::Different));
        assert!(better.starts_with("+0.020 macro AUROC, mean of 3 seeds") && better.ends_with("measurably better"));
        assert!(v(&pooled(-0.02, -0.03, -0.01, -0.028, -0.012, Verdict::Different)).ends_with("measurably worse"));
        let same = v(&pooled(0.001, -0.006, 0.008, -0.005, 0.007, Verdict::Equivalent));
        assert!(same.contains("90% CI -0.005 to +0.007") && same.contains("equivalent within +-0.01"), "{same}");
        assert!(v(&pooled(0.004, -0.01, 0.02, -0.008, 0.016, Verdict::Undecided)).contains("no measurable difference"));
        let table =
            super::per_seed_table(&[("b minus a", &pooled(0.02, 0.01, 0.03, 0.012, 0.028, Verdict::Different))]);
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(table.contains("| seed 26 |") && table.contains("| +0.020 (+0.010 to +0.030) | +0.012 to +0.028 |"));
    }

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
