//! `pipeline build` (table stage): versioning, policies, cohort counts, bad input, discovery,
//! releases and DICOM-header metadata (the comparisons with reference code are in
//! `reference_code`).

use std::path::{Path, PathBuf};

use cxr_dataset::features::Variable;
use cxr_dataset::{LABELS, Uncertain, label_column, raw_label_column};
use pipeline::build::encode::MissingPolicy;
use pipeline::build::labels::{SplitSource, Unlabeled};
use pipeline::build::{BuildConfig, FEATURES_DIR, REPORT_JSON, REPORT_MD, build, part_name, read_features};
use pipeline::images::ImageSource;
use pipeline::progress::Silent;
use pipeline::sources::discover::{Roots, discover};
use polars::prelude::*;

use crate::fixture::{CXR_JPG, Csv, large_tables, tables_of};

pub(crate) fn config(root: &Path, out: &Path) -> BuildConfig {
    let roots = Roots { mimic_root: Some(root.to_path_buf()), ..Roots::default() };
    BuildConfig {
        shard_size: 100,
        images: ImageSource::None,
        image_size: 32,
        ..BuildConfig::new(roots, out.to_path_buf())
    }
}

pub(crate) fn read_table(dir: &Path) -> DataFrame {
    read_features(dir).unwrap()
}

#[test]
fn build_publishes_a_versioned_table_and_reuses_it() {
    let root = &tables_of("2.2").root;
    let out = tempfile::tempdir().unwrap();
    let cfg = config(root, out.path());
    let first = build(&cfg, &Silent).unwrap();
    assert!(!first.reused);
    let df = read_table(&first.dir);
    let cohort = first.cohort.as_ref().unwrap();
    assert_eq!(df.height(), cohort.images_out);
    let dropped = cohort.dropped_unlabeled + cohort.dropped_missing_sex + cohort.dropped_other_sex;
    assert_eq!(cohort.images_out, cohort.images_read - dropped - cohort.dropped_rare_view);
    let names: Vec<String> = df.get_column_names().iter().map(|c| c.to_string()).collect();
    let mut expected: Vec<String> = Variable::ALL.iter().flat_map(|v| v.columns()).collect();
    expected.extend((0..LABELS.len()).flat_map(|i| [label_column(i), raw_label_column(i)]));
    expected
        .extend(["dicom_id", "subject_id", "study_id", "split", "hadm_id", "stay_id", "match_rule"].map(String::from));
    expected.extend(["sex", "age", "view", "orientation", "died_in_stay", "icu_stay", "icu_los"].map(String::from));
    for c in &expected {
        assert!(names.contains(c), "column {c} missing");
    }
    // The version and schema hash are in the Parquet footer.
    // Parts of 100 rows, in table order.
    let parts = fs_err::read_dir(first.dir.join(FEATURES_DIR)).unwrap().count();
    assert_eq!(parts, df.height().div_ceil(100));
    assert!(parts > 1);
    let bytes = fs_err::read(first.dir.join(FEATURES_DIR).join(part_name(0))).unwrap();
    let footer = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(64 * 1024)..]).into_owned();
    assert!(footer.contains("dataset_version") && footer.contains(&first.version) && footer.contains("schema_hash"));
    assert!(first.dir.join(REPORT_MD).is_file());
    let manifest: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(first.dir.join(pipeline::build::MANIFEST)).unwrap()).unwrap();
    assert_eq!(manifest["code_digest"], pipeline::build::CODE_DIGEST, "the code is part of the version");
    let json: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(first.dir.join(REPORT_JSON)).unwrap()).unwrap();
    assert_eq!(json["dataset_version"], first.version.as_str());
    assert_eq!(json["cohort"]["images_out"], df.height());

    // Same inputs and settings: nothing to do.
    let again = build(&cfg, &Silent).unwrap();
    assert!(again.reused && again.version == first.version);
    // Another setting: another version.
    let other = build(&BuildConfig { uncertain: Uncertain::Ignore, ..cfg.clone() }, &Silent).unwrap();
    assert_ne!(other.version, first.version);
    let ignored = read_table(&other.dir);
    let raw = ignored.column("raw_label_edema").unwrap().f64().unwrap().clone();
    let target = ignored.column("label_edema").unwrap().f32().unwrap().clone();
    for (r, t) in raw.iter().zip(target.iter()) {
        assert_eq!(r == Some(-1.0), t.is_none(), "ignore policy nulls exactly the uncertain labels");
    }
}

#[test]
fn missing_value_policies_change_columns_and_rows() {
    let root = &large_tables().root;
    let out = tempfile::tempdir().unwrap();
    let base = config(root, out.path());
    let impute = build(&base, &Silent).unwrap();
    let unknown = build(&BuildConfig { missing: MissingPolicy::Unknown, ..base.clone() }, &Silent).unwrap();
    let drop = build(&BuildConfig { missing: MissingPolicy::Drop, ..base.clone() }, &Silent).unwrap();
    let (i, u, d) = (read_table(&impute.dir), read_table(&unknown.dir), read_table(&drop.dir));
    assert_eq!(i.height(), u.height());
    assert!(d.height() < i.height(), "blank views/orientations are dropped");
    assert!(u.column("view_unknown").is_ok() && i.column("view_unknown").is_err());
    // Imputed rows have exactly one view and one orientation set.
    let sum = |df: &DataFrame, cols: &[&str]| -> Vec<f32> {
        let mut acc = vec![0.0; df.height()];
        for c in cols {
            for (a, v) in acc.iter_mut().zip(df.column(c).unwrap().f32().unwrap().iter()) {
                *a += v.unwrap();
            }
        }
        acc
    };
    assert!(sum(&i, &["view_PA", "view_LATERAL", "view_AP", "view_LL"]).iter().all(|s| *s == 1.0));
    assert!(sum(&i, &["orientation_Erect", "orientation_Recumbent"]).iter().all(|s| *s == 1.0));
    let imputed = i.column("view_imputed").unwrap().bool().unwrap().sum().unwrap_or(0);
    assert!(imputed > 0);
}

pub(crate) fn copy_tree(from: &Path, to: &Path) {
    for entry in fs_err::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            fs_err::create_dir_all(&dest).unwrap();
            copy_tree(&p, &dest);
        } else {
            fs_err::copy(&p, &dest).unwrap();
        }
    }
}

/// A copy of the 60-subject tables-only archive to damage.
fn scratch() -> (tempfile::TempDir, PathBuf) {
    scratch_of(tables_of("2.2"))
}

fn scratch_of(archive: &crate::fixture::Archive) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    fs_err::create_dir_all(&root).unwrap();
    copy_tree(&archive.root, &root);
    (dir, root)
}

fn gz(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

fn gunzip(path: &Path) -> String {
    use std::io::Read;
    let mut s = String::new();
    flate2::read::GzDecoder::new(&fs_err::read(path).unwrap()[..]).read_to_string(&mut s).unwrap();
    s
}

fn assert_nothing_published(out: &Path, case: &str) {
    let left: Vec<String> = fs_err::read_dir(out)
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{case}: nothing is published, found {left:?}");
}

/// Replaces cell `col` of data line `line` (1 = the header) of a gzip CSV.
fn set_cell(path: &Path, line: usize, col: usize, value: &str) {
    let mut lines: Vec<String> = gunzip(path).lines().map(str::to_string).collect();
    let mut cells: Vec<String> = lines[line - 1].split(',').map(str::to_string).collect();
    cells[col] = value.into();
    lines[line - 1] = cells.join(",");
    fs_err::write(path, gz(&(lines.join("\n") + "\n"))).unwrap();
}

#[test]
fn bad_input_stops_the_build_naming_file_line_and_column() {
    let out = tempfile::tempdir().unwrap();
    // A bad timestamp in admissions.
    let (_d, root) = scratch();
    set_cell(&root.join("mimiciv/2.2/hosp/admissions.csv.gz"), 4, 2, "2180-13-45 25:00:00");
    let err = build(&config(&root, out.path()), &Silent).unwrap_err().to_string();
    assert!(err.contains("admissions.csv.gz") && err.contains("line 4") && err.contains("admittime"), "{err}");
    assert_nothing_published(out.path(), "bad timestamp");

    // A value of the wrong type.
    let (_d, root) = scratch();
    set_cell(&root.join("mimiciv/2.2/hosp/patients.csv.gz"), 6, 2, "fifty");
    let err = build(&config(&root, out.path()), &Silent).unwrap_err().to_string();
    assert!(err.contains("patients.csv.gz") && err.contains("line 6") && err.contains("anchor_age"), "{err}");
    assert!(err.contains("\"fifty\" is not an integer"), "{err}");
    assert_nothing_published(out.path(), "wrong type");

    // A quoted field holding a newline: the line reported is still the file's line.
    let (_d, root) = scratch();
    let adm = root.join("mimiciv/2.2/hosp/admissions.csv.gz");
    let header = Csv::read(&adm).header;
    let location = header.iter().position(|h| h == "discharge_location").unwrap();
    set_cell(&adm, 3, location, "\"HOME\nHEALTH CARE\"");
    // Data line 5 of the table is now on the file's line 6.
    set_cell(&adm, 6, 2, "not a time");
    let err = build(&config(&root, out.path()), &Silent).unwrap_err().to_string();
    assert!(err.contains("admissions.csv.gz, line 6,") && err.contains("admittime"), "{err}");
    assert_nothing_published(out.path(), "quoted newline");

    // A truncated gzip.
    let (_d, root) = scratch();
    let tr = root.join("mimiciv/2.2/icu/icustays.csv.gz");
    let bytes = fs_err::read(&tr).unwrap();
    fs_err::write(&tr, &bytes[..bytes.len() / 2]).unwrap();
    let err = build(&config(&root, out.path()), &Silent).unwrap_err().to_string();
    assert!(err.contains("icustays.csv.gz") && err.contains("truncated or corrupt"), "{err}");
    assert_nothing_published(out.path(), "truncated gzip");

    // A missing column.
    let (_d, root) = scratch();
    let pat = root.join("mimiciv/2.2/hosp/patients.csv.gz");
    let text = gunzip(&pat).replace("gender", "sex_at_birth");
    fs_err::write(&pat, gz(&text)).unwrap();
    let err = build(&config(&root, out.path()), &Silent).unwrap_err().to_string();
    assert!(err.contains("patients.csv.gz") && err.contains("gender"), "{err}");
    assert_nothing_published(out.path(), "missing column");

    // An unknown split, in the official table and in a --split-file.
    let (_d, root) = scratch();
    let split = root.join(CXR_JPG).join("mimic-cxr-2.0.0-split.csv.gz");
    set_cell(&split, 5, 3, "holdout");
    let err = build(&config(&root, out.path()), &Silent).unwrap_err().to_string();
    assert!(err.contains("mimic-cxr-2.0.0-split.csv.gz, line 5, column \"split\": \"holdout\""), "{err}");
    assert_nothing_published(out.path(), "unknown official split");
    let file = out.path().parent().unwrap().join(format!("split-{}.csv", std::process::id()));
    let mut rows = String::from("subject_id,split\n");
    let meta = Csv::read(&root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz"));
    let mut subjects: Vec<&str> = meta.column("subject_id").collect();
    subjects.dedup();
    for (i, s) in subjects.iter().enumerate() {
        rows += &format!("{s},{}\n", if i == 2 { "tset" } else { "train" });
    }
    fs_err::write(&file, rows).unwrap();
    let cfg = BuildConfig { split: SplitSource::File(file.clone()), ..config(&root, out.path()) };
    let err = build(&cfg, &Silent).unwrap_err().to_string();
    fs_err::remove_file(&file).unwrap();
    assert!(err.contains(&format!("{}, line 4, column \"split\": \"tset\"", file.display())), "{err}");
    assert_nothing_published(out.path(), "unknown split in a split file");
}

/// Unlabelled studies are dropped (or kept with null labels), a sex other than M/F is dropped
/// (or kept as 0/0), rare views are dropped (or kept in `view_other`, never imputed); the
/// report counts each.
#[test]
fn unlabelled_studies_other_sexes_and_rare_views_are_counted_not_hidden() {
    let (_d, root) = scratch_of(large_tables());
    let meta = Csv::read(&root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz"));
    let labels = Csv::read(&root.join(CXR_JPG).join("mimic-cxr-2.0.0-chexpert.csv.gz"));
    let labelled: std::collections::HashSet<&str> = labels.column("study_id").collect();
    let subject = meta.rows[0][1].clone();
    let pat = root.join("mimiciv/2.2/hosp/patients.csv.gz");
    let edited: Vec<String> = gunzip(&pat)
        .lines()
        .map(|l| {
            let mut c: Vec<&str> = l.split(',').collect();
            if c[0] == subject {
                c[1] = "X";
            }
            c.join(",")
        })
        .collect();
    fs_err::write(&pat, gz(&(edited.join("\n") + "\n"))).unwrap();
    let out = tempfile::tempdir().unwrap();
    let base = config(&root, out.path());
    let strict = build(&base, &Silent).unwrap();
    let c = strict.cohort.as_ref().unwrap();
    let unlabelled = meta.rows.iter().filter(|r| !labelled.contains(r[2].as_str())).count();
    assert!(unlabelled > 0);
    assert_eq!((c.unlabeled_images, c.dropped_unlabeled), (unlabelled, unlabelled));
    let of_subject = meta.rows.iter().filter(|r| r[1] == subject && labelled.contains(r[2].as_str())).count();
    assert_eq!(c.dropped_other_sex, of_subject);
    assert!(c.dropped_rare_view > 0);
    let report = fs_err::read_to_string(strict.dir.join(REPORT_MD)).unwrap();
    assert!(report.contains(&format!("| dropped: sex other than M/F | {of_subject} |")), "{report}");
    assert!(report.contains(&format!("| dropped: study has no label row (unlabelled) | {unlabelled} |")));

    let lenient = BuildConfig {
        drop_missing_sex: false,
        drop_rare_views: false,
        unlabeled: Unlabeled::Keep,
        missing: MissingPolicy::Unknown,
        ..base
    };
    let kept = build(&lenient, &Silent).unwrap();
    let (c, df) = (kept.cohort.as_ref().unwrap(), read_table(&kept.dir));
    assert_eq!(df.height(), meta.rows.len(), "every image kept");
    assert_eq!((c.dropped_unlabeled, c.dropped_other_sex, c.dropped_rare_view), (0, 0, 0));
    let texts = |name: &str| -> Vec<String> {
        let col = df.column(name).unwrap().cast(&DataType::String).unwrap();
        col.str().unwrap().iter().map(|v| v.unwrap_or("null").to_string()).collect()
    };
    let (sex, male, female) = (texts("sex"), texts("sex_male"), texts("sex_female"));
    let (study, label, raw) = (texts("study_id"), texts(&label_column(0)), texts(&raw_label_column(0)));
    let (view, other, imputed, unknown) =
        (texts("view"), texts("view_other"), texts("view_imputed"), texts("view_unknown"));
    let mut rare = 0;
    for i in 0..df.height() {
        if sex[i] == "X" {
            assert_eq!((male[i].as_str(), female[i].as_str()), ("0.0", "0.0"));
        }
        if !labelled.contains(study[i].as_str()) {
            assert_eq!((label[i].as_str(), raw[i].as_str()), ("null", "null"), "unlabelled, not negative");
        }
        let is_rare = view[i] != "null" && !["PA", "AP", "LATERAL", "LL"].contains(&view[i].as_str());
        rare += usize::from(is_rare);
        assert_eq!(other[i], if is_rare { "1.0" } else { "0.0" });
        if is_rare {
            assert_eq!((imputed[i].as_str(), unknown[i].as_str()), ("false", "0.0"), "a rare view is not missing");
            for v in ["view_PA", "view_LATERAL", "view_AP", "view_LL"] {
                assert_eq!(texts(v)[i], "0.0");
            }
        }
    }
    assert!(rare > 0);
    assert_eq!(c.kept_rare_view, rare);
}

#[test]
fn a_subject_in_two_splits_fails_the_build() {
    let root = &tables_of("2.2").root;
    let meta = Csv::read(&root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz"));
    let labels = Csv::read(&root.join(CXR_JPG).join("mimic-cxr-2.0.0-chexpert.csv.gz"));
    let labelled: std::collections::HashSet<&str> = labels.column("study_id").collect();
    // Images of labelled studies (the others are dropped before the split), by subject.
    let mut by_subject: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for r in meta.rows.iter().filter(|r| labelled.contains(r[2].as_str())) {
        by_subject.entry(&r[1]).or_default().push(&r[0]);
    }
    let (leaky, _) = by_subject.iter().find(|(_, d)| d.len() >= 2).unwrap();
    let mut csv = String::from("dicom_id,split\n");
    for r in &meta.rows {
        let first_of_leaky = r[1] == **leaky && r[0] == by_subject[*leaky][0];
        csv += &format!("{},{}\n", r[0], if first_of_leaky { "test" } else { "train" });
    }
    let dir = tempfile::tempdir().unwrap();
    let split = dir.path().join("split.csv");
    fs_err::write(&split, csv).unwrap();
    let cfg = BuildConfig { split: SplitSource::File(split), ..config(root, &dir.path().join("out")) };
    let err = build(&cfg, &Silent).unwrap_err().to_string();
    assert!(
        err.contains("split leakage: 1 subject(s) have images in more than one split") && err.contains(leaky),
        "{err}"
    );
    assert_nothing_published(&dir.path().join("out"), "split leakage");
    // A seeded re-split is patient-level by construction.
    let resplit = BuildConfig { split: SplitSource::Resplit { seed: 3, fractions: [0.6, 0.2, 0.2] }, ..cfg };
    build(&resplit, &Silent).unwrap();
}

#[test]
fn discovery_follows_the_physionet_layout_and_release_headers() {
    // physionet.org/files/ prefix.
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("physionet.org/files");
    fs_err::create_dir_all(&nested).unwrap();
    copy_tree(&tables_of("1.0").root, &nested);
    let found = discover(&Roots { mimic_root: Some(dir.path().to_path_buf()), ..Roots::default() }).unwrap();
    assert_eq!(found.mimic_iv.version, "1.0");
    assert!(found.mimic_iv.admissions.ends_with("core/admissions.csv.gz"));
    assert_eq!(found.cxr_jpg.as_ref().unwrap().version, "2.1.0");
    assert!(found.cxr_jpg.unwrap().metadata.is_some());
    // An explicit MIMIC-IV folder wins; v3.1 is told by its folder name and header.
    let v31 = tables_of("3.1").root.join("mimiciv/3.1");
    let found = discover(&Roots {
        mimic_root: Some(dir.path().to_path_buf()),
        mimic_iv_dir: Some(v31.clone()),
        ..Roots::default()
    })
    .unwrap();
    assert_eq!((found.mimic_iv.version.as_str(), found.mimic_iv.root.as_path()), ("3.1", v31.as_path()));
    let v20 = tables_of("2.0").root.join("mimiciv/2.0");
    assert_eq!(pipeline::sources::discover::mimic_iv(&v20).unwrap().version, "2.0");
    // Nothing there: the error says where it looked.
    let empty = tempfile::tempdir().unwrap();
    let err = discover(&Roots { mimic_root: Some(empty.path().to_path_buf()), ..Roots::default() }).unwrap_err();
    assert!(err.to_string().contains("mimiciv/<version>"), "{err}");
    // A v1.0 archive builds too (ethnicity read as race).
    let out = tempfile::tempdir().unwrap();
    let built = build(&config(&tables_of("1.0").root, out.path()), &Silent).unwrap();
    assert!(read_table(&built.dir).column("race").is_ok());
}

/// The encoded feature columns of a built table, as rows of text for comparison.
fn features(df: &DataFrame) -> Vec<String> {
    let mut cols: Vec<String> = Variable::ALL.iter().flat_map(|v| v.columns()).collect();
    cols.extend(["dicom_id", "hadm_id", "stay_id", "split"].map(String::from));
    let sorted = df.sort(["dicom_id"], SortMultipleOptions::default()).unwrap();
    let text: Vec<Vec<String>> = cols
        .iter()
        .map(|c| {
            let col = sorted.column(c).unwrap().cast(&DataType::String).unwrap();
            col.str().unwrap().iter().map(|v| v.unwrap_or("null").to_string()).collect()
        })
        .collect();
    (0..sorted.height()).map(|i| text.iter().map(|c| c[i].as_str()).collect::<Vec<_>>().join(",")).collect()
}

#[test]
fn mimic_iv_releases_give_the_same_features_for_the_same_data() {
    let out = tempfile::tempdir().unwrap();
    let built: Vec<Vec<String>> = ["1.0", "2.2", "3.1"]
        .iter()
        .map(|v| features(&read_table(&build(&config(&tables_of(v).root, out.path()), &Silent).unwrap().dir)))
        .collect();
    assert!(built[0].len() > 100);
    for (name, other) in [("2.2", &built[1]), ("3.1", &built[2])] {
        assert_eq!(built[0].len(), other.len(), "rows of v1.0 vs v{name}");
        let diff = built[0].iter().zip(other.iter()).find(|(a, b)| a != b);
        assert!(diff.is_none(), "v1.0 vs v{name}: first differing row {diff:?}");
    }
}

/// Without the JPG project's metadata table, image metadata comes from the DICOM headers and
/// gives the same dataset.
#[test]
fn metadata_from_dicom_headers_gives_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    fs_err::create_dir_all(&root).unwrap();
    copy_tree(&crate::fixture::small().root, &root);
    let out = dir.path().join("out");
    let with_csv = read_table(&build(&config(&root, &out), &Silent).unwrap().dir);
    fs_err::remove_file(root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz")).unwrap();
    let from_headers = build(&config(&root, &out), &Silent).unwrap();
    assert!(!from_headers.reused, "another input, another version");
    let from_headers = read_table(&from_headers.dir);
    let a = features(&with_csv);
    let b = features(&from_headers);
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(&b).find(|(x, y)| x != y);
    assert!(diff.is_none(), "first differing row {diff:?}");
    let times = |df: &DataFrame| df.column("study_datetime").unwrap().cast(&DataType::Int64).unwrap();
    let sorted = |df: &DataFrame| df.sort(["dicom_id"], SortMultipleOptions::default()).unwrap();
    assert!(times(&sorted(&with_csv)).equals(&times(&sorted(&from_headers))));
}
