//! Published versions: `OUT/versions.json` (every version with its settings and counts),
//! `pipeline list`, and `pipeline verify`, which re-checks a version against its manifest.

use std::path::Path;

use serde_json::{Value, json};

use crate::{Error, Result};
use cxr_dataset::manifest::Manifest;
use polars::prelude::{DataFrame, ParquetReader, PolarsError, SerReader};

/// The index of versions in an output folder.
pub const VERSIONS: &str = "versions.json";

fn read_json(path: &Path) -> Result<Value> {
    let text = fs_err::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| Error::input(path, format!("not valid JSON: {e}")))
}

/// The lock file serialising updates of `versions.json` (an exclusive advisory lock held for
/// the read-modify-write, so concurrent publishers, e.g. a cluster's merge jobs, lose nothing).
pub const VERSIONS_LOCK: &str = "versions.json.lock";

/// Folder of the feature table's Parquet parts inside a version folder.
pub const FEATURES_DIR: &str = "features";

/// File name of feature part `i` (`part-00000.parquet`); part `i` holds rows
/// `i * shard_size ..` of the table, in table order.
pub fn part_name(i: usize) -> String {
    format!("part-{i:05}.parquet")
}

/// Reads every part of a version's feature table, in order.
pub fn read_features(version_dir: &Path) -> Result<DataFrame> {
    let dir = version_dir.join(FEATURES_DIR);
    let mut parts = Vec::new();
    for i in 0.. {
        let p = dir.join(part_name(i));
        if !p.is_file() {
            break;
        }
        let (file, _) = fs_err::File::open(&p)?.into_parts();
        parts.push(ParquetReader::new(file).finish().map_err(polars_error("reading parquet"))?);
    }
    let mut it = parts.into_iter();
    let mut df = it.next().ok_or_else(|| Error::input(&dir, "no feature parts"))?;
    for p in it {
        df.vstack_mut(&p).map_err(polars_error("stacking parts"))?;
    }
    Ok(df)
}

fn polars_error(context: &str) -> impl Fn(PolarsError) -> Error + '_ {
    move |e| Error::Polars { context: context.to_string(), source: e }
}

/// The typed manifest of the version folder `dir`.
fn read_manifest(dir: &Path) -> Result<Manifest> {
    Manifest::read(dir).map_err(|e| Error::input(dir, e))
}

/// Adds (or replaces) `version` in `out/versions.json`, from its manifest, under
/// [`VERSIONS_LOCK`].
pub fn record(out: &Path, version: &str) -> Result<()> {
    let manifest = read_manifest(&out.join(version))?;
    let lock_path = out.join(VERSIONS_LOCK);
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("{}: cannot open the lock file: {e}", lock_path.display()))
    })?;
    lock.lock()
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: cannot take the lock: {e}", lock_path.display())))?;
    let index_path = out.join(VERSIONS);
    let mut entries: Vec<Value> = if index_path.is_file() {
        read_json(&index_path)?.get("versions").and_then(Value::as_array).cloned().unwrap_or_default()
    } else {
        Vec::new()
    };
    entries.retain(|e| e.get("id").and_then(Value::as_str) != Some(version));
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    entries.push(json!({
        "id": version,
        "created_unix": created,
        "config": manifest.config,
        "counts": manifest.counts,
    }));
    let text = serde_json::to_string_pretty(&json!({ "versions": entries }))?;
    let written = cxr_dataset::files::write_atomic(&index_path, text.as_bytes());
    drop(lock);
    Ok(written?)
}

/// Records `version` in `out/versions.json` unless it is there already (the reuse path's
/// repair of a publisher killed between its rename and its index update).
pub fn ensure_recorded(out: &Path, version: &str) -> Result<()> {
    let index_path = out.join(VERSIONS);
    let listed = index_path.is_file()
        && read_json(&index_path)?
            .get("versions")
            .and_then(Value::as_array)
            .is_some_and(|v| v.iter().any(|e| e.get("id").and_then(Value::as_str) == Some(version)));
    if listed { Ok(()) } else { record(out, version) }
}

/// One line per version: id, rows, rejected, settings on one line.
pub fn list(out: &Path) -> Result<Vec<String>> {
    let index = read_json(&out.join(VERSIONS))?;
    let entries = index.get("versions").and_then(Value::as_array).cloned().unwrap_or_default();
    Ok(entries
        .iter()
        .map(|e| {
            let config = e["config"].as_str().unwrap_or("").trim().replace('\n', " ");
            format!(
                "{}  rows {}  rejected {}  {}",
                e["id"].as_str().unwrap_or("?"),
                e["counts"]["rows"],
                e["counts"]["rejected"],
                config
            )
        })
        .collect())
}

/// Re-checks every file the manifest lists (existence, sha256, image shard row counts);
/// returns the files checked and the problems found.
pub fn verify(dir: &Path) -> Result<(usize, Vec<String>)> {
    let manifest = read_manifest(dir)?;
    let mut checked = 0;
    let mut problems = Vec::new();
    for part in &manifest.parts {
        let features = (!part.features.is_empty()).then_some((&part.features, Some(&part.features_sha256)));
        let images = part.images.as_ref().map(|f| (f, part.images_sha256.as_ref()));
        for (is_images, (rel, want)) in
            [(false, features), (true, images)].into_iter().filter_map(|(i, f)| f.map(|f| (i, f)))
        {
            let path = dir.join(rel);
            checked += 1;
            if !path.is_file() {
                problems.push(format!("{rel}: missing"));
                continue;
            }
            let sha = cxr_dataset::files::sha256_file(&path)?;
            if Some(&sha) != want {
                problems.push(format!("{rel}: sha256 {sha} differs from the manifest"));
                continue;
            }
            if is_images {
                let shard =
                    cxr_dataset::shard::Shard::read(fs_err::File::open(&path)?).map_err(|e| Error::input(&path, e))?;
                if shard.len() != part.rows {
                    problems.push(format!("{rel}: {} images, manifest says {}", shard.len(), part.rows));
                }
            }
        }
    }
    Ok((checked, problems))
}

/// The values of a column as text (null as `None`), for comparisons across versions.
fn as_text(df: &DataFrame, name: &str) -> Result<Vec<Option<String>>> {
    use polars::prelude::DataType;
    let pe = |e| Error::Polars { context: format!("diff: column {name}"), source: e };
    let col = df.column(name).map_err(pe)?.cast(&DataType::String).map_err(pe)?;
    Ok(col.str().map_err(pe)?.iter().map(|v| v.map(str::to_string)).collect())
}

/// What differs between two versions: settings, counts, rows only in one, columns only in
/// one, and for the images in both how many values of each column changed.
pub fn diff(a: &Path, b: &Path) -> Result<Vec<String>> {
    let (ma, mb) = (read_manifest(a)?, read_manifest(b)?);
    let mut out = vec![
        format!("a: {} ({})", ma.dataset_version, a.display()),
        format!("b: {} ({})", mb.dataset_version, b.display()),
    ];
    let before = out.len();
    let settings = |m: &Manifest| -> Vec<(String, String)> {
        m.config.lines().filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect()
    };
    let (sa, sb) = (settings(&ma), settings(&mb));
    for (k, va) in &sa {
        match sb.iter().find(|(kb, _)| kb == k) {
            Some((_, vb)) if vb != va => out.push(format!("setting {k}: {va} -> {vb}")),
            None => out.push(format!("setting {k}: {va} -> (absent)")),
            _ => {}
        }
    }
    for (k, vb) in sb.iter().filter(|(k, _)| !sa.iter().any(|(ka, _)| ka == k)) {
        out.push(format!("setting {k}: (absent) -> {vb}"));
    }
    let (ca, cb) = (&ma.counts, &mb.counts);
    for (k, va, vb) in [
        ("images_read", ca.images_read, cb.images_read),
        ("rows", ca.rows, cb.rows),
        ("rejected", ca.rejected, cb.rejected),
    ] {
        if va != vb {
            out.push(format!("count {k}: {va} -> {vb}"));
        }
    }
    let (fa, fb) = (read_features(a)?, read_features(b)?);
    let (ids_a, ids_b) = (as_text(&fa, "dicom_id")?, as_text(&fb, "dicom_id")?);
    let index_b: std::collections::HashMap<&str, usize> =
        ids_b.iter().enumerate().filter_map(|(i, d)| d.as_deref().map(|d| (d, i))).collect();
    let set_a: std::collections::HashSet<&str> = ids_a.iter().filter_map(|d| d.as_deref()).collect();
    let only = |ids: &[Option<String>], other: &dyn Fn(&str) -> bool| -> Vec<String> {
        ids.iter().filter_map(|d| d.clone()).filter(|d| !other(d)).collect()
    };
    let only_a = only(&ids_a, &|d| index_b.contains_key(d));
    let only_b = only(&ids_b, &|d| set_a.contains(d));
    for (side, ids) in [("a", &only_a), ("b", &only_b)] {
        if !ids.is_empty() {
            let eg: Vec<&str> = ids.iter().take(3).map(String::as_str).collect();
            out.push(format!("rows: {} images only in {side} (e.g. {})", ids.len(), eg.join(", ")));
        }
    }
    let names = |df: &DataFrame| -> Vec<String> { df.get_column_names().iter().map(|c| c.to_string()).collect() };
    let (cols_a, cols_b) = (names(&fa), names(&fb));
    for (side, cols, other) in [("a", &cols_a, &cols_b), ("b", &cols_b, &cols_a)] {
        let missing: Vec<&str> = cols.iter().filter(|c| !other.contains(c)).map(String::as_str).collect();
        if !missing.is_empty() {
            out.push(format!("columns only in {side}: {}", missing.join(", ")));
        }
    }
    // Row pairs of the images in both versions.
    let pairs: Vec<(usize, usize)> = ids_a
        .iter()
        .enumerate()
        .filter_map(|(i, d)| d.as_deref().and_then(|d| index_b.get(d)).map(|&j| (i, j)))
        .collect();
    for c in cols_a.iter().filter(|c| cols_b.contains(c) && c.as_str() != "dicom_id") {
        let (va, vb) = (as_text(&fa, c)?, as_text(&fb, c)?);
        let changed = pairs.iter().filter(|&&(i, j)| va[i] != vb[j]).count();
        if changed > 0 {
            out.push(format!("column {c}: {changed} of {} shared images differ", pairs.len()));
        }
    }
    if out.len() == before {
        out.push("no differences in settings, counts or feature rows".into());
    }
    Ok(out)
}
