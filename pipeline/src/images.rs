//! The image stage of `build`: every row of the feature table is decoded and preprocessed
//! (in parallel, a bounded chunk at a time), accepted images are appended to safetensors
//! shards of `shard_size` images in table order, and bad files become rejects.

use std::path::{Path, PathBuf};

use cxr_dataset::shard::Shard;
use polars::prelude::*;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::preprocess::{self, Gray, Reject};
use crate::progress::Progress;
use crate::{Error, Result};

/// Which image files feed the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource {
    /// DICOM when the MIMIC-CXR project is present, else JPG, else table only.
    Auto,
    /// Table only.
    None,
    /// `mimic-cxr/<version>/files/.../DICOM_ID.dcm`.
    Dicom,
    /// `mimic-cxr-jpg/<version>/files/.../DICOM_ID.jpg`.
    Jpg,
}

impl ImageSource {
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::None => "none",
            Self::Dicom => "dicom",
            Self::Jpg => "jpg",
        }
    }
}

/// Folder of the image shards inside a version folder.
pub const IMAGES_DIR: &str = "images";

/// File name of image shard `i`.
pub fn shard_name(i: usize) -> String {
    format!("part-{i:05}.safetensors")
}

/// An image that was not used.
#[derive(Debug, Clone)]
pub struct RejectRow {
    pub dicom_id: String,
    pub path: String,
    pub stage: &'static str,
    pub reason: Reject,
}

/// One written shard.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    pub file: String,
    pub rows: usize,
    pub bytes: u64,
    pub sha256: String,
}

/// Result of the stage: which table rows were kept (in order), the rejects and the shards.
#[derive(Debug, Default)]
pub struct Stage {
    pub kept: Vec<bool>,
    pub rejects: Vec<RejectRow>,
    pub shards: Vec<ShardInfo>,
}

/// A file decoder of one source.
type Decoder = fn(&Path) -> std::result::Result<Gray, Reject>;

/// Images decoded in parallel at a time; bounds memory whatever the dataset size.
const CHUNK: usize = 64;

fn pe(context: &str) -> impl Fn(PolarsError) -> Error + '_ {
    move |e| Error::Polars { context: context.to_string(), source: e }
}

/// `files/p10/p10000032/s50414267/<dicom_id>.<ext>` for each row of the table.
fn relative_paths(df: &DataFrame, ext: &str) -> Result<Vec<(String, String)>> {
    let d = df.column("dicom_id").map_err(pe("dicom_id"))?.str().map_err(pe("dicom_id"))?.clone();
    let sub = df.column("subject_id").map_err(pe("subject_id"))?.cast(&DataType::Int64).map_err(pe("subject_id"))?;
    let stu = df.column("study_id").map_err(pe("study_id"))?.cast(&DataType::Int64).map_err(pe("study_id"))?;
    let (sub, stu) = (sub.i64().map_err(pe("subject_id"))?, stu.i64().map_err(pe("study_id"))?);
    Ok(d.iter()
        .zip(sub.iter())
        .zip(stu.iter())
        .map(|((d, s), t)| {
            let (d, s, t) = (d.unwrap_or(""), s.unwrap_or(0), t.unwrap_or(0));
            let s = s.to_string();
            let top = s.get(..2).unwrap_or("");
            (d.to_string(), format!("files/p{top}/p{s}/s{t}/{d}.{ext}"))
        })
        .collect())
}

fn sha256(bytes: &[u8]) -> String {
    crate::build::hex(&Sha256::digest(bytes))
}

fn write_shard(shard: &Shard, dir: &Path, index: usize) -> Result<ShardInfo> {
    let mut bytes = Vec::with_capacity(shard.pixels.len() + 256);
    shard.write(&mut bytes).map_err(|e| Error::Config(format!("writing shard {index}: {e}")))?;
    let file = format!("{IMAGES_DIR}/{}", shard_name(index));
    crate::synth::table::write_atomic(&dir.join(&file), &bytes)?;
    Ok(ShardInfo { file, rows: shard.len(), bytes: bytes.len() as u64, sha256: sha256(&bytes) })
}

/// Runs the stage over the rows of `df`, writing shards under `version_dir/images/`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    df: &DataFrame,
    source: ImageSource,
    project_root: &Path,
    size: usize,
    shard_size: usize,
    version_dir: &Path,
    version: &str,
    fail_fast: bool,
    progress: &dyn Progress,
) -> Result<Stage> {
    let (ext, decode): (&str, Decoder) = match source {
        ImageSource::Dicom => ("dcm", preprocess::decode_dicom),
        ImageSource::Jpg => ("jpg", preprocess::decode_raster),
        ImageSource::None | ImageSource::Auto => {
            return Ok(Stage { kept: vec![true; df.height()], ..Stage::default() });
        }
    };
    let rows = relative_paths(df, ext)?;
    progress.start("images", rows.len() as u64);
    let mut stage = Stage { kept: Vec::with_capacity(rows.len()), ..Stage::default() };
    let mut shard = Shard::new(size, size);
    shard.metadata.insert("dataset_version".into(), version.into());
    for chunk in rows.chunks(CHUNK) {
        let done: Vec<std::result::Result<Vec<u8>, Reject>> = chunk
            .par_iter()
            .map(|(_, rel)| decode(&project_root.join(rel)).map(|g| preprocess::square(&g, size)))
            .collect();
        for ((dicom_id, rel), result) in chunk.iter().zip(done) {
            match result {
                Ok(pixels) => {
                    shard.push(&pixels).map_err(|e| Error::Config(e.to_string()))?;
                    stage.kept.push(true);
                    if shard.len() == shard_size {
                        stage.shards.push(write_shard(&shard, version_dir, stage.shards.len())?);
                        shard.pixels.clear();
                    }
                }
                Err(reason) => {
                    if fail_fast {
                        return Err(Error::Config(format!("{rel}: {reason} (--fail-fast)")));
                    }
                    stage.kept.push(false);
                    stage.rejects.push(RejectRow {
                        dicom_id: dicom_id.clone(),
                        path: rel.clone(),
                        stage: "decode",
                        reason,
                    });
                }
            }
        }
        progress.advance(chunk.len() as u64);
    }
    if !shard.is_empty() || stage.shards.is_empty() {
        stage.shards.push(write_shard(&shard, version_dir, stage.shards.len())?);
    }
    progress.finish();
    Ok(stage)
}

/// The rejects as a frame (dicom_id, path, stage, reason).
pub fn rejects_frame(rejects: &[RejectRow]) -> Result<DataFrame> {
    let col = |name: &str, f: &dyn Fn(&RejectRow) -> String| {
        Column::new(name.into(), rejects.iter().map(f).collect::<Vec<_>>())
    };
    DataFrame::new(
        rejects.len(),
        vec![
            col("dicom_id", &|r| r.dicom_id.clone()),
            col("path", &|r| r.path.clone()),
            col("stage", &|r| r.stage.to_string()),
            col("reason", &|r| r.reason.clone()),
        ],
    )
    .map_err(pe("rejects"))
}

/// Where the image files of a source live.
/// Resolves `Auto` and finds the project folder holding the `files/` tree of the source.
pub fn resolve(source: ImageSource, dicom: Option<&Path>, jpg: Option<&Path>) -> Result<(ImageSource, PathBuf)> {
    let has_files = |p: Option<&Path>| p.filter(|p| p.join("files").is_dir()).map(Path::to_path_buf);
    let missing =
        |what: &str| Error::Config(format!("--images {}: no {what} image tree (files/) found", source.name()));
    match source {
        ImageSource::Dicom => Ok((source, has_files(dicom).ok_or_else(|| missing("MIMIC-CXR (DICOM)"))?)),
        ImageSource::Jpg => Ok((source, has_files(jpg).ok_or_else(|| missing("MIMIC-CXR-JPG"))?)),
        ImageSource::None => Ok((source, PathBuf::new())),
        ImageSource::Auto => Ok(match (has_files(dicom), has_files(jpg)) {
            (Some(d), _) => (ImageSource::Dicom, d),
            (None, Some(j)) => (ImageSource::Jpg, j),
            (None, None) => (ImageSource::None, PathBuf::new()),
        }),
    }
}
