//! `pipeline build` (table stage): linkage queries against reference code, the real subject of
//! DATA.md under both coverage rules, versioning, policies and bad input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, NaiveDateTime};
use cxr_dataset::features::Variable;
use cxr_dataset::{LABELS, label_column, raw_label_column};
use pipeline::build::encode::MissingPolicy;
use pipeline::build::labels::{SplitSource, Uncertain, Unlabeled};
use pipeline::build::link::{LinkInputs, MatchRule, images_from_metadata, link};
use pipeline::build::{BuildConfig, FEATURES_DIR, REPORT_JSON, REPORT_MD, build, part_name, read_features};
use pipeline::images::ImageSource;
use pipeline::progress::Silent;
use pipeline::sources::discover::{Roots, discover};
use pipeline::sources::ingest;
use pipeline::sources::schema::Schema;
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

fn read(path: &Path, schema: &str, version: &str) -> DataFrame {
    ingest::read(path, &Schema::get(schema).unwrap(), version).unwrap()
}

fn inputs(root: &Path, iv: &str) -> LinkInputs {
    let ivr = root.join("mimiciv").join(iv);
    let meta = read(&root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz"), "mimic-cxr/metadata", "2.0.0");
    LinkInputs {
        images: images_from_metadata(meta).unwrap(),
        patients: read(&ivr.join("hosp/patients.csv.gz"), "mimic-iv/patients", iv),
        admissions: read(&ivr.join("hosp/admissions.csv.gz"), "mimic-iv/admissions", iv),
        icustays: read(&ivr.join("icu/icustays.csv.gz"), "mimic-iv/icustays", iv),
    }
}

/// dicom_id -> (hadm_id, stay_id) from a linked frame.
fn links(df: &DataFrame) -> HashMap<String, (Option<i64>, Option<i64>)> {
    let d = df.column("dicom_id").unwrap().str().unwrap().clone();
    let h = df.column("hadm_id").unwrap().cast(&DataType::Int64).unwrap();
    let s = df.column("stay_id").unwrap().cast(&DataType::Int64).unwrap();
    let (h, s) = (h.i64().unwrap(), s.i64().unwrap());
    d.iter().zip(h.iter()).zip(s.iter()).map(|((d, h), s)| (d.unwrap().to_string(), (h, s))).collect()
}

fn ts(s: &str) -> Option<NaiveDateTime> {
    (!s.is_empty()).then(|| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap())
}

/// What the reference's loops give one image.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Linked {
    hadm_id: Option<i64>,
    stay_id: Option<i64>,
    icu_los: Option<f64>,
    died: bool,
}

/// The coverage rules written as plain loops over the CSV rows, in file order: the oracle for
/// the SQL. Under the date rule (`datetime` None) each covering row overwrites the previous
/// match, as the reference's loop does, so the last covering row in the file wins. Under the
/// datetime rule the latest start wins, then the highest id.
fn reference_loops(meta: &Csv, adm: &Csv, icu: &Csv, datetime: Option<i64>) -> HashMap<String, Linked> {
    let mut out = HashMap::new();
    let (m_date, m_time) = (meta.col("StudyDate"), meta.col("StudyTime"));
    let (a_subject, a_hadm, a_admit, a_disch, a_reg, a_died) = (
        adm.col("subject_id"),
        adm.col("hadm_id"),
        adm.col("admittime"),
        adm.col("dischtime"),
        adm.col("edregtime"),
        adm.col("hospital_expire_flag"),
    );
    let (s_subject, s_stay, s_in, s_out, s_los) =
        (icu.col("subject_id"), icu.col("stay_id"), icu.col("intime"), icu.col("outtime"), icu.col("los"));
    for r in &meta.rows {
        let date = NaiveDate::parse_from_str(&r[m_date], "%Y%m%d").unwrap();
        let secs: f64 = r[m_time].parse().unwrap();
        let whole = secs as u32;
        let millis = ((secs - f64::from(whole)) * 1000.0).floor() as u32;
        let t = date.and_hms_milli_opt(whole / 10000, whole / 100 % 100, whole % 100, millis).unwrap();
        let mut hit = Linked { hadm_id: None, stay_id: None, icu_los: None, died: false };
        let mut best_admit: Option<(NaiveDateTime, i64)> = None;
        for a in adm.rows.iter().filter(|a| a[a_subject] == r[1]) {
            let (admit, disch, reg) = (ts(&a[a_admit]).unwrap(), ts(&a[a_disch]).unwrap(), ts(&a[a_reg]));
            let id: i64 = a[a_hadm].parse().unwrap();
            let wins = match datetime {
                None => admit.date() <= date && date <= disch.date(),
                Some(_) => {
                    reg.filter(|g| *g < admit).unwrap_or(admit) <= t
                        && t <= disch
                        && best_admit.is_none_or(|b| (admit, id) > b)
                }
            };
            if wins {
                best_admit = Some((admit, id));
                hit.hadm_id = Some(id);
                hit.died = a[a_died] == "1";
            }
        }
        let mut best_in: Option<(NaiveDateTime, i64)> = None;
        for s in icu.rows.iter().filter(|s| s[s_subject] == r[1]) {
            let (intime, outtime) = (ts(&s[s_in]).unwrap(), ts(&s[s_out]).unwrap());
            let id: i64 = s[s_stay].parse().unwrap();
            let wins = match datetime {
                None => intime.date() <= date && date <= outtime.date(),
                Some(tol) => {
                    intime - chrono::Duration::seconds(tol) <= t
                        && t <= outtime
                        && best_in.is_none_or(|b| (intime, id) > b)
                }
            };
            if wins {
                best_in = Some((intime, id));
                hit.stay_id = Some(id);
                hit.icu_los = Some(s[s_los].parse().unwrap());
            }
        }
        out.insert(r[0].clone(), hit);
    }
    out
}

/// [`reference_loops`] over an archive's metadata, admissions and ICU stays: dicom_id ->
/// (hadm_id, stay_id).
fn reference(root: &Path, datetime: Option<i64>) -> HashMap<String, (Option<i64>, Option<i64>)> {
    let meta = Csv::read(&root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz"));
    let adm = Csv::read(&root.join("mimiciv/2.2/hosp/admissions.csv.gz"));
    let icu = Csv::read(&root.join("mimiciv/2.2/icu/icustays.csv.gz"));
    reference_loops(&meta, &adm, &icu, datetime).into_iter().map(|(k, v)| (k, (v.hadm_id, v.stay_id))).collect()
}

#[test]
fn linkage_queries_match_reference_code_under_both_rules() {
    let root = &large_tables().root;
    let inp = inputs(root, "2.2");
    for (rule, tol) in [(MatchRule::Date, None), (MatchRule::DateTime { icu_tolerance_s: 3 * 3600 }, Some(3 * 3600))] {
        let got = links(&link(&inp, rule).unwrap());
        let want = reference(root, tol);
        assert_eq!(got.len(), want.len());
        let mismatches: Vec<_> = want.iter().filter(|(k, v)| got.get(*k) != Some(v)).take(5).collect();
        assert!(mismatches.is_empty(), "{rule:?}: {mismatches:?}");
        let linked = got.values().filter(|v| v.0.is_some()).count();
        assert!(linked > got.len() / 3, "{rule:?}: only {linked} linked");
        assert!(got.values().any(|v| v.1.is_some()));
    }
}

/// The real MIMIC-IV demo tables with the images of a metadata CSV (`text`).
fn demo_inputs(text: &str) -> LinkInputs {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mimic-iv-demo-2.2");
    let dir = tempfile::tempdir().unwrap();
    let meta_path = dir.path().join("metadata.csv");
    fs_err::write(&meta_path, text).unwrap();
    let iv = |t: &str, s: &str| read(&demo.join(t), s, "2.2");
    LinkInputs {
        images: images_from_metadata(read(&meta_path, "mimic-cxr/metadata", "2.0.0")).unwrap(),
        patients: iv("hosp/patients.csv.gz", "mimic-iv/patients"),
        admissions: iv("hosp/admissions.csv.gz", "mimic-iv/admissions"),
        icustays: iv("icu/icustays.csv.gz", "mimic-iv/icustays"),
    }
}

/// The five real metadata rows of subject 10000032 against the real demo tables.
#[test]
fn the_real_subject_of_data_md_links_as_documented() {
    let inp = demo_inputs(crate::cxr_format::REAL_METADATA);
    let pa_may = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014";
    let pa_june = "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab";
    let ap_july = "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714";
    let by_date = links(&link(&inp, MatchRule::Date).unwrap());
    assert_eq!(by_date[pa_may], (Some(22595853), None), "ED film at 21:30, admitted 22:23 the same day");
    assert_eq!(by_date[pa_june], (Some(22841357), None));
    assert_eq!(by_date[ap_july], (Some(29079034), Some(39553978)), "the ICU stay starts that day");
    let exact = links(&link(&inp, MatchRule::DateTime { icu_tolerance_s: 0 }).unwrap());
    assert_eq!(exact[pa_may], (Some(22595853), None), "inside the ED visit (edregtime 19:17)");
    assert_eq!(exact[pa_june], (Some(22841357), None), "inside the ED visit (edregtime 15:54)");
    assert_eq!(exact[ap_july], (Some(29079034), None), "08:05 is before the ICU intime 14:00");
    let tolerant = links(&link(&inp, MatchRule::DateTime { icu_tolerance_s: 6 * 3600 }).unwrap());
    assert_eq!(tolerant[ap_july], (Some(29079034), Some(39553978)));
    // Demographics by the anchor arithmetic: 52 in 2180, female.
    let df = link(&inp, MatchRule::Date).unwrap();
    let age = df.column("age").unwrap().cast(&DataType::Int64).unwrap();
    assert!(age.i64().unwrap().iter().all(|a| a == Some(52)));
    assert!(df.column("sex").unwrap().str().unwrap().iter().all(|s| s == Some("F")));
}

/// The reference's tie-break on the real MIMIC-IV demo tables: one image on every date that
/// two admissions, or two ICU stays, of a subject both cover. The file's row order decides,
/// as in the reference's loop (e.g. subject 10017492 on 2116-06-27: stay 39543480, los 0.798,
/// not the later-starting 36035031).
#[test]
fn the_date_rule_breaks_ties_by_file_order_on_the_real_demo_tables() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mimic-iv-demo-2.2");
    let adm = Csv::read(&demo.join("hosp/admissions.csv.gz"));
    let icu = Csv::read(&demo.join("icu/icustays.csv.gz"));
    // (subject, date) covered by two spans of one table.
    let doubly_covered = |t: &Csv, from: &str, to: &str| {
        let mut days: HashMap<(String, NaiveDate), usize> = HashMap::new();
        for r in &t.rows {
            let (a, b) = (ts(&r[t.col(from)]).unwrap().date(), ts(&r[t.col(to)]).unwrap().date());
            for d in a.iter_days().take_while(|d| *d <= b) {
                *days.entry((r[t.col("subject_id")].clone(), d)).or_default() += 1;
            }
        }
        let mut tied: Vec<(String, NaiveDate)> = days.into_iter().filter(|(_, n)| *n > 1).map(|(k, _)| k).collect();
        tied.sort();
        tied
    };
    let adm_ties = doubly_covered(&adm, "admittime", "dischtime");
    let icu_ties = doubly_covered(&icu, "intime", "outtime");
    assert!(adm_ties.len() >= 3 && icu_ties.len() >= 4, "{adm_ties:?} {icu_ties:?}");
    let header = crate::cxr_format::REAL_METADATA.lines().next().unwrap();
    let mut text = format!("{header}\n");
    for (k, (subject, day)) in adm_ties.iter().chain(&icu_ties).enumerate() {
        text += &format!(
            "tie-{k},{subject},{},CHEST (PORTABLE AP),AP,2705,2539,{},120000.000,CHEST (PORTABLE AP),antero-posterior,Recumbent\n",
            58_000_000 + k,
            day.format("%Y%m%d")
        );
    }
    let df = link(&demo_inputs(&text), MatchRule::Date).unwrap();
    let got = links(&df);
    let want = reference_loops(&Csv::parse(&text), &adm, &icu, None);
    for (dicom, w) in &want {
        assert_eq!(got[dicom], (w.hadm_id, w.stay_id), "{dicom}");
    }
    // The cases quoted in the issue, by subject and date.
    let image = |subject: &str, day: &str| {
        let day = NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
        let k = icu_ties.iter().position(|t| t.0 == subject && t.1 == day).unwrap();
        format!("tie-{}", adm_ties.len() + k)
    };
    let (a, b) = (image("10017492", "2116-06-27"), image("10006053", "2111-11-14"));
    assert_eq!(got[&a].1, Some(39543480));
    assert!((want[&a].icu_los.unwrap() - 0.798).abs() < 1e-3);
    assert_eq!(got[&b].1, Some(32895909));
    assert!((want[&b].icu_los.unwrap() - 0.024).abs() < 1e-3);
    let rules = df.column("match_rule").unwrap().str().unwrap().clone();
    assert!(rules.iter().all(|r| r == Some("date, last in file order")));
    // The latest-start rule (--match datetime's tie-break) would pick otherwise here.
    let latest = reference_loops(&Csv::parse(&text), &adm, &icu, Some(0));
    assert!(want.iter().any(|(k, w)| latest[k].stay_id.is_some() && latest[k].stay_id != w.stay_id));
}

fn read_table(dir: &Path) -> DataFrame {
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

/// Property: on archives from several seeds (with same-day readmissions, ICU readmissions,
/// shuffled tables, unlabelled studies and rare views), every raw and encoded EHR column of
/// the built table equals a plain re-implementation of the reference's loops and encodings.
#[test]
fn every_feature_column_equals_the_reference_loops_on_random_archives() {
    let (views, orients) = (["PA", "LATERAL", "AP", "LL"], ["Erect", "Recumbent"]);
    let mut ties = 0;
    for seed in [101, 202, 303] {
        let a = crate::fixture::generate(|out| crate::fixture::config(out, 150, seed, "2.2", crate::fixture::NONE));
        let csv = |rel: &str| Csv::read(&a.root.join(rel));
        let meta = csv(&format!("{CXR_JPG}/mimic-cxr-2.0.0-metadata.csv.gz"));
        let labels = csv(&format!("{CXR_JPG}/mimic-cxr-2.0.0-chexpert.csv.gz"));
        let split = csv(&format!("{CXR_JPG}/mimic-cxr-2.0.0-split.csv.gz"));
        let (adm, icu) = (csv("mimiciv/2.2/hosp/admissions.csv.gz"), csv("mimiciv/2.2/icu/icustays.csv.gz"));
        let pat = csv("mimiciv/2.2/hosp/patients.csv.gz");
        let linked = reference_loops(&meta, &adm, &icu, None);
        // Where the file-order rule and "the latest start" disagree.
        let latest = reference_loops(&meta, &adm, &icu, Some(0));
        ties += linked
            .iter()
            .filter(|(k, v)| v.hadm_id.is_some() && latest[*k].hadm_id.is_some() && latest[*k] != **v)
            .count();

        let out = tempfile::tempdir().unwrap();
        let cfg = BuildConfig { drop_rare_views: false, ..config(&a.root, out.path()) };
        let built = build(&cfg, &Silent).unwrap();
        let df = read_table(&built.dir);
        // The reference's rows: images of labelled studies whose patient has a sex.
        let labelled: std::collections::HashSet<&str> = labels.column("study_id").collect();
        let anchor: HashMap<&str, (f64, i32, &str)> = pat
            .rows
            .iter()
            .map(|r| (r[0].as_str(), (r[2].parse().unwrap(), r[3].parse().unwrap(), r[1].as_str())))
            .collect();
        let split_of: HashMap<&str, &str> = split.column("dicom_id").zip(split.column("split")).collect();
        let (m_view, m_orient, m_date) =
            (meta.col("ViewPosition"), meta.col("PatientOrientationCodeSequence_CodeMeaning"), meta.col("StudyDate"));
        let rows: Vec<&Vec<String>> = meta.rows.iter().filter(|r| labelled.contains(r[2].as_str())).collect();
        assert!(rows.len() < meta.rows.len(), "seed {seed}: some studies are unlabelled");
        assert_eq!(df.height(), rows.len(), "seed {seed}: one row per image of a labelled study");
        assert_eq!(built.cohort.as_ref().unwrap().dropped_unlabeled, meta.rows.len() - rows.len());
        // The imputer: the most frequent (view, orientation) among complete training rows.
        let index = |cats: &[&str], v: &str| cats.iter().position(|c| *c == v);
        let mut counts: HashMap<(usize, usize), usize> = HashMap::new();
        for r in &rows {
            if let (Some(v), Some(o)) = (index(&views, &r[m_view]), index(&orients, &r[m_orient]))
                && split_of[r[0].as_str()] == "train"
            {
                *counts.entry((v, o)).or_default() += 1;
            }
        }
        let best = |keep: &dyn Fn(usize, usize) -> bool| {
            let mut found: Option<((usize, usize), usize)> = None;
            for v in 0..4 {
                for o in 0..2 {
                    let n = counts.get(&(v, o)).copied().unwrap_or(0);
                    if n > 0 && keep(v, o) && found.is_none_or(|f| n > f.1) {
                        found = Some(((v, o), n));
                    }
                }
            }
            found.unwrap().0
        };

        let sorted = df.sort(["dicom_id"], SortMultipleOptions::default()).unwrap();
        let text = |c: &str| -> Vec<String> {
            let col = sorted.column(c).unwrap_or_else(|_| panic!("column {c}")).cast(&DataType::String).unwrap();
            col.str().unwrap().iter().map(|v| v.unwrap_or("null").to_string()).collect()
        };
        let mut want: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for r in &rows {
            let l = linked[&r[0]];
            let (anchor_age, anchor_year, gender) = anchor[r[1].as_str()];
            let age = anchor_age + f64::from(r[m_date][..4].parse::<i32>().unwrap() - anchor_year);
            let (view, orient) = (index(&views, &r[m_view]), index(&orients, &r[m_orient]));
            let other = view.is_none() && !r[m_view].is_empty();
            let (fv, fo) = match (view, orient, other) {
                (_, Some(o), true) => (None, o),
                (_, None, true) => (None, best(&|_, _| true).1),
                (Some(v), Some(o), _) => (Some(v), o),
                (None, Some(o), _) => (Some(best(&|_, bo| bo == o).0), o),
                (Some(v), None, _) => (Some(v), best(&|bv, _| bv == v).1),
                (None, None, _) => {
                    let b = best(&|_, _| true);
                    (Some(b.0), b.1)
                }
            };
            let f = |b: bool| if b { "1.0" } else { "0.0" }.to_string();
            let opt = |v: Option<i64>| v.map_or("null".to_string(), |v| v.to_string());
            let mut cols = vec![
                ("hadm_id".to_string(), opt(l.hadm_id)),
                ("stay_id".to_string(), opt(l.stay_id)),
                ("icu_los".to_string(), l.icu_los.map_or("null".to_string(), |v| v.to_string())),
                ("died_in_stay".to_string(), i64::from(l.died).to_string()),
                ("icu_stay".to_string(), i64::from(l.stay_id.is_some()).to_string()),
                ("sex_male".to_string(), f(gender == "M")),
                ("sex_female".to_string(), f(gender == "F")),
                ("mortality_alive".to_string(), f(!l.died)),
                ("mortality_died".to_string(), f(l.died)),
                ("icu_icu".to_string(), f(l.stay_id.is_some())),
                ("icu_not_icu".to_string(), f(l.stay_id.is_none())),
                ("view_other".to_string(), f(other)),
                ("view_imputed".to_string(), (view.is_none() && !other).to_string()),
                ("orientation_imputed".to_string(), orient.is_none().to_string()),
            ];
            for (k, name) in Variable::View.columns().into_iter().enumerate() {
                cols.push((name, f(fv == Some(k))));
            }
            for (k, name) in Variable::Orientation.columns().into_iter().enumerate() {
                cols.push((name, f(fo == k)));
            }
            for (var, edges) in [
                (Variable::AgeBins5, &[20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90][..]),
                (Variable::AgeBins10, &[20, 30, 40, 50, 60, 70, 80, 90][..]),
            ] {
                let bin = edges.iter().filter(|e| age > f64::from(**e)).count();
                for (k, name) in var.columns().into_iter().enumerate() {
                    cols.push((name, f(bin == k)));
                }
            }
            cols.push(("age_norm".to_string(), (((age - 16.0) / 84.0) as f32).to_string()));
            want.push((r[0].clone(), cols));
        }
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(text("dicom_id"), want.iter().map(|w| w.0.clone()).collect::<Vec<_>>());
        for (c, (name, _)) in want[0].1.iter().enumerate() {
            let got = text(name);
            for (i, (dicom, cols)) in want.iter().enumerate() {
                let expected = &cols[c].1;
                let same = got[i] == *expected
                    || (name == "icu_los" && got[i].parse::<f64>().ok() == expected.parse::<f64>().ok());
                assert!(same, "seed {seed}, {dicom}, {name}: built {} but the reference loops give {expected}", got[i]);
            }
        }
    }
    assert!(ties > 0, "the archives hold same-day ties where file order decides");
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
