//! The MIMIC-IV tables against DATA.md section 2, and the timeline facts that matter for
//! linkage (ED studies before admission, ICU studies, outpatient studies, deaths).

use std::collections::HashMap;

use chrono::{NaiveDate, NaiveDateTime};

use crate::fixture::{CXR_JPG, Csv, header_line, large_tables, tables_of};

const TS: &str = "%Y-%m-%d %H:%M:%S";

fn ts(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, TS).unwrap_or_else(|_| panic!("bad timestamp {s:?}"))
}

#[test]
fn each_release_has_its_folders_and_admission_columns() {
    let cases = [
        (
            "1.0",
            "core",
            "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,discharge_location,insurance,language,marital_status,ethnicity,edregtime,edouttime,hospital_expire_flag",
        ),
        (
            "2.0",
            "hosp",
            "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,discharge_location,insurance,language,marital_status,race,edregtime,edouttime,hospital_expire_flag",
        ),
        (
            "2.2",
            "hosp",
            "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admit_provider_id,admission_location,discharge_location,insurance,language,marital_status,race,edregtime,edouttime,hospital_expire_flag",
        ),
        (
            "3.1",
            "hosp",
            "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admit_provider_id,admission_location,discharge_location,insurance,language,marital_status,race,edregtime,edouttime,hospital_expire_flag",
        ),
    ];
    for (version, dir, header) in cases {
        let root = tables_of(version).root.join("mimiciv").join(version);
        assert_eq!(header_line(&root.join(dir).join("admissions.csv.gz")), header, "v{version}");
        let other = if dir == "core" { "hosp" } else { "core" };
        assert!(!root.join(other).exists(), "v{version} has {other}/");
        assert_eq!(
            header_line(&root.join(dir).join("patients.csv.gz")),
            "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod"
        );
        assert_eq!(
            header_line(&root.join(dir).join("transfers.csv.gz")),
            "subject_id,hadm_id,transfer_id,eventtype,careunit,intime,outtime"
        );
        assert_eq!(
            header_line(&root.join("icu/icustays.csv.gz")),
            "subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los"
        );
    }
}

fn iv(path: &str) -> Csv {
    Csv::read(&large_tables().root.join("mimiciv/2.2").join(path))
}

#[test]
fn patients_follow_the_anchor_conventions() {
    let p = iv("hosp/patients.csv.gz");
    for r in &p.rows {
        assert!(r[1] == "M" || r[1] == "F");
        let age: u32 = r[2].parse().unwrap();
        assert!((18..=91).contains(&age) && age != 90, "anchor_age {age}");
        let year: i32 = r[3].parse().unwrap();
        assert!((2100..2300).contains(&year));
        let (a, b) = r[4].split_once(" - ").unwrap();
        assert_eq!(b.parse::<i32>().unwrap() - a.parse::<i32>().unwrap(), 2, "group {}", r[4]);
        assert!(r[5].is_empty() || NaiveDate::parse_from_str(&r[5], "%Y-%m-%d").is_ok());
    }
    assert!(p.column("anchor_age").any(|a| a == "91"), "some patients are over 89");
    assert!(p.column("dod").any(|d| !d.is_empty()));
}

#[test]
fn admissions_have_ed_times_deaths_and_well_formed_values() {
    let a = iv("hosp/admissions.csv.gz");
    let (mut ed, mut deaths) = (0, 0);
    for r in &a.rows {
        let (admit, disch) = (ts(&r[2]), ts(&r[3]));
        assert!(admit < disch);
        let flag = &r[a.col("hospital_expire_flag")];
        assert!(flag == "0" || flag == "1");
        let death = &r[a.col("deathtime")];
        assert_eq!(flag == "1", !death.is_empty(), "deathtime only for in-hospital deaths");
        deaths += usize::from(flag == "1");
        let (reg, out) = (&r[a.col("edregtime")], &r[a.col("edouttime")]);
        assert_eq!(reg.is_empty(), out.is_empty());
        if !reg.is_empty() {
            ed += 1;
            assert!(ts(reg) < admit, "ED registration precedes admission");
        }
        let provider = &r[a.col("admit_provider_id")];
        assert!(provider.len() == 6 && provider.starts_with('P'), "{provider}");
    }
    assert!(ed > a.rows.len() / 3 && deaths > 0);
}

#[test]
fn transfers_have_upper_case_ed_rows_and_bare_discharge_rows() {
    let t = iv("hosp/transfers.csv.gz");
    let mut kinds = HashMap::new();
    for r in &t.rows {
        *kinds.entry(r[3].clone()).or_insert(0) += 1;
        ts(&r[5]);
        match r[3].as_str() {
            "discharge" => assert!(r[4].is_empty() && r[6].is_empty()),
            "ED" => assert_eq!(r[4], "Emergency Department"),
            "admit" | "transfer" => assert!(!r[4].is_empty() && !r[6].is_empty()),
            other => panic!("eventtype {other}"),
        }
    }
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert!(t.rows.iter().any(|r| r[3] == "ED" && r[1].is_empty()), "ED-only visits have no hadm_id");
}

#[test]
fn icu_los_is_full_precision_fractional_days() {
    let s = iv("icu/icustays.csv.gz");
    let mut long = 0;
    for r in &s.rows {
        let days = (ts(&r[6]) - ts(&r[5])).num_seconds() as f64 / 86_400.0;
        let los: f64 = r[7].parse().unwrap();
        assert!((los - days).abs() < 1e-9, "{} vs {days}", r[7]);
        long += usize::from(r[7].len() >= 17);
        assert!(!r[7].ends_with('0') || !r[7].contains('.'), "trailing zero in {}", r[7]);
    }
    assert!(long > 0, "some values print 16-17 significant digits");
}

/// Studies placed against the stays: some in the ED before admission, some in ICU stays, some
/// outside any admission.
#[test]
fn studies_fall_in_ed_visits_before_admission_in_icu_stays_and_outpatient() {
    let a = large_tables();
    let meta = Csv::read(&a.root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz"));
    let adm = iv("hosp/admissions.csv.gz");
    let icu = iv("icu/icustays.csv.gz");
    // Per subject: (edregtime, admittime, dischtime) of each admission.
    type Stay = (Option<NaiveDateTime>, NaiveDateTime, NaiveDateTime);
    let mut stays: HashMap<&str, Vec<Stay>> = HashMap::new();
    for r in &adm.rows {
        let reg = &r[adm.col("edregtime")];
        stays.entry(&r[0]).or_default().push(((!reg.is_empty()).then(|| ts(reg)), ts(&r[2]), ts(&r[3])));
    }
    let mut icu_of: HashMap<&str, Vec<(NaiveDateTime, NaiveDateTime)>> = HashMap::new();
    for r in &icu.rows {
        icu_of.entry(&r[0]).or_default().push((ts(&r[5]), ts(&r[6])));
    }
    let (mut ed_before, mut in_icu, mut outpatient) = (0, 0, 0);
    let mut seen = std::collections::HashSet::new();
    for r in &meta.rows {
        if !seen.insert(r[2].clone()) {
            continue;
        }
        let time: f64 = r[8].parse().unwrap();
        let hms = time as u32;
        let t = NaiveDate::parse_from_str(&r[7], "%Y%m%d")
            .unwrap()
            .and_hms_opt(hms / 10000, hms / 100 % 100, hms % 100)
            .unwrap();
        let subject = r[1].as_str();
        let ss = stays.get(subject).map(Vec::as_slice).unwrap_or_default();
        ed_before += usize::from(ss.iter().any(|(reg, admit, _)| reg.is_some_and(|g| g <= t) && t < *admit));
        in_icu += usize::from(icu_of.get(subject).into_iter().flatten().any(|(i, o)| *i <= t && t <= *o));
        outpatient += usize::from(!ss.iter().any(|(reg, admit, disch)| reg.unwrap_or(*admit) <= t && t <= *disch));
    }
    assert!(ed_before > 50 && in_icu > 50 && outpatient > 50, "{ed_before} {in_icu} {outpatient}");
}
