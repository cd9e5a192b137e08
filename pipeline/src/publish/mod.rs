//! Publishing a version, shared by `pipeline build` and `build-eval`: the image fingerprints
//! and the version id ([`finish`]), the image stage run (or resumed) in the working folder,
//! the feature parts (Parquet, aligned with the image shards) and the feature matrix the
//! shards carry, the rejects, report and manifest, and the durable rename into `OUT/<version>/`
//! with its index entry; a build killed at any step is completed by the next
//! ([`complete_publication`]), and what killed builds left is tidied ([`tidy`]).

pub mod identity;
pub mod versions;

use std::path::{Path, PathBuf};

use polars::prelude::*;
use rayon::prelude::*;

use crate::images::preprocess::Output;
use crate::images::{self, IMAGES_DIR, RejectRow, RunOptions, Stage, Subset};
use crate::progress::Progress;
use crate::{Error, Result};
use cxr_dataset::files::write_atomic;
use cxr_dataset::manifest::{Counts, ImagesInfo, Manifest, Part, Task};
use identity::{CODE_DIGEST, version_id};
use versions::{FEATURES_DIR, part_name};

fn pe(context: &str) -> impl Fn(PolarsError) -> Error + '_ {
    move |e| Error::Polars { context: context.to_string(), source: e }
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
    /// Hash of the input tables, settings and code (the MIMIC build's `tables_id`).
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
    let version = version_of(job, progress)?;
    finish_version(job, version, progress, report)
}

/// The version id of a job: its tables' hash and the fingerprint of its image files.
pub(crate) fn version_of(job: &Job<'_>, progress: &dyn Progress) -> Result<String> {
    let fingerprint = match job.files {
        Some(rows) => images::fingerprint(job.images_root, rows, job.verify_inputs_full, progress)?,
        None => "none".to_string(),
    };
    Ok(version_id(job.tables_hash, job.source, &fingerprint))
}

/// [`finish`] for a job whose version id is known (a plan's: nothing is fingerprinted again).
pub(crate) fn finish_version(
    job: &Job<'_>,
    version: String,
    progress: &dyn Progress,
    report: &mut Reporter<'_>,
) -> Result<Outcome> {
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
        let committed = stage.units.iter().filter(|u| images::has_record(&work, u)).count();
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
            let rows = unit.first..unit.first + unit.rows;
            let mask = BooleanChunked::from_slice("kept".into(), &stage.kept[rows.clone()]);
            let mut part =
                all.slice(unit.first as i64, unit.rows).filter(&mask).map_err(pe("dropping rejected images"))?;
            if !stage.voi.is_empty() {
                // How each image's stored values became intensities, next to its row.
                let voi: Vec<Option<&str>> = rows.filter(|&r| stage.kept[r]).map(|r| stage.voi[r].as_deref()).collect();
                part.with_column(Column::new(VOI_COLUMN.into(), voi)).map_err(pe("voi column"))?;
            }
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
pub(crate) fn working_folder(version: &str) -> String {
    format!(".tmp-{version}")
}

/// The last steps of publishing, from a working folder whose manifest is written (every file
/// in it is on the disk, each written by `write_atomic`): the commit records go, the folder
/// is renamed to the version and the output folder flushed, then the index records it. A
/// kill at any point leaves either the working folder with its manifest (the next build
/// completes it) or the version (the next build repairs the index).
fn complete_publication(tmp: &Path, dir: &Path, out: &Path, version: &str) -> Result<()> {
    for sub in [images::PROGRESS_DIR, PLAN_DIR] {
        if tmp.join(sub).exists() {
            fs_err::remove_dir_all(tmp.join(sub))?;
            cxr_dataset::files::sync_dir(tmp)?;
        }
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

/// Folder of a build plan inside the working folder (`pipeline build --plan`; removed on
/// publish).
pub const PLAN_DIR: &str = "plan";

/// The column recording each image's intensity path (`VOI LUT Sequence`, `window, LINEAR`,
/// `percentiles 0.5-99.5 (no window)`, ...; [`crate::images::dicom`]); builds with images
/// only.
pub const VOI_COLUMN: &str = "voi";

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
