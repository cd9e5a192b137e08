//! `pipeline bench`: the table stage on a full-size synthetic archive (tables only), or the
//! image stage on full-resolution DICOMs (3056x2544-class, 16 bits allocated, uncompressed),
//! timed in a child process so that its wall time and peak memory are the build's alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use pipeline::progress::Silent;
use pipeline::{Error, Result};
use synth::{ImageKinds, SynthConfig};

/// Peak resident memory of this process in KiB (Linux `VmHWM`), if known.
pub fn peak_memory_kib() -> Option<u64> {
    let status = fs_err::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What the benchmark measured.
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub archive: PathBuf,
    pub images: usize,
    pub generate_seconds: Option<f64>,
    pub build_seconds: f64,
    pub build_peak_kib: Option<u64>,
    /// Bytes of image files read (image stage only).
    pub image_bytes: u64,
    /// Seconds per step of the build, as the build reported them.
    pub steps: Vec<(String, f64)>,
}

/// Prefix of the `step=seconds` lines a build prints on stderr for the benchmark.
pub const STEP_PREFIX: &str = "step_seconds ";

/// Which stage to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchStage {
    /// Linkage and features on tables only (`--images none`).
    Table,
    /// Decode + preprocess of full-size uncompressed DICOMs.
    Images,
}

/// Generates `dir/archive` (tables only) unless present, then runs `exe build` on it as a
/// child process.
pub fn run(exe: &Path, dir: &Path, subjects: usize, stage: BenchStage) -> Result<BenchResult> {
    let archive = dir.join(match stage {
        BenchStage::Table => format!("archive-{subjects}"),
        BenchStage::Images => format!("dicom-archive-{subjects}"),
    });
    let mut generate_seconds = None;
    let mut generated: Option<usize> = None;
    if !archive.join(synth::CXR_JPG_DIR).join("mimic-cxr-2.0.0-metadata.csv.gz").is_file() {
        let t = Instant::now();
        let summary = synth::run(
            &match stage {
                BenchStage::Table => SynthConfig {
                    images: ImageKinds { dicom: false, jpg: false },
                    ..SynthConfig::new(archive.clone(), subjects, 1)
                },
                // MIMIC-CXR's PA/lateral detector size; portable AP films come out 2539 x 2705.
                BenchStage::Images => SynthConfig {
                    images: ImageKinds { dicom: true, jpg: false },
                    image_size: (2544, 3056),
                    ..SynthConfig::new(archive.clone(), subjects, 1)
                },
            },
            &Silent,
        )?;
        generate_seconds = Some(t.elapsed().as_secs_f64());
        generated = Some(summary.view_counts.values().sum());
    }
    let out = dir.join("datasets");
    if out.exists() {
        fs_err::remove_dir_all(&out)?;
    }
    let t = Instant::now();
    let images = if stage == BenchStage::Table { "none" } else { "dicom" };
    let child = Command::new(exe)
        .args(["build", "--images", images, "--report-peak-memory", "--mimic-root"])
        .arg(&archive)
        .arg("--out")
        .arg(&out)
        .output()?;
    let build_seconds = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&child.stderr);
    if !child.status.success() {
        return Err(Error::Internal(format!("the benchmarked build failed: {stderr}")));
    }
    let peak = stderr.lines().find_map(|l| l.strip_prefix("peak_memory_kib=")).and_then(|v| v.trim().parse().ok());
    let steps = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(STEP_PREFIX)?.rsplit_once('='))
        .filter_map(|(step, s)| Some((step.to_string(), s.trim().parse().ok()?)))
        .collect();
    let stdout = String::from_utf8_lossy(&child.stdout);
    let read = stdout
        .lines()
        .find_map(|l| l.trim().split(" images read").next().filter(|n| n.chars().all(|c| c.is_ascii_digit())))
        .and_then(|n| n.parse().ok());
    let image_bytes =
        if stage == BenchStage::Images { dir_bytes(&archive.join(synth::CXR_DICOM_DIR).join("files"))? } else { 0 };
    Ok(BenchResult {
        image_bytes,
        archive,
        images: read.or(generated).unwrap_or(0),
        generate_seconds,
        build_seconds,
        build_peak_kib: peak,
        steps,
    })
}

/// Total size of the `.dcm` files under `dir`.
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs_err::read_dir(&d)? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "dcm") {
                total += fs_err::metadata(&p)?.len();
            }
        }
    }
    Ok(total)
}
