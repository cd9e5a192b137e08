//! Versions that survive crashes and scale out: a build killed with SIGKILL resumes to the
//! same bytes, three `--shard-index` builds plus `merge` equal one build, image files are
//! fingerprinted into the version id, and `diff` names what changed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pipeline::build::{BuildConfig, build};
use pipeline::images::{ImageSource, PROGRESS_DIR, Subset};
use pipeline::progress::Silent;
use synth::ImageKinds;
use synth::SynthConfig;

use crate::build_table::{config, copy_tree};
use crate::fixture::{Archive, CXR_DCM, files, generate, small};

/// 30 subjects with 512x512 DICOMs (larger than the 64 KiB fingerprinted head, and slow
/// enough to decode that a build can be killed part-way).
fn large_images() -> &'static Archive {
    static A: OnceLock<Archive> = OnceLock::new();
    A.get_or_init(|| {
        generate(|out| SynthConfig {
            image_size: (512, 512),
            ..crate::fixture::config(out, 30, 11, "2.2", ImageKinds { dicom: true, jpg: false })
        })
    })
}

fn shard_config(root: &Path, out: &Path) -> BuildConfig {
    let mut cfg = BuildConfig { images: ImageSource::Dicom, image_size: 48, shard_size: 3, ..config(root, out) };
    cfg.run.workers = 1;
    cfg
}

fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (files(a), files(b));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>(), "same files");
    for (name, bytes) in &ta {
        assert!(bytes == &tb[name], "{name} differs");
    }
}

/// Run by [`a_killed_build_resumes_to_the_same_bytes`] in a child process: a plain build of
/// `CXR_RESUME_ROOT` into `CXR_RESUME_OUT`. Ignored so that it runs only when asked for.
#[test]
#[ignore = "child process of a_killed_build_resumes_to_the_same_bytes"]
fn resume_child_build() {
    let root = PathBuf::from(std::env::var_os("CXR_RESUME_ROOT").expect("CXR_RESUME_ROOT"));
    let out = PathBuf::from(std::env::var_os("CXR_RESUME_OUT").expect("CXR_RESUME_OUT"));
    build(&shard_config(&root, &out), &Silent).unwrap();
}

fn spawn_child(root: &Path, out: &Path) -> Child {
    child_command(root, out).spawn().unwrap()
}

fn child_command(root: &Path, out: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["resume::resume_child_build", "--exact", "--ignored", "--test-threads", "1"])
        .env("CXR_RESUME_ROOT", root)
        .env("CXR_RESUME_OUT", out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c
}

/// Killed (SIGKILL) at each step of publishing, a build is finished by the next one to the
/// same bytes, with the version in the index and no working folder or temporary file left.
#[test]
fn a_build_killed_at_each_step_of_publishing_is_completed_by_the_next() {
    let root = &small().root;
    let work = tempfile::tempdir().unwrap();
    let reference = build(&shard_config(root, &work.path().join("reference")), &Silent).unwrap();
    for step in ["parts", "manifest", "records", "rename"] {
        let out = work.path().join(step);
        let status = child_command(root, &out).env("CXR_PIPELINE_CRASH_AT", step).status().unwrap();
        assert!(!status.success(), "{step}: the child was killed");
        let published = out.join(&reference.version).is_dir();
        assert_eq!(published, step == "rename", "{step}: published only once renamed");
        if published {
            // A working folder of a published version (another build's, killed) is cleared.
            fs_err::create_dir_all(out.join(format!(".tmp-{}/images", reference.version))).unwrap();
        }
        let again = build(&shard_config(root, &out), &Silent).unwrap();
        assert_eq!(again.version, reference.version, "{step}");
        assert_eq!(again.reused, step == "rename", "{step}");
        assert_same_tree(&again.dir, &reference.dir);
        let listed = pipeline::build::versions::list(&out).unwrap();
        assert!(listed.iter().any(|l| l.starts_with(&reference.version)), "{step}: indexed: {listed:?}");
        let left: Vec<String> = fs_err::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(left.is_empty(), "{step}: left {left:?}");
    }
}

/// Committed units in the working folder of the (single) build under `out`.
fn committed_units(out: &Path) -> usize {
    let Ok(entries) = fs_err::read_dir(out) else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .filter_map(|e| fs_err::read_dir(e.path().join(PROGRESS_DIR)).ok())
        .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count())
        .sum()
}

/// Starts a build and SIGKILLs it once at least `units` units are committed; returns how
/// many were committed when it died.
fn kill_after(root: &Path, out: &Path, units: usize) -> usize {
    let mut child = spawn_child(root, out);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if committed_units(out) >= units {
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the build ended ({status}) before {units} units were committed; nothing to resume");
        }
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
    committed_units(out)
}

#[test]
fn a_killed_build_resumes_to_the_same_bytes() {
    let root = &large_images().root;
    let work = tempfile::tempdir().unwrap();
    let (killed, reference) = (work.path().join("killed"), work.path().join("reference"));
    // Killed twice, at different points, then finished.
    let first = kill_after(root, &killed, 1);
    let second = kill_after(root, &killed, first + 2);
    assert!(second > first, "the second run went on from the first: {first} -> {second}");
    let resumed = build(&shard_config(root, &killed), &Silent).unwrap();
    assert!(!resumed.reused && resumed.partial.is_none());
    let full = build(&shard_config(root, &reference), &Silent).unwrap();
    assert_eq!(resumed.version, full.version);
    assert!(full.cohort.as_ref().unwrap().images_out > 3 * second, "the kill came part-way through");
    assert_same_tree(&resumed.dir, &full.dir);
    let (_, problems) = pipeline::build::versions::verify(&resumed.dir).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(!killed.join(format!(".tmp-{}", resumed.version)).exists(), "the working folder became the version");
}

#[test]
fn three_shard_subsets_and_merge_equal_one_build() {
    let root = &small().root;
    let work = tempfile::tempdir().unwrap();
    let (sharded, whole) = (work.path().join("sharded"), work.path().join("whole"));
    let subset = |index| {
        let mut cfg = shard_config(root, &sharded);
        cfg.run.subset = Some(Subset { index, count: 3 });
        cfg
    };
    let merge = || {
        let mut cfg = shard_config(root, &sharded);
        cfg.run.merge_only = true;
        build(&cfg, &Silent)
    };
    let p0 = build(&subset(0), &Silent).unwrap();
    let partial = p0.partial.unwrap();
    assert!(partial.built > 0 && partial.committed == partial.built && partial.units > 3 * partial.built - 3);
    let err = merge().unwrap_err().to_string();
    assert!(err.contains("not built yet") && err.contains("--shard-index"), "{err}");
    assert!(!sharded.join(&p0.version).exists(), "nothing is published before the merge");
    for i in [2, 1] {
        let p = build(&subset(i), &Silent).unwrap();
        assert_eq!(p.version, p0.version);
    }
    // A subset run again finds its shards committed.
    let again = build(&subset(1), &Silent).unwrap();
    assert_eq!(again.partial.unwrap().built, 0);
    let merged = merge().unwrap();
    assert!(merged.partial.is_none() && merged.dir.join(pipeline::build::MANIFEST).is_file());
    let one = build(&shard_config(root, &whole), &Silent).unwrap();
    assert_eq!(one.version, merged.version);
    assert_same_tree(&merged.dir, &one.dir);
}

/// A committed shard whose bytes changed after its record was written (same size) is rebuilt
/// on resume, not published: the record's sha256 is checked.
#[test]
fn a_resumed_shard_that_does_not_match_its_record_is_rebuilt() {
    let root = &small().root;
    let work = tempfile::tempdir().unwrap();
    let (resumed, whole) = (work.path().join("resumed"), work.path().join("whole"));
    let mut half = shard_config(root, &resumed);
    half.run.subset = Some(Subset { index: 0, count: 2 });
    let p = build(&half, &Silent).unwrap();
    assert!(p.partial.unwrap().built > 0);
    let shard = fs_err::read_dir(p.dir.join(pipeline::images::IMAGES_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    let len = fs_err::metadata(&shard).unwrap().len() as usize;
    set_byte(&shard, len - 10);
    let done = build(&shard_config(root, &resumed), &Silent).unwrap();
    let one = build(&shard_config(root, &whole), &Silent).unwrap();
    assert_same_tree(&done.dir, &one.dir);
    let (_, problems) = pipeline::build::versions::verify(&done.dir).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
}

/// Publishers racing on one OUT (a cluster's merge jobs) lose no entry of `versions.json`.
#[test]
fn concurrent_publishes_keep_every_version_in_the_index() {
    for round in 0..5 {
        let out = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..12).map(|i| format!("v{round}-{i:02}")).collect();
        for (i, id) in ids.iter().enumerate() {
            let manifest =
                format!("{{\"dataset_version\": \"{id}\", \"config\": \"n={i}\\n\", \"counts\": {{\"rows\": {i}}}}}");
            fs_err::create_dir_all(out.path().join(id)).unwrap();
            fs_err::write(out.path().join(id).join(pipeline::build::MANIFEST), manifest).unwrap();
        }
        let barrier = std::sync::Barrier::new(ids.len());
        std::thread::scope(|scope| {
            for id in &ids {
                let (barrier, out) = (&barrier, out.path());
                scope.spawn(move || {
                    barrier.wait();
                    pipeline::build::versions::record(out, id).unwrap();
                });
            }
        });
        let listed = pipeline::build::versions::list(out.path()).unwrap();
        let mut got: Vec<&str> = listed.iter().map(|l| l.split_whitespace().next().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>(), "round {round}");
    }
}

fn set_byte(path: &Path, at: usize) {
    let meta = fs_err::metadata(path).unwrap();
    let mut bytes = fs_err::read(path).unwrap();
    bytes[at] ^= 0x01;
    fs_err::write(path, bytes).unwrap();
    // Keep the modification time, so only the content can tell.
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(meta.modified().unwrap()).unwrap();
}

/// How image bytes enter the version: through the project's SHA256SUMS.txt (trusted, or
/// checked with `--verify-inputs full`), else through the first and last 64 KiB (or every
/// byte); never through modification times.
#[test]
fn image_files_are_fingerprinted_into_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    fs_err::create_dir_all(&root).unwrap();
    copy_tree(&large_images().root, &root);
    let out = dir.path().join("out");
    let cfg = BuildConfig { image_size: 16, shard_size: 1000, ..shard_config(&root, &out) };
    let full = BuildConfig { verify_inputs_full: true, ..cfg.clone() };
    let v0 = build(&cfg, &Silent).unwrap().version;
    assert_eq!(build(&full, &Silent).unwrap().version, v0, "the listed sums, verified, are the same id");
    let rec = crate::fixture::Csv::read(&root.join(CXR_DCM).join("cxr-record-list.csv.gz"));
    let file = root.join(CXR_DCM).join(&rec.rows[0][3]);
    assert!(fs_err::metadata(&file).unwrap().len() > 200_000);
    // A byte far into the pixels, the size kept: the fast mode trusts the list; the full one
    // stops, naming the file.
    set_byte(&file, 150_000);
    assert_eq!(build(&cfg, &Silent).unwrap().version, v0);
    let err = build(&full, &Silent).unwrap_err().to_string();
    assert!(err.contains(&rec.rows[0][3]) && err.contains("differs from"), "{err}");

    // Without the list: the first and last 64 KiB, or every byte.
    fs_err::remove_file(root.join(CXR_DCM).join("SHA256SUMS.txt")).unwrap();
    let v1 = build(&cfg, &Silent).unwrap().version;
    let f1 = build(&full, &Silent).unwrap().version;
    assert_ne!(v1, f1, "another fingerprint, another id");
    set_byte(&file, 160_000);
    assert_eq!(build(&cfg, &Silent).unwrap().version, v1, "a byte between the edges is invisible to the fast mode");
    let f2 = build(&full, &Silent).unwrap();
    assert!(!f2.reused && f2.version != f1);
    // A byte in the header region: a new version either way.
    set_byte(&file, 1_000);
    let v2 = build(&cfg, &Silent).unwrap();
    assert!(!v2.reused && v2.version != v1);
    // A newer modification time alone is not a change.
    let f = std::fs::File::options().write(true).open(&file).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5)).unwrap();
    assert_eq!(build(&cfg, &Silent).unwrap().version, v2.version);
}

#[test]
fn diff_names_settings_counts_and_changed_columns() {
    let root = &small().root;
    let out = tempfile::tempdir().unwrap();
    let base = config(root, out.path());
    let a = build(&base, &Silent).unwrap();
    let b = build(&BuildConfig { uncertain: cxr_dataset::Uncertain::Ones, ..base.clone() }, &Silent).unwrap();
    let lines = pipeline::build::versions::diff(&a.dir, &b.dir).unwrap();
    let text = lines.join("\n");
    assert!(text.contains("setting uncertain: zeros -> ones"), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("column label_") && l.contains("shared images differ")), "{text}");
    assert!(!text.contains("only in"), "same images: {text}");
    // Dropping images with a blank view or orientation removes rows.
    let c = build(&BuildConfig { missing: pipeline::build::encode::MissingPolicy::Drop, ..base }, &Silent).unwrap();
    let text = pipeline::build::versions::diff(&a.dir, &c.dir).unwrap().join("\n");
    assert!(text.contains("setting missing: impute -> drop") && text.contains("count rows:"), "{text}");
    assert!(text.contains("images only in a"), "{text}");
    let same = pipeline::build::versions::diff(&a.dir, &a.dir).unwrap();
    assert!(same.last().unwrap().starts_with("no differences"), "{same:?}");
}

/// A planned build does each piece once: `--plan` runs the table stage and the fingerprints;
/// four `--from-plan` tasks, run with the input tables and every other task's images moved
/// away, build their shards; `merge --from-plan` publishes the same bytes as one build.
#[test]
fn four_planned_tasks_and_a_merge_read_only_their_own_images_and_equal_one_build() {
    use pipeline::build::build_from_plan;
    use pipeline::images::RunOptions;
    use polars::prelude::*;
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("archive");
    fs_err::create_dir_all(&root).unwrap();
    copy_tree(&small().root, &root);
    let whole = build(&shard_config(&root, &work.path().join("whole")), &Silent).unwrap();
    let out = work.path().join("planned");
    let mut cfg = shard_config(&root, &out);
    cfg.run.plan_only = true;
    let planned = build(&cfg, &Silent).unwrap();
    assert_eq!(planned.version, whole.version, "the plan's version is the build's");
    let plan = planned.plan.clone().expect("a plan");
    assert!(!out.join(&planned.version).exists(), "a plan publishes nothing");
    // The image file of each table row, in table order.
    let (f, _) = fs_err::File::open(plan.join("table.parquet")).unwrap().into_parts();
    let table = ParquetReader::new(f).finish().unwrap();
    let text = |c: &str| -> Vec<String> {
        let col = table.column(c).unwrap().cast(&DataType::String).unwrap();
        col.str().unwrap().iter().map(|v| v.unwrap().to_string()).collect()
    };
    let (d, s, t) = (text("dicom_id"), text("subject_id"), text("study_id"));
    let files: Vec<PathBuf> = (0..d.len())
        .map(|r| root.join(CXR_DCM).join(format!("files/p{}/p{}/s{}/{}.dcm", &s[r][..2], s[r], t[r], d[r])))
        .collect();
    let hide = |p: &Path, on: bool| {
        let hidden = PathBuf::from(format!("{}.hidden", p.display()));
        if on { fs_err::rename(p, &hidden).unwrap() } else { fs_err::rename(&hidden, p).unwrap() }
    };
    // No task reads the tables.
    let tables = [root.join(crate::fixture::CXR_JPG), root.join("mimiciv")];
    for p in &tables {
        hide(p, true);
    }
    let units = d.len().div_ceil(3);
    for index in 0..4 {
        let others: Vec<&PathBuf> =
            files.iter().enumerate().filter(|(r, _)| r / 3 % 4 != index).map(|(_, p)| p).collect();
        for p in &others {
            hide(p, true);
        }
        let run = RunOptions { subset: Some(Subset { index, count: 4 }), workers: 1, ..RunOptions::default() };
        let task = build_from_plan(&out, &planned.version, run, &Silent).unwrap();
        let partial = task.partial.expect("a task publishes nothing");
        assert_eq!(partial.built, (index..units).step_by(4).count(), "task {index} built its own units");
        for p in &others {
            hide(p, false);
        }
    }
    for p in &files {
        hide(p, true);
    }
    let merged =
        build_from_plan(&out, &planned.version, RunOptions { merge_only: true, ..RunOptions::default() }, &Silent)
            .unwrap();
    for p in files.iter().chain(&tables) {
        hide(p, false);
    }
    assert!(!merged.reused && merged.partial.is_none());
    assert_same_tree(&merged.dir, &whole.dir);
    assert!(!out.join(format!(".tmp-{}", merged.version)).exists(), "the plan went with the working folder");
    let listed = pipeline::build::versions::list(&out).unwrap();
    assert!(listed.iter().any(|l| l.starts_with(&merged.version)), "{listed:?}");
}
