//! A build plan, for clusters: the table stage and the image fingerprints done once
//! (`pipeline build --plan`), written to `OUT/.tmp-<version>/plan/`, so that each
//! `--from-plan V --shard-index I` task decodes only its own units and `merge --from-plan V`
//! publishes, neither reading the input tables nor any other task's images.
//!
//! The plan holds everything the image stage and publishing take ([`crate::publish::Job`]):
//! the encoded table (`table.parquet`), each row's image path (`images.parquet`), and in
//! `plan.json` the version id, hashes, settings, image source and root, the rejects found
//! before the image stage and the cohort counts of the table stage.

use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::build::report::Cohort;
use crate::images::preprocess::Output;
use crate::images::{self, ImageRow, ImageSource, RejectRow, RunOptions};
use crate::publish::{self, Job, PLAN_DIR, parquet_bytes, working_folder};
use crate::{Error, Result};
use cxr_dataset::files::write_atomic;
use cxr_dataset::manifest::Task;

const PLAN: &str = "plan.json";
const TABLE: &str = "table.parquet";
const IMAGES: &str = "images.parquet";

/// What `plan.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PlanFile {
    pub version: String,
    pub tables_hash: String,
    pub schema_hash: String,
    /// The settings' text ([`crate::build::BuildConfig::describe`]).
    pub config: String,
    /// `dicom`, `jpg` or `none`.
    pub source: String,
    pub images_root: PathBuf,
    pub output: Output,
    pub shard_size: usize,
    pub task: Task,
    pub images_read: usize,
    pub header_rejects: Vec<RejectRow>,
    /// The table stage's counts (before the image stage).
    pub cohort: Cohort,
}

fn pe(context: &str) -> impl Fn(PolarsError) -> Error + '_ {
    move |e| Error::Polars { context: context.to_string(), source: e }
}

/// The plan folder of `version` under `out`.
pub fn plan_dir(out: &Path, version: &str) -> PathBuf {
    out.join(working_folder(version)).join(PLAN_DIR)
}

/// Writes the plan of `job` (whose version is `version`) and returns its folder.
pub(crate) fn write(job: &Job<'_>, version: &str, cohort: &Cohort) -> Result<PathBuf> {
    let dir = plan_dir(job.out, version);
    write_atomic(&dir.join(TABLE), &parquet_bytes(job.table, Vec::new())?)?;
    if let Some(rows) = job.files {
        let column = |f: &dyn Fn(&ImageRow) -> Option<&str>| rows.iter().map(f).collect::<Vec<_>>();
        let frame = DataFrame::new(
            rows.len(),
            vec![
                Column::new("id".into(), column(&|r| Some(r.id.as_str()))),
                Column::new("path".into(), column(&|r| Some(r.path.as_str()))),
                Column::new("invalid".into(), column(&|r| r.invalid.as_deref())),
            ],
        )
        .map_err(pe("plan image rows"))?;
        write_atomic(&dir.join(IMAGES), &parquet_bytes(&frame, Vec::new())?)?;
    }
    let file = PlanFile {
        version: version.to_string(),
        tables_hash: job.tables_hash.to_string(),
        schema_hash: job.schema_hash.to_string(),
        config: job.config.clone(),
        source: job.source.to_string(),
        images_root: job.images_root.to_path_buf(),
        output: job.output,
        shard_size: job.shard_size,
        task: job.task.clone(),
        images_read: job.images_read,
        header_rejects: job.header_rejects.clone(),
        cohort: cohort.clone(),
    };
    // Written last: a plan folder with its plan.json is complete.
    write_atomic(&dir.join(PLAN), serde_json::to_string_pretty(&file)?.as_bytes())?;
    Ok(dir)
}

/// A plan read back: what a [`Job`] borrows.
pub(crate) struct Plan {
    pub file: PlanFile,
    pub table: DataFrame,
    pub rows: Option<Vec<ImageRow>>,
}

fn read_parquet(path: &Path) -> Result<DataFrame> {
    let (f, _) = fs_err::File::open(path)?.into_parts();
    ParquetReader::new(f).finish().map_err(pe("reading the plan"))
}

/// Reads the plan of `version` under `out`; a missing one names the command that makes it.
pub(crate) fn read(out: &Path, version: &str) -> Result<Plan> {
    let dir = plan_dir(out, version);
    let plan = dir.join(PLAN);
    if !plan.is_file() {
        let published = out.join(version).join(publish::MANIFEST).is_file();
        return Err(Error::input(
            &plan,
            if published {
                format!("version {version} is published already; its plan was removed with its working folder")
            } else {
                "no build plan here; run `pipeline build --plan` with the build's options first (it prints the version)"
                    .to_string()
            },
        ));
    }
    let file: PlanFile = serde_json::from_str(&fs_err::read_to_string(&plan)?)
        .map_err(|e| Error::input(&plan, format!("not a plan this pipeline wrote: {e}")))?;
    if file.version != version {
        return Err(Error::input(&plan, format!("the plan is of version {}, not {version}", file.version)));
    }
    let table = read_parquet(&dir.join(TABLE))?;
    let rows = if file.source == ImageSource::None.name() {
        None
    } else {
        let frame = read_parquet(&dir.join(IMAGES))?;
        let text = |name: &str| -> Result<Vec<Option<String>>> {
            let c = frame.column(name).map_err(pe(name))?.str().map_err(pe(name))?.clone();
            Ok(c.iter().map(|v| v.map(str::to_string)).collect())
        };
        let (ids, paths, invalid) = (text("id")?, text("path")?, text("invalid")?);
        let images = dir.join(IMAGES);
        let rows =
            ids.into_iter().zip(paths).zip(invalid).enumerate().map(|(row, ((id, path), invalid))| match (id, path) {
                (Some(id), Some(path)) => Ok(ImageRow { id, path, invalid }),
                _ => {
                    Err(Error::input(&images, format!("row {row} has no id or path: the plan is damaged; plan again")))
                }
            });
        Some(rows.collect::<Result<Vec<_>>>()?)
    };
    Ok(Plan { file, table, rows })
}

impl Plan {
    /// The job of this plan, publishing into `out`, run as `run` says.
    pub fn job<'a>(&'a self, out: &'a Path, run: RunOptions) -> Result<Job<'a>> {
        let source = [ImageSource::Dicom, ImageSource::Jpg, ImageSource::None]
            .into_iter()
            .find(|s| s.name() == self.file.source)
            .ok_or_else(|| Error::Internal(format!("plan: unknown image source {:?}", self.file.source)))?;
        Ok(Job {
            out,
            table: &self.table,
            images_root: &self.file.images_root,
            files: self.rows.as_deref(),
            decode: images::decoder(source),
            source: source.name(),
            tables_hash: &self.file.tables_hash,
            schema_hash: &self.file.schema_hash,
            config: self.file.config.clone(),
            output: self.file.output,
            shard_size: self.file.shard_size,
            verify_inputs_full: false,
            run,
            task: self.file.task.clone(),
            images_read: self.file.images_read,
            header_rejects: self.file.header_rejects.clone(),
        })
    }
}
