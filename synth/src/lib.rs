//! The synthetic archive generator (`pipeline synth`): a MIMIC archive in the exact
//! PhysioNet layout, for the tests, the demo and the benchmarks. Its own crate: it uses the
//! pipeline's readers (the declared table schemas, the archive discovery, the seeded rng), and
//! the pipeline cannot use it (cargo refuses a dependency cycle), so no build stage depends on
//! the generator.
//!
//! ```text
//! OUT/mimic-cxr/2.0.0/files/pXX/pSUBJECT/sSTUDY/DICOM_ID.dcm   (+ sSTUDY.txt reports)
//! OUT/mimic-cxr/2.0.0/cxr-record-list.csv.gz, cxr-study-list.csv.gz
//! OUT/mimic-cxr-jpg/2.1.0/files/.../DICOM_ID.jpg
//! OUT/mimic-cxr-jpg/2.1.0/mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv.gz
//! OUT/mimic-cxr-jpg/2.1.0/mimic-cxr-2.1.0-test-set-labeled.csv
//! OUT/mimiciv/<version>/{core|hosp}/{patients,admissions,transfers}.csv.gz, icu/icustays.csv.gz
//! OUT/<each project>/<version>/SHA256SUMS.txt                 every file's sha256, as PhysioNet ships it
//! ```
//!
//! The generative model, in data-flow order:
//! 1. [`population`]: patients (sex, anchor age/year with MIMIC-IV's arithmetic, 91 = over 89),
//!    encounters on a shifted timeline: admissions through the ED (ED registration hours
//!    before `admittime`), direct admissions, ED-only visits (ED transfers with a blank
//!    `hadm_id`), ICU stays inside admissions, in-hospital deaths. A quarter extra patients
//!    exist only in MIMIC-IV. With `--from-mimic-iv` the real tables replace this step.
//! 2. [`studies`]: chest X-ray studies placed in the ED before admission, on the ward, daily
//!    in the ICU, in ED-only visits and as outpatient visits outside any stay; views by care
//!    setting (portable AP in the ICU, PA + lateral for outpatients), blank and rare views,
//!    blank orientations; a latent severity (setting, death in the stay, age) and a
//!    subject-level heart size drive the 14 findings, from which CheXpert and NegBio rows
//!    are drawn (positives, hedged uncertain, explicit negations, unmentioned blanks).
//! 3. [`render`]: the pixels, a procedural radiograph in which findings, sex, age, view and
//!    orientation are visible (see that module).
//! 4. [`dicom`] and JPEG writers; [`cxr`] and [`mimic_iv`] write the tables.
//!
//! Every random choice comes from [`pipeline::rng`] streams derived from the seed and stable ids, so a
//! seed gives the same bytes whatever the thread count.
//!
//! ```no_run
//! use synth::SynthConfig;
//! let cfg = SynthConfig { image_size: (256, 256), ..SynthConfig::new("/tmp/synthetic-mimic".into(), 50, 1) };
//! let summary = synth::run(&cfg, &pipeline::progress::Silent).unwrap();
//! println!("{} images", summary.images);
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod canvas;
pub mod cxr;
pub mod dicom;
pub mod eval;
pub mod import;
pub mod mimic_iv;
pub mod population;
pub mod render;

pub mod studies;
pub mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use self::mimic_iv::MimicIvVersion;
use self::studies::{Image, Study, StudyConfig, Syntax};
use pipeline::progress::Progress;
use pipeline::{Error, Result};

/// Which image files to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageKinds {
    pub dicom: bool,
    pub jpg: bool,
}

/// Resolved settings of one `synth` run.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub out: PathBuf,
    pub subjects: usize,
    pub seed: u64,
    pub mimic_iv: MimicIvVersion,
    pub images: ImageKinds,
    /// Columns x rows of PA and lateral images.
    pub image_size: (u16, u16),
    pub from_mimic_iv: Option<PathBuf>,
    pub split_fractions: [f64; 3],
    pub syntaxes: Vec<Syntax>,
    /// Replace an existing archive in `out`.
    pub force: bool,
}

impl SynthConfig {
    /// The defaults of `pipeline synth`: MIMIC-IV 2.2, DICOM + JPG at 512x512, Explicit VR
    /// Little Endian, split 0.8/0.1/0.1, replacing an existing archive.
    pub fn new(out: PathBuf, subjects: usize, seed: u64) -> Self {
        Self {
            out,
            subjects,
            seed,
            mimic_iv: MimicIvVersion { major: 2, minor: 2 },
            images: ImageKinds { dicom: true, jpg: true },
            image_size: (512, 512),
            from_mimic_iv: None,
            split_fractions: [0.8, 0.1, 0.1],
            syntaxes: vec![Syntax::ExplicitLittle],
            force: true,
        }
    }
}

/// What a run wrote.
#[derive(Debug, Clone)]
pub struct SynthSummary {
    pub out: PathBuf,
    pub mimic_iv_version: MimicIvVersion,
    pub patients: usize,
    pub cxr_subjects: usize,
    pub studies: usize,
    pub images: usize,
    pub view_counts: BTreeMap<String, usize>,
    pub seconds: f64,
}

pub const CXR_DICOM_DIR: &str = "mimic-cxr/2.0.0";
pub const CXR_JPG_DIR: &str = "mimic-cxr-jpg/2.1.0";

/// Generates the archive.
pub fn run(cfg: &SynthConfig, progress: &dyn Progress) -> Result<SynthSummary> {
    let started = Instant::now();
    prepare_out(cfg)?;
    let (pop, cxr_subjects) = match &cfg.from_mimic_iv {
        Some(dir) => {
            let pop = import::read_population(dir)?;
            let mut chosen = Vec::new();
            for p in &pop.patients {
                // Most, not all, MIMIC-IV patients have chest X-rays.
                if pipeline::rng::Rng::derive(cfg.seed, 99, u64::from(p.subject_id)).bernoulli(0.85) {
                    chosen.push(p.subject_id);
                }
            }
            let root = cfg.out.join("mimiciv").join(pop.version.to_string());
            copy_mimic_iv(dir, &root, pop.version)?;
            (pop, chosen)
        }
        None => {
            let (pop, chosen) = population::generate(cfg.seed, cfg.subjects, cfg.mimic_iv);
            let root = cfg.out.join("mimiciv").join(cfg.mimic_iv.to_string());
            mimic_iv::write_tables(&pop, &root)?;
            (pop, chosen)
        }
    };
    let study_cfg = StudyConfig {
        seed: cfg.seed,
        image_size: cfg.image_size,
        split_fractions: cfg.split_fractions,
        syntaxes: cfg.syntaxes.clone(),
    };
    let studies = studies::generate(&pop, &cxr_subjects, &study_cfg);
    let dicom_root = cfg.out.join(CXR_DICOM_DIR);
    let jpg_root = cfg.out.join(CXR_JPG_DIR);
    cxr::write_dicom_project_tables(&studies, &dicom_root)?;
    cxr::write_jpg_project_tables(&studies, &jpg_root)?;
    let images = write_images(&studies, cfg, &dicom_root, &jpg_root, progress)?;
    // Each project version's checksum list, as PhysioNet ships it.
    let iv_root = cfg.out.join("mimiciv").join(pop.version.to_string());
    for root in [&dicom_root, &jpg_root, &iv_root] {
        pipeline::sources::sums::write(root)?;
    }
    let mut view_counts = BTreeMap::new();
    for s in &studies {
        for im in &s.images {
            *view_counts.entry(im.view.to_string()).or_insert(0) += 1;
        }
    }
    Ok(SynthSummary {
        out: cfg.out.clone(),
        mimic_iv_version: pop.version,
        patients: pop.patients.len(),
        cxr_subjects: summary_subjects(&studies),
        studies: studies.len(),
        images,
        view_counts,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn summary_subjects(studies: &[Study]) -> usize {
    let mut ids: Vec<u32> = studies.iter().map(|s| s.subject_id).collect();
    ids.dedup();
    ids.len()
}

/// Refuses to mix two archives: OUT must be empty or absent, unless `force`.
fn prepare_out(cfg: &SynthConfig) -> Result<()> {
    let out = &cfg.out;
    if out.exists() {
        let nonempty = fs_err::read_dir(out)?.next().is_some();
        if nonempty && !cfg.force {
            return Err(Error::Config(format!(
                "{} is not empty; choose another --out or pass --force to replace the archive in it",
                out.display()
            )));
        }
        for sub in ["mimic-cxr", "mimic-cxr-jpg", "mimiciv"] {
            let p = out.join(sub);
            if p.exists() {
                fs_err::remove_dir_all(&p)?;
            }
        }
    }
    fs_err::create_dir_all(out)?;
    Ok(())
}

/// Copies the four real tables byte for byte into the archive's `mimiciv/<version>/`.
fn copy_mimic_iv(src: &Path, dst: &Path, version: MimicIvVersion) -> Result<()> {
    let hosp = version.hosp_dir();
    for (dir, stem) in [(hosp, "patients"), (hosp, "admissions"), (hosp, "transfers"), ("icu", "icustays")] {
        for ext in ["csv.gz", "csv"] {
            let from = src.join(dir).join(format!("{stem}.{ext}"));
            if from.is_file() {
                let to = dst.join(dir).join(format!("{stem}.{ext}"));
                fs_err::create_dir_all(dst.join(dir))?;
                fs_err::copy(&from, &to)?;
                break;
            }
        }
    }
    Ok(())
}

fn write_images(
    studies: &[Study],
    cfg: &SynthConfig,
    dicom_root: &Path,
    jpg_root: &Path,
    progress: &dyn Progress,
) -> Result<usize> {
    let jobs: Vec<(&Study, usize, &Image)> =
        studies.iter().flat_map(|s| s.images.iter().enumerate().map(move |(i, im)| (s, i, im))).collect();
    if !cfg.images.dicom && !cfg.images.jpg {
        return Ok(0);
    }
    progress.start("images", jobs.len() as u64);
    jobs.par_iter().try_for_each(|&(study, index, image)| -> Result<()> {
        let display = render::render(study, image);
        if cfg.images.dicom {
            let path = dicom_root.join(cxr::image_path(study, image, "dcm"));
            let stored: Vec<u16> =
                if image.monochrome1 { display.iter().map(|v| 4095 - v).collect() } else { display.clone() };
            dicom::write(study, image, index, &stored, &path)?;
        }
        if cfg.images.jpg {
            let path = jpg_root.join(cxr::image_path(study, image, "jpg"));
            write_jpg(&display, image, &path)?;
        }
        progress.advance(1);
        Ok(())
    })?;
    progress.finish();
    Ok(jobs.len())
}

/// The JPG release: 8-bit, display sense (bone bright), quality 95.
fn write_jpg(display: &[u16], image: &Image, path: &Path) -> Result<()> {
    let gray: Vec<u8> = display.iter().map(|v| (v >> 4) as u8).collect();
    let mut buf = Vec::with_capacity(gray.len() / 4);
    jpeg_encoder::Encoder::new(&mut buf, 95)
        .encode(&gray, image.cols, image.rows, jpeg_encoder::ColorType::Luma)
        .map_err(|e| Error::Image { path: path.to_path_buf(), message: e.to_string() })?;
    table::write_atomic(path, &buf)
}

/// Parses `512x512` (columns x rows).
pub fn parse_size(s: &str) -> Option<(u16, u16)> {
    let (w, h) = s.split_once(['x', 'X'])?;
    let (w, h): (u16, u16) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    (w >= 16 && h >= 16).then_some((w, h))
}
