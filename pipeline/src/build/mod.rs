//! `pipeline build`, table stage: discover the inputs, read them against their schemas, link
//! images to stays in SQL, attach labels and the split, filter and encode; then
//! [`crate::publish`] runs the image stage and publishes the version with its cohort report.

pub mod config;
pub mod encode;
pub mod identity;
pub mod labels;
pub mod link;
pub mod plan;
pub mod report;

use std::path::{Path, PathBuf};

use polars::prelude::*;
use rayon::prelude::*;

use crate::build::encode::encode;
use crate::build::labels::{Labeler, SplitSource, Unlabeled, attach_labels, attach_split, check_leakage};
use crate::build::link::{LinkInputs, images_from_metadata, link};
use crate::build::report::Cohort;
use crate::images::{self, RejectRow, RunOptions};
use crate::progress::Progress;
use crate::sources::dicom_meta::DicomFiles;
use crate::sources::discover::{Inputs, discover};
use crate::sources::ingest::{self, Duplicates};
use crate::sources::paths;
use crate::sources::schema::Schema;
use crate::{Error, Result};
use cxr_dataset::manifest::Task;

pub use crate::build::config::BuildConfig;
pub use crate::publish::identity::{CODE_DIGEST, CODE_FILES, code_id, version_id};
pub use crate::publish::versions::{self, FEATURES_DIR, part_name, read_features};
use crate::publish::{self, Job, Outcome, finish};
pub use crate::publish::{
    MANIFEST, Partial, REJECTS, REPORT_JSON, REPORT_MD, ROW_GROUP, feature_matrix, parquet_bytes, write_parquet,
};
pub use identity::tables_id;

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
    /// Set after a `--plan` run: the plan's folder (nothing is built or published).
    pub plan: Option<PathBuf>,
    /// Seconds per step ([`Timings`]).
    pub timings: Vec<(&'static str, f64)>,
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
    if cfg.run.plan_only {
        let version = publish::version_of(&job, progress)?;
        let dir = cfg.out.join(&version);
        if dir.join(MANIFEST).is_file() {
            return Ok(summarize(Outcome::Reused { version, dir }, cohort, &timings));
        }
        let plan = plan::write(&job, &version, &cohort)?;
        timings.lap("plan");
        let mut s = summarize(Outcome::Reused { version, dir: plan.clone() }, cohort, &timings);
        (s.reused, s.plan) = (false, Some(plan));
        return Ok(s);
    }
    let outcome = finish(&job, progress, &mut |kept, rejected, version| {
        cohort.rejected_images = rejected;
        cohort.finish(kept)?;
        let config = cfg.describe();
        Ok((cohort.to_markdown(version, &config), cohort.to_json(version, &config)?))
    })?;
    timings.lap("images, Parquet parts, report, manifest");
    Ok(summarize(outcome, cohort, &timings))
}

/// What a build that ended with `outcome` says.
fn summarize(outcome: Outcome, cohort: Cohort, timings: &Timings) -> BuildSummary {
    let summary = |version, dir, reused, cohort, partial| BuildSummary {
        version,
        dir,
        reused,
        cohort,
        partial,
        plan: None,
        timings: timings.steps.clone(),
    };
    match outcome {
        Outcome::Reused { version, dir } => summary(version, dir, true, None, None),
        Outcome::Partial { version, work, partial } => summary(version, work, false, Some(cohort), Some(partial)),
        Outcome::Published { version, dir } => summary(version, dir, false, Some(cohort), None),
    }
}

/// Runs the image stage of a planned build ([`plan`]): with `run.subset` only that subset's
/// units (a cluster task), with `run.merge_only` the publication once every unit is there;
/// nothing is read but the plan and the images of the units built.
pub fn build_from_plan(out: &Path, version: &str, run: RunOptions, progress: &dyn Progress) -> Result<BuildSummary> {
    let dir = out.join(version);
    if dir.join(MANIFEST).is_file() {
        versions::ensure_recorded(out, version)?;
        return Ok(summarize(Outcome::Reused { version: version.into(), dir }, Cohort::default(), &Timings::start()));
    }
    let mut timings = Timings::start();
    let plan = plan::read(out, version)?;
    timings.lap("read the plan");
    let job = plan.job(out, run)?;
    let mut cohort = plan.file.cohort.clone();
    let config = plan.file.config.clone();
    let outcome = publish::finish_version(&job, version.to_string(), progress, &mut |kept, rejected, version| {
        cohort.rejected_images = rejected;
        cohort.finish(kept)?;
        Ok((cohort.to_markdown(version, &config), cohort.to_json(version, &config)?))
    })?;
    timings.lap("images, Parquet parts, report, manifest");
    Ok(summarize(outcome, cohort, &timings))
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

/// A file whose DICOM header was unreadable, as a row of `rejects.parquet`.
fn header_reject((path, reason): crate::sources::dicom_meta::HeaderReject) -> RejectRow {
    let dicom_id = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    RejectRow { dicom_id, path: path.display().to_string(), stage: "header".into(), reason }
}
