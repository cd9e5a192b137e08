//! A seed and options give the same bytes; another seed gives another archive.

use std::path::Path;

use synth::SynthConfig;
use synth::studies::Syntax;

use crate::fixture::{BOTH, CXR_JPG, config, files, generate};

fn mixed(out: &Path, seed: u64) -> SynthConfig {
    SynthConfig { syntaxes: vec![Syntax::Rle, Syntax::ExplicitLittle], ..config(out, 12, seed, "3.1", BOTH) }
}

#[test]
fn same_seed_same_bytes_other_seed_other_archive() {
    let a = generate(|out| mixed(out, 5));
    let b = generate(|out| mixed(out, 5));
    let c = generate(|out| mixed(out, 6));
    let (fa, fb, fc) = (files(&a.root), files(&b.root), files(&c.root));
    assert!(fa.len() > 30);
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    for (k, v) in &fa {
        assert!(fb[k] == *v, "{k} differs between two runs with the same seed");
    }
    let meta = format!("{CXR_JPG}/mimic-cxr-2.0.0-metadata.csv.gz");
    assert_ne!(fa[&meta], fc[&meta]);
    assert!(fa.keys().all(|k| !k.ends_with(".tmp")), "no temporary files left behind");
}

#[test]
fn refuses_to_write_into_a_non_empty_folder_without_force() {
    let dir = tempfile::tempdir().unwrap();
    fs_err::write(dir.path().join("notes.txt"), "mine").unwrap();
    let cfg = config(dir.path(), 3, 1, "2.2", crate::fixture::NONE);
    let err = synth::run(&cfg, &pipeline::progress::Silent).unwrap_err().to_string();
    assert!(err.contains("not empty") && err.contains("--force"), "{err}");
    let forced = SynthConfig { force: true, ..cfg };
    synth::run(&forced, &pipeline::progress::Silent).unwrap();
    assert_eq!(fs_err::read_to_string(dir.path().join("notes.txt")).unwrap(), "mine", "--force keeps other files");
}
