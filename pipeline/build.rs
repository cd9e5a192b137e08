//! Build script: a sha256 of the source files that decide a dataset's content (reading,
//! linkage, labels, encodings, image decoding and preprocessing, the shard format), compiled
//! in as `PIPELINE_CODE_DIGEST`. Every dataset version id hashes it, so a rebuild after a
//! change to that code makes a new version instead of reusing (or resuming) old-code output.
//! The SQL and the schemas are hashed into the version separately; the CLI, progress,
//! reports, benchmarks and the synthetic generator are not data-producing code.

use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Relative to this crate's folder. Keep in step with `build::CODE_FILES`.
const FILES: &[&str] = &[
    "src/build/mod.rs",
    "src/build/config.rs",
    "src/build/identity.rs",
    "src/build/encode.rs",
    "src/build/labels.rs",
    "src/build/link.rs",
    "src/build/plan.rs",
    "src/eval/mod.rs",
    "src/eval/chexpert.rs",
    "src/eval/nih.rs",
    "src/publish/mod.rs",
    "src/publish/identity.rs",
    "src/images/mod.rs",
    "src/images/dicom.rs",
    "src/images/preprocess.rs",
    "src/sources/dicom_meta.rs",
    "src/sources/discover.rs",
    "src/sources/ingest.rs",
    "src/sources/paths.rs",
    "src/sources/schema.rs",
    "src/sources/sums.rs",
    "src/sources/table.rs",
    // The seeded re-split draws from this generator.
    "src/rng.rs",
    "../dataset/src/lib.rs",
    "../dataset/src/features.rs",
    "../dataset/src/shard.rs",
    "../dataset/src/split.rs",
    "../dataset/src/tensors.rs",
];

fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let mut h = Sha256::new();
    for file in FILES {
        println!("cargo::rerun-if-changed={file}");
        let bytes = std::fs::read(Path::new(&root).join(file))
            .unwrap_or_else(|e| panic!("reading {file} for the code digest: {e}"));
        h.update(format!("{file} {}\n", bytes.len()));
        h.update(&bytes);
    }
    let digest = h.finalize().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    println!("cargo::rustc-env=PIPELINE_CODE_DIGEST={digest}");
    println!("cargo::rustc-env=PIPELINE_CODE_FILES={}", FILES.join(","));
}
