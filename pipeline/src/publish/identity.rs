//! The identity of a dataset version: the code that made it ([`CODE_DIGEST`], a digest of the
//! data-producing sources made by `pipeline/build.rs`) and [`version_id`], the hash of what a
//! build read (tables, settings, code: the MIMIC build's `tables_id`, the evaluation
//! builds' own) and the fingerprint of the image files used (`crate::images::fingerprint`).

use cxr_dataset::files::hex;
use sha2::{Digest, Sha256};

/// The sha256 of the data-producing source files ([`CODE_FILES`]), computed when the crate
/// is compiled (`pipeline/build.rs`) and hashed into every version id.
pub const CODE_DIGEST: &str = env!("PIPELINE_CODE_DIGEST");

/// The files [`CODE_DIGEST`] covers, comma-separated, relative to the pipeline crate.
pub const CODE_FILES: &str = env!("PIPELINE_CODE_FILES");

/// The code a version id stands for: the pipeline version and [`CODE_DIGEST`].
pub fn code_id() -> String {
    format!("pipeline {} code {CODE_DIGEST}", env!("CARGO_PKG_VERSION"))
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
            "src/publish/versions.rs",
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
