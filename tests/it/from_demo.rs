//! `--from-mimic-iv` on the real MIMIC-IV demo tables (`CXR_MIMIC_IV_DEMO_DIR`, default: the
//! copy in `tests/fixtures/mimic-iv-demo-2.2`).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use chrono::{NaiveDate, NaiveDateTime};
use synth::SynthConfig;

use crate::fixture::{BOTH, CXR_JPG, Csv, config, generate};

fn demo_dir() -> PathBuf {
    let dir = std::env::var_os("CXR_MIMIC_IV_DEMO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/mimic-iv-demo-2.2"));
    assert!(
        dir.join("hosp/admissions.csv.gz").is_file(),
        "MIMIC-IV demo tables not found at {}; set CXR_MIMIC_IV_DEMO_DIR",
        dir.display()
    );
    dir
}

fn ts(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
}

#[test]
fn studies_are_generated_for_real_subjects_and_stays() {
    let demo = demo_dir();
    let a = generate(|out| SynthConfig { from_mimic_iv: Some(demo.clone()), ..config(out, 1, 24, "2.2", BOTH) });
    assert_eq!(a.summary.mimic_iv_version.to_string(), "2.2");

    // The real tables are copied byte for byte.
    for f in ["hosp/patients.csv.gz", "hosp/admissions.csv.gz", "hosp/transfers.csv.gz", "icu/icustays.csv.gz"] {
        assert_eq!(
            fs_err::read(demo.join(f)).unwrap(),
            fs_err::read(a.root.join("mimiciv/2.2").join(f)).unwrap(),
            "{f}"
        );
    }
    let patients = Csv::read(&demo.join("hosp/patients.csv.gz"));
    let subjects: HashSet<&str> = patients.column("subject_id").collect();
    let meta = Csv::read(&a.root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz"));
    let cxr_subjects: HashSet<&str> = meta.column("subject_id").collect();
    assert!(cxr_subjects.iter().all(|s| subjects.contains(s)), "every study's subject is a real patient");
    assert!(cxr_subjects.len() > 60 && cxr_subjects.len() < subjects.len());

    let adm = Csv::read(&demo.join("hosp/admissions.csv.gz"));
    let mut ed: HashMap<&str, Vec<(NaiveDateTime, NaiveDateTime)>> = HashMap::new();
    for r in &adm.rows {
        let reg = &r[adm.col("edregtime")];
        if !reg.is_empty() {
            ed.entry(&r[0]).or_default().push((ts(reg), ts(&r[2])));
        }
    }
    let mut before_admission = 0;
    for r in &meta.rows {
        let hms = r[8].parse::<f64>().unwrap() as u32;
        let t = NaiveDate::parse_from_str(&r[7], "%Y%m%d")
            .unwrap()
            .and_hms_opt(hms / 10000, hms / 100 % 100, hms % 100)
            .unwrap();
        if ed.get(r[1].as_str()).into_iter().flatten().any(|(reg, admit)| *reg <= t && t < *admit) {
            before_admission += 1;
        }
    }
    assert!(before_admission >= 10, "studies during ED visits before admission: {before_admission}");
}
