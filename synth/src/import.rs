//! Reads real MIMIC-IV tables (`--from-mimic-iv DIR`, e.g. the open demo) into a
//! [`Population`], so chest X-rays can be generated for real subjects and stays.

use std::path::Path;

use chrono::NaiveDateTime;

use crate::mimic_iv::{Admission, IcuStay, MimicIvVersion, Patient, Population, Transfer};
use crate::table::{parse_date, parse_time};
use pipeline::sources::table::Table;
use pipeline::{Error, Result};

pub fn read_population(dir: &Path) -> Result<Population> {
    let found = pipeline::sources::discover::mimic_iv(dir)?;
    let version = MimicIvVersion::parse(&found.version)
        .ok_or_else(|| Error::input(dir, format!("unsupported MIMIC-IV release {}", found.version)))?;
    let admissions = admissions(&Table::from_path(&found.admissions)?, version)?;
    Ok(Population {
        version,
        patients: patients(&Table::from_path(&found.patients)?)?,
        admissions,
        transfers: transfers(&Table::from_path(&found.transfers)?)?,
        icustays: icustays(&Table::from_path(&found.icustays)?)?,
    })
}

/// A time or a blank: `Some(None)` for blank, `None` for an unreadable value.
fn opt_time(s: &str) -> Option<Option<NaiveDateTime>> {
    if s.is_empty() { Some(None) } else { parse_time(s).map(Some) }
}

fn patients(t: &Table) -> Result<Vec<Patient>> {
    let (c_sub, c_gen, c_age, c_year, c_group, c_dod) = (
        t.col("subject_id")?,
        t.col("gender")?,
        t.col("anchor_age")?,
        t.col("anchor_year")?,
        t.col("anchor_year_group")?,
        t.col("dod")?,
    );
    let mut patients = Vec::with_capacity(t.rows.len());
    for i in 0..t.rows.len() {
        patients.push(Patient {
            subject_id: t.parse(i, c_sub, |s| s.parse().ok())?,
            gender: t.parse(i, c_gen, |s| matches!(s, "M" | "F").then(|| s.chars().next()).flatten())?,
            anchor_age: t.parse(i, c_age, |s| s.parse().ok())?,
            anchor_year: t.parse(i, c_year, |s| s.parse().ok())?,
            anchor_year_group: t.rows[i].get(c_group).unwrap_or("").to_string(),
            dod: t.parse(i, c_dod, |s| if s.is_empty() { Some(None) } else { parse_date(s).map(Some) })?,
        });
    }
    Ok(patients)
}

/// The admissions of a release (the race column's name and the admitting provider depend on
/// it).
fn admissions(t: &Table, version: MimicIvVersion) -> Result<Vec<Admission>> {
    let col = |n: &str| t.col(n);
    let race_col = t.col(version.race_column())?;
    let provider_col = if version.has_admit_provider() { Some(col("admit_provider_id")?) } else { None };
    let (c_sub, c_hadm, c_adm, c_dis, c_death, c_type) = (
        col("subject_id")?,
        col("hadm_id")?,
        col("admittime")?,
        col("dischtime")?,
        col("deathtime")?,
        col("admission_type")?,
    );
    let (c_aloc, c_dloc, c_ins, c_lang, c_mar, c_edreg, c_edout, c_flag) = (
        col("admission_location")?,
        col("discharge_location")?,
        col("insurance")?,
        col("language")?,
        col("marital_status")?,
        col("edregtime")?,
        col("edouttime")?,
        col("hospital_expire_flag")?,
    );
    let text = |i: usize, c: usize| t.rows[i].get(c).unwrap_or("").to_string();
    let mut admissions = Vec::with_capacity(t.rows.len());
    for i in 0..t.rows.len() {
        admissions.push(Admission {
            subject_id: t.parse(i, c_sub, |s| s.parse().ok())?,
            hadm_id: t.parse(i, c_hadm, |s| s.parse().ok())?,
            admittime: t.parse(i, c_adm, parse_time)?,
            dischtime: t.parse(i, c_dis, parse_time)?,
            deathtime: t.parse(i, c_death, opt_time)?,
            admission_type: text(i, c_type),
            admit_provider_id: provider_col.map(|c| text(i, c)).unwrap_or_default(),
            admission_location: text(i, c_aloc),
            discharge_location: text(i, c_dloc),
            insurance: text(i, c_ins),
            language: text(i, c_lang),
            marital_status: text(i, c_mar),
            race: text(i, race_col),
            edregtime: t.parse(i, c_edreg, opt_time)?,
            edouttime: t.parse(i, c_edout, opt_time)?,
            hospital_expire_flag: t.parse(i, c_flag, |s| match s {
                "0" => Some(false),
                "1" => Some(true),
                _ => None,
            })?,
        });
    }
    Ok(admissions)
}

fn transfers(t: &Table) -> Result<Vec<Transfer>> {
    let (c_sub, c_hadm, c_id, c_ev, c_unit, c_in, c_out) = (
        t.col("subject_id")?,
        t.col("hadm_id")?,
        t.col("transfer_id")?,
        t.col("eventtype")?,
        t.col("careunit")?,
        t.col("intime")?,
        t.col("outtime")?,
    );
    let mut transfers = Vec::with_capacity(t.rows.len());
    for i in 0..t.rows.len() {
        transfers.push(Transfer {
            subject_id: t.parse(i, c_sub, |s| s.parse().ok())?,
            hadm_id: t.parse(i, c_hadm, |s| if s.is_empty() { Some(None) } else { s.parse().ok().map(Some) })?,
            transfer_id: t.parse(i, c_id, |s| s.parse().ok())?,
            eventtype: t.rows[i].get(c_ev).unwrap_or("").to_string(),
            careunit: t.rows[i].get(c_unit).unwrap_or("").to_string(),
            intime: t.parse(i, c_in, parse_time)?,
            outtime: t.parse(i, c_out, opt_time)?,
        });
    }
    Ok(transfers)
}

fn icustays(t: &Table) -> Result<Vec<IcuStay>> {
    let (c_sub, c_hadm, c_stay, c_first, c_last, c_in, c_out, c_los) = (
        t.col("subject_id")?,
        t.col("hadm_id")?,
        t.col("stay_id")?,
        t.col("first_careunit")?,
        t.col("last_careunit")?,
        t.col("intime")?,
        t.col("outtime")?,
        t.col("los")?,
    );
    let mut icustays = Vec::with_capacity(t.rows.len());
    for i in 0..t.rows.len() {
        icustays.push(IcuStay {
            subject_id: t.parse(i, c_sub, |s| s.parse().ok())?,
            hadm_id: t.parse(i, c_hadm, |s| s.parse().ok())?,
            stay_id: t.parse(i, c_stay, |s| s.parse().ok())?,
            first_careunit: t.rows[i].get(c_first).unwrap_or("").to_string(),
            last_careunit: t.rows[i].get(c_last).unwrap_or("").to_string(),
            intime: t.parse(i, c_in, parse_time)?,
            outtime: t.parse(i, c_out, parse_time)?,
            los: t.parse(i, c_los, |s| s.parse().ok())?,
        });
    }
    Ok(icustays)
}
