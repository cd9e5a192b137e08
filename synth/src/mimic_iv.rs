//! MIMIC-IV records (patients, admissions, transfers, ICU stays) as the generator holds them,
//! the version-dependent table layouts, and the writer of the gzip CSVs.

use std::path::{Path, PathBuf};

use chrono::{NaiveDate, NaiveDateTime};

use crate::table::{GzCsv, fmt_date, fmt_g17, fmt_opt_time, fmt_time};
use pipeline::Result;
use pipeline::sources::schema::Schema;

/// A MIMIC-IV release, which decides folder names and column sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MimicIvVersion {
    pub major: u8,
    pub minor: u8,
}

impl MimicIvVersion {
    pub const SUPPORTED: [&'static str; 6] = ["1.0", "2.0", "2.1", "2.2", "3.0", "3.1"];

    pub fn parse(s: &str) -> Option<Self> {
        if !Self::SUPPORTED.contains(&s) {
            return None;
        }
        let (a, b) = s.split_once('.')?;
        Some(Self { major: a.parse().ok()?, minor: b.parse().ok()? })
    }

    /// Folder holding patients/admissions/transfers: `core` in v1.0, `hosp` later.
    pub fn hosp_dir(self) -> &'static str {
        if self.major == 1 { "core" } else { "hosp" }
    }

    /// `ethnicity` in v1.0, `race` from v2.0.
    pub fn race_column(self) -> &'static str {
        if self.major == 1 { "ethnicity" } else { "race" }
    }

    /// `admit_provider_id` exists from v2.2.
    pub fn has_admit_provider(self) -> bool {
        (self.major, self.minor) >= (2, 2)
    }

    /// Anchor year groups that exist in this release.
    pub fn anchor_year_groups(self) -> &'static [&'static str] {
        if self.major >= 3 {
            &["2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022"]
        } else {
            &["2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019"]
        }
    }
}

impl std::fmt::Display for MimicIvVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[derive(Debug, Clone)]
pub struct Patient {
    pub subject_id: u32,
    /// `M` or `F`.
    pub gender: char,
    pub anchor_age: u32,
    pub anchor_year: i32,
    pub anchor_year_group: String,
    pub dod: Option<NaiveDate>,
}

impl Patient {
    /// Age in a given year by MIMIC-IV's anchor arithmetic (91 stays 91: "over 89").
    pub fn age_in(&self, year: i32) -> u32 {
        if self.anchor_age >= 91 {
            return 91;
        }
        (i64::from(self.anchor_age) + i64::from(year - self.anchor_year)).clamp(0, 91) as u32
    }
}

#[derive(Debug, Clone)]
pub struct Admission {
    pub subject_id: u32,
    pub hadm_id: u32,
    pub admittime: NaiveDateTime,
    pub dischtime: NaiveDateTime,
    pub deathtime: Option<NaiveDateTime>,
    pub admission_type: String,
    pub admit_provider_id: String,
    pub admission_location: String,
    pub discharge_location: String,
    pub insurance: String,
    pub language: String,
    pub marital_status: String,
    pub race: String,
    pub edregtime: Option<NaiveDateTime>,
    pub edouttime: Option<NaiveDateTime>,
    pub hospital_expire_flag: bool,
}

#[derive(Debug, Clone)]
pub struct Transfer {
    pub subject_id: u32,
    pub hadm_id: Option<u32>,
    pub transfer_id: u32,
    /// `ED`, `admit`, `transfer` or `discharge`.
    pub eventtype: String,
    /// Blank for discharge rows.
    pub careunit: String,
    pub intime: NaiveDateTime,
    pub outtime: Option<NaiveDateTime>,
}

#[derive(Debug, Clone)]
pub struct IcuStay {
    pub subject_id: u32,
    pub hadm_id: u32,
    pub stay_id: u32,
    pub first_careunit: String,
    pub last_careunit: String,
    pub intime: NaiveDateTime,
    pub outtime: NaiveDateTime,
    /// Fractional days.
    pub los: f64,
}

/// The four MIMIC-IV tables the project reads.
#[derive(Debug, Clone)]
pub struct Population {
    pub version: MimicIvVersion,
    pub patients: Vec<Patient>,
    pub admissions: Vec<Admission>,
    pub transfers: Vec<Transfer>,
    pub icustays: Vec<IcuStay>,
}

/// Writes `root/<hosp|core>/{patients,admissions,transfers}.csv.gz` and `root/icu/icustays.csv.gz`.
/// Returns the written paths.
pub fn write_tables(pop: &Population, root: &Path) -> Result<Vec<PathBuf>> {
    let v = pop.version;
    let hosp = root.join(v.hosp_dir());
    let icu = root.join("icu");

    let mut w = GzCsv::create(&hosp.join("patients.csv.gz"))?;
    w.row(["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"])?;
    for p in &pop.patients {
        w.row([
            p.subject_id.to_string(),
            p.gender.to_string(),
            p.anchor_age.to_string(),
            p.anchor_year.to_string(),
            p.anchor_year_group.clone(),
            p.dod.map(fmt_date).unwrap_or_default(),
        ])?;
    }
    let mut paths = vec![w.finish()?];

    // Columns and their order come from the declared schema of this release.
    let schema = Schema::get("mimic-iv/admissions")?;
    let header = schema.header_for(&v.to_string());
    let mut w = GzCsv::create(&hosp.join("admissions.csv.gz"))?;
    w.row(&header)?;
    for a in &pop.admissions {
        let row = header.iter().map(|col| match *col {
            "subject_id" => a.subject_id.to_string(),
            "hadm_id" => a.hadm_id.to_string(),
            "admittime" => fmt_time(a.admittime),
            "dischtime" => fmt_time(a.dischtime),
            "deathtime" => fmt_opt_time(a.deathtime),
            "admission_type" => a.admission_type.clone(),
            "admit_provider_id" => a.admit_provider_id.clone(),
            "admission_location" => a.admission_location.clone(),
            "discharge_location" => a.discharge_location.clone(),
            "insurance" => a.insurance.clone(),
            "language" => a.language.clone(),
            "marital_status" => a.marital_status.clone(),
            "race" | "ethnicity" => a.race.clone(),
            "edregtime" => fmt_opt_time(a.edregtime),
            "edouttime" => fmt_opt_time(a.edouttime),
            "hospital_expire_flag" => u8::from(a.hospital_expire_flag).to_string(),
            _ => String::new(),
        });
        w.row(row)?;
    }
    paths.push(w.finish()?);

    let mut w = GzCsv::create(&hosp.join("transfers.csv.gz"))?;
    w.row(["subject_id", "hadm_id", "transfer_id", "eventtype", "careunit", "intime", "outtime"])?;
    for t in &pop.transfers {
        w.row([
            t.subject_id.to_string(),
            t.hadm_id.map(|h| h.to_string()).unwrap_or_default(),
            t.transfer_id.to_string(),
            t.eventtype.clone(),
            t.careunit.clone(),
            fmt_time(t.intime),
            fmt_opt_time(t.outtime),
        ])?;
    }
    paths.push(w.finish()?);

    let mut w = GzCsv::create(&icu.join("icustays.csv.gz"))?;
    w.row(["subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime", "outtime", "los"])?;
    for s in &pop.icustays {
        w.row([
            s.subject_id.to_string(),
            s.hadm_id.to_string(),
            s.stay_id.to_string(),
            s.first_careunit.clone(),
            s.last_careunit.clone(),
            fmt_time(s.intime),
            fmt_time(s.outtime),
            fmt_g17(s.los),
        ])?;
    }
    paths.push(w.finish()?);
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_decide_layout() {
        let v1 = MimicIvVersion::parse("1.0").unwrap();
        let v22 = MimicIvVersion::parse("2.2").unwrap();
        assert_eq!((v1.hosp_dir(), v1.race_column()), ("core", "ethnicity"));
        assert_eq!((v22.hosp_dir(), v22.race_column()), ("hosp", "race"));
        assert!(v22.has_admit_provider() && !MimicIvVersion::parse("2.1").unwrap().has_admit_provider());
        assert!(MimicIvVersion::parse("4.0").is_none());
    }

    #[test]
    fn anchor_age_arithmetic() {
        let p = Patient {
            subject_id: 10000032,
            gender: 'F',
            anchor_age: 52,
            anchor_year: 2180,
            anchor_year_group: "2014 - 2016".into(),
            dod: None,
        };
        assert_eq!(p.age_in(2180), 52);
        assert_eq!(p.age_in(2183), 55);
        let old = Patient { anchor_age: 91, ..p };
        assert_eq!(old.age_in(2175), 91);
    }
}
