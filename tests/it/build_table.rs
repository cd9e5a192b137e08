//! `pipeline build` (table stage): linkage queries against reference code, the real subject of
//! DATA.md under both coverage rules, versioning, policies and bad input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, NaiveDateTime};
use cxr_dataset::features::Variable;
use cxr_dataset::{LABELS, label_column, raw_label_column};
use pipeline::build::{BuildConfig, FEATURES_DIR, REPORT_JSON, REPORT_MD, build, part_name, read_features};
use pipeline::discover::{Roots, discover};
use pipeline::encode::MissingPolicy;
use pipeline::images::{ImageSource, RunOptions};
use pipeline::ingest;
use pipeline::labels::{Labeler, SplitSource, Uncertain};
use pipeline::link::{LinkInputs, MatchRule, images_from_metadata, link};
use pipeline::progress::Silent;
use pipeline::schema::Schema;
use polars::prelude::*;

use crate::fixture::{CXR_JPG, Csv, large_tables, tables_of};

pub(crate) fn config(root: &Path, out: &Path) -> BuildConfig {
    BuildConfig {
        roots: Roots { mimic_root: Some(root.to_path_buf()), ..Roots::default() },
        out: out.to_path_buf(),
        rule: MatchRule::Date,
        missing: MissingPolicy::Impute,
        drop_missing_sex: true,
        drop_rare_views: true,
        labeler: Labeler::Chexpert,
        uncertain: Uncertain::Zeros,
        split: SplitSource::Official,
        shard_size: 100,
        images: ImageSource::None,
        image_size: 32,
        verify_inputs_full: false,
        run: RunOptions { fail_fast: false, subset: None, merge_only: false, workers: 0 },
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

/// The coverage rules written as plain loops over the CSV rows: the oracle for the SQL.
fn reference(root: &Path, datetime: Option<i64>) -> HashMap<String, (Option<i64>, Option<i64>)> {
    let meta = Csv::read(&root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz"));
    let adm = Csv::read(&root.join("mimiciv/2.2/hosp/admissions.csv.gz"));
    let icu = Csv::read(&root.join("mimiciv/2.2/icu/icustays.csv.gz"));
    let mut out = HashMap::new();
    for r in &meta.rows {
        let date = NaiveDate::parse_from_str(&r[7], "%Y%m%d").unwrap();
        let secs: f64 = r[8].parse().unwrap();
        let whole = secs as u32;
        let millis = ((secs - f64::from(whole)) * 1000.0).floor() as u32;
        let t = date.and_hms_milli_opt(whole / 10000, whole / 100 % 100, whole % 100, millis).unwrap();
        let mut best_adm: Option<(NaiveDateTime, i64)> = None;
        for a in adm.rows.iter().filter(|a| a[0] == r[1]) {
            let (admit, disch, reg) = (ts(&a[2]).unwrap(), ts(&a[3]).unwrap(), ts(&a[adm.col("edregtime")]));
            let covers = match datetime {
                None => admit.date() <= date && date <= disch.date(),
                Some(_) => reg.filter(|g| *g < admit).unwrap_or(admit) <= t && t <= disch,
            };
            if covers && best_adm.is_none_or(|b| (admit, a[1].parse().unwrap()) > b) {
                best_adm = Some((admit, a[1].parse().unwrap()));
            }
        }
        let mut best_icu: Option<(NaiveDateTime, i64)> = None;
        for s in icu.rows.iter().filter(|s| s[0] == r[1]) {
            let (intime, outtime) = (ts(&s[5]).unwrap(), ts(&s[6]).unwrap());
            let covers = match datetime {
                None => intime.date() <= date && date <= outtime.date(),
                Some(tol) => intime - chrono::Duration::seconds(tol) <= t && t <= outtime,
            };
            if covers && best_icu.is_none_or(|b| (intime, s[2].parse().unwrap()) > b) {
                best_icu = Some((intime, s[2].parse().unwrap()));
            }
        }
        out.insert(r[0].clone(), (best_adm.map(|b| b.1), best_icu.map(|b| b.1)));
    }
    out
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

/// The five real metadata rows of subject 10000032 against the real demo tables.
#[test]
fn the_real_subject_of_data_md_links_as_documented() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mimic-iv-demo-2.2");
    let meta = Csv::parse(crate::cxr_format::REAL_METADATA);
    let dir = tempfile::tempdir().unwrap();
    let meta_path = dir.path().join("metadata.csv");
    let mut text = meta.header.join(",") + "\n";
    for r in &meta.rows {
        text += &(r.join(",") + "\n");
    }
    fs_err::write(&meta_path, text).unwrap();
    let iv = |t: &str, s: &str| read(&demo.join(t), s, "2.2");
    let inp = LinkInputs {
        images: images_from_metadata(read(&meta_path, "mimic-cxr/metadata", "2.0.0")).unwrap(),
        patients: iv("hosp/patients.csv.gz", "mimic-iv/patients"),
        admissions: iv("hosp/admissions.csv.gz", "mimic-iv/admissions"),
        icustays: iv("icu/icustays.csv.gz", "mimic-iv/icustays"),
    };
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
    assert_eq!(cohort.images_out, cohort.images_read - cohort.dropped_rare_view - cohort.dropped_missing_sex);
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
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    fs_err::create_dir_all(&root).unwrap();
    copy_tree(&tables_of("2.2").root, &root);
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

#[test]
fn bad_input_stops_the_build_naming_file_line_and_column() {
    // A bad timestamp in admissions.
    let (_d, root) = scratch();
    let adm = root.join("mimiciv/2.2/hosp/admissions.csv.gz");
    let text = gunzip(&adm);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut cells: Vec<String> = lines[3].split(',').map(str::to_string).collect();
    cells[2] = "2180-13-45 25:00:00".into();
    lines[3] = cells.join(",");
    fs_err::write(&adm, gz(&(lines.join("\n") + "\n"))).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = build(&config(&root, out.path()), &Silent).unwrap_err().to_string();
    assert!(err.contains("admissions.csv.gz") && err.contains("line 4") && err.contains("admittime"), "{err}");
    assert!(fs_err::read_dir(out.path()).unwrap().next().is_none(), "nothing is published");

    // A value of the wrong type.
    let (_d, root) = scratch();
    let pat = root.join("mimiciv/2.2/hosp/patients.csv.gz");
    let text = gunzip(&pat);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut cells: Vec<String> = lines[5].split(',').map(str::to_string).collect();
    cells[2] = "fifty".into();
    lines[5] = cells.join(",");
    fs_err::write(&pat, gz(&(lines.join("\n") + "\n"))).unwrap();
    let err = build(&config(&root, out.path()), &Silent).unwrap_err().to_string();
    assert!(err.contains("patients.csv.gz") && err.contains("line 6") && err.contains("anchor_age"), "{err}");
    assert!(err.contains("\"fifty\" is not an integer"), "{err}");

    // A truncated gzip.
    let (_d, root) = scratch();
    let tr = root.join("mimiciv/2.2/icu/icustays.csv.gz");
    let bytes = fs_err::read(&tr).unwrap();
    fs_err::write(&tr, &bytes[..bytes.len() / 2]).unwrap();
    let err = build(&config(&root, out.path()), &Silent).unwrap_err().to_string();
    assert!(err.contains("icustays.csv.gz"), "{err}");

    // A missing column.
    let (_d, root) = scratch();
    let pat = root.join("mimiciv/2.2/hosp/patients.csv.gz");
    let text = gunzip(&pat).replace("gender", "sex_at_birth");
    fs_err::write(&pat, gz(&text)).unwrap();
    let err = build(&config(&root, out.path()), &Silent).unwrap_err().to_string();
    assert!(err.contains("patients.csv.gz") && err.contains("gender"), "{err}");
}

#[test]
fn a_subject_in_two_splits_fails_the_build() {
    let root = &tables_of("2.2").root;
    let meta = Csv::read(&root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz"));
    let mut by_subject: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in &meta.rows {
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
    assert!(err.contains("leakage") && err.contains(leaky), "{err}");
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
    assert_eq!(pipeline::discover::mimic_iv(&v20).unwrap().version, "2.0");
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

/// Property: on archives from several seeds, the SQL linkage and the encoded stay and
/// demographic features equal a plain re-implementation of the reference's loops.
#[test]
fn sql_features_equal_the_reference_loops_on_random_archives() {
    for seed in [101, 202, 303] {
        let a = crate::fixture::generate(|out| crate::fixture::config(out, 80, seed, "2.2", crate::fixture::NONE));
        let want = reference(&a.root, None);
        let out = tempfile::tempdir().unwrap();
        let cfg = BuildConfig { drop_rare_views: false, ..config(&a.root, out.path()) };
        let df = read_table(&build(&cfg, &Silent).unwrap().dir);
        let got = links(&df);
        let adm = Csv::read(&a.root.join("mimiciv/2.2/hosp/admissions.csv.gz"));
        let died: HashMap<i64, bool> =
            adm.rows.iter().map(|r| (r[1].parse().unwrap(), r[adm.col("hospital_expire_flag")] == "1")).collect();
        let pat = Csv::read(&a.root.join("mimiciv/2.2/hosp/patients.csv.gz"));
        let anchor: HashMap<&str, (i64, i64, &str)> = pat
            .rows
            .iter()
            .map(|r| (r[0].as_str(), (r[2].parse().unwrap(), r[3].parse().unwrap(), r[1].as_str())))
            .collect();
        let meta = Csv::read(&a.root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz"));
        let d = df.column("dicom_id").unwrap().str().unwrap().clone();
        let col = |n: &str| df.column(n).unwrap().f32().unwrap().clone();
        let (m_died, icu, male, age_norm) = (col("mortality_died"), col("icu_icu"), col("sex_male"), col("age_norm"));
        let row_of: HashMap<&str, usize> = d.iter().enumerate().map(|(i, v)| (v.unwrap(), i)).collect();
        for r in &meta.rows {
            let i = row_of[r[0].as_str()];
            let (h, s) = want[&r[0]];
            assert_eq!(got[&r[0]], (h, s), "seed {seed} {}", r[0]);
            assert_eq!(m_died.get(i), Some(if h.is_some_and(|h| died[&h]) { 1.0 } else { 0.0 }));
            assert_eq!(icu.get(i), Some(if s.is_some() { 1.0 } else { 0.0 }));
            let (anchor_age, anchor_year, gender) = anchor[r[1].as_str()];
            let year: i64 = r[7][..4].parse().unwrap();
            let age = (anchor_age + year - anchor_year) as f32;
            assert!((age_norm.get(i).unwrap() - (age - 16.0) / 84.0).abs() < 1e-6);
            assert_eq!(male.get(i), Some(if gender == "M" { 1.0 } else { 0.0 }));
        }
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
