//! Published versions: `OUT/versions.json` (every version with its settings and counts),
//! `pipeline list`, and `pipeline verify`, which re-checks a version against its manifest.

use std::path::Path;

use serde_json::{Value, json};

use crate::build::MANIFEST;
use crate::{Error, Result};

/// The index of versions in an output folder.
pub const VERSIONS: &str = "versions.json";

fn read_json(path: &Path) -> Result<Value> {
    let text = fs_err::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: not valid JSON: {e}", path.display())))
}

/// Adds (or replaces) `version` in `out/versions.json`, from its manifest.
pub fn record(out: &Path, version: &str) -> Result<()> {
    let manifest = read_json(&out.join(version).join(MANIFEST))?;
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
        "config": manifest["config"],
        "counts": manifest["counts"],
    }));
    let text = serde_json::to_string_pretty(&json!({ "versions": entries }))
        .map_err(|e| Error::Config(format!("{VERSIONS}: {e}")))?;
    crate::synth::table::write_atomic(&index_path, text.as_bytes())
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
    let manifest = read_json(&dir.join(MANIFEST))?;
    let parts = manifest["parts"].as_array().cloned().unwrap_or_default();
    let mut checked = 0;
    let mut problems = Vec::new();
    for part in &parts {
        for (file_key, sha_key) in [("features", "features_sha256"), ("images", "images_sha256")] {
            let Some(rel) = part[file_key].as_str() else { continue };
            let path = dir.join(rel);
            checked += 1;
            if !path.is_file() {
                problems.push(format!("{rel}: missing"));
                continue;
            }
            let sha = crate::build::sha256_file(&path)?;
            if Some(sha.as_str()) != part[sha_key].as_str() {
                problems.push(format!("{rel}: sha256 {sha} differs from the manifest"));
                continue;
            }
            if file_key == "images" {
                let shard = cxr_dataset::shard::Shard::read(fs_err::File::open(&path)?)
                    .map_err(|e| Error::Config(format!("{rel}: {e}")))?;
                if Some(shard.len() as u64) != part["rows"].as_u64() {
                    problems.push(format!("{rel}: {} images, manifest says {}", shard.len(), part["rows"]));
                }
            }
        }
    }
    Ok((checked, problems))
}
