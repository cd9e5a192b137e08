//! The `pipeline` command line: parses arguments, reports progress, calls the library.

use std::process::ExitCode;

use crate::bench::BenchStage;
use anyhow::Context;
use clap::Parser;
use cxr_dataset::log::Reporter;
use pipeline::build::{self, BuildConfig, BuildSummary};
use pipeline::images::RunOptions;
use pipeline::sources::discover::Roots;
use synth::{SynthConfig, SynthSummary};

mod bench;
mod cli;
use cli::{Cli, Command, SynthDataset, VerifyInputs, parse_fractions};

/// See `mimalloc` in the workspace manifest for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What `build` and `merge` print: a summary, then the bare version id as the last line in
/// every case (scripts do `ver=$(pipeline build ... | tail -1)`).
fn build_lines(s: &BuildSummary) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(plan) = &s.plan {
        lines.push(format!(
            "dataset {v}: planned in {}; run the tasks as `pipeline build --out OUT --from-plan {v} --shard-index I \
             --num-shards N`, then `pipeline merge --out OUT --from-plan {v}`",
            plan.display(),
            v = s.version
        ));
    } else if let Some(p) = &s.partial {
        lines.push(format!(
            "dataset {}: shard subset {} of {} done ({} shards built now; {} of {} shards committed); \
             run `pipeline merge` with the same options once every subset is done",
            s.version, p.subset.index, p.subset.count, p.built, p.committed, p.units
        ));
    } else if s.reused {
        lines.push(format!("dataset {} already built with these inputs and settings: {}", s.version, s.dir.display()));
    } else {
        lines.push(format!("dataset {}: {}", s.version, s.dir.display()));
    }
    if let (Some(c), None, false, None) = (&s.cohort, &s.partial, s.reused, &s.plan) {
        lines.push(format!(
            "  {} images read, {} out ({} dropped as unlabelled, {} for missing sex, {} for a sex other than M/F, \
             {} for rare views, {} for missing view/orientation)",
            c.images_read,
            c.images_out,
            c.dropped_unlabeled,
            c.dropped_missing_sex,
            c.dropped_other_sex,
            c.dropped_rare_view,
            c.dropped_missing_scan
        ));
        lines.push(format!("  linked: {} to an admission, {} to an ICU stay", c.linked_admission, c.linked_icu));
        if c.rejected_images > 0 {
            lines.push(format!("  rejected images: {} (see rejects.parquet)", c.rejected_images));
        }
        let splits: Vec<String> =
            c.splits.iter().map(|(k, v)| format!("{k} {} images / {} subjects", v.images, v.subjects)).collect();
        lines.push(format!("  splits: {}", splits.join(", ")));
        lines.push(format!("  report: {}", s.dir.join(build::REPORT_MD).display()));
    }
    lines.push(s.version.clone());
    lines
}

/// [`cxr_dataset::log::say`]: a failed write is an I/O error (exit 5).
fn say<S: std::fmt::Display>(lines: impl IntoIterator<Item = S>) -> Result<(), pipeline::Error> {
    Ok(cxr_dataset::log::say(lines)?)
}

fn print_build(s: &BuildSummary) -> Result<(), pipeline::Error> {
    say(build_lines(s))
}

fn print_summary(s: &SynthSummary) -> Result<(), pipeline::Error> {
    let views: Vec<String> =
        s.view_counts.iter().map(|(v, n)| format!("{}={n}", if v.is_empty() { "(blank)" } else { v })).collect();
    let rate = if s.seconds > 0.0 { s.images as f64 / s.seconds } else { 0.0 };
    say([
        format!("synthetic archive: {}", s.out.display()),
        format!(
            "  MIMIC-IV {}: {} patients; MIMIC-CXR: {} subjects, {} studies, {} images written",
            s.mimic_iv_version, s.patients, s.cxr_subjects, s.studies, s.images
        ),
        format!("  views: {}", views.join(" ")),
        format!("  took {:.1} s ({rate:.0} images/s)", s.seconds),
    ])
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let progress = Reporter::new(cli.log);
    match cli.command {
        Command::Synth(args) => synth_archive(&args, &progress),
        Command::Build(args) => build_dataset(&args, &progress),
        Command::BuildEval(args) => build_eval(args, &progress),
        Command::Merge(args) => merge(&args, &progress),
        Command::Diff { a, b } => {
            say(build::versions::diff(&a, &b)?)?;
            Ok(())
        }
        Command::Verify { dir } => verify(&dir, &progress),
        Command::List { out } => {
            say(build::versions::list(&out)?)?;
            Ok(())
        }
        Command::Bench(args) => bench(&args, &progress),
        Command::Demo(args) => demo(&args, &progress),
    }
}

/// `pipeline synth`: a MIMIC archive, or a CheXpert or NIH tree.
fn synth_archive(args: &cli::SynthArgs, progress: &Reporter) -> anyhow::Result<()> {
    let size = synth::parse_size(&args.image_size).ok_or_else(|| {
        pipeline::Error::Config(format!("--image-size {}: expected COLUMNSxROWS, each at least 16", args.image_size))
    })?;
    let write_eval = match args.dataset {
        SynthDataset::Mimic => {
            print_summary(&synth::run(&args.resolve()?, progress)?)?;
            return Ok(());
        }
        SynthDataset::Chexpert => synth::eval::write_chexpert,
        SynthDataset::Nih => synth::eval::write_nih,
    };
    if args.out.exists() && fs_err::read_dir(&args.out)?.next().is_some() && !args.force {
        return Err(pipeline::Error::Config(format!(
            "{} is not empty; pass --force to write into it",
            args.out.display()
        ))
        .into());
    }
    let started = std::time::Instant::now();
    let s = write_eval(&args.out, args.subjects, args.seed, size)?;
    let name = if args.dataset == SynthDataset::Nih { "nih" } else { "chexpert" };
    say([format!(
        "synthetic {name}: {} ({} patients, {} images) in {:.1} s",
        s.out.display(),
        s.patients,
        s.images,
        started.elapsed().as_secs_f64()
    )])?;
    Ok(())
}

/// `pipeline build`.
fn build_dataset(args: &cli::BuildArgs, progress: &Reporter) -> anyhow::Result<()> {
    let summary = match &args.from_plan {
        Some(version) => build::build_from_plan(&args.out, version, args.run_options()?, progress)?,
        None => build::build(&args.resolve()?, progress)?,
    };
    print_build(&summary)?;
    if args.report_peak_memory {
        // What `pipeline bench` reads from its child, whatever --log says.
        eprintln!("peak_memory_kib={}", bench::peak_memory_kib().unwrap_or(0));
        for (step, seconds) in &summary.timings {
            eprintln!("{}{step}={seconds:.3}", bench::STEP_PREFIX);
        }
    }
    Ok(())
}

/// `pipeline build-eval`.
fn build_eval(args: cli::BuildEvalArgs, progress: &Reporter) -> anyhow::Result<()> {
    if args.shard_size == 0 || !(8..=4096).contains(&args.image_size) {
        return Err(pipeline::Error::Config("--shard-size must be at least 1 and --image-size 8 to 4096".into()).into());
    }
    let cfg = pipeline::eval::EvalConfig {
        kind: args.dataset,
        root: args.root,
        out: args.out,
        uncertain: args.uncertain,
        validate_fraction: args.validate_fraction,
        seed: args.seed,
        shard_size: args.shard_size,
        image_size: args.image_size,
        verify_inputs_full: args.verify_inputs == VerifyInputs::Full,
        run: RunOptions { fail_fast: args.fail_fast, workers: args.workers, ..RunOptions::default() },
    };
    let s = pipeline::eval::build_eval(&cfg, progress)?;
    if s.reused {
        say([format!("dataset {} already built with these inputs and settings: {}", s.version, s.dir.display())])?;
    } else {
        say([format!("dataset {}: {}", s.version, s.dir.display())])?;
        say([format!(
            "  {} images listed, {} in the dataset, {} rejected, {} in neither split list, {} invalid ages",
            s.listed, s.images, s.rejected, s.unlisted, s.invalid_ages
        )])?;
        let splits: Vec<String> = s.splits.iter().map(|(k, n)| format!("{k} {n}")).collect();
        say([format!("  splits: {}", splits.join(", "))])?;
    }
    say([&s.version])?;
    Ok(())
}

/// `pipeline merge`.
fn merge(args: &cli::BuildArgs, progress: &Reporter) -> anyhow::Result<()> {
    if args.shard_index.is_some() {
        return Err(pipeline::Error::Config(
            "merge takes the build's options without --shard-index/--num-shards".into(),
        )
        .into());
    }
    if let Some(version) = &args.from_plan {
        let run = RunOptions { merge_only: true, ..args.run_options()? };
        print_build(&build::build_from_plan(&args.out, version, run, progress)?)?;
        return Ok(());
    }
    let mut cfg = args.resolve()?;
    cfg.run.merge_only = true;
    print_build(&build::build(&cfg, progress)?)?;
    Ok(())
}

/// `pipeline verify`.
fn verify(dir: &std::path::Path, progress: &Reporter) -> anyhow::Result<()> {
    let (checked, problems) = build::versions::verify(dir)?;
    if !problems.is_empty() {
        for p in &problems {
            progress.line(&format!("{}: {p}", dir.display()));
        }
        let message = format!("{} of {checked} files failed verification", problems.len());
        return Err(pipeline::Error::input(dir, message).into());
    }
    say([format!("{}: {checked} files verified", dir.display())])?;
    Ok(())
}

/// `pipeline bench`.
fn bench(args: &cli::BenchArgs, progress: &Reporter) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the pipeline executable")?;
    let (stage, subjects, name) = match args.stage {
        BenchStage::Images => (args.stage, args.subjects.unwrap_or(40), "images"),
        BenchStage::Table => (args.stage, args.subjects.unwrap_or(90_000), "table"),
    };
    progress.line(&format!("bench: the {name} stage, {subjects} subjects"));
    let r = bench::run(&exe, &args.dir, subjects, stage)?;
    if let Some(s) = r.generate_seconds {
        say([format!("generated {} in {s:.1} s", r.archive.display())])?;
    }
    let peak = r.build_peak_kib.map_or("unknown".to_string(), |k| format!("{:.0} MiB", k as f64 / 1024.0));
    let rate = r.images as f64 / r.build_seconds;
    if stage == BenchStage::Images {
        let mb = r.image_bytes as f64 / 1e6 / r.build_seconds;
        say([format!(
            "build with images: {} images ({:.0} MB of DICOM) in {:.2} s wall = {rate:.1} images/s, {mb:.0} MB/s; peak memory {peak}",
            r.images,
            r.image_bytes as f64 / 1e6,
            r.build_seconds
        )])?;
    } else {
        say([format!(
            "table stage: {} images in {:.2} s wall = {rate:.0} images/s; peak memory {peak}",
            r.images, r.build_seconds
        )])?;
    }
    for (step, seconds) in &r.steps {
        say([format!("  {seconds:>7.2} s  {step}")])?;
    }
    Ok(())
}

/// `pipeline demo`: the synthetic archive, then its dataset built with the reference's settings.
fn demo(args: &cli::DemoArgs, progress: &Reporter) -> anyhow::Result<()> {
    let archive = args.out.join("synthetic-mimic");
    progress.line(&format!("demo 1/2: generating a synthetic MIMIC archive in {}", archive.display()));
    let cfg = SynthConfig {
        image_size: (256, 256),
        split_fractions: parse_fractions(&args.split_fractions)?,
        ..SynthConfig::new(archive, args.subjects, 24)
    };
    let summary = synth::run(&cfg, progress)?;
    print_summary(&summary)?;
    let datasets = args.out.join("datasets");
    progress.line(&format!("demo 2/2: building the dataset (table, image shards, report) in {}", datasets.display()));
    let roots = Roots { mimic_root: Some(cfg.out.clone()), ..Roots::default() };
    let build_cfg = BuildConfig::new(roots, datasets);
    let built = build::build(&build_cfg, progress)?;
    print_build(&built)?;
    progress.line(&format!(
        "next: cargo run --release -p trainer-cli -- run --dataset {} --out {} (or `trainer demo`, which runs this \
         step too and then pretrains and evaluates with and without EHR)",
        built.dir.display(),
        args.out.join("run").display()
    ));
    Ok(())
}

/// The exit status of a failed run: the kind of the first pipeline error in the chain (1 for
/// anything else).
fn exit_code(err: &anyhow::Error) -> u8 {
    cxr_dataset::log::exit_status(err.as_ref(), pipeline::Error::exit_code)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // dicom-rs reports odd files through `tracing`: its warnings go where ours go.
    cxr_dataset::log::forward_library_warnings(cli.log);
    Reporter::new(cli.log).exit(run(cli), exit_code)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use cxr_dataset::log::LogMode;
    use pipeline::images::Subset;
    use std::io::Write;
    use std::path::PathBuf;

    /// A plan is made once (not per task), and a task from a plan takes no input options.
    #[test]
    fn plan_options_do_not_mix_with_what_they_replace() {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("pipeline").chain(args.iter().copied()));
        assert!(
            parse(&["build", "--mimic-root", "a", "--out", "o", "--plan", "--shard-index", "0", "--num-shards", "2"])
                .is_err()
        );
        assert!(parse(&["build", "--mimic-root", "a", "--out", "o", "--from-plan", "v"]).is_err());
        let task =
            parse(&["build", "--out", "o", "--from-plan", "v", "--shard-index", "1", "--num-shards", "4"]).unwrap();
        let Command::Build(args) = task.command else { panic!("a build") };
        assert_eq!(args.from_plan.as_deref(), Some("v"));
        assert_eq!(args.run_options().unwrap().subset, Some(Subset { index: 1, count: 4 }));
        assert!(parse(&["merge", "--out", "o", "--from-plan", "v"]).is_ok());
    }

    /// A closed standard output is an I/O error (exit 5), not a silent success.
    #[test]
    fn a_failed_write_to_standard_output_is_an_io_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let err = pipeline::Error::from(cxr_dataset::log::say_to(&mut Closed, ["4a2e3a4175934b6d"]).unwrap_err());
        assert_eq!(err.exit_code(), 5);
        assert!(err.to_string().contains("writing to standard output"), "{err}");
        let mut buf = Vec::new();
        cxr_dataset::log::say_to(&mut buf, ["a", "b"]).unwrap();
        assert_eq!(buf, b"a\nb\n");
    }

    /// Failures exit with their kind's status: a setting 3, a missing input 4, a bad flag value
    /// is clap's 2.
    #[test]
    fn failures_exit_with_their_kinds_status() {
        let status = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("pipeline").chain(args.iter().copied())).unwrap();
            exit_code(&run(cli).unwrap_err())
        };
        let dir = std::env::temp_dir().join(format!("pipeline-exit-{}", std::process::id()));
        let out = dir.to_str().unwrap();
        assert_eq!(status(&["build", "--mimic-root", out, "--out", out, "--shard-size", "0"]), 3);
        assert_eq!(status(&["build", "--mimic-root", out, "--out", out, "--shard-index", "3", "--num-shards", "2"]), 3);
        assert_eq!(status(&["verify", out]), 4);
        assert_eq!(status(&["build", "--mimic-root", out, "--out", out]), 4, "no archive there");
        let bad = Cli::try_parse_from(["pipeline", "build", "--mimic-root", out, "--out", out, "--images", "png"]);
        assert_eq!(bad.unwrap_err().exit_code(), 2);
        let bad = Cli::try_parse_from(["pipeline", "--log", "xml", "verify", out]);
        assert_eq!(bad.unwrap_err().exit_code(), 2);
        assert_eq!(Cli::try_parse_from(["pipeline", "verify", out, "--log", "json"]).unwrap().log, LogMode::Json);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_last_line_of_a_build_is_the_bare_version_id() {
        let fresh = BuildSummary {
            version: "0123456789abcdef".into(),
            dir: PathBuf::from("out/0123456789abcdef"),
            reused: false,
            cohort: Some(build::report::Cohort::default()),
            partial: None,
            plan: None,
            timings: Vec::new(),
        };
        let reused = BuildSummary { reused: true, cohort: None, ..fresh.clone() };
        let partial = BuildSummary {
            partial: Some(build::Partial { subset: Subset { index: 0, count: 2 }, built: 1, committed: 1, units: 2 }),
            ..fresh.clone()
        };
        for s in [&fresh, &reused, &partial] {
            let lines = build_lines(s);
            assert!(lines.len() > 1);
            assert_eq!(lines.last().map(String::as_str), Some("0123456789abcdef"), "{lines:?}");
        }
        assert!(build_lines(&reused)[0].contains("already built"));
        assert!(build_lines(&fresh).iter().any(|l| l.contains("dropped as unlabelled")));
    }
}
