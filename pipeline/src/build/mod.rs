//! `pipeline build`, table stage: discover the inputs, read them against their schemas, link
//! images to stays in SQL, attach labels and the split, filter, encode, and publish the table
//! as Parquet under a content-addressed version with a cohort report.

pub mod config;
pub mod encode;
pub mod identity;
pub mod labels;
pub mod link;
pub mod report;
pub mod versions;

use std::path::{Path, PathBuf};

use polars::prelude::*;
use rayon::prelude::*;

use crate::build::encode::encode;
use crate::build::labels::{Labeler, SplitSource, Unlabeled, attach_labels, attach_split, check_leakage};
use crate::build::link::{LinkInputs, images_from_metadata, link};
use crate::build::report::Cohort;
use crate::images::preprocess::Output;
use crate::images::{self, IMAGES_DIR, RejectRow, RunOptions, Stage, Subset};
use crate::progress::Progress;
use crate::sources::dicom_meta::DicomFiles;
use crate::sources::discover::{Inputs, discover};
use crate::sources::ingest::{self, Duplicates};
use crate::sources::paths;
use crate::sources::schema::Schema;
use crate::{Error, Result};
use cxr_dataset::files::write_atomic;
use cxr_dataset::manifest::{Counts, ImagesInfo, Manifest, Part, Task};

pub use crate::build::config::BuildConfig;
pub use crate::build::versions::{FEATURES_DIR, part_name, read_features};
pub use identity::{CODE_DIGEST, CODE_FILES, code_id, tables_id, version_id};

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildSummary {
    pub version: String,
    pub dir: PathBuf,
    /// True when this version already existed and nothing was written.
    pub reused: bool,
    pub cohort: Option<Cohort>,
    /// Set after a `--shard-index` run: nothing is published until `pipeline merge`.
    pub partial: Option<Partial>,
    /// Seconds per step ([`Timings`]).
    pub timings: Vec<(&'static str, f64)>,
}

/// What a partial (`--shard-index`) build did.
#[derive(Debug, Clone, Copy)]
pub struct Partial {
    pub subset: Subset,
    /// Units (shards) built by this run.
    pub built: usize,
    /// Units committed so far by all runs, including this one.
    pub committed: usize,
    pub units: usize,
}

fn pe(context: &str) -> impl Fn(PolarsError) -> Error + '_ {
    move |e| Error::Polars { context: context.to_string(), source: e }
}

/// The input tables of a build: (role, path).
fn tables(inputs: &Inputs, cfg: &BuildConfig) -> Result<Vec<(&'static str, PathBuf)>> {
    let jpg = inputs.cxr_jpg.as_ref().ok_or_else(|| {
        Error::Config("the MIMIC-CXR-JPG tables (metadata, labels, split) are required; pass --cxr-jpg-dir".into())
    })?;
    let need = |p: &Option<PathBuf>, what: &str| {
        p.clone().ok_or_else(|| Error::input(&jpg.root, format!("no {what} table found")))
    };
    let iv = &inputs.mimic_iv;
    let mut t = Vec::new();
    match (&jpg.metadata, &inputs.cxr_dicom) {
        (Some(m), _) => t.push(("metadata", m.clone())),
        // Read from the DICOM headers instead (see `metadata_source`).
        (None, Some(_)) => {}
        (None, None) => {
            return Err(Error::input(
                &jpg.root,
                "no mimic-cxr-2.0.0-metadata table, and no MIMIC-CXR DICOM project to read the headers from",
            ));
        }
    }
    t.extend([
        (
            "labels",
            match cfg.labeler {
                Labeler::Chexpert => need(&jpg.chexpert, "mimic-cxr-2.0.0-chexpert")?,
                Labeler::Negbio => need(&jpg.negbio, "mimic-cxr-2.0.0-negbio")?,
            },
        ),
        ("patients", iv.patients.clone()),
        ("admissions", iv.admissions.clone()),
        ("icustays", iv.icustays.clone()),
    ]);
    match &cfg.split {
        SplitSource::Official => t.push(("split", need(&jpg.split, "mimic-cxr-2.0.0-split")?)),
        SplitSource::File(p) => t.push(("split", p.clone())),
        SplitSource::Resplit { .. } => {}
    }
    Ok(t)
}

fn read(path: &Path, schema: &str, version: &str) -> Result<(DataFrame, Option<Duplicates>)> {
    let schema = Schema::get(schema)?;
    let read = ingest::read(path, &schema, version)?;
    let dropped = read.dropped(path, &schema);
    Ok((read.frame, dropped))
}

/// Seconds spent in each step of a build, in order (`pipeline bench` prints them).
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub steps: Vec<(&'static str, f64)>,
    last: Option<std::time::Instant>,
}

impl Timings {
    fn start() -> Self {
        Self { steps: Vec::new(), last: Some(std::time::Instant::now()) }
    }

    /// Ends the step `name` (started when the previous one ended).
    fn lap(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        if let Some(last) = self.last {
            self.steps.push((name, (now - last).as_secs_f64()));
        }
        self.last = Some(now);
    }
}

/// The input tables of a build, read against their schemas.
struct Tables {
    meta: DataFrame,
    /// DICOM files whose header could not be read (metadata from the headers only).
    header_rejects: Vec<crate::sources::dicom_meta::HeaderReject>,
    patients: DataFrame,
    admissions: DataFrame,
    icustays: DataFrame,
    labels: DataFrame,
    /// The official split table and its path.
    official: Option<(DataFrame, PathBuf)>,
    /// Exact duplicate rows dropped, per table that had any.
    duplicates: Vec<Duplicates>,
}

/// Reads the tables (or the DICOM headers), all at once on the thread pool.
fn read_tables(
    cfg: &BuildConfig,
    tables: &[(&'static str, PathBuf)],
    dicoms: &DicomFiles,
    iv_version: &str,
) -> Result<Tables> {
    const CXR: &str = "2.0.0";
    let labels_schema = match cfg.labeler {
        Labeler::Chexpert => "mimic-cxr/chexpert",
        Labeler::Negbio => "mimic-cxr/negbio",
    };
    let schema_of = |role: &str| -> Option<(&'static str, &str)> {
        Some(match role {
            "metadata" => ("mimic-cxr/metadata", CXR),
            "patients" => ("mimic-iv/patients", iv_version),
            "admissions" => ("mimic-iv/admissions", iv_version),
            "icustays" => ("mimic-iv/icustays", iv_version),
            "labels" => (labels_schema, CXR),
            // A --split-file is read by `attach_split`, not against the official schema.
            "split" if cfg.split == SplitSource::Official => ("mimic-cxr/split", CXR),
            _ => return None,
        })
    };
    let read_dicoms = || {
        (tables.iter().all(|(r, _)| *r != "metadata"))
            .then(|| crate::sources::dicom_meta::read(&dicoms.files, cfg.run.fail_fast))
    };
    let read_csvs = || {
        tables
            .par_iter()
            .filter_map(|(role, path)| schema_of(role).map(|(schema, version)| (role, path, schema, version)))
            .map(|(role, path, schema, version)| Ok((*role, read(path, schema, version)?, path.clone())))
            .collect::<Result<Vec<_>>>()
    };
    let (from_headers, read) = rayon::join(read_dicoms, read_csvs);
    let read = read?;
    // In the order of `tables`, for a stable report.
    let mut duplicates: Vec<Duplicates> = dicoms.duplicates.iter().cloned().collect();
    duplicates.extend(read.iter().filter_map(|(_, (_, d), _)| d.clone()));
    let mut read: std::collections::HashMap<&str, (DataFrame, PathBuf)> =
        read.into_iter().map(|(role, (frame, _), path)| (role, (frame, path))).collect();
    let mut take = |role: &str| read.remove(role).ok_or_else(|| Error::Internal(format!("no {role} table")));
    let (meta, header_rejects) = match from_headers.transpose()? {
        Some(m) => m,
        None => (take("metadata")?.0, Vec::new()),
    };
    let mut admissions = take("admissions")?.0;
    if admissions.get_column_names().iter().any(|c| c.as_str() == "ethnicity") {
        admissions.rename("ethnicity", "race".into()).map_err(pe("admissions"))?;
    }
    Ok(Tables {
        meta,
        header_rejects,
        patients: take("patients")?.0,
        admissions,
        icustays: take("icustays")?.0,
        labels: take("labels")?.0,
        official: if cfg.split == SplitSource::Official { Some(take("split")?) } else { None },
        duplicates,
    })
}

/// Runs the build: the table stage, then the image stage, then publishes the version.
pub fn build(cfg: &BuildConfig, progress: &dyn Progress) -> Result<BuildSummary> {
    if let Some(s) = cfg.run.subset
        && (s.count == 0 || s.index >= s.count)
    {
        return Err(Error::Config(format!("--shard-index {} must be below --num-shards {}", s.index, s.count)));
    }
    let mut timings = Timings::start();
    let inputs = discover(&cfg.roots)?;
    let tables = tables(&inputs, cfg)?;
    let path_of = |role: &str| tables.iter().find(|(r, _)| *r == role).map(|(_, p)| p.clone());
    let dicoms = match (&path_of("metadata"), &inputs.cxr_dicom) {
        (None, Some(d)) => crate::sources::dicom_meta::dicom_files(&d.root, d.record_list.as_deref())?,
        _ => DicomFiles::default(),
    };
    if cfg.run.fail_fast
        && let Some((path, why)) = dicoms.rejects.first()
    {
        return Err(Error::input(path, format!("{why} (--fail-fast)")));
    }
    let (tables_hash, schema_hash) = tables_id(&tables, &dicoms.files, cfg)?;
    timings.lap("discover and hash the inputs");
    let staged = table_stage(cfg, &tables, &dicoms, &inputs.mimic_iv.version, progress, &mut timings)?;
    let (encoded, mut cohort) = (staged.encoded, staged.cohort);

    let (source, root) = images::resolve(
        cfg.images,
        inputs.cxr_dicom.as_ref().map(|d| d.root.as_path()),
        inputs.cxr_jpg.as_ref().map(|j| j.root.as_path()),
    )?;
    let rows = images::extension(source).map(|ext| images::relative_paths(&encoded, ext)).transpose()?;
    let job = Job {
        out: &cfg.out,
        table: &encoded,
        images_root: &root,
        files: rows.as_deref(),
        decode: images::decoder(source),
        source: source.name(),
        tables_hash: &tables_hash,
        schema_hash: &schema_hash,
        config: cfg.describe(),
        output: cfg.output(),
        shard_size: cfg.shard_size.max(1),
        verify_inputs_full: cfg.verify_inputs_full,
        run: cfg.run,
        task: Task::new("mimic-cxr", "dicom_id", &cxr_dataset::LABELS),
        images_read: staged.images_read,
        header_rejects: staged.header_rejects,
    };
    let outcome = finish(&job, progress, &mut |kept, rejected, version| {
        cohort.rejected_images = rejected;
        cohort.finish(kept)?;
        Ok((cohort.to_markdown(version, cfg), cohort.to_json(version, cfg)?))
    })?;
    timings.lap("images, Parquet parts, report, manifest");
    let summary = |version, dir, reused, cohort, partial| BuildSummary {
        version,
        dir,
        reused,
        cohort,
        partial,
        timings: timings.steps.clone(),
    };
    Ok(match outcome {
        Outcome::Reused { version, dir } => summary(version, dir, true, None, None),
        Outcome::Partial { version, work, partial } => summary(version, work, false, Some(cohort), Some(partial)),
        Outcome::Published { version, dir } => summary(version, dir, false, Some(cohort), None),
    })
}

/// What the table stage hands the image stage.
struct TableStage {
    /// One row per image kept, with labels, split and the encoded EHR columns.
    encoded: DataFrame,
    cohort: Cohort,
    images_read: usize,
    header_rejects: Vec<RejectRow>,
}

/// The table stage: reads the tables, links them (SQL), attaches labels and the split, applies
/// the cohort filters and encodes the EHR variables.
fn table_stage(
    cfg: &BuildConfig,
    tables: &[(&'static str, PathBuf)],
    dicoms: &DicomFiles,
    mimic_iv_version: &str,
    progress: &dyn Progress,
    timings: &mut Timings,
) -> Result<TableStage> {
    progress.start("tables", 3);
    let Tables { meta, header_rejects, patients, admissions, icustays, labels, official, duplicates } =
        read_tables(cfg, tables, dicoms, mimic_iv_version)?;
    for d in &duplicates {
        progress.note(&format!(
            "{}: {} duplicate row(s) dropped (the same {} and the same values as an earlier row)",
            d.file,
            d.rows,
            d.key.join(" + ")
        ));
    }
    if let Some((path, why)) = header_rejects.first() {
        progress.note(&format!(
            "{} DICOM file(s) with an unreadable header are rejected (see rejects.parquet), e.g. {}: {why}",
            header_rejects.len(),
            path.display()
        ));
    }
    progress.advance(1);
    timings.lap("read the tables");

    let images = images_from_metadata(meta)?;
    let images_read = images.height() + header_rejects.len() + dicoms.rejects.len();
    let (images, id_rejects) = check_ids(images, cfg.run.fail_fast, path_of_metadata(tables))?;
    if let Some(r) = id_rejects.first() {
        progress.note(&format!(
            "{} image(s) with identifiers that are not MIMIC-CXR's are rejected (see rejects.parquet), e.g. {}",
            id_rejects.len(),
            r.reason
        ));
    }
    let missing_time = images.column("study_datetime").map_err(pe("study_datetime"))?.null_count();
    if missing_time > 0 && matches!(cfg.rule, link::MatchRule::DateTime { .. }) {
        progress.note(&format!(
            "{missing_time} image(s) have no StudyTime: under --match datetime they link to no admission or ICU stay"
        ));
    }
    let linked = link(&LinkInputs { images, patients, admissions, icustays }, cfg.rule)?;
    progress.advance(1);
    timings.lap("link (SQL)");
    let mut cohort = Cohort::new(images_read, &linked)?;
    cohort.duplicate_rows = duplicates;
    cohort.missing_study_time = missing_time;
    let (labeled, unlabeled) = attach_labels(&linked, &labels, cfg.uncertain, cfg.unlabeled)?;
    cohort.unlabeled_images = unlabeled;
    if cfg.unlabeled == Unlabeled::Drop {
        cohort.dropped_unlabeled = unlabeled;
    }
    let with_split = attach_split(&labeled, &cfg.split, official.as_ref().map(|(t, p)| (t, p.as_path())))?;
    check_leakage(&with_split)?;
    let df = filter_cohort(with_split, cfg, &mut cohort)?;
    let (encoded, dropped) = encode(&df, cfg.missing, !cfg.drop_rare_views)?;
    cohort.dropped_missing_scan = dropped;
    progress.advance(1);
    progress.finish();
    timings.lap("labels, split, filters, encodings");
    let path_rejects =
        dicoms.rejects.iter().cloned().map(header_reject).map(|r| RejectRow { stage: "path".into(), ..r });
    Ok(TableStage {
        encoded,
        cohort,
        images_read,
        header_rejects: path_rejects.chain(header_rejects.into_iter().map(header_reject)).chain(id_rejects).collect(),
    })
}

/// The metadata table's path, or a note that the metadata came from the DICOM headers.
fn path_of_metadata(tables: &[(&'static str, PathBuf)]) -> String {
    tables
        .iter()
        .find(|(r, _)| *r == "metadata")
        .map_or_else(|| "(DICOM headers)".to_string(), |(_, p)| p.display().to_string())
}

/// The images whose identifiers follow DATA.md's patterns ([`paths::check_image_ids`]), and
/// the others as rejects (under `fail_fast`, the first is the error).
fn check_ids(images: DataFrame, fail_fast: bool, source: String) -> Result<(DataFrame, Vec<RejectRow>)> {
    let dicom = images.column("dicom_id").map_err(pe("dicom_id"))?.str().map_err(pe("dicom_id"))?.clone();
    let int = |name: &str| -> Result<Int64Chunked> {
        let c = images.column(name).map_err(pe(name))?.cast(&DataType::Int64).map_err(pe(name))?;
        Ok(c.i64().map_err(pe(name))?.clone())
    };
    let (subject, study) = (int("subject_id")?, int("study_id")?);
    let mut keep = Vec::with_capacity(images.height());
    let mut rejects = Vec::new();
    for ((d, s), t) in dicom.iter().zip(subject.iter()).zip(study.iter()) {
        match paths::check_image_ids(d, s, t) {
            Ok(()) => keep.push(true),
            Err(reason) if fail_fast => {
                return Err(Error::input(Path::new(&source), format!("{reason} (--fail-fast)")));
            }
            Err(reason) => {
                keep.push(false);
                let dicom_id = d.unwrap_or("").to_string();
                rejects.push(RejectRow { dicom_id, path: source.clone(), stage: "id".into(), reason });
            }
        }
    }
    if rejects.is_empty() {
        return Ok((images, rejects));
    }
    let kept = images.filter(&BooleanChunked::from_slice("kept".into(), &keep)).map_err(pe("identifier check"))?;
    Ok((kept, rejects))
}

/// The reference's cohort filters on sex and view, each counted in `cohort`.
fn filter_cohort(mut df: DataFrame, cfg: &BuildConfig, cohort: &mut Cohort) -> Result<DataFrame> {
    // The rows where `keep` holds, and how many were dropped.
    let drop = |df: DataFrame, keep: Expr, what: &str| -> Result<(DataFrame, usize)> {
        let before = df.height();
        let kept = df.lazy().filter(keep).collect().map_err(pe(what))?;
        let n = before - kept.height();
        Ok((kept, n))
    };
    if cfg.drop_missing_sex {
        (df, cohort.dropped_missing_sex) = drop(df, col("sex").is_not_null(), "missing sex filter")?;
        let binary = col("sex").eq(lit("M")).or(col("sex").eq(lit("F")));
        (df, cohort.dropped_other_sex) = drop(df, binary, "sex other than M/F filter")?;
    }
    let kept = ["AP", "PA", "LATERAL", "LL"];
    let common = col("view").is_null().or(kept.iter().fold(lit(false), |acc, v| acc.or(col("view").eq(lit(*v)))));
    if cfg.drop_rare_views {
        (df, cohort.dropped_rare_view) = drop(df, common, "rare view filter")?;
    } else {
        cohort.kept_rare_view = drop(df.clone(), common, "rare views")?.1;
    }
    Ok(df)
}

/// Everything a build does after its table is ready.
pub(crate) struct Job<'a> {
    pub out: &'a Path,
    /// One row per image, before rejects are dropped.
    pub table: &'a DataFrame,
    pub images_root: &'a Path,
    /// The table rows' image files; none for a table-only build.
    pub files: Option<&'a [images::ImageRow]>,
    pub decode: images::Decoder,
    /// Name of the image source, hashed into the version.
    pub source: &'a str,
    /// Hash of the input tables, settings and code ([`tables_id`]).
    pub tables_hash: &'a str,
    pub schema_hash: &'a str,
    /// The settings, as `key=value` lines, recorded in the manifest.
    pub config: String,
    pub output: Output,
    pub shard_size: usize,
    pub verify_inputs_full: bool,
    pub run: RunOptions,
    pub task: Task,
    pub images_read: usize,
    /// Files rejected before the table (unreadable DICOM headers), listed in the rejects.
    pub header_rejects: Vec<RejectRow>,
}

/// A file whose DICOM header was unreadable, as a row of `rejects.parquet`.
fn header_reject((path, reason): crate::sources::dicom_meta::HeaderReject) -> RejectRow {
    let dicom_id = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    RejectRow { dicom_id, path: path.display().to_string(), stage: "header".into(), reason }
}

/// How a build ended.
pub(crate) enum Outcome {
    /// The version existed already.
    Reused {
        version: String,
        dir: PathBuf,
    },
    /// A `--shard-index` run: its units are committed in `work`.
    Partial {
        version: String,
        work: PathBuf,
        partial: Partial,
    },
    Published {
        version: String,
        dir: PathBuf,
    },
}

/// Report writer: given the kept rows, the number of rejects and the version, the report's
/// Markdown and JSON.
pub(crate) type Reporter<'r> = dyn FnMut(&DataFrame, usize, &str) -> Result<(String, String)> + 'r;

/// Fingerprints the images into the version id, runs (or resumes) the image stage in the
/// working folder and publishes the version, unless it exists or this is a partial run.
pub(crate) fn finish(job: &Job<'_>, progress: &dyn Progress, report: &mut Reporter<'_>) -> Result<Outcome> {
    let fingerprint = match job.files {
        Some(rows) => images::fingerprint(job.images_root, rows, job.verify_inputs_full, progress)?,
        None => "none".to_string(),
    };
    let version = version_id(job.tables_hash, job.source, &fingerprint);
    let dir = job.out.join(&version);
    tidy(job.out, &version, progress)?;
    if dir.join(MANIFEST).is_file() {
        // A publisher killed between its rename and the index update left it out: repair.
        versions::ensure_recorded(job.out, &version)?;
        return Ok(Outcome::Reused { version, dir });
    }
    // The working folder persists until publication: a killed build resumes from it, and the
    // processes of a sharded build share it.
    let work = job.out.join(working_folder(&version));
    if job.run.subset.is_none() && work.join(MANIFEST).is_file() {
        // Killed after the manifest, the last file, was written: only the rename is left.
        progress.note(&format!("{}: completing an interrupted publication", work.display()));
        complete_publication(&work, &dir, job.out, &version)?;
        return Ok(Outcome::Published { version, dir });
    }
    fs_err::create_dir_all(work.join(FEATURES_DIR))?;
    for sub in [Path::new(""), Path::new(FEATURES_DIR), Path::new(IMAGES_DIR), Path::new(images::PROGRESS_DIR)] {
        cxr_dataset::files::remove_stale_temps(&work.join(sub))?;
    }
    // The shards carry the numeric columns; a table-only build needs none.
    let features = if job.files.is_some() { feature_matrix(job.table)? } else { images::FeatureMatrix::default() };
    let files =
        job.files.map(|rows| images::Files { root: job.images_root, rows, decode: job.decode, features: &features });
    let n = job.table.height();
    let mut stage = images::run(n, files, job.output, job.shard_size, &work, &version, job.run, progress)?;
    // A subset run never publishes (two finishing at once would race); `merge` does.
    if let Some(subset) = job.run.subset {
        let committed = stage.units.iter().filter(|u| images::is_committed(&work, u)).count();
        let partial = Partial { subset, built: stage.built, committed, units: stage.units.len() };
        return Ok(Outcome::Partial { version, work, partial });
    }
    if !stage.rejects.is_empty() && stage.rejects.len() == n {
        let first = &stage.rejects[0];
        let msg = format!(
            "{}; all {} images were rejected like this one; check the image source and folders",
            first.reason,
            stage.rejects.len()
        );
        fs_err::remove_dir_all(&work)?;
        return Err(Error::input(Path::new(&first.path), msg));
    }
    stage.rejects.extend(job.header_rejects.iter().cloned());
    let kept = job
        .table
        .filter(&BooleanChunked::from_slice("kept".into(), &stage.kept))
        .map_err(pe("dropping rejected images"))?;
    let (md, json) = report(&kept, stage.rejects.len(), &version)?;
    publish(job, &stage, (&md, &json), &work, &dir, &version)?;
    Ok(Outcome::Published { version, dir })
}

/// Identifier columns, not stored as features.
const ID_COLUMNS: [&str; 4] = ["subject_id", "study_id", "hadm_id", "stay_id"];

/// The numeric columns of the table (and `split` as its code), as `f32` with null as NaN, then
/// [`cxr_dataset::shard::SUBJECT_INDEX`]: what the trainer reads from the image shards.
pub fn feature_matrix(df: &DataFrame) -> Result<images::FeatureMatrix> {
    let mut names = Vec::new();
    let mut columns: Vec<Vec<f32>> = Vec::new();
    for c in df.columns() {
        let name = c.name().to_string();
        if ID_COLUMNS.contains(&name.as_str()) {
            continue;
        }
        let values: Vec<f32> = if name == "split" {
            let s = c.str().map_err(pe("split"))?;
            s.iter().map(|v| v.and_then(cxr_dataset::shard::split_code).unwrap_or(f32::NAN)).collect()
        } else if c.dtype().is_primitive_numeric() || c.dtype().is_bool() {
            let f = c.cast(&DataType::Float32).map_err(pe("feature column"))?;
            f.f32().map_err(pe("feature column"))?.iter().map(|v| v.unwrap_or(f32::NAN)).collect()
        } else {
            continue;
        };
        names.push(name);
        columns.push(values);
    }
    names.push(cxr_dataset::shard::SUBJECT_INDEX.to_string());
    columns.push(subject_index(df)?);
    let n = df.height();
    let mut values = Vec::with_capacity(n * names.len());
    for r in 0..n {
        values.extend(columns.iter().map(|c| c[r]));
    }
    Ok(images::FeatureMatrix { names, values })
}

/// Each row's patient as a dense index in order of first appearance (exact in f32 up to 2^24
/// patients); a row without a subject id is a patient of its own.
fn subject_index(df: &DataFrame) -> Result<Vec<f32>> {
    let ids = df.column("subject_id").map_err(pe("subject_id"))?.cast(&DataType::Int64).map_err(pe("subject_id"))?;
    let ids = ids.i64().map_err(pe("subject_id"))?;
    let mut seen = std::collections::HashMap::new();
    let mut next = 0u32;
    let mut index = Vec::with_capacity(ids.len());
    for id in ids.iter() {
        let i = match id.and_then(|id| seen.get(&id)) {
            Some(&i) => i,
            None => {
                if let Some(id) = id {
                    seen.insert(id, next);
                }
                next += 1;
                next - 1
            }
        };
        if i >= 1 << 24 {
            return Err(Error::Internal("more than 2^24 patients: the subject index would not fit f32".into()));
        }
        index.push(i as f32);
    }
    Ok(index)
}

/// The report files of a version.
pub const REPORT_JSON: &str = "report.json";
pub const REPORT_MD: &str = "report.md";

/// The manifest of a version, written last.
pub use cxr_dataset::files::MANIFEST;

/// Writes the feature parts (aligned with the image shards), the rejects, the report and the
/// manifest into `tmp`, then renames it to `dir`, so a version folder is complete or absent.
/// `all` is the table before rejected images are dropped.
fn publish(
    job: &Job<'_>,
    stage: &Stage,
    (md, json): (&str, &str),
    tmp: &Path,
    dir: &Path,
    version: &str,
) -> Result<()> {
    let (all, schema_hash) = (job.table, job.schema_hash);
    // The parts are independent files: written in parallel, listed in order.
    let parts: Vec<Part> = stage
        .units
        .par_iter()
        .enumerate()
        .map(|(i, unit)| {
            let mask = BooleanChunked::from_slice("kept".into(), &stage.kept[unit.first..unit.first + unit.rows]);
            let part = all.slice(unit.first as i64, unit.rows).filter(&mask).map_err(pe("dropping rejected images"))?;
            let rel = format!("{FEATURES_DIR}/{}", part_name(i));
            let sha256 = write_parquet(&part, &tmp.join(&rel), version, schema_hash)?;
            let image = stage.shards.get(i);
            if let Some(s) = image
                && s.rows != part.height()
            {
                return Err(Error::Internal(format!("shard {i} holds {} images for {} rows", s.rows, part.height())));
            }
            Ok(Part {
                features: rel,
                features_sha256: sha256,
                rows: part.height(),
                images: image.map(|s| s.file.clone()),
                images_sha256: image.map(|s| s.sha256.clone()),
                images_bytes: image.map(|s| s.bytes),
            })
        })
        .collect::<Result<_>>()?;
    let rows: usize = parts.iter().map(|p| p.rows).sum();
    let rejects = images::rejects_frame(&stage.rejects)?;
    write_atomic(&tmp.join(REJECTS), &parquet_bytes(&rejects, Vec::new())?)?;
    write_atomic(&tmp.join(REPORT_MD), md.as_bytes())?;
    write_atomic(&tmp.join(REPORT_JSON), json.as_bytes())?;
    let manifest = Manifest {
        dataset_version: version.into(),
        schema_hash: schema_hash.into(),
        pipeline_version: env!("CARGO_PKG_VERSION").into(),
        code_digest: CODE_DIGEST.into(),
        config: job.config.clone(),
        task: Some(job.task.clone()),
        images: Some(ImagesInfo {
            source: job.source.into(),
            size: [job.output.size, job.output.size],
            dtype: "u8".into(),
            tensor: cxr_dataset::shard::TENSOR.into(),
            dir: IMAGES_DIR.into(),
            preprocessing: job.output.describe(),
        }),
        counts: Counts { images_read: job.images_read, rows, rejected: stage.rejects.len() },
        rejects: REJECTS.into(),
        parts,
    };
    let text = manifest.to_json().map_err(|e| Error::Internal(format!("manifest: {e}")))?;
    crash_point("parts");
    write_atomic(&tmp.join(MANIFEST), text.as_bytes())?;
    crash_point("manifest");
    complete_publication(tmp, dir, job.out, version)
}

/// The working folder of `version` inside the output folder.
fn working_folder(version: &str) -> String {
    format!(".tmp-{version}")
}

/// The last steps of publishing, from a working folder whose manifest is written (every file
/// in it is on the disk, each written by `write_atomic`): the commit records go, the folder
/// is renamed to the version and the output folder flushed, then the index records it. A
/// kill at any point leaves either the working folder with its manifest (the next build
/// completes it) or the version (the next build repairs the index).
fn complete_publication(tmp: &Path, dir: &Path, out: &Path, version: &str) -> Result<()> {
    let progress_dir = tmp.join(images::PROGRESS_DIR);
    if progress_dir.exists() {
        fs_err::remove_dir_all(&progress_dir)?;
        cxr_dataset::files::sync_dir(tmp)?;
    }
    crash_point("records");
    fs_err::rename(tmp, dir)?;
    cxr_dataset::files::sync_dir(out)?;
    crash_point("rename");
    versions::record(out, version)
}

/// Fault injection for the crash tests (`tests/it/resume.rs`): when the environment variable
/// `CXR_PIPELINE_CRASH_AT` names `step` (`parts`, `manifest`, `records`, `rename`), the
/// process SIGKILLs itself there, leaving its files as a kill would.
fn crash_point(step: &str) {
    if std::env::var_os("CXR_PIPELINE_CRASH_AT").is_some_and(|s| s == step) {
        let _ = std::process::Command::new("kill").arg("-KILL").arg(std::process::id().to_string()).status();
        std::process::abort();
    }
}

/// Clears what killed builds left in the output folder: the temporary files of dead
/// processes, and the working folders of versions that are published (another build
/// finished them); says so, and names the unfinished working folders of other versions it
/// leaves (resume them with the same options, or delete them).
fn tidy(out: &Path, current: &str, progress: &dyn Progress) -> Result<()> {
    let stale = cxr_dataset::files::remove_stale_temps(out)?;
    if stale > 0 {
        progress.note(&format!("{}: removed {stale} temporary file(s) of killed builds", out.display()));
    }
    let Ok(entries) = fs_err::read_dir(out) else { return Ok(()) };
    let mut unfinished = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(version) = name.strip_prefix(".tmp-") else { continue };
        if !entry.path().is_dir() {
            continue;
        }
        if out.join(version).join(MANIFEST).is_file() {
            fs_err::remove_dir_all(entry.path())?;
            progress.note(&format!("removed {name}, the working folder of the published version {version}"));
        } else if version != current {
            unfinished.push(name);
        }
    }
    if !unfinished.is_empty() {
        unfinished.sort();
        progress.note(&format!(
            "{}: unfinished working folder(s) {} left as they are (a build with the same inputs and \
             options resumes one; delete the others to reclaim the space)",
            out.display(),
            unfinished.join(", ")
        ));
    }
    Ok(())
}

/// The rejected images of a version.
pub const REJECTS: &str = "rejects.parquet";

/// Rows per Parquet row group: small enough to stream, large enough to compress.
pub const ROW_GROUP: usize = 16_384;

/// Writes the table atomically, with the version and schema hash in the file metadata;
/// returns the file's sha256.
pub fn write_parquet(df: &DataFrame, path: &Path, version: &str, schema_hash: &str) -> Result<String> {
    let bytes = parquet_bytes(
        df,
        vec![
            ("dataset_version".into(), version.into()),
            ("schema_hash".into(), schema_hash.into()),
            ("pipeline_version".into(), env!("CARGO_PKG_VERSION").into()),
        ],
    )?;
    write_atomic(path, &bytes)?;
    Ok(cxr_dataset::files::sha256_hex(&bytes))
}

/// A Parquet file of `df` with `metadata` in its footer, encoded in memory (polars' writer
/// issues a system call per Thrift field on an unbuffered file: measured 35 ms for a
/// 4,096-row part of 85 columns, 14 ms buffered), single-threaded (parts are written in
/// parallel).
///
/// The footer's Arrow schema (what pyarrow and pandas read the columns as) gives text columns
/// as `large_string`, not polars' default `string_view`, on which some pyarrow versions'
/// compute functions (filters, `equal`) fail; the Parquet data is the same either way.
pub fn parquet_bytes(df: &DataFrame, metadata: Vec<(String, String)>) -> Result<Vec<u8>> {
    let arrow = df.schema().to_arrow(CompatLevel::oldest());
    let schema = polars_parquet::write::schema_to_metadata_key(&arrow);
    let mut pairs = vec![(schema.key, schema.value.unwrap_or_default())];
    pairs.extend(metadata);
    let mut bytes = Vec::new();
    ParquetWriter::new(&mut bytes)
        .set_parallel(false)
        .with_row_group_size(Some(ROW_GROUP))
        .with_key_value_metadata(Some(KeyValueMetadata::from_static(pairs)))
        .finish(&mut df.clone())
        .map_err(pe("writing parquet"))?;
    Ok(bytes)
}
