//! The `pipeline` command line's arguments: clap structs, every choice a `ValueEnum`, each
//! resolved once into the library's typed settings.

use std::path::PathBuf;

use crate::bench::BenchStage;
use clap::{Args, Parser, Subcommand, ValueEnum};
use cxr_dataset::Uncertain;
use cxr_dataset::log::LogMode;
use pipeline::build::BuildConfig;
use pipeline::build::encode::MissingPolicy;
use pipeline::build::labels::{Labeler, SplitSource, Unlabeled};
use pipeline::build::link::MatchRule;
use pipeline::eval::EvalKind;
use pipeline::images::preprocess::Geometry;
use pipeline::images::{ImageSource, RunOptions, Subset};
use pipeline::sources::discover::Roots;
use synth::mimic_iv::MimicIvVersion;
use synth::studies::Syntax;
use synth::{ImageKinds, SynthConfig};

/// The exit statuses, in `--help` (see `pipeline::Error::exit_code`).
const EXIT_CODES: &str = "Exit status: 0 done; 1 internal error; 2 usage (unknown flag or value); 3 invalid \
setting; 4 unusable input (a missing or malformed table, folder, image or built version); 5 I/O.";

/// How a study is matched to a stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MatchArg {
    /// Calendar dates, as the paper's code.
    Date,
    /// ED registration to discharge; ICU stays from intime minus --icu-tolerance-hours.
    Datetime,
}

/// How image files enter the version id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyInputs {
    /// Size and the sha256 that the project's SHA256SUMS.txt lists (nothing is read); for a
    /// file it does not list, a sha256 of its first and last 64 KiB.
    Fast,
    /// A sha256 of every byte (slow on the full archive), checked against SHA256SUMS.txt:
    /// a file that differs stops the build.
    Full,
}

/// The DICOM transfer syntax of a synthetic archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DicomSyntax {
    /// Explicit VR Little Endian.
    Explicit,
    /// Implicit VR Little Endian.
    Implicit,
    /// RLE Lossless.
    Rle,
    /// Cycles through all three.
    Mixed,
}

/// Which synthetic archive to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SynthDataset {
    /// MIMIC-CXR, MIMIC-CXR-JPG and MIMIC-IV in the PhysioNet layout.
    Mimic,
    /// CheXpert-v1.0-small (--subjects training patients).
    Chexpert,
    /// NIH ChestX-ray14 (--subjects patients).
    Nih,
}

/// MIMIC-CXR + MIMIC-IV to a versioned training dataset, and a synthetic MIMIC archive for
/// trying it all without credentials.
#[derive(Debug, Parser)]
#[command(name = "pipeline", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// How progress and log lines are written to standard error: human (a status line on a
    /// terminal, a line every 10% otherwise), quiet (errors only) or json (one JSON object a
    /// line). Results go to standard output in every mode.
    #[arg(long, global = true, default_value = "human", value_parser = log_values())]
    pub log: LogMode,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
pub struct BenchArgs {
    /// Working folder; the generated archive is kept there and reused by later runs.
    #[arg(long, default_value = "out/bench")]
    pub dir: PathBuf,
    /// Subjects with chest X-rays (default: 90,000 for the table stage, about as many images
    /// as MIMIC-CXR; 40 for the image stage).
    #[arg(long)]
    pub subjects: Option<usize>,
    /// Stage to time.
    #[arg(long, value_enum, default_value_t = BenchStage::Table)]
    pub stage: BenchStage,
}

#[derive(Debug, Args)]
pub struct BuildEvalArgs {
    /// Which dataset: chexpert (train.csv/valid.csv of CheXpert-v1.0-small) or nih
    /// (Data_Entry_2017*.csv, train_val_list.txt, test_list.txt, images*/).
    #[arg(value_enum)]
    pub dataset: EvalKind,
    /// CheXpert: the folder holding CheXpert-v1.0-small/ (or that folder itself); NIH: the
    /// folder holding Data_Entry_2017.csv.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Output folder; the dataset goes to OUT/<version>/.
    #[arg(long)]
    pub out: PathBuf,
    /// What uncertain (-1) CheXpert labels become.
    #[arg(long, value_enum, default_value_t = Uncertain::Zeros)]
    pub uncertain: Uncertain,
    /// Fraction of training patients put in the validation split.
    #[arg(long, default_value_t = 0.1)]
    pub validate_fraction: f64,
    /// Seed of the patient-level train/validate split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per Parquet part and per image shard.
    #[arg(long, default_value_t = 4096)]
    pub shard_size: usize,
    /// Side of the square 8-bit images in the shards.
    #[arg(long, default_value_t = 256)]
    pub image_size: usize,
    /// Stop at the first unreadable image instead of listing it in rejects.parquet.
    #[arg(long)]
    pub fail_fast: bool,
    /// How image files enter the version id.
    #[arg(long, value_enum, default_value_t = VerifyInputs::Fast)]
    pub verify_inputs: VerifyInputs,
    /// Image decoding threads (default: one per core).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub workers: usize,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Folder holding the PhysioNet layout: [physionet.org/files/]{mimic-cxr,mimic-cxr-jpg,mimiciv}/<version>/.
    #[arg(long, value_name = "DIR")]
    pub mimic_root: Option<PathBuf>,
    /// The MIMIC-CXR (DICOM) version folder, overriding --mimic-root.
    #[arg(long, value_name = "DIR")]
    pub cxr_dir: Option<PathBuf>,
    /// The MIMIC-CXR-JPG version folder (metadata, labels, split), overriding --mimic-root.
    #[arg(long, value_name = "DIR")]
    pub cxr_jpg_dir: Option<PathBuf>,
    /// The MIMIC-IV version folder (with hosp/ or core/, and icu/), overriding --mimic-root.
    #[arg(long, value_name = "DIR")]
    pub mimic_iv_dir: Option<PathBuf>,
    /// Output folder; the dataset goes to OUT/<version>/.
    #[arg(long)]
    pub out: PathBuf,
    /// How a study is matched to a stay.
    #[arg(long = "match", value_enum, default_value_t = MatchArg::Date)]
    pub match_rule: MatchArg,
    /// With --match datetime: hours before ICU admission that still count as in the stay.
    #[arg(long, default_value_t = 6.0)]
    pub icu_tolerance_hours: f64,
    /// What a blank view or orientation becomes.
    #[arg(long, value_enum, default_value_t = MissingPolicy::Impute)]
    pub missing: MissingPolicy,
    /// Keep images whose patient has no sex recorded, or one other than M/F, encoded 0/0
    /// (the reference drops them; the cohort report counts both).
    #[arg(long)]
    pub keep_missing_sex: bool,
    /// Keep rare views (LPO, SWIMMERS, ...): all four view columns 0 and `view_other` 1, not
    /// imputed (the reference drops them).
    #[arg(long)]
    pub keep_rare_views: bool,
    /// Keep images whose study has no row in the label table, with null labels (the
    /// reference drops them: no label row means unlabelled, not negative).
    #[arg(long)]
    pub keep_unlabeled: bool,
    /// Report labeller whose labels to use.
    #[arg(long, value_enum, default_value_t = Labeler::Chexpert)]
    pub labels: Labeler,
    /// What uncertain (-1) labels become (zeros: U-zeros, the reference).
    #[arg(long, value_enum, default_value_t = Uncertain::Zeros)]
    pub uncertain: Uncertain,
    /// A CSV with subject_id,split or dicom_id,split instead of the official split.
    #[arg(long, value_name = "FILE", conflicts_with = "resplit")]
    pub split_file: Option<PathBuf>,
    /// Re-split patients at random with this seed (fractions from --split-fractions).
    #[arg(long, value_name = "SEED")]
    pub resplit: Option<u64>,
    /// Train, validate and test fractions of subjects for --resplit.
    #[arg(long, default_value = "0.8,0.1,0.1")]
    pub split_fractions: String,
    /// Images per Parquet part and per image shard.
    #[arg(long, default_value_t = 4096)]
    pub shard_size: usize,
    /// Image files to preprocess into shards.
    #[arg(long, value_enum, default_value_t = ImageSource::Auto)]
    pub images: ImageSource,
    /// Side of the square 8-bit images in the shards.
    #[arg(long, default_value_t = 256)]
    pub image_size: usize,
    /// How an image becomes a square (crop: as the reference's resize and centre crop).
    #[arg(long, value_enum, default_value_t = Geometry::Crop)]
    pub geometry: Geometry,
    /// Global histogram equalisation after the VOI, as MIMIC-CXR-JPG was made from the DICOMs
    /// (for --images dicom; the JPGs are equalised already).
    #[arg(long)]
    pub equalize: bool,
    /// Stop at the first unreadable image instead of listing it in rejects.parquet.
    #[arg(long)]
    pub fail_fast: bool,
    /// How image files enter the version id.
    #[arg(long, value_enum, default_value_t = VerifyInputs::Fast)]
    pub verify_inputs: VerifyInputs,
    /// Build only the image shards of subset I of --num-shards (shard u belongs to subset
    /// u % N), e.g. a Slurm array task's $SLURM_ARRAY_TASK_ID; `pipeline merge` then publishes.
    #[arg(long, value_name = "I", requires = "num_shards")]
    pub shard_index: Option<usize>,
    /// Number of subsets the image shards are split into for --shard-index.
    #[arg(long, value_name = "N", requires = "shard_index")]
    pub num_shards: Option<usize>,
    /// For a cluster: run the table stage and fingerprint the images once, write the build
    /// plan into OUT/.tmp-<version>/plan/ and print the version; then each task runs
    /// `build --out OUT --from-plan VERSION --shard-index I --num-shards N` and one
    /// `merge --out OUT --from-plan VERSION` publishes.
    #[arg(long, conflicts_with_all = ["shard_index", "from_plan"])]
    pub plan: bool,
    /// Build (with --shard-index) or publish (merge) the planned version VERSION: nothing is
    /// read but the plan and the images of this task's shards; the input and image options
    /// are the plan's.
    #[arg(long, value_name = "VERSION", conflicts_with_all = ["mimic_root", "cxr_dir", "cxr_jpg_dir", "mimic_iv_dir"])]
    pub from_plan: Option<String>,
    /// Image decoding threads (default: one per core). Memory in flight is about 4 images
    /// per thread plus one shard.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub workers: usize,
    /// Print the peak resident memory at the end (used by `pipeline bench`).
    #[arg(long, hide = true)]
    pub report_peak_memory: bool,
}

pub fn parse_fractions(s: &str) -> anyhow::Result<[f64; 3]> {
    let fr: Vec<f64> = s
        .split(',')
        .map(|s| s.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| pipeline::Error::Config(format!("--split-fractions {s}: expected three numbers")))?;
    if fr.len() != 3 || fr.iter().any(|f| *f < 0.0) || fr.iter().sum::<f64>() <= 0.0 {
        return Err(pipeline::Error::Config(format!(
            "--split-fractions {s}: expected three non-negative numbers (train,validate,test)"
        ))
        .into());
    }
    Ok([fr[0], fr[1], fr[2]])
}

impl BuildArgs {
    pub fn resolve(&self) -> anyhow::Result<BuildConfig> {
        if self.mimic_root.is_none()
            && (self.mimic_iv_dir.is_none() || (self.cxr_dir.is_none() && self.cxr_jpg_dir.is_none()))
        {
            return Err(pipeline::Error::Config(
                "say where the data is: --mimic-root DIR, or --mimic-iv-dir with --cxr-jpg-dir / --cxr-dir".into(),
            )
            .into());
        }
        if self.shard_size == 0 {
            return Err(pipeline::Error::Config("--shard-size must be at least 1".into()).into());
        }
        if !(8..=4096).contains(&self.image_size) {
            return Err(pipeline::Error::Config(format!("--image-size {}: expected 8 to 4096", self.image_size)).into());
        }
        if !(0.0..=72.0).contains(&self.icu_tolerance_hours) {
            return Err(pipeline::Error::Config(format!(
                "--icu-tolerance-hours {}: expected 0 to 72",
                self.icu_tolerance_hours
            ))
            .into());
        }
        Ok(BuildConfig {
            roots: Roots {
                mimic_root: self.mimic_root.clone(),
                cxr_dir: self.cxr_dir.clone(),
                cxr_jpg_dir: self.cxr_jpg_dir.clone(),
                mimic_iv_dir: self.mimic_iv_dir.clone(),
            },
            out: self.out.clone(),
            rule: match self.match_rule {
                MatchArg::Date => MatchRule::Date,
                MatchArg::Datetime => {
                    MatchRule::DateTime { icu_tolerance_s: (self.icu_tolerance_hours * 3600.0).round() as i64 }
                }
            },
            missing: self.missing,
            drop_missing_sex: !self.keep_missing_sex,
            drop_rare_views: !self.keep_rare_views,
            labeler: self.labels,
            unlabeled: if self.keep_unlabeled { Unlabeled::Keep } else { Unlabeled::Drop },
            uncertain: self.uncertain,
            split: match (&self.split_file, self.resplit) {
                (Some(f), _) => SplitSource::File(f.clone()),
                (None, Some(seed)) => SplitSource::Resplit { seed, fractions: parse_fractions(&self.split_fractions)? },
                (None, None) => SplitSource::Official,
            },
            shard_size: self.shard_size,
            images: self.images,
            image_size: self.image_size,
            geometry: self.geometry,
            equalize: self.equalize,
            verify_inputs_full: self.verify_inputs == VerifyInputs::Full,
            run: self.run_options()?,
        })
    }

    /// How the image stage runs: --fail-fast, --shard-index/--num-shards, --workers, --plan.
    pub fn run_options(&self) -> anyhow::Result<RunOptions> {
        Ok(RunOptions {
            fail_fast: self.fail_fast,
            subset: match (self.shard_index, self.num_shards) {
                (Some(index), Some(count)) => {
                    if count == 0 || index >= count {
                        return Err(pipeline::Error::Config(format!(
                            "--shard-index {index} must be below --num-shards {count}"
                        ))
                        .into());
                    }
                    Some(Subset { index, count })
                }
                _ => None,
            },
            merge_only: false,
            workers: self.workers,
            plan_only: self.plan,
        })
    }
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Folder to write the archive into (must be empty or absent, unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of subjects with chest X-rays (a quarter more exist only in MIMIC-IV).
    #[arg(long, default_value_t = 200)]
    pub subjects: usize,
    /// Random seed; the same seed and options give byte-identical archives.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// MIMIC-IV release layout to write: 1.0 (core/, ethnicity), 2.0/2.1 (hosp/, race),
    /// 2.2, 3.0 or 3.1 (adds admit_provider_id).
    #[arg(long = "mimic-iv", default_value = "2.2")]
    pub mimic_iv: String,
    /// Image files to write: dicom, jpg, both (dicom,jpg) or none (tables only).
    #[arg(long, default_value = "dicom,jpg")]
    pub images: String,
    /// Size of PA and lateral images as COLUMNSxROWS; portable AP images are a little shorter,
    /// as in MIMIC-CXR.
    #[arg(long, default_value = "512x512")]
    pub image_size: String,
    /// Generate chest X-rays for the subjects and stays of these real MIMIC-IV tables (e.g. the
    /// open demo) instead of a synthetic population; the tables are copied into the archive.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["subjects", "mimic_iv"])]
    pub from_mimic_iv: Option<PathBuf>,
    /// Fractions of subjects in train, validate and test.
    #[arg(long, default_value = "0.8,0.1,0.1")]
    pub split_fractions: String,
    /// DICOM transfer syntax.
    #[arg(long, value_enum, default_value_t = DicomSyntax::Explicit)]
    pub dicom_syntax: DicomSyntax,
    /// Replace an existing archive in --out.
    #[arg(long)]
    pub force: bool,
    /// What to write (--image-size applies to all three).
    #[arg(long, value_enum, default_value_t = SynthDataset::Mimic)]
    pub dataset: SynthDataset,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Working folder of the demo (replaced on each run).
    #[arg(long, default_value = "out/demo")]
    pub out: PathBuf,
    /// Subjects in the synthetic archive.
    #[arg(long, default_value_t = 200)]
    pub subjects: usize,
    /// Fractions of subjects in train, validate and test (the archive's official split).
    #[arg(long, default_value = "0.8,0.1,0.1")]
    pub split_fractions: String,
}

impl SynthArgs {
    pub fn resolve(&self) -> anyhow::Result<SynthConfig> {
        let mimic_iv = MimicIvVersion::parse(&self.mimic_iv).ok_or_else(|| {
            pipeline::Error::Config(format!(
                "--mimic-iv {}: expected one of {}",
                self.mimic_iv,
                MimicIvVersion::SUPPORTED.join(", ")
            ))
        })?;
        let mut images = ImageKinds { dicom: false, jpg: false };
        for kind in self.images.split(',').map(str::trim) {
            match kind {
                "dicom" => images.dicom = true,
                "jpg" => images.jpg = true,
                "none" => {}
                other => {
                    return Err(pipeline::Error::Config(format!(
                        "--images: unknown kind {other:?}; expected dicom, jpg, dicom,jpg or none"
                    ))
                    .into());
                }
            }
        }
        let image_size = synth::parse_size(&self.image_size).ok_or_else(|| {
            pipeline::Error::Config(format!(
                "--image-size {}: expected COLUMNSxROWS, each at least 16",
                self.image_size
            ))
        })?;
        let fr = parse_fractions(&self.split_fractions)?;
        let syntaxes = match self.dicom_syntax {
            DicomSyntax::Explicit => vec![Syntax::ExplicitLittle],
            DicomSyntax::Implicit => vec![Syntax::ImplicitLittle],
            DicomSyntax::Rle => vec![Syntax::Rle],
            DicomSyntax::Mixed => vec![Syntax::ExplicitLittle, Syntax::ImplicitLittle, Syntax::Rle],
        };
        if self.subjects == 0 {
            return Err(pipeline::Error::Config("--subjects must be at least 1".into()).into());
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

/// The `--log` values, listed in `--help`.
fn log_values() -> impl clap::builder::TypedValueParser<Value = LogMode> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(LogMode::NAMES).map(|s| s.parse::<LogMode>().expect("a listed value"))
}
