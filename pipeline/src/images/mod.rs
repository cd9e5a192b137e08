//! The image stage of `build`: every row of the feature table is decoded and preprocessed
//! (in parallel, a bounded chunk at a time), accepted images go to safetensors shards in
//! table order, and bad files become rejects.
//!
//! The table is cut into fixed units of `shard_size` rows; unit `i` becomes image shard `i`
//! and feature part `i` (its rows minus its rejects). Each unit is committed on its own (the
//! shard, then a small record, each written to a temporary name and renamed), so a killed
//! build resumes from the committed units, and separate processes can build disjoint sets
//! of units (`--shard-index`/`--num-shards`) that `pipeline merge` publishes.

pub mod dicom;
pub mod preprocess;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use cxr_dataset::shard::Shard;
use polars::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::progress::Progress;
use crate::sources::sums::{SUMS_FILE, Sums};
use crate::{Error, Result};
use preprocess::{Gray, Output, Reject};

/// Which image files feed the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RejectRow {
    pub dicom_id: String,
    pub path: String,
    pub stage: String,
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

/// One unit of work: the table rows `first..first + rows` become image shard `index` and
/// feature part `index` (minus their rejects). Units are fixed by the table and
/// `--shard-size`, so any subset can be built by any process, in any order, and a build
/// resumes from the units already committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    pub index: usize,
    pub first: usize,
    pub rows: usize,
}

/// The units of a table of `rows` rows (at least one, possibly empty).
pub fn units(rows: usize, shard_size: usize) -> Vec<Unit> {
    let size = shard_size.max(1);
    let n = rows.div_ceil(size).max(1);
    (0..n).map(|index| Unit { index, first: index * size, rows: size.min(rows - (index * size).min(rows)) }).collect()
}

/// Which units a process builds: `index` of `count` (`--shard-index`, `--num-shards`);
/// unit `u` belongs to subset `u % count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subset {
    pub index: usize,
    pub count: usize,
}

impl Subset {
    pub fn contains(self, unit: &Unit) -> bool {
        unit.index % self.count == self.index
    }
}

/// How the stage runs; none of this changes the output.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Stop at the first bad image.
    pub fail_fast: bool,
    /// Build only these units, then stop without publishing.
    pub subset: Option<Subset>,
    /// Build nothing: every unit must already be committed (`pipeline merge`).
    pub merge_only: bool,
    /// Decoding threads (0: one per core).
    pub workers: usize,
    /// Write the build plan (the table stage, fingerprints and version id) and stop
    /// (`pipeline build --plan`; the build module's `plan`).
    pub plan_only: bool,
}

/// What the stage did: per unit, which rows were kept, the rejects and the shard.
#[derive(Debug, Default)]
pub struct Stage {
    pub units: Vec<Unit>,
    /// One per table row, in order.
    pub kept: Vec<bool>,
    /// One per table row: the intensity path its image took (none for a reject or a
    /// table-only build).
    pub voi: Vec<Option<String>>,
    pub rejects: Vec<RejectRow>,
    /// One per unit (none when the build has no images).
    pub shards: Vec<ShardInfo>,
    /// Units committed by an earlier, interrupted or partial, run and reused.
    pub resumed: usize,
    /// Units built by this run.
    pub built: usize,
    /// False after a partial (`--shard-index`) run that left units to other processes.
    pub complete: bool,
}

/// A file decoder.
pub type Decoder = fn(&Path) -> std::result::Result<Gray, Reject>;

/// The decoder of a source's files.
pub fn decoder(source: ImageSource) -> Decoder {
    if source == ImageSource::Dicom { dicom::decode_dicom } else { preprocess::decode_raster }
}

/// One table row's image: its id, its path relative to the image root, and, when the path
/// must not be read (e.g. it escapes the root), why.
#[derive(Debug, Clone)]
pub struct ImageRow {
    pub id: String,
    pub path: String,
    pub invalid: Option<Reject>,
}

/// The numeric columns of a table, row-major (null as NaN), stored with the images.
#[derive(Debug, Clone, Default)]
pub struct FeatureMatrix {
    pub names: Vec<String>,
    pub values: Vec<f32>,
}

impl FeatureMatrix {
    fn row(&self, i: usize) -> &[f32] {
        let f = self.names.len();
        &self.values[i * f..(i + 1) * f]
    }
}

/// The image files of an image stage, and the feature rows stored with them.
#[derive(Debug, Clone, Copy)]
pub struct Files<'a> {
    pub root: &'a Path,
    pub rows: &'a [ImageRow],
    pub decode: Decoder,
    pub features: &'a FeatureMatrix,
}

fn pe(context: &str) -> impl Fn(PolarsError) -> Error + '_ {
    move |e| Error::Polars { context: context.to_string(), source: e }
}

/// `files/p10/p10000032/s50414267/<dicom_id>.<ext>` for each row of the table.
pub fn relative_paths(df: &DataFrame, ext: &str) -> Result<Vec<ImageRow>> {
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
            ImageRow { id: d.to_string(), path: format!("files/p{top}/p{s}/s{t}/{d}.{ext}"), invalid: None }
        })
        .collect())
}

/// File extension of a source's images.
pub fn extension(source: ImageSource) -> Option<&'static str> {
    match source {
        ImageSource::Dicom => Some("dcm"),
        ImageSource::Jpg => Some("jpg"),
        ImageSource::None | ImageSource::Auto => None,
    }
}

/// Folder of the per-unit commit records inside the working folder (removed on publish).
pub const PROGRESS_DIR: &str = "progress";

fn record_path(work: &Path, unit: usize) -> PathBuf {
    work.join(PROGRESS_DIR).join(format!("unit-{unit:05}.json"))
}

/// What a committed unit holds; written after its shard, so a record means a whole shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UnitRecord {
    unit: usize,
    first: usize,
    rows: usize,
    /// Rows (relative to `first`) that were rejected, with why.
    rejected: Vec<(usize, String, String)>,
    /// The intensity path of each kept row, in order ([`preprocess::Gray::voi`]).
    #[serde(default)]
    voi: Vec<String>,
    file: String,
    images: usize,
    bytes: u64,
    sha256: String,
}

/// The record of a committed unit, if it is there and matches the unit and its shard file
/// (size and sha256).
fn committed(work: &Path, unit: &Unit) -> Option<UnitRecord> {
    let text = fs_err::read_to_string(record_path(work, unit.index)).ok()?;
    let rec: UnitRecord = serde_json::from_str(&text).ok()?;
    let shard = work.join(&rec.file);
    let on_disk = fs_err::metadata(&shard).ok()?.len();
    let same_unit = rec.unit == unit.index && rec.first == unit.first && rec.rows == unit.rows;
    (same_unit && on_disk == rec.bytes && cxr_dataset::files::sha256_file(&shard).ok()? == rec.sha256).then_some(rec)
}

/// Whether a unit has a commit record for it in the working folder (its shard is not hashed
/// here: the run that uses the unit checks it).
pub fn has_record(work: &Path, unit: &Unit) -> bool {
    fs_err::read_to_string(record_path(work, unit.index))
        .ok()
        .and_then(|t| serde_json::from_str::<UnitRecord>(&t).ok())
        .is_some_and(|r| r.unit == unit.index && r.first == unit.first && r.rows == unit.rows)
}

fn write_shard(shard: &Shard, dir: &Path, index: usize) -> Result<ShardInfo> {
    let mut bytes = Vec::with_capacity(shard.pixels.len() + 256);
    shard.write(&mut bytes).map_err(|e| Error::Internal(format!("writing shard {index}: {e}")))?;
    let file = format!("{IMAGES_DIR}/{}", shard_name(index));
    cxr_dataset::files::write_atomic(&dir.join(&file), &bytes)?;
    Ok(ShardInfo { file, rows: shard.len(), bytes: bytes.len() as u64, sha256: cxr_dataset::files::sha256_hex(&bytes) })
}

/// A row's image after decoding: its pixels and intensity path, or the stage (`path`,
/// `decode`) and reason of its reject.
type Decoded = std::result::Result<(Vec<u8>, &'static str), (&'static str, Reject)>;

/// Decodes one file; a decoder panic on a hostile file becomes a reject, not a crash.
fn decode_one(decode: Decoder, path: &Path, output: Output) -> std::result::Result<(Vec<u8>, &'static str), Reject> {
    match std::panic::catch_unwind(|| decode(path).map(|g| (output.apply(&g), g.voi))) {
        Ok(r) => r,
        Err(p) => {
            let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
            Err(format!("decoder failed: {}", msg.unwrap_or_else(|| "panic".into())))
        }
    }
}

/// Builds one unit: decodes its rows (a bounded chunk at a time, in parallel), writes its
/// shard, then its record.
#[allow(clippy::too_many_arguments)]
fn build_unit(
    unit: &Unit,
    files: Files<'_>,
    output: Output,
    work: &Path,
    version: &str,
    fail_fast: bool,
    chunk: usize,
    progress: &dyn Progress,
) -> Result<UnitRecord> {
    let mut shard = Shard::new(output.size, output.size);
    shard.metadata.insert("dataset_version".into(), version.into());
    shard.feature_names = files.features.names.clone();
    let mut rejected = Vec::new();
    let mut voi = Vec::with_capacity(unit.rows);
    let mine = &files.rows[unit.first..unit.first + unit.rows];
    for (c, part) in mine.chunks(chunk).enumerate() {
        // A path made from the table is read only when it stays under the root.
        let done: Vec<Decoded> = part
            .par_iter()
            .map(|row| match &row.invalid {
                Some(why) => Err(("path", why.clone())),
                None => match crate::sources::paths::inside(files.root, &row.path) {
                    Ok(path) => decode_one(files.decode, &path, output).map_err(|why| ("decode", why)),
                    Err(why) => Err(("path", why)),
                },
            })
            .collect();
        for (k, (row, result)) in part.iter().zip(done).enumerate() {
            match result {
                Ok((pixels, path)) => {
                    shard
                        .push_with_features(&pixels, files.features.row(unit.first + c * chunk + k))
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    voi.push(path.to_string());
                }
                Err((_, reason)) if fail_fast => {
                    return Err(Error::input(Path::new(&row.path), format!("{reason} (--fail-fast)")));
                }
                Err((stage, reason)) => rejected.push((c * chunk + k, stage.to_string(), reason)),
            }
        }
        progress.advance(part.len() as u64);
    }
    let info = write_shard(&shard, work, unit.index)?;
    let rec = UnitRecord {
        unit: unit.index,
        first: unit.first,
        rows: unit.rows,
        rejected,
        voi,
        file: info.file,
        images: info.rows,
        bytes: info.bytes,
        sha256: info.sha256,
    };
    let text = serde_json::to_string(&rec)?;
    cxr_dataset::files::write_atomic(&record_path(work, unit.index), text.as_bytes())?;
    Ok(rec)
}

/// Runs the stage over a table of `n_rows` rows whose images are `files` (none: a table
/// without images), in the working folder `work` (shards under `work/images/`, commit
/// records under `work/progress/`), reusing committed units.
#[allow(clippy::too_many_arguments)]
pub fn run(
    n_rows: usize,
    files: Option<Files<'_>>,
    output: Output,
    shard_size: usize,
    work: &Path,
    version: &str,
    opts: RunOptions,
    progress: &dyn Progress,
) -> Result<Stage> {
    let units = units(n_rows, shard_size);
    let Some(files) = files else {
        return Ok(Stage { units, kept: vec![true; n_rows], complete: true, ..Stage::default() });
    };
    if files.rows.len() != n_rows {
        return Err(Error::Internal(format!("{} image paths for {n_rows} rows", files.rows.len())));
    }
    fs_err::create_dir_all(work.join(IMAGES_DIR))?;
    fs_err::create_dir_all(work.join(PROGRESS_DIR))?;
    // A subset run checks (hashes) only its own units' shards: the others are other tasks'.
    let mine = |u: &Unit| opts.subset.is_none_or(|s| s.contains(u));
    let mut records: Vec<Option<UnitRecord>> =
        units.iter().map(|u| if mine(u) { committed(work, u) } else { None }).collect();
    let resumed = records.iter().filter(|r| r.is_some()).count();
    let stale =
        units.iter().filter(|u| mine(u) && records[u.index].is_none() && record_path(work, u.index).is_file()).count();
    if stale > 0 {
        progress.note(&format!(
            "{stale} shard(s) in {} do not match their commit record (size or sha256); building them again",
            work.display()
        ));
    }
    let todo: Vec<&Unit> = units.iter().filter(|u| records[u.index].is_none() && mine(u)).collect();
    if opts.merge_only && records.iter().any(Option::is_none) {
        let missing: Vec<String> =
            units.iter().filter(|u| records[u.index].is_none()).map(|u| u.index.to_string()).collect();
        let shown = missing.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
        return Err(Error::Config(format!(
            "cannot merge: {} of {} shards are not built yet (shards {shown}{}); run the missing \
             `pipeline build --shard-index I --num-shards N` jobs first (shard u belongs to index u % N)",
            missing.len(),
            units.len(),
            if missing.len() > 10 { ", ..." } else { "" }
        )));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.workers)
        .build()
        .map_err(|e| Error::Internal(format!("starting {} decode threads: {e}", opts.workers)))?;
    // Images in flight at once: a few per thread, whatever the dataset size.
    let chunk = 4 * pool.current_num_threads();
    let total: usize = todo.iter().map(|u| u.rows).sum();
    if resumed > 0 && !todo.is_empty() {
        progress.note(&format!("resuming: {resumed} of {} shards already built", units.len()));
    }
    progress.start("images", total as u64);
    for unit in &todo {
        let rec = pool.install(|| build_unit(unit, files, output, work, version, opts.fail_fast, chunk, progress))?;
        records[unit.index] = Some(rec);
    }
    progress.finish();
    let complete = records.iter().all(Option::is_some);
    let mut stage = Stage { resumed, built: todo.len(), complete, ..Stage::default() };
    if complete {
        stage.kept = vec![true; n_rows];
        stage.voi = vec![None; n_rows];
        for (unit, rec) in units.iter().zip(records.into_iter().flatten()) {
            for (k, st, reason) in rec.rejected {
                let row = unit.first + k;
                stage.kept[row] = false;
                let ImageRow { id, path, .. } = files.rows[row].clone();
                stage.rejects.push(RejectRow { dicom_id: id, path, stage: st, reason });
            }
            let kept = (unit.first..unit.first + unit.rows).filter(|&r| stage.kept[r]);
            for (row, path) in kept.zip(rec.voi) {
                stage.voi[row] = Some(path);
            }
            stage.shards.push(ShardInfo { file: rec.file, rows: rec.images, bytes: rec.bytes, sha256: rec.sha256 });
        }
    }
    stage.units = units;
    Ok(stage)
}

/// Fingerprint of the image files of a build, in row order, from what the files hold, never
/// from where or when they were written (a copy of the archive is the same version): each
/// file's path, size and sha256 as `root/SHA256SUMS.txt` lists it ([`Sums`]), or, for a file
/// the list does not name (or without a list), a sha256 of its first and last 64 KiB (the
/// DICOM header, the start and the end of the pixels). With `full` every byte is hashed:
/// a listed file whose bytes differ from the list is an error, and an unlisted one enters
/// with its whole sha256 (so a verified build of a listed archive has the same id as a fast
/// one). A missing file has a fingerprint too (it becomes a reject).
pub fn fingerprint(project_root: &Path, rows: &[ImageRow], full: bool, progress: &dyn Progress) -> Result<String> {
    const EDGE: u64 = 64 * 1024;
    let sums = Sums::read(project_root)?;
    progress.start("fingerprints", rows.len() as u64);
    let edges = |path: &Path, size: u64| -> std::io::Result<String> {
        let mut f = std::fs::File::open(path)?;
        let mut h = Sha256::new();
        let mut buf = Vec::with_capacity(2 * EDGE as usize);
        (&mut f).take(EDGE).read_to_end(&mut buf)?;
        if size > 2 * EDGE {
            f.seek(SeekFrom::Start(size - EDGE))?;
        }
        f.read_to_end(&mut buf)?;
        h.update(&buf);
        Ok(cxr_dataset::files::hex(&h.finalize()))
    };
    let one = |rel: &str| -> Result<String> {
        let path = project_root.join(rel);
        let Ok(meta) = std::fs::metadata(&path) else { return Ok(format!("{rel} missing\n")) };
        let size = meta.len();
        let listed = sums.as_ref().and_then(|s| s.get(rel));
        let digest = match (listed, full) {
            (Some(sum), false) => format!("sha256:{sum}"),
            (listed, true) => {
                let Ok(actual) = cxr_dataset::files::sha256_file(&path) else {
                    return Ok(format!("{rel} {size} unreadable\n"));
                };
                if let Some(sum) = listed
                    && sum != actual
                {
                    return Err(Error::input(
                        &path,
                        format!(
                            "sha256 {actual} differs from {sum} in {}: the file is damaged or was \
                             changed; download it again (or remove its line from the list)",
                            project_root.join(SUMS_FILE).display()
                        ),
                    ));
                }
                format!("sha256:{actual}")
            }
            (None, false) => match edges(&path, size) {
                Ok(d) => format!("edges:{d}"),
                Err(e) => format!("unreadable {e}"),
            },
        };
        Ok(format!("{rel} {size} {digest}\n"))
    };
    let mut h = Sha256::new();
    for chunk in rows.chunks(1024) {
        let lines: Vec<String> = chunk
            .par_iter()
            .map(|row| match &row.invalid {
                Some(why) => Ok(format!("{} invalid {why}\n", row.path)),
                None => one(&row.path),
            })
            .collect::<Result<_>>()?;
        for l in lines {
            h.update(l);
        }
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    Ok(cxr_dataset::files::hex(&h.finalize()))
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
            col("stage", &|r| r.stage.clone()),
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
