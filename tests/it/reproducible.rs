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

/// Sets every file's modification time under `root` to `secs` after the epoch.
fn touch_all(root: &Path, secs: u64) {
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    for p in crate::fixture::walk(root) {
        fs_err::File::options().write(true).open(&p).unwrap().set_modified(when).unwrap();
    }
}

/// The version id is what the bytes are: the archive copied elsewhere with new modification
/// times builds the same id, with or without its checksum lists (and whether they are
/// trusted or verified); one changed byte of a table, or of an image when every byte is
/// checked, gives another id or an error naming the file.
#[test]
fn a_copy_of_the_archive_is_the_same_version_and_a_changed_byte_is_not() {
    use pipeline::build::{BuildConfig, build};
    use pipeline::images::ImageSource;
    use pipeline::progress::Silent;
    let archive = crate::fixture::small();
    let jpg = |root: &Path| root.join(CXR_JPG);
    assert!(jpg(&archive.root).join("SHA256SUMS.txt").is_file(), "the generator writes the list");
    let cfg = |root: &Path, out: &Path, full: bool| BuildConfig {
        images: ImageSource::Jpg,
        verify_inputs_full: full,
        ..crate::build_table::config(root, out)
    };
    let out = tempfile::tempdir().unwrap();
    let original = build(&cfg(&archive.root, out.path(), false), &Silent).unwrap().version;
    let copy = |keep_sums: bool| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("elsewhere/archive");
        fs_err::create_dir_all(root.parent().unwrap()).unwrap();
        let ok = std::process::Command::new("cp").arg("-r").arg(&archive.root).arg(&root).status().unwrap();
        assert!(ok.success());
        touch_all(&root, 1_000_000_000);
        if !keep_sums {
            for project in ["mimic-cxr/2.0.0", CXR_JPG, "mimiciv/2.2"] {
                fs_err::remove_file(root.join(project).join("SHA256SUMS.txt")).unwrap();
            }
        }
        (dir, root)
    };
    let (_a, listed) = copy(true);
    let out = tempfile::tempdir().unwrap();
    assert_eq!(build(&cfg(&listed, out.path(), false), &Silent).unwrap().version, original, "cp -r, new mtimes");
    let out = tempfile::tempdir().unwrap();
    let verified = build(&cfg(&listed, out.path(), true), &Silent).unwrap().version;
    assert_eq!(verified, original, "verifying every byte against the list gives the same id");

    // Without the lists: the fallback, the same for a copy with new modification times.
    let (_b, bare) = copy(false);
    let out = tempfile::tempdir().unwrap();
    let fallback = build(&cfg(&bare, out.path(), false), &Silent).unwrap().version;
    let (_c, bare2) = copy(false);
    touch_all(&bare2, 2_000_000_000);
    let out = tempfile::tempdir().unwrap();
    assert_eq!(build(&cfg(&bare2, out.path(), false), &Silent).unwrap().version, fallback);
    let out = tempfile::tempdir().unwrap();
    assert_eq!(
        build(&cfg(&bare, out.path(), true), &Silent).unwrap().version,
        original,
        "every byte hashed without a list is what the list says"
    );

    // One changed byte of a table (a CheXpert label 1.0 -> 0.0): another version.
    let (_d, changed) = copy(true);
    let chexpert = changed.join(CXR_JPG).join("mimic-cxr-2.0.0-chexpert.csv.gz");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&fs_err::read(&chexpert).unwrap()[..]), &mut text)
        .unwrap();
    let at = text.find(",1.0").unwrap() + 1;
    text.replace_range(at..at + 1, "0");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
    fs_err::write(&chexpert, gz.finish().unwrap()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let other = build(&cfg(&changed, out.path(), false), &Silent).unwrap().version;
    assert_ne!(other, original, "a changed table is another version");

    // One changed byte of an image, its size kept: verifying names the file.
    let (_e, damaged) = copy(true);
    let meta = crate::fixture::Csv::read(&jpg(&damaged).join("mimic-cxr-2.0.0-metadata.csv.gz"));
    let (d, s, t) = (&meta.rows[0][0], &meta.rows[0][1], &meta.rows[0][2]);
    let image = jpg(&damaged).join(format!("files/p{}/p{s}/s{t}/{d}.jpg", &s[..2]));
    let mut pixels = fs_err::read(&image).unwrap();
    let mid = pixels.len() / 2;
    pixels[mid] ^= 0x40;
    fs_err::write(&image, &pixels).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = build(&cfg(&damaged, out.path(), true), &Silent).unwrap_err().to_string();
    assert!(
        err.contains(&format!("{d}.jpg")) && err.contains("differs from") && err.contains("SHA256SUMS.txt"),
        "{err}"
    );
}
