//! Inputs checked by key and by path: a repeated row of any keyed table is dropped and
//! counted, a row that shares a key with different values stops the build naming both lines,
//! and identifiers that are not MIMIC-CXR's (a `dicom_id` that walks out of the archive)
//! become rejects, never file reads.

use std::io::{Read, Write};
use std::path::Path;

use pipeline::build::{BuildConfig, build};
use pipeline::images::ImageSource;
use pipeline::progress::Silent;
use polars::prelude::*;

use crate::build_table::{config, read_table};
use crate::fixture::{CXR_JPG, small, tables_of};

fn gunzip(path: &Path) -> String {
    let mut s = String::new();
    flate2::read::GzDecoder::new(&fs_err::read(path).unwrap()[..]).read_to_string(&mut s).unwrap();
    s
}

fn write_gz(path: &Path, text: &str) {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).unwrap();
    fs_err::write(path, e.finish().unwrap()).unwrap();
}

/// A copy of `archive` to change.
fn scratch(archive: &crate::fixture::Archive) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    let status = std::process::Command::new("cp").arg("-r").arg(&archive.root).arg(&root).status().unwrap();
    assert!(status.success());
    (dir, root)
}

/// Appends a copy of data row `row` (0-based) of a gzip CSV, with `change` = (column, value)
/// applied; returns the file line the copy is on and the line of the original.
fn append_copy(path: &Path, row: usize, change: Option<(&str, &str)>) -> (usize, usize) {
    let text = gunzip(path);
    let mut r = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let header: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    let records: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    let original = records[row].position().unwrap().line() as usize;
    let mut copy: Vec<String> = records[row].iter().map(str::to_string).collect();
    if let Some((column, value)) = change {
        let c = header.iter().position(|h| h == column).unwrap_or_else(|| panic!("{}: no {column}", path.display()));
        assert_ne!(copy[c], value, "the change must change the row");
        copy[c] = value.to_string();
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&copy).unwrap();
    let line = String::from_utf8(w.into_inner().unwrap()).unwrap();
    let mut out = text.clone();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&line);
    write_gz(path, &out);
    let lines = out.lines().count();
    (lines, original)
}

/// One keyed table of the MIMIC build: file, a non-key column and another valid value for it.
struct Keyed {
    file: &'static str,
    key: &'static str,
    column: &'static str,
    other: &'static str,
}

const KEYED: [Keyed; 6] = [
    Keyed { file: "mimiciv/2.2/hosp/patients.csv.gz", key: "subject_id", column: "anchor_age", other: "33" },
    Keyed { file: "mimiciv/2.2/hosp/admissions.csv.gz", key: "hadm_id", column: "insurance", other: "Other2" },
    Keyed { file: "mimiciv/2.2/icu/icustays.csv.gz", key: "stay_id", column: "los", other: "17.25" },
    Keyed { file: "CXR_JPG/mimic-cxr-2.0.0-chexpert.csv.gz", key: "study_id", column: "Edema", other: "-1.0" },
    Keyed { file: "CXR_JPG/mimic-cxr-2.0.0-split.csv.gz", key: "dicom_id", column: "split", other: "unused" },
    Keyed { file: "CXR_JPG/mimic-cxr-2.0.0-metadata.csv.gz", key: "dicom_id", column: "ViewPosition", other: "AXIAL" },
];

fn path_of(root: &Path, file: &str) -> std::path::PathBuf {
    root.join(file.replace("CXR_JPG", CXR_JPG))
}

/// A row repeated exactly is dropped and counted (report and stderr say "duplicate"); the
/// table is the one built without the repeat.
#[test]
fn an_exact_duplicate_row_of_each_keyed_table_is_dropped_and_counted() {
    let archive = tables_of("2.2");
    let out = tempfile::tempdir().unwrap();
    let plain = read_table(&build(&config(&archive.root, out.path()), &Silent).unwrap().dir);
    for t in &KEYED {
        let (_d, root) = scratch(archive);
        let path = path_of(&root, t.file);
        append_copy(&path, 3, None);
        let out = tempfile::tempdir().unwrap();
        let built = build(&config(&root, out.path()), &Silent).unwrap_or_else(|e| panic!("{}: {e}", t.file));
        let df = read_table(&built.dir);
        assert_eq!(df.height(), plain.height(), "{}: a repeated row changes nothing", t.file);
        assert!(df.equals_missing(&plain), "{}: the same table", t.file);
        let cohort = built.cohort.unwrap();
        assert_eq!(cohort.duplicate_rows.len(), 1, "{}: {:?}", t.file, cohort.duplicate_rows);
        let d = &cohort.duplicate_rows[0];
        assert!(d.file.ends_with(t.file.rsplit('/').next().unwrap()) && d.rows == 1, "{d:?}");
        assert!(d.key.iter().any(|k| k == t.key), "{d:?}");
        let md = fs_err::read_to_string(built.dir.join(pipeline::build::REPORT_MD)).unwrap();
        assert!(md.contains("Duplicate rows dropped") && md.contains(&d.file), "{md}");
    }
}

/// A second row with the same key and another value stops the build naming the file, both
/// lines, the key and the column; nothing is published.
#[test]
fn a_conflicting_duplicate_of_each_keyed_table_stops_the_build() {
    for t in &KEYED {
        let (_d, root) = scratch(tables_of("2.2"));
        let path = path_of(&root, t.file);
        let other = if t.column == "split" { "test" } else { t.other };
        // The split row's other value must differ from the original: pick by the original.
        let text = gunzip(&path);
        let second = text.lines().nth(4).unwrap();
        let other = if t.column == "split" && second.ends_with(",test") { "train" } else { other };
        let (line, original) = append_copy(&path, 3, Some((t.column, other)));
        let out = tempfile::tempdir().unwrap();
        let err = build(&config(&root, out.path()), &Silent).unwrap_err();
        let msg = err.to_string();
        let name = t.file.rsplit('/').next().unwrap();
        assert!(msg.contains(name), "{msg}");
        assert!(msg.contains(&format!("lines {original} and {line}")), "{msg}");
        assert!(msg.contains(&format!("{}=", t.key)) && msg.contains(t.column), "{msg}");
        assert_eq!(err.exit_code(), 4, "{msg}");
        assert_eq!(fs_err::read_dir(out.path()).unwrap().count(), 0, "{}: nothing published", t.file);
    }
}

/// A `--split-file` that gives one subject two splits stops the build; repeating a line is
/// harmless.
#[test]
fn a_split_file_with_two_splits_for_one_subject_stops_the_build() {
    let archive = tables_of("2.2");
    let meta = crate::fixture::Csv::read(&archive.root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz"));
    let mut subjects: Vec<&str> = meta.column("subject_id").collect();
    subjects.dedup();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("split.csv");
    let mut rows = String::from("subject_id,split\n");
    for s in &subjects {
        rows += &format!("{s},train\n");
    }
    rows += &format!("{},train\n", subjects[1]);
    fs_err::write(&file, &rows).unwrap();
    let out = tempfile::tempdir().unwrap();
    let cfg = BuildConfig {
        split: pipeline::build::labels::SplitSource::File(file.clone()),
        ..config(&archive.root, out.path())
    };
    build(&cfg, &Silent).unwrap();
    rows += &format!("{},test\n", subjects[1]);
    fs_err::write(&file, &rows).unwrap();
    let msg = build(&cfg, &Silent).unwrap_err().to_string();
    let last = subjects.len() + 3;
    assert!(
        msg.contains(&format!("lines 3 and {last}")) && msg.contains(&format!("subject_id={}", subjects[1])),
        "{msg}"
    );
}

/// Replaces every cell equal to `from` in a gzip CSV by `to`; returns how many.
fn replace_cells(path: &Path, from: &str, to: &str) -> usize {
    let text = gunzip(path);
    let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(text.as_bytes());
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut n = 0;
    for rec in r.records() {
        let rec: Vec<String> = rec
            .unwrap()
            .iter()
            .map(|c| {
                if c == from {
                    n += 1;
                    to.to_string()
                } else {
                    c.to_string()
                }
            })
            .collect();
        w.write_record(&rec).unwrap();
    }
    write_gz(path, &String::from_utf8(w.into_inner().unwrap()).unwrap());
    n
}

/// A `dicom_id` set to a path that walks out of the archive (metadata and split), with a JPG
/// planted where it leads: the image is a reject with the identifier's reason, and the
/// planted file never becomes part of the dataset.
#[test]
fn a_dicom_id_that_leaves_the_archive_is_a_reject_not_an_image() {
    let (dir, root) = scratch(small());
    let jpg = root.join(CXR_JPG);
    let meta = crate::fixture::Csv::read(&jpg.join("mimic-cxr-2.0.0-metadata.csv.gz"));
    let victim = meta.rows[0][meta.col("dicom_id")].clone();
    let hostile = "../../../../../../../outside/planted";
    for table in ["mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-split.csv.gz"] {
        assert_eq!(replace_cells(&jpg.join(table), &victim, hostile), 1, "{table}");
    }
    // Where the path made from it leads: seven folders up from the study folder is the
    // temporary folder that holds the archive.
    let subject = &meta.rows[0][meta.col("subject_id")];
    let study = &meta.rows[0][meta.col("study_id")];
    let planted = dir.path().join("outside/planted.jpg");
    fs_err::create_dir_all(planted.parent().unwrap()).unwrap();
    let image = jpg.join(format!("files/p{}/p{subject}/s{study}/{victim}.jpg", &subject[..2]));
    fs_err::copy(&image, &planted).unwrap();
    let made = image.parent().unwrap().join(format!("{hostile}.jpg"));
    assert_eq!(made.canonicalize().unwrap(), planted.canonicalize().unwrap(), "the planted file is where it leads");
    let out = tempfile::tempdir().unwrap();
    let cfg = BuildConfig { images: ImageSource::Jpg, ..config(&root, out.path()) };
    let built = build(&cfg, &Silent).unwrap();
    let df = read_table(&built.dir);
    let ids: Vec<&str> = df.column("dicom_id").unwrap().str().unwrap().iter().flatten().collect();
    assert!(!ids.contains(&hostile) && !ids.contains(&victim.as_str()), "{ids:?}");
    let (f, _) = fs_err::File::open(built.dir.join("rejects.parquet")).unwrap().into_parts();
    let rejects = ParquetReader::new(f).finish().unwrap();
    let col = |name: &str| -> Vec<String> {
        rejects.column(name).unwrap().str().unwrap().iter().map(|v| v.unwrap_or("").to_string()).collect()
    };
    let i = col("dicom_id").iter().position(|d| d == hostile).expect("the hostile id is a reject");
    assert_eq!(col("stage")[i], "id");
    assert!(col("reason")[i].contains("is not 5 dash-separated groups"), "{}", col("reason")[i]);
    assert_eq!(built.cohort.unwrap().rejected_images, 1);

    // Under --fail-fast it is the error.
    let out = tempfile::tempdir().unwrap();
    let mut cfg = BuildConfig { images: ImageSource::Jpg, ..config(&root, out.path()) };
    cfg.run.fail_fast = true;
    let msg = build(&cfg, &Silent).unwrap_err().to_string();
    assert!(msg.contains(hostile) && msg.contains("--fail-fast"), "{msg}");
}

/// An image file that is a link out of the archive is a `path` reject; the file it points to
/// is never decoded.
#[test]
fn an_image_linked_outside_the_archive_is_a_path_reject() {
    let (dir, root) = scratch(small());
    let jpg = root.join(CXR_JPG);
    let meta = crate::fixture::Csv::read(&jpg.join("mimic-cxr-2.0.0-metadata.csv.gz"));
    let (d, s, t) = (
        &meta.rows[0][meta.col("dicom_id")],
        &meta.rows[0][meta.col("subject_id")],
        &meta.rows[0][meta.col("study_id")],
    );
    let file = jpg.join(format!("files/p{}/p{s}/s{t}/{d}.jpg", &s[..2]));
    let outside = dir.path().join("elsewhere.jpg");
    fs_err::rename(&file, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &file).unwrap();
    let out = tempfile::tempdir().unwrap();
    let built = build(&BuildConfig { images: ImageSource::Jpg, ..config(&root, out.path()) }, &Silent).unwrap();
    let (f, _) = fs_err::File::open(built.dir.join("rejects.parquet")).unwrap().into_parts();
    let rejects = ParquetReader::new(f).finish().unwrap();
    let stage = rejects.column("stage").unwrap().str().unwrap().get(0).unwrap().to_string();
    let reason = rejects.column("reason").unwrap().str().unwrap().get(0).unwrap().to_string();
    assert_eq!((rejects.height(), stage.as_str()), (1, "path"), "{reason}");
    assert!(reason.contains("outside the dataset root") && reason.contains("elsewhere.jpg"), "{reason}");
}

/// Without the metadata table the headers are read from the files the record list names: a
/// repeated record-list row is dropped and counted, and a `path` that leaves the archive is a
/// `path` reject, never opened.
#[test]
fn record_list_rows_are_checked_by_key_and_by_path() {
    let (_dir, root) = scratch(small());
    fs_err::remove_file(root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz")).unwrap();
    let list = root.join(crate::fixture::CXR_DCM).join("cxr-record-list.csv.gz");
    let rows = crate::fixture::Csv::read(&list);
    append_copy(&list, 2, None);
    let hostile = "../../../../../etc/hostname.dcm";
    let original = rows.rows[5][rows.col("path")].clone();
    assert_eq!(replace_cells(&list, &original, hostile), 1);
    let out = tempfile::tempdir().unwrap();
    let built = build(&config(&root, out.path()), &Silent).unwrap();
    let cohort = built.cohort.unwrap();
    assert_eq!(cohort.duplicate_rows.len(), 1, "{:?}", cohort.duplicate_rows);
    assert!(cohort.duplicate_rows[0].file.ends_with("cxr-record-list.csv.gz"));
    let (f, _) = fs_err::File::open(built.dir.join("rejects.parquet")).unwrap().into_parts();
    let rejects = ParquetReader::new(f).finish().unwrap();
    let stages: Vec<&str> = rejects.column("stage").unwrap().str().unwrap().iter().flatten().collect();
    let reasons: Vec<&str> = rejects.column("reason").unwrap().str().unwrap().iter().flatten().collect();
    assert_eq!(stages, ["path"], "{reasons:?}");
    assert!(reasons[0].contains("leaves the dataset root") && reasons[0].contains("row 6"), "{reasons:?}");
    assert_eq!(cohort.images_read, rows.rows.len(), "the rejected row is read, the duplicate is not");
}

/// A blank StudyTime is unknown, not midnight: the image's `study_datetime` is null, it is
/// counted, and under `--match datetime` it links to nothing (under `--match date`, as
/// before).
#[test]
fn a_missing_study_time_is_null_and_counted() {
    use pipeline::build::link::MatchRule;
    let (_d, root) = scratch(tables_of("2.2"));
    let meta_path = root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz");
    let meta = crate::fixture::Csv::read(&meta_path);
    let time = meta.col("StudyTime");
    // An image whose study links to an admission in the plain build.
    let out = tempfile::tempdir().unwrap();
    let plain = read_table(&build(&config(&tables_of("2.2").root, out.path()), &Silent).unwrap().dir);
    let linked: Vec<String> = plain
        .column("dicom_id")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .zip(plain.column("hadm_id").unwrap().i64().unwrap().iter())
        .filter_map(|(d, h)| h.map(|_| d.unwrap().to_string()))
        .collect();
    let row = meta.rows.iter().position(|r| linked.contains(&r[0])).unwrap();
    let dicom = meta.rows[row][0].clone();
    let mut text = String::new();
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&meta.header).unwrap();
    for (i, r) in meta.rows.iter().enumerate() {
        let mut r = r.clone();
        if i == row {
            r[time] = String::new();
        }
        w.write_record(&r).unwrap();
    }
    text.push_str(&String::from_utf8(w.into_inner().unwrap()).unwrap());
    write_gz(&meta_path, &text);
    let get = |df: &DataFrame, column: &str| -> Option<i64> {
        let i = df.column("dicom_id").unwrap().str().unwrap().iter().position(|d| d == Some(dicom.as_str())).unwrap();
        df.column(column).unwrap().cast(&DataType::Int64).unwrap().i64().unwrap().get(i)
    };
    for rule in [MatchRule::Date, MatchRule::DateTime { icu_tolerance_s: 0 }] {
        let out = tempfile::tempdir().unwrap();
        let built = build(&BuildConfig { rule, ..config(&root, out.path()) }, &Silent).unwrap();
        assert_eq!(built.cohort.as_ref().unwrap().missing_study_time, 1, "{rule:?}");
        let df = read_table(&built.dir);
        assert_eq!(get(&df, "study_datetime"), None, "{rule:?}: no time, no timestamp");
        match rule {
            MatchRule::Date => assert_eq!(get(&df, "hadm_id"), get(&plain, "hadm_id"), "the date rule needs no time"),
            MatchRule::DateTime { .. } => assert_eq!(get(&df, "hadm_id"), None, "nothing to match a time against"),
        }
    }
}
