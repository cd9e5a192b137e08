//! Build script: a sha256 of every source file of the trainer library and of the contract
//! crate, compiled in as `TRAINER_CODE_DIGEST`. Every reusable stage of a run (pretraining,
//! cached features, the probe and its summary) is keyed by it, so a run made by other trainer
//! code is redone instead of reused (`experiment::RunKey`). Conservative on purpose: any
//! change under `src/` (the binary's files included) counts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The `.rs` files under `dir`, sorted, relative to `root`.
fn sources(root: &Path, dir: &str, out: &mut Vec<PathBuf>) {
    let mut stack = vec![root.join(dir)];
    while let Some(d) = stack.pop() {
        println!("cargo::rerun-if-changed={}", d.display());
        let entries =
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {} for the code digest: {e}", d.display()));
        for entry in entries {
            let path = entry.unwrap_or_else(|e| panic!("reading {}: {e}", d.display())).path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path.strip_prefix(root).expect("under the crate").to_path_buf());
            }
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root, "src", &mut files);
    sources(&root, "../dataset/src", &mut files);
    files.sort();
    let mut h = Sha256::new();
    for file in &files {
        println!("cargo::rerun-if-changed={}", file.display());
        let bytes = std::fs::read(root.join(file))
            .unwrap_or_else(|e| panic!("reading {} for the code digest: {e}", file.display()));
        h.update(format!("{} {}\n", file.display(), bytes.len()));
        h.update(&bytes);
    }
    let digest = h.finalize().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    println!("cargo::rustc-env=TRAINER_CODE_DIGEST={digest}");
}
