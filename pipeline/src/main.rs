//! The `pipeline` command line: parses arguments, reports progress, calls the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use pipeline::build::{self, BuildConfig, BuildSummary};
use pipeline::discover::Roots;
use pipeline::encode::MissingPolicy;
use pipeline::eval::EvalKind;
use pipeline::images::{ImageSource, RunOptions, Subset};
use pipeline::labels::{Labeler, SplitSource, Uncertain, Unlabeled};
use pipeline::link::MatchRule;
use pipeline::preprocess::Geometry;
use pipeline::synth::mimic_iv::MimicIvVersion;
use pipeline::synth::studies::Syntax;
use pipeline::synth::{self, ImageKinds, SynthConfig, SynthSummary};

/// See `mimalloc` in the workspace manifest for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// MIMIC-CXR + MIMIC-IV to a versioned training dataset, and a synthetic MIMIC archive for
/// trying it all without credentials.
#[derive(Debug, Parser)]
#[command(name = "pipeline", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a synthetic MIMIC-CXR / MIMIC-CXR-JPG / MIMIC-IV archive in the PhysioNet layout.
    Synth(SynthArgs),
    /// Build the dataset: link MIMIC-CXR images to MIMIC-IV stays, encode the EHR features,
    /// attach labels and splits, preprocess the images, and publish Parquet parts and image
    /// shards under a content-addressed version.
    Build(BuildArgs),
    /// Build CheXpert or NIH ChestX-ray14 as an evaluation dataset (same format as `build`,
    /// no EHR features): labels by name, official test sets, a seeded train/validate split.
    BuildEval(BuildEvalArgs),
    /// Publish a version whose image shards were built by separate `build --shard-index`
    /// runs; takes the same options as those runs (without --shard-index/--num-shards) and
    /// fails, listing them, if shards are missing.
    Merge(BuildArgs),
    /// Show what differs between two versions: settings, counts, rows added or removed, and
    /// columns whose values changed.
    Diff {
        /// The first version folder, OUT/<version>.
        a: PathBuf,
        /// The second version folder.
        b: PathBuf,
    },
    /// The data half of the demo: generate a small synthetic archive and build its dataset
    /// (`trainer demo` runs this, then pretrains and evaluates).
    Demo(DemoArgs),
    /// Re-check every file of a built version against its manifest (sha256, row counts).
    Verify {
        /// The version folder, OUT/<version>.
        dir: PathBuf,
    },
    /// List the versions built in an output folder.
    List {
        /// The output folder given to `build --out`.
        out: PathBuf,
    },
    /// Time `build` on a synthetic archive: the table stage (full-size tables) or the image
    /// stage (full-size DICOMs); prints images/s and peak memory.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Working folder; the generated archive is kept there and reused by later runs.
    #[arg(long, default_value = "out/bench")]
    dir: PathBuf,
    /// Subjects with chest X-rays (default: 90,000 for the table stage, about as many images
    /// as MIMIC-CXR; 40 for the image stage).
    #[arg(long)]
    subjects: Option<usize>,
    /// Stage to time: table (linkage and features, tables only) or images (decode and
    /// preprocess of full-size 16-bit uncompressed DICOMs).
    #[arg(long, default_value = "table", value_parser = ["table", "images"])]
    stage: String,
}

#[derive(Debug, Args)]
struct BuildEvalArgs {
    /// Which dataset: chexpert (train.csv/valid.csv of CheXpert-v1.0-small) or nih
    /// (Data_Entry_2017*.csv, train_val_list.txt, test_list.txt, images*/).
    #[arg(value_parser = ["chexpert", "nih"])]
    dataset: String,
    /// CheXpert: the folder holding CheXpert-v1.0-small/ (or that folder itself); NIH: the
    /// folder holding Data_Entry_2017.csv.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Output folder; the dataset goes to OUT/<version>/.
    #[arg(long)]
    out: PathBuf,
    /// Uncertain (-1) CheXpert labels become: zeros, ones, or ignore (null).
    #[arg(long, default_value = "zeros", value_parser = ["zeros", "ones", "ignore"])]
    uncertain: String,
    /// Fraction of training patients put in the validation split.
    #[arg(long, default_value_t = 0.1)]
    validate_fraction: f64,
    /// Seed of the patient-level train/validate split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per Parquet part and per image shard.
    #[arg(long, default_value_t = 4096)]
    shard_size: usize,
    /// Side of the square 8-bit images in the shards.
    #[arg(long, default_value_t = 256)]
    image_size: usize,
    /// Stop at the first unreadable image instead of listing it in rejects.parquet.
    #[arg(long)]
    fail_fast: bool,
    /// How image files enter the version id: fast (size, mtime, first 64 KiB) or full.
    #[arg(long, default_value = "fast", value_parser = ["fast", "full"])]
    verify_inputs: String,
    /// Image decoding threads (default: one per core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    workers: usize,
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// Folder holding the PhysioNet layout: [physionet.org/files/]{mimic-cxr,mimic-cxr-jpg,mimiciv}/<version>/.
    #[arg(long, value_name = "DIR")]
    mimic_root: Option<PathBuf>,
    /// The MIMIC-CXR (DICOM) version folder, overriding --mimic-root.
    #[arg(long, value_name = "DIR")]
    cxr_dir: Option<PathBuf>,
    /// The MIMIC-CXR-JPG version folder (metadata, labels, split), overriding --mimic-root.
    #[arg(long, value_name = "DIR")]
    cxr_jpg_dir: Option<PathBuf>,
    /// The MIMIC-IV version folder (with hosp/ or core/, and icu/), overriding --mimic-root.
    #[arg(long, value_name = "DIR")]
    mimic_iv_dir: Option<PathBuf>,
    /// Output folder; the dataset goes to OUT/<version>/.
    #[arg(long)]
    out: PathBuf,
    /// How a study is matched to a stay: date (calendar dates, as the paper's code) or
    /// datetime (ED registration to discharge; ICU stays from intime minus --icu-tolerance-hours).
    #[arg(long = "match", default_value = "date", value_parser = ["date", "datetime"])]
    match_rule: String,
    /// With --match datetime: hours before ICU admission that still count as in the stay.
    #[arg(long, default_value_t = 6.0)]
    icu_tolerance_hours: f64,
    /// Blank view or orientation: impute (most likely given the other, fitted on the training
    /// split), unknown (an extra column) or drop (the image).
    #[arg(long, default_value = "impute", value_parser = ["impute", "unknown", "drop"])]
    missing: String,
    /// Keep images whose patient has no sex recorded, or one other than M/F, encoded 0/0
    /// (the reference drops them; the cohort report counts both).
    #[arg(long)]
    keep_missing_sex: bool,
    /// Keep rare views (LPO, SWIMMERS, ...): all four view columns 0 and `view_other` 1, not
    /// imputed (the reference drops them).
    #[arg(long)]
    keep_rare_views: bool,
    /// Keep images whose study has no row in the label table, with null labels (the
    /// reference drops them: no label row means unlabelled, not negative).
    #[arg(long)]
    keep_unlabeled: bool,
    /// Report labeller whose labels to use.
    #[arg(long, default_value = "chexpert", value_parser = ["chexpert", "negbio"])]
    labels: String,
    /// Uncertain (-1) labels become: zeros (U-zeros, the reference), ones, or ignore (null).
    #[arg(long, default_value = "zeros", value_parser = ["zeros", "ones", "ignore"])]
    uncertain: String,
    /// A CSV with subject_id,split or dicom_id,split instead of the official split.
    #[arg(long, value_name = "FILE", conflicts_with = "resplit")]
    split_file: Option<PathBuf>,
    /// Re-split patients at random with this seed (fractions from --split-fractions).
    #[arg(long, value_name = "SEED")]
    resplit: Option<u64>,
    /// Train, validate and test fractions of subjects for --resplit.
    #[arg(long, default_value = "0.8,0.1,0.1")]
    split_fractions: String,
    /// Images per Parquet part and per image shard.
    #[arg(long, default_value_t = 4096)]
    shard_size: usize,
    /// Image files to preprocess into shards: auto (DICOM when the MIMIC-CXR project is
    /// present, else JPG), dicom, jpg, or none (the feature table only).
    #[arg(long, default_value = "auto", value_parser = ["auto", "dicom", "jpg", "none"])]
    images: String,
    /// Side of the square 8-bit images in the shards.
    #[arg(long, default_value_t = 256)]
    image_size: usize,
    /// How an image becomes a square: crop (the centred square, as the reference's resize
    /// and centre crop; a 3056x2544 film loses about 17% of its height) or letterbox (the
    /// whole film, padded with black).
    #[arg(long, default_value = "crop", value_parser = ["crop", "letterbox"])]
    geometry: String,
    /// Global histogram equalisation after the VOI, as MIMIC-CXR-JPG was made from the DICOMs
    /// (for --images dicom; the JPGs are equalised already).
    #[arg(long)]
    equalize: bool,
    /// Stop at the first unreadable image instead of listing it in rejects.parquet.
    #[arg(long)]
    fail_fast: bool,
    /// How image files enter the version id: fast (size, modification time and a sha256 of the
    /// first 64 KiB) or full (a sha256 of every byte; slow on the full archive).
    #[arg(long, default_value = "fast", value_parser = ["fast", "full"])]
    verify_inputs: String,
    /// Build only the image shards of subset I of --num-shards (shard u belongs to subset
    /// u % N), e.g. a Slurm array task's $SLURM_ARRAY_TASK_ID; `pipeline merge` then publishes.
    #[arg(long, value_name = "I", requires = "num_shards")]
    shard_index: Option<usize>,
    /// Number of subsets the image shards are split into for --shard-index.
    #[arg(long, value_name = "N", requires = "shard_index")]
    num_shards: Option<usize>,
    /// Image decoding threads (default: one per core). Memory in flight is about 4 images
    /// per thread plus one shard.
    #[arg(long, value_name = "N", default_value_t = 0)]
    workers: usize,
    /// Print the peak resident memory at the end (used by `pipeline bench`).
    #[arg(long, hide = true)]
    report_peak_memory: bool,
}

fn parse_fractions(s: &str) -> anyhow::Result<[f64; 3]> {
    let fr: Vec<f64> = s
        .split(',')
        .map(|s| s.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--split-fractions {s}: expected three numbers"))?;
    if fr.len() != 3 || fr.iter().any(|f| *f < 0.0) || fr.iter().sum::<f64>() <= 0.0 {
        bail!("--split-fractions {s}: expected three non-negative numbers (train,validate,test)");
    }
    Ok([fr[0], fr[1], fr[2]])
}

impl BuildArgs {
    fn resolve(&self) -> anyhow::Result<BuildConfig> {
        if self.mimic_root.is_none()
            && (self.mimic_iv_dir.is_none() || (self.cxr_dir.is_none() && self.cxr_jpg_dir.is_none()))
        {
            bail!("say where the data is: --mimic-root DIR, or --mimic-iv-dir with --cxr-jpg-dir / --cxr-dir");
        }
        if self.shard_size == 0 {
            bail!("--shard-size must be at least 1");
        }
        if !(8..=4096).contains(&self.image_size) {
            bail!("--image-size {}: expected 8 to 4096", self.image_size);
        }
        if !(0.0..=72.0).contains(&self.icu_tolerance_hours) {
            bail!("--icu-tolerance-hours {}: expected 0 to 72", self.icu_tolerance_hours);
        }
        Ok(BuildConfig {
            roots: Roots {
                mimic_root: self.mimic_root.clone(),
                cxr_dir: self.cxr_dir.clone(),
                cxr_jpg_dir: self.cxr_jpg_dir.clone(),
                mimic_iv_dir: self.mimic_iv_dir.clone(),
            },
            out: self.out.clone(),
            rule: match self.match_rule.as_str() {
                "date" => MatchRule::Date,
                _ => MatchRule::DateTime { icu_tolerance_s: (self.icu_tolerance_hours * 3600.0).round() as i64 },
            },
            missing: match self.missing.as_str() {
                "impute" => MissingPolicy::Impute,
                "unknown" => MissingPolicy::Unknown,
                _ => MissingPolicy::Drop,
            },
            drop_missing_sex: !self.keep_missing_sex,
            drop_rare_views: !self.keep_rare_views,
            labeler: if self.labels == "negbio" { Labeler::Negbio } else { Labeler::Chexpert },
            unlabeled: if self.keep_unlabeled { Unlabeled::Keep } else { Unlabeled::Drop },
            uncertain: match self.uncertain.as_str() {
                "ones" => Uncertain::Ones,
                "ignore" => Uncertain::Ignore,
                _ => Uncertain::Zeros,
            },
            split: match (&self.split_file, self.resplit) {
                (Some(f), _) => SplitSource::File(f.clone()),
                (None, Some(seed)) => SplitSource::Resplit { seed, fractions: parse_fractions(&self.split_fractions)? },
                (None, None) => SplitSource::Official,
            },
            shard_size: self.shard_size,
            images: match self.images.as_str() {
                "dicom" => ImageSource::Dicom,
                "jpg" => ImageSource::Jpg,
                "none" => ImageSource::None,
                _ => ImageSource::Auto,
            },
            image_size: self.image_size,
            geometry: if self.geometry == "letterbox" { Geometry::Letterbox } else { Geometry::Crop },
            equalize: self.equalize,
            verify_inputs_full: self.verify_inputs == "full",
            run: RunOptions {
                fail_fast: self.fail_fast,
                subset: match (self.shard_index, self.num_shards) {
                    (Some(index), Some(count)) => {
                        if count == 0 || index >= count {
                            bail!("--shard-index {index} must be below --num-shards {count}");
                        }
                        Some(Subset { index, count })
                    }
                    _ => None,
                },
                merge_only: false,
                workers: self.workers,
            },
        })
    }
}

/// What `build` and `merge` print: a summary, then the bare version id as the last line in
/// every case (scripts do `ver=$(pipeline build ... | tail -1)`).
fn build_lines(s: &BuildSummary) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(p) = &s.partial {
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
    if let (Some(c), None, false) = (&s.cohort, &s.partial, s.reused) {
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

fn print_build(s: &BuildSummary) {
    let mut out = std::io::stdout().lock();
    for line in build_lines(s) {
        let _ = writeln!(out, "{line}");
    }
}

#[derive(Debug, Args)]
struct SynthArgs {
    /// Folder to write the archive into (must be empty or absent, unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Number of subjects with chest X-rays (a quarter more exist only in MIMIC-IV).
    #[arg(long, default_value_t = 200)]
    subjects: usize,
    /// Random seed; the same seed and options give byte-identical archives.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// MIMIC-IV release layout to write: 1.0 (core/, ethnicity), 2.0/2.1 (hosp/, race),
    /// 2.2, 3.0 or 3.1 (adds admit_provider_id).
    #[arg(long = "mimic-iv", default_value = "2.2")]
    mimic_iv: String,
    /// Image files to write: dicom, jpg, both (dicom,jpg) or none (tables only).
    #[arg(long, default_value = "dicom,jpg")]
    images: String,
    /// Size of PA and lateral images as COLUMNSxROWS; portable AP images are a little shorter,
    /// as in MIMIC-CXR.
    #[arg(long, default_value = "512x512")]
    image_size: String,
    /// Generate chest X-rays for the subjects and stays of these real MIMIC-IV tables (e.g. the
    /// open demo) instead of a synthetic population; the tables are copied into the archive.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["subjects", "mimic_iv"])]
    from_mimic_iv: Option<PathBuf>,
    /// Fractions of subjects in train, validate and test.
    #[arg(long, default_value = "0.8,0.1,0.1")]
    split_fractions: String,
    /// DICOM transfer syntax: explicit (Explicit VR Little Endian), implicit, rle (RLE
    /// Lossless), or mixed (cycles through all three).
    #[arg(long, default_value = "explicit")]
    dicom_syntax: String,
    /// Replace an existing archive in --out.
    #[arg(long)]
    force: bool,
    /// What to write: mimic (MIMIC-CXR, MIMIC-CXR-JPG, MIMIC-IV), chexpert
    /// (CheXpert-v1.0-small, --subjects training patients) or nih (ChestX-ray14,
    /// --subjects patients). --image-size applies to all three.
    #[arg(long, default_value = "mimic", value_parser = ["mimic", "chexpert", "nih"])]
    dataset: String,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Working folder of the demo (replaced on each run).
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
    /// Subjects in the synthetic archive.
    #[arg(long, default_value_t = 200)]
    subjects: usize,
    /// Fractions of subjects in train, validate and test (the archive's official split).
    #[arg(long, default_value = "0.8,0.1,0.1")]
    split_fractions: String,
}

impl SynthArgs {
    fn resolve(&self) -> anyhow::Result<SynthConfig> {
        let mimic_iv = MimicIvVersion::parse(&self.mimic_iv).with_context(|| {
            format!("--mimic-iv {}: expected one of {}", self.mimic_iv, MimicIvVersion::SUPPORTED.join(", "))
        })?;
        let mut images = ImageKinds { dicom: false, jpg: false };
        for kind in self.images.split(',').map(str::trim) {
            match kind {
                "dicom" => images.dicom = true,
                "jpg" => images.jpg = true,
                "none" => {}
                other => bail!("--images: unknown kind {other:?}; expected dicom, jpg, dicom,jpg or none"),
            }
        }
        let image_size = synth::parse_size(&self.image_size)
            .with_context(|| format!("--image-size {}: expected COLUMNSxROWS, each at least 16", self.image_size))?;
        let fr = parse_fractions(&self.split_fractions)?;
        let syntaxes = match self.dicom_syntax.as_str() {
            "explicit" => vec![Syntax::ExplicitLittle],
            "implicit" => vec![Syntax::ImplicitLittle],
            "rle" => vec![Syntax::Rle],
            "mixed" => vec![Syntax::ExplicitLittle, Syntax::ImplicitLittle, Syntax::Rle],
            other => bail!("--dicom-syntax {other:?}: expected explicit, implicit, rle or mixed"),
        };
        if self.subjects == 0 {
            bail!("--subjects must be at least 1");
        }
        Ok(SynthConfig {
            out: self.out.clone(),
            subjects: self.subjects,
            seed: self.seed,
            mimic_iv,
            images,
            image_size,
            from_mimic_iv: self.from_mimic_iv.clone(),
            split_fractions: fr,
            syntaxes,
            force: self.force,
        })
    }
}

fn print_summary(s: &SynthSummary) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "synthetic archive: {}", s.out.display());
    let _ = writeln!(
        out,
        "  MIMIC-IV {}: {} patients; MIMIC-CXR: {} subjects, {} studies, {} images written",
        s.mimic_iv_version, s.patients, s.cxr_subjects, s.studies, s.images
    );
    let views: Vec<String> =
        s.view_counts.iter().map(|(v, n)| format!("{}={n}", if v.is_empty() { "(blank)" } else { v })).collect();
    let _ = writeln!(out, "  views: {}", views.join(" "));
    let rate = if s.seconds > 0.0 { s.images as f64 / s.seconds } else { 0.0 };
    let _ = writeln!(out, "  took {:.1} s ({rate:.0} images/s)", s.seconds);
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let progress = pipeline::progress::Stderr::default();
    match cli.command {
        Command::Synth(args) if args.dataset != "mimic" => {
            let size = synth::parse_size(&args.image_size)
                .with_context(|| format!("--image-size {}: expected COLUMNSxROWS", args.image_size))?;
            if args.out.exists() && fs_err::read_dir(&args.out)?.next().is_some() && !args.force {
                bail!("{} is not empty; pass --force to write into it", args.out.display());
            }
            let started = std::time::Instant::now();
            let s = if args.dataset == "nih" {
                synth::eval::write_nih(&args.out, args.subjects, args.seed, size)?
            } else {
                synth::eval::write_chexpert(&args.out, args.subjects, args.seed, size)?
            };
            println!(
                "synthetic {}: {} ({} patients, {} images) in {:.1} s",
                args.dataset,
                s.out.display(),
                s.patients,
                s.images,
                started.elapsed().as_secs_f64()
            );
        }
        Command::Synth(args) => {
            let cfg = args.resolve()?;
            let summary = synth::run(&cfg, &progress)?;
            print_summary(&summary);
        }
        Command::Build(args) => {
            let cfg = args.resolve()?;
            let summary = build::build(&cfg, &progress)?;
            print_build(&summary);
            if args.report_peak_memory {
                eprintln!("peak_memory_kib={}", pipeline::bench::peak_memory_kib().unwrap_or(0));
                for (step, seconds) in &summary.timings {
                    eprintln!("{}{step}={seconds:.3}", pipeline::bench::STEP_PREFIX);
                }
            }
        }
        Command::BuildEval(args) => {
            if args.shard_size == 0 || !(8..=4096).contains(&args.image_size) {
                bail!("--shard-size must be at least 1 and --image-size 8 to 4096");
            }
            let cfg = pipeline::eval::EvalConfig {
                kind: if args.dataset == "nih" { EvalKind::Nih } else { EvalKind::Chexpert },
                root: args.root,
                out: args.out,
                uncertain: match args.uncertain.as_str() {
                    "ones" => Uncertain::Ones,
                    "ignore" => Uncertain::Ignore,
                    _ => Uncertain::Zeros,
                },
                validate_fraction: args.validate_fraction,
                seed: args.seed,
                shard_size: args.shard_size,
                image_size: args.image_size,
                verify_inputs_full: args.verify_inputs == "full",
                run: RunOptions { fail_fast: args.fail_fast, subset: None, merge_only: false, workers: args.workers },
            };
            let s = pipeline::eval::build_eval(&cfg, &progress)?;
            if s.reused {
                println!("dataset {} already built with these inputs and settings: {}", s.version, s.dir.display());
            } else {
                println!("dataset {}: {}", s.version, s.dir.display());
                println!(
                    "  {} images listed, {} in the dataset, {} rejected, {} in neither split list, {} invalid ages",
                    s.listed, s.images, s.rejected, s.unlisted, s.invalid_ages
                );
                let splits: Vec<String> = s.splits.iter().map(|(k, n)| format!("{k} {n}")).collect();
                println!("  splits: {}", splits.join(", "));
            }
            println!("{}", s.version);
        }
        Command::Merge(args) => {
            if args.shard_index.is_some() {
                bail!("merge takes the build's options without --shard-index/--num-shards");
            }
            let mut cfg = args.resolve()?;
            cfg.run.merge_only = true;
            print_build(&build::build(&cfg, &progress)?);
        }
        Command::Diff { a, b } => {
            for line in pipeline::versions::diff(&a, &b)? {
                println!("{line}");
            }
        }
        Command::Verify { dir } => {
            let (checked, problems) = pipeline::versions::verify(&dir)?;
            if !problems.is_empty() {
                for p in &problems {
                    eprintln!("{}: {p}", dir.display());
                }
                bail!("{} of {checked} files failed verification", problems.len());
            }
            println!("{}: {checked} files verified", dir.display());
        }
        Command::List { out } => {
            for line in pipeline::versions::list(&out)? {
                println!("{line}");
            }
        }
        Command::Bench(args) => {
            let exe = std::env::current_exe().context("locating the pipeline executable")?;
            let (stage, subjects) = match args.stage.as_str() {
                "images" => (pipeline::bench::BenchStage::Images, args.subjects.unwrap_or(40)),
                _ => (pipeline::bench::BenchStage::Table, args.subjects.unwrap_or(90_000)),
            };
            eprintln!("bench: the {} stage, {subjects} subjects", args.stage);
            let r = pipeline::bench::run(&exe, &args.dir, subjects, stage)?;
            if let Some(s) = r.generate_seconds {
                println!("generated {} in {s:.1} s", r.archive.display());
            }
            let peak = r.build_peak_kib.map_or("unknown".to_string(), |k| format!("{:.0} MiB", k as f64 / 1024.0));
            let rate = r.images as f64 / r.build_seconds;
            if stage == pipeline::bench::BenchStage::Images {
                let mb = r.image_bytes as f64 / 1e6 / r.build_seconds;
                println!(
                    "build with images: {} images ({:.0} MB of DICOM) in {:.2} s wall = {rate:.1} images/s, {mb:.0} MB/s; peak memory {peak}",
                    r.images,
                    r.image_bytes as f64 / 1e6,
                    r.build_seconds
                );
            } else {
                println!(
                    "table stage: {} images in {:.2} s wall = {rate:.0} images/s; peak memory {peak}",
                    r.images, r.build_seconds
                );
            }
            for (step, seconds) in &r.steps {
                println!("  {seconds:>7.2} s  {step}");
            }
        }
        Command::Demo(args) => {
            let archive = args.out.join("synthetic-mimic");
            eprintln!("demo 1/2: generating a synthetic MIMIC archive in {}", archive.display());
            let cfg = SynthConfig {
                image_size: (256, 256),
                split_fractions: parse_fractions(&args.split_fractions)?,
                ..SynthConfig::new(archive, args.subjects, 24)
            };
            let summary = synth::run(&cfg, &progress)?;
            print_summary(&summary);
            let datasets = args.out.join("datasets");
            eprintln!("demo 2/2: building the dataset (table, image shards, report) in {}", datasets.display());
            let build_cfg = BuildArgs {
                mimic_root: Some(cfg.out.clone()),
                cxr_dir: None,
                cxr_jpg_dir: None,
                mimic_iv_dir: None,
                out: datasets,
                match_rule: "date".into(),
                icu_tolerance_hours: 6.0,
                missing: "impute".into(),
                keep_missing_sex: false,
                keep_rare_views: false,
                keep_unlabeled: false,
                labels: "chexpert".into(),
                uncertain: "zeros".into(),
                split_file: None,
                resplit: None,
                split_fractions: "0.8,0.1,0.1".into(),
                shard_size: 4096,
                images: "auto".into(),
                image_size: 256,
                geometry: "crop".into(),
                equalize: false,
                fail_fast: false,
                verify_inputs: "fast".into(),
                shard_index: None,
                num_shards: None,
                workers: 0,
                report_peak_memory: false,
            }
            .resolve()?;
            let built = build::build(&build_cfg, &progress)?;
            print_build(&built);
            eprintln!(
                "next: cargo run --release -p trainer -- run --dataset {} --out {} (or `trainer demo`, which runs this \
                 step too and then pretrains and evaluates with and without EHR)",
                built.dir.display(),
                args.out.join("run").display()
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_of_a_build_is_the_bare_version_id() {
        let fresh = BuildSummary {
            version: "0123456789abcdef".into(),
            dir: PathBuf::from("out/0123456789abcdef"),
            reused: false,
            cohort: Some(pipeline::report::Cohort::default()),
            partial: None,
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
