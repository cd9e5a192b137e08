//! What a dataset version id hashes: the code (a digest of the data-producing sources, made
//! by `pipeline/build.rs`), the input tables and DICOM headers read, the resolved settings, the
//! SQL and schema text, and the fingerprint of the image files used.

use std::path::PathBuf;

use cxr_dataset::files::hex;
use sha2::{Digest, Sha256};

use super::BuildConfig;
use super::link::QUERIES;
use crate::Result;
use crate::sources::schema::FILES;

/// The sha256 of the data-producing source files ([`CODE_FILES`]), computed when the crate
/// is compiled (`pipeline/build.rs`) and hashed into every version id.
pub const CODE_DIGEST: &str = env!("PIPELINE_CODE_DIGEST");

/// The files [`CODE_DIGEST`] covers, comma-separated, relative to the pipeline crate.
pub const CODE_FILES: &str = env!("PIPELINE_CODE_FILES");

/// The code a version id stands for: the pipeline version and [`CODE_DIGEST`].
pub fn code_id() -> String {
    format!("pipeline {} code {CODE_DIGEST}", env!("CARGO_PKG_VERSION"))
}

/// The hash of a build's tables: their contents, the resolved config, the SQL and schema text
/// and the code ([`code_id`]) (the dataset version id before the images are fingerprinted).
/// Also returns the schema hash.
pub fn tables_id(tables: &[(&str, PathBuf)], dicoms: &[PathBuf], cfg: &BuildConfig) -> Result<(String, String)> {
    let mut h = Sha256::new();
    h.update(format!("{}\n", code_id()));
    // Headers read from DICOM files: their names and sizes.
    for p in dicoms {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        h.update(format!("dicom {name} {}\n", fs_err::metadata(p)?.len()));
    }
    for (role, path) in tables {
        let size = fs_err::metadata(path)?.len();
        h.update(format!("table {role} {size} {}\n", cxr_dataset::files::sha256_file(path)?));
    }
    h.update(cfg.describe());
    for q in QUERIES {
        h.update(format!("sql {}\n{}\n", q.name, q.text));
    }
    let mut sh = Sha256::new();
    for (name, text) in FILES {
        sh.update(format!("schema {name}\n{text}\n"));
    }
    let schema_hash = hex(&sh.finalize());
    h.update(&schema_hash);
    Ok((hex(&h.finalize()), schema_hash))
}

/// The dataset version id: the tables' hash and the fingerprint of the image files used.
pub fn version_id(tables_id: &str, source: &str, images: &str) -> String {
    let h = Sha256::digest(format!("{tables_id}\nimages {source} {images}\n"));
    hex(&h)[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compiled-in digest is that of the files on disk now (the build script reran after
    /// every change), and every module of the crate is either covered or named as not
    /// producing data.
    #[test]
    fn the_code_digest_follows_the_data_producing_sources() {
        use std::path::Path;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let files: Vec<&str> = CODE_FILES.split(',').collect();
        let mut h = Sha256::new();
        for file in &files {
            let bytes = fs_err::read(root.join(file)).unwrap();
            h.update(format!("{file} {}\n", bytes.len()));
            h.update(&bytes);
        }
        assert_eq!(hex(&h.finalize()), CODE_DIGEST);
        // Every source file of the library is either hashed or named here as not producing
        // data (errors, reports, version bookkeeping, progress). The CLI and the generator are
        // other crates.
        let not_data = [
            "src/error.rs",
            "src/lib.rs",
            "src/progress.rs",
            "src/build/report.rs",
            "src/build/versions.rs",
            "src/sources/mod.rs",
        ];
        let mut stack = vec![root.join("src")];
        while let Some(dir) = stack.pop() {
            for entry in fs_err::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
                if path.is_dir() {
                    stack.push(path);
                } else if name.ends_with(".rs") {
                    assert!(
                        files.contains(&name.as_str()) || not_data.contains(&name.as_str()),
                        "{name}: data-producing?"
                    );
                }
            }
        }
        assert!(code_id().contains(CODE_DIGEST));
    }
}
