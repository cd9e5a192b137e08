//! Build script: a sha256 of every source file of the trainer library and of the contract
//! crate, compiled in as `TRAINER_CODE_DIGEST`. Every reusable stage of a run (pretraining,
//! cached features, the probe and its summary) is keyed by it, so a run made by other trainer
//! code is redone instead of reused (`experiment::RunKey`). Conservative on purpose: any
//! change under `src/` (the binary's files included) counts.
//!
//! With the `cuda` feature it also writes the stand-ins for LLVM's functions
//! (`trainer/src/llvm_absent.rs`) from `llvm-absent.txt`; with `openblas`, it links the
//! system's OpenBLAS (see below).

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

    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        llvm_absent(&root);
    }
    // openblas-src links nothing while `DOCS_RS` is set (.cargo/config.toml sets it for the
    // cuda build: see src/llvm_absent.rs), so the system library is named here.
    if std::env::var_os("CARGO_FEATURE_OPENBLAS").is_some() && std::env::var_os("DOCS_RS").is_some() {
        println!("cargo::rustc-link-lib=dylib=openblas");
    }
}

/// `OUT_DIR/llvm_absent.rs`: one `no_mangle` function per name of `llvm-absent.txt`.
fn llvm_absent(root: &Path) {
    let list = root.join("llvm-absent.txt");
    println!("cargo::rerun-if-changed={}", list.display());
    let text = std::fs::read_to_string(&list).unwrap_or_else(|e| panic!("reading {}: {e}", list.display()));
    let mut out = String::new();
    for (n, line) in text.lines().enumerate() {
        let name = line.split('#').next().unwrap_or("").trim();
        if name.is_empty() {
            continue;
        }
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{} line {}: {name:?} is not a C function name",
            list.display(),
            n + 1
        );
        let _ = writeln!(out, "#[unsafe(no_mangle)]\npub extern \"C\" fn {name}() -> ! {{\n    absent(\"{name}\")\n}}");
    }
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("llvm_absent.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
}
