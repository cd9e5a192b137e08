//! The `pipeline` command line: parses arguments, reports progress, calls the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use pipeline::progress::Progress;
use pipeline::synth::mimic_iv::MimicIvVersion;
use pipeline::synth::studies::Syntax;
use pipeline::synth::{self, ImageKinds, SynthConfig, SynthSummary};

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
    /// Run the whole job end to end on an embedded default (a small synthetic archive).
    Demo(DemoArgs),
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
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Working folder of the demo (replaced on each run).
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
    /// Subjects in the synthetic archive.
    #[arg(long, default_value_t = 200)]
    subjects: usize,
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
        let fr: Vec<f64> =
            self.split_fractions
                .split(',')
                .map(|s| s.trim().parse::<f64>())
                .collect::<Result<_, _>>()
                .with_context(|| format!("--split-fractions {}: expected three numbers", self.split_fractions))?;
        if fr.len() != 3 || fr.iter().any(|f| *f < 0.0) || fr.iter().sum::<f64>() <= 0.0 {
            bail!(
                "--split-fractions {}: expected three non-negative numbers (train,validate,test)",
                self.split_fractions
            );
        }
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
            split_fractions: [fr[0], fr[1], fr[2]],
            syntaxes,
            force: self.force,
        })
    }
}

/// Progress on stderr, one line per 10%.
struct StderrProgress {
    stage: Mutex<String>,
    total: AtomicU64,
    done: AtomicU64,
}

impl Progress for StderrProgress {
    fn start(&self, stage: &str, total: u64) {
        if let Ok(mut s) = self.stage.lock() {
            *s = stage.to_string();
        }
        self.total.store(total, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
    }
    fn advance(&self, n: u64) {
        let total = self.total.load(Ordering::Relaxed).max(1);
        let before = self.done.fetch_add(n, Ordering::Relaxed);
        let after = before + n;
        if before * 10 / total != after * 10 / total {
            let stage = self.stage.lock().map(|s| s.clone()).unwrap_or_default();
            eprintln!("  {stage}: {after}/{total} ({}%)", after * 100 / total);
        }
    }
    fn finish(&self) {}
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
    let progress =
        StderrProgress { stage: Mutex::new(String::new()), total: AtomicU64::new(0), done: AtomicU64::new(0) };
    match cli.command {
        Command::Synth(args) => {
            let cfg = args.resolve()?;
            let summary = synth::run(&cfg, &progress)?;
            print_summary(&summary);
        }
        Command::Demo(args) => {
            let archive = args.out.join("synthetic-mimic");
            eprintln!("demo 1/1: generating a synthetic MIMIC archive in {}", archive.display());
            let cfg = SynthConfig {
                out: archive,
                subjects: args.subjects,
                seed: 24,
                mimic_iv: MimicIvVersion { major: 2, minor: 2 },
                images: ImageKinds { dicom: true, jpg: true },
                image_size: (256, 256),
                from_mimic_iv: None,
                split_fractions: [0.8, 0.1, 0.1],
                syntaxes: vec![Syntax::ExplicitLittle],
                force: true,
            };
            let summary = synth::run(&cfg, &progress)?;
            print_summary(&summary);
            println!(
                "The dataset build and training stages are not implemented yet; the archive above is their input."
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
