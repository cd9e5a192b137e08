//! Chest X-ray studies for a population: when they happen (ED before admission, ward, ICU,
//! ED-only visits, outpatient), which views they hold, the ground-truth findings and the
//! CheXpert/NegBio label rows a report labeller would produce from them.

use std::collections::{HashMap, HashSet};

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime};
use cxr_dataset::Split;

use crate::mimic_iv::{Patient, Population};
use pipeline::rng::Rng;

const STREAM_STUDY_IDS: u64 = 10;
const STREAM_SUBJECT_STUDIES: u64 = 11;
const STREAM_STUDY: u64 = 12;

/// Where the patient was when the study was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setting {
    Outpatient,
    /// In the ED, before admission or in an ED-only visit.
    Ed,
    Ward,
    Icu,
}

/// One cell of a label row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    Positive,
    Negative,
    Uncertain,
    Blank,
}

impl Label {
    /// As written in the label CSVs.
    pub fn as_csv(self) -> &'static str {
        match self {
            Label::Positive => "1.0",
            Label::Negative => "0.0",
            Label::Uncertain => "-1.0",
            Label::Blank => "",
        }
    }
}

/// The label indices (MIMIC order, see [`cxr_dataset::LABELS`]).
pub mod finding {
    pub const ATELECTASIS: usize = 0;
    pub const CARDIOMEGALY: usize = 1;
    pub const CONSOLIDATION: usize = 2;
    pub const EDEMA: usize = 3;
    pub const ENLARGED_CM: usize = 4;
    pub const FRACTURE: usize = 5;
    pub const LUNG_LESION: usize = 6;
    pub const LUNG_OPACITY: usize = 7;
    pub const NO_FINDING: usize = 8;
    pub const EFFUSION: usize = 9;
    pub const PLEURAL_OTHER: usize = 10;
    pub const PNEUMONIA: usize = 11;
    pub const PNEUMOTHORAX: usize = 12;
    pub const SUPPORT_DEVICES: usize = 13;
}
use finding::*;

/// How a DICOM file's pixel data is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    ExplicitLittle,
    ImplicitLittle,
    Rle,
}

#[derive(Debug, Clone)]
pub struct Image {
    pub dicom_id: String,
    /// ViewPosition; empty when blank.
    pub view: &'static str,
    /// ViewCodeSequence code value and meaning; empty when absent.
    pub view_code: (&'static str, &'static str),
    /// `Erect`, `Recumbent` or empty.
    pub orientation: &'static str,
    pub rows: u16,
    pub cols: u16,
    pub monochrome1: bool,
    pub window: bool,
    pub rescale: bool,
    pub syntax: Syntax,
    /// Seed of this image's pixel noise and jitter.
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct Study {
    pub subject_id: u32,
    pub study_id: u32,
    pub time: NaiveDateTime,
    pub setting: Setting,
    pub age: u32,
    /// `M` or `F`.
    pub sex: char,
    pub died_in_stay: bool,
    pub procedure: &'static str,
    pub truth: [bool; 14],
    pub chexpert: Option<[Label; 14]>,
    pub negbio: Option<[Label; 14]>,
    pub split: Split,
    pub images: Vec<Image>,
    /// Seed of the study's anatomy and finding placement.
    pub seed: u64,
    /// Seed shared by all studies of the subject (body habitus).
    pub subject_seed: u64,
}

/// Generation settings for the CXR side.
#[derive(Debug, Clone)]
pub struct StudyConfig {
    pub seed: u64,
    /// Columns x rows of PA/lateral images; portable AP images are a little shorter.
    pub image_size: (u16, u16),
    /// train / validate / test fractions of subjects.
    pub split_fractions: [f64; 3],
    /// Transfer syntaxes cycled over DICOM files.
    pub syntaxes: Vec<Syntax>,
}

/// A time interval of care.
struct Window {
    from: NaiveDateTime,
    to: NaiveDateTime,
    setting: Setting,
    died: bool,
}

fn random_time(rng: &mut Rng, from: NaiveDateTime, to: NaiveDateTime) -> NaiveDateTime {
    let span = (to - from).num_milliseconds().max(1);
    from + Duration::milliseconds(rng.range_i64(0, span - 1))
}

/// Places studies on each CXR subject's timeline and fills in views and labels.
pub fn generate(pop: &Population, cxr_subjects: &[u32], cfg: &StudyConfig) -> Vec<Study> {
    let patients: HashMap<u32, &Patient> = pop.patients.iter().map(|p| (p.subject_id, p)).collect();
    let windows = care_windows(pop);

    let mut id_rng = Rng::derive(cfg.seed, STREAM_STUDY_IDS, 0);
    let mut study_ids = HashSet::new();
    let mut dicom_ids = HashSet::new();
    let mut studies = Vec::new();
    let mut image_counter = 0usize;
    for &subject_id in cxr_subjects {
        let Some(patient) = patients.get(&subject_id) else { continue };
        let mut rng = Rng::derive(cfg.seed, STREAM_SUBJECT_STUDIES, u64::from(subject_id));
        let split = Split::ALL[rng.weighted(&cfg.split_fractions)];
        let subject_seed = rng.next_u64();
        let subject_windows = windows.get(&subject_id).map(Vec::as_slice).unwrap_or_default();
        let slots = study_slots(&mut rng, patient, subject_windows);
        for (time, setting, died) in slots {
            let study_id = loop {
                let id = id_rng.range_i64(50_000_000, 59_999_999) as u32;
                if study_ids.insert(id) {
                    break id;
                }
            };
            let seed = pipeline::rng::mix(&[cfg.seed, STREAM_STUDY, u64::from(study_id)]);
            let mut srng = Rng::new(seed);
            let age = patient.age_in(time.year());
            let mut study = Study {
                subject_id,
                study_id,
                time,
                setting,
                age,
                sex: patient.gender,
                died_in_stay: died,
                procedure: "",
                truth: [false; 14],
                chexpert: None,
                negbio: None,
                split,
                images: Vec::new(),
                seed,
                subject_seed,
            };
            study.truth = findings(&mut srng, &study);
            study.chexpert = srng.bernoulli(0.985).then(|| report_labels(&mut srng, &study.truth, 0.15, 1.0));
            study.negbio = srng.bernoulli(0.985).then(|| report_labels(&mut srng, &study.truth, 0.1, 1.2));
            views(&mut srng, &mut study, cfg, &mut id_rng, &mut dicom_ids, &mut image_counter);
            studies.push(study);
        }
    }
    studies.sort_by_key(|s| (s.subject_id, s.study_id));
    studies
}

/// Each subject's care windows: ED before an admission, the admission (ward), its ICU stays,
/// and ED visits without an admission.
fn care_windows(pop: &Population) -> HashMap<u32, Vec<Window>> {
    let mut windows: HashMap<u32, Vec<Window>> = HashMap::new();
    let mut icu_by_hadm: HashMap<u32, Vec<(NaiveDateTime, NaiveDateTime)>> = HashMap::new();
    for s in &pop.icustays {
        icu_by_hadm.entry(s.hadm_id).or_default().push((s.intime, s.outtime));
    }
    for a in &pop.admissions {
        let w = windows.entry(a.subject_id).or_default();
        if let Some(reg) = a.edregtime
            && reg < a.admittime
        {
            w.push(Window { from: reg, to: a.admittime, setting: Setting::Ed, died: a.hospital_expire_flag });
        }
        w.push(Window { from: a.admittime, to: a.dischtime, setting: Setting::Ward, died: a.hospital_expire_flag });
        for &(i, o) in icu_by_hadm.get(&a.hadm_id).into_iter().flatten() {
            w.push(Window { from: i, to: o, setting: Setting::Icu, died: a.hospital_expire_flag });
        }
    }
    for t in &pop.transfers {
        if t.eventtype == "ED"
            && t.hadm_id.is_none()
            && let Some(out) = t.outtime
        {
            windows.entry(t.subject_id).or_default().push(Window {
                from: t.intime,
                to: out,
                setting: Setting::Ed,
                died: false,
            });
        }
    }
    windows
}

/// When a subject's studies happen, in time order: draws in the care windows, outpatient
/// days outside them (and before death), at least one study.
fn study_slots(rng: &mut Rng, patient: &Patient, subject_windows: &[Window]) -> Vec<(NaiveDateTime, Setting, bool)> {
    let mut slots: Vec<(NaiveDateTime, Setting, bool)> = Vec::new();
    for w in subject_windows {
        let n = match w.setting {
            Setting::Ed => u32::from(rng.bernoulli(0.7)),
            Setting::Ward => rng.geometric(0.3, 4),
            Setting::Icu => {
                let days = (w.to - w.from).num_hours() as f64 / 24.0;
                1 + rng.geometric((days / (days + 1.5)).min(0.8), 5)
            }
            Setting::Outpatient => 0,
        };
        for _ in 0..n {
            slots.push((random_time(rng, w.from, w.to), w.setting, w.died));
        }
    }
    // Outpatient studies on days without a hospital stay.
    let n_out = rng.geometric(0.35, 5);
    let base =
        NaiveDate::from_ymd_opt(patient.anchor_year, 1, 1).unwrap_or_default().and_hms_opt(7, 0, 0).unwrap_or_default();
    let outpatient = |rng: &mut Rng| {
        // Daytime on a day outside every stay and before death.
        let day = rng.range_i64(0, 3 * 365);
        let t = base + Duration::days(day) + Duration::milliseconds(rng.range_i64(0, 11 * 3_600_000));
        let inside = subject_windows.iter().any(|w| w.from.date() <= t.date() && t.date() <= w.to.date());
        let dead = patient.dod.is_some_and(|d| t.date() >= d);
        (!inside && !dead).then_some((t, Setting::Outpatient, false))
    };
    for _ in 0..n_out {
        slots.extend(outpatient(rng));
    }
    // Every CXR subject has at least one study.
    let mut tries = 0;
    while slots.is_empty() && tries < 50 {
        slots.extend(outpatient(rng));
        tries += 1;
    }
    if slots.is_empty()
        && let Some(w) = subject_windows.first()
    {
        slots.push((random_time(rng, w.from, w.to), w.setting, w.died));
    }
    slots.sort_by_key(|s| s.0);
    slots
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The latent finding model: a severity driven by the care setting, death in the stay and
/// age, plus a subject-level heart size; findings depend on these and on each other.
pub(crate) fn findings(rng: &mut Rng, s: &Study) -> [bool; 14] {
    let age = (f64::from(s.age) - 60.0) / 15.0;
    let setting = match s.setting {
        Setting::Outpatient => -1.5,
        Setting::Ed => -0.4,
        Setting::Ward => 0.3,
        Setting::Icu => 1.1,
    };
    let sev = setting + if s.died_in_stay { 0.9 } else { 0.0 } + 0.3 * age + 0.5 * rng.normal();
    let heart = Rng::new(s.subject_seed).normal() + 0.35 * age;
    let male = if s.sex == 'M' { 1.0 } else { 0.0 };
    let mut t = [false; 14];
    let draw = |logit: f64, rng: &mut Rng| rng.bernoulli(sigmoid(logit));
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    t[CARDIOMEGALY] = draw(-1.7 + 1.0 * heart + 0.3 * sev, rng);
    t[ENLARGED_CM] = draw(-2.6 + 0.4 * heart + 0.3 * sev + 1.5 * b(t[CARDIOMEGALY]), rng);
    t[EDEMA] = draw(-2.4 + 0.8 * sev + 1.0 * b(t[CARDIOMEGALY]), rng);
    t[EFFUSION] = draw(-1.9 + 0.9 * sev + 0.6 * b(t[CARDIOMEGALY]) + 0.7 * b(t[EDEMA]), rng);
    t[ATELECTASIS] = draw(-1.7 + 0.7 * sev + 0.8 * b(t[EFFUSION]), rng);
    t[CONSOLIDATION] = draw(-2.9 + 0.6 * sev, rng);
    t[PNEUMONIA] = draw(-2.3 + 0.5 * sev + 1.5 * b(t[CONSOLIDATION]), rng);
    let opacities = t[PNEUMONIA] || t[CONSOLIDATION] || t[EDEMA] || t[ATELECTASIS];
    t[LUNG_OPACITY] = draw(-1.6 + 0.5 * sev + 1.6 * b(opacities), rng);
    t[LUNG_LESION] = draw(-3.4 + 0.4 * age, rng);
    t[PNEUMOTHORAX] = draw(-3.9 + 0.5 * sev.max(0.0) + 0.5 * male - 0.3 * age, rng);
    t[FRACTURE] = draw(-3.7 + 0.4 * age + 0.4 * (1.0 - male), rng);
    t[PLEURAL_OTHER] = draw(-4.0 + 0.3 * sev, rng);
    let devices = match s.setting {
        Setting::Outpatient => -3.5,
        Setting::Ed => -2.6,
        Setting::Ward => -1.0,
        Setting::Icu => 1.6,
    };
    t[SUPPORT_DEVICES] = draw(devices + 0.3 * sev, rng);
    t[NO_FINDING] = (0..14).all(|k| k == NO_FINDING || k == SUPPORT_DEVICES || !t[k]);
    t
}

/// What a report labeller reads out of the report: positives (some hedged as uncertain),
/// explicit negations for findings radiologists rule out, the rest not mentioned.
pub(crate) fn report_labels(rng: &mut Rng, truth: &[bool; 14], p_uncertain: f64, negation_scale: f64) -> [Label; 14] {
    // Some reports mention nothing the labeller knows: an all-blank row.
    if rng.bernoulli(0.01) {
        return [Label::Blank; 14];
    }
    const NEGATION: [f64; 14] = [0.05, 0.12, 0.22, 0.18, 0.08, 0.03, 0.04, 0.06, 0.0, 0.38, 0.02, 0.16, 0.4, 0.02];
    let mut row: [Label; 14] = std::array::from_fn(|k| {
        if k == NO_FINDING {
            return Label::Blank;
        }
        if truth[k] {
            if rng.bernoulli(p_uncertain) { Label::Uncertain } else { Label::Positive }
        } else if rng.bernoulli(NEGATION[k] * negation_scale) {
            Label::Negative
        } else if rng.bernoulli(0.01) {
            Label::Uncertain
        } else {
            Label::Blank
        }
    });
    // As the CheXpert labeller: No Finding only when no pathology is positive or uncertain.
    let pathology = (0..14)
        .filter(|&k| k != NO_FINDING && k != SUPPORT_DEVICES)
        .any(|k| matches!(row[k], Label::Positive | Label::Uncertain));
    if !pathology {
        row[NO_FINDING] = Label::Positive;
    }
    row
}

/// View positions with their ViewCodeSequence code (SNOMED-RT, scheme `SNM3`).
pub(crate) fn view_code(view: &str) -> (&'static str, &'static str) {
    match view {
        "PA" => ("R-10214", "postero-anterior"),
        "AP" | "AP AXIAL" | "AP LLD" | "AP RLD" => ("R-10206", "antero-posterior"),
        "LATERAL" | "XTABLE LATERAL" | "SWIMMERS" => ("R-102CD", "lateral"),
        "LL" => ("R-10236", "left lateral"),
        "LPO" => ("R-10212", "left posterior oblique"),
        "RPO" => ("R-10210", "right posterior oblique"),
        "LAO" => ("R-10220", "left anterior oblique"),
        "RAO" => ("R-10218", "right anterior oblique"),
        "PA LLD" | "PA RLD" => ("R-10214", "postero-anterior"),
        _ => ("", ""),
    }
}

const RARE_VIEWS: [&str; 12] = [
    "LPO",
    "RAO",
    "RPO",
    "LAO",
    "AP AXIAL",
    "XTABLE LATERAL",
    "AP LLD",
    "PA LLD",
    "L5 S1",
    "SWIMMERS",
    "AP RLD",
    "PA RLD",
];

fn dicom_id(rng: &mut Rng) -> String {
    let a = rng.next_u64();
    let b = rng.next_u64();
    let c = rng.next_u64() as u32;
    format!("{:08x}-{:08x}-{:08x}-{:08x}-{:08x}", (a >> 32) as u32, a as u32, (b >> 32) as u32, b as u32, c)
}

/// A study's examination by care setting: its kind (0 = PA + lateral, 1 = PA alone, 2 =
/// portable AP, 3 = AP + lateral), procedure name and views.
fn examination(rng: &mut Rng, setting: Setting) -> (usize, &'static str, Vec<&'static str>) {
    let weights = match setting {
        Setting::Outpatient => [0.84, 0.08, 0.06, 0.02],
        Setting::Ed => [0.38, 0.02, 0.55, 0.05],
        Setting::Ward => [0.2, 0.02, 0.74, 0.04],
        Setting::Icu => [0.02, 0.0, 0.97, 0.01],
    };
    let kind = rng.weighted(&weights);
    let procedure = match (kind, setting) {
        (0, Setting::Outpatient) if rng.bernoulli(0.15) => "CHEST (PRE-OP PA AND LAT)",
        (0 | 3, _) => "CHEST (PA AND LAT)",
        (1, _) => "CHEST (SINGLE VIEW)",
        (_, Setting::Icu) if rng.bernoulli(0.12) => "CHEST PORT. LINE PLACEMENT",
        _ => "CHEST (PORTABLE AP)",
    };
    let lateral = |rng: &mut Rng| if rng.bernoulli(0.3) { "LL" } else { "LATERAL" };
    let mut list: Vec<&'static str> = match kind {
        0 => vec!["PA", lateral(rng)],
        1 => vec!["PA"],
        2 if rng.bernoulli(0.08) => vec!["AP", "AP"],
        2 => vec!["AP"],
        _ => vec!["AP", lateral(rng)],
    };
    if matches!(kind, 0 | 3) && rng.bernoulli(0.06) {
        list.push(lateral(rng));
    }
    (kind, procedure, list)
}

/// Procedure and views of a study, by care setting (the mix approximates the real counts
/// AP > PA > LATERAL > LL > blank).
fn views(
    rng: &mut Rng,
    s: &mut Study,
    cfg: &StudyConfig,
    id_rng: &mut Rng,
    ids: &mut HashSet<String>,
    counter: &mut usize,
) {
    let (kind, procedure, list) = examination(rng, s.setting);
    s.procedure = procedure;
    let portable = kind == 2;
    let study_orientation = match (s.setting, portable) {
        (Setting::Icu, true) => *rng.pick(&[("Recumbent", 0.72), ("Erect", 0.1), ("", 0.18)]),
        (_, true) => *rng.pick(&[("Erect", 0.5), ("Recumbent", 0.3), ("", 0.2)]),
        _ => *rng.pick(&[("Erect", 0.93), ("", 0.07)]),
    };
    let (w, h) = cfg.image_size;
    for view in list {
        let dicom_id = loop {
            let id = dicom_id(id_rng);
            if ids.insert(id.clone()) {
                break id;
            }
        };
        let mut view = view;
        let mut code = view_code(view);
        if rng.bernoulli(0.04) {
            view = "";
            if rng.bernoulli(0.8) {
                code = ("", "");
            }
        } else if rng.bernoulli(0.002) {
            view = RARE_VIEWS[rng.range_i64(0, RARE_VIEWS.len() as i64 - 1) as usize];
            code = view_code(view);
        }
        let (rows, cols) = if portable {
            // Portable AP detectors are nearly square (2705 x 2539 vs 3056 x 2544).
            (
                ((f64::from(h) * 2705.0 / 3056.0).round() as u16).max(8),
                ((f64::from(w) * 2539.0 / 2544.0).round() as u16).max(8),
            )
        } else {
            (h, w)
        };
        let syntax = cfg.syntaxes[*counter % cfg.syntaxes.len()];
        *counter += 1;
        s.images.push(Image {
            dicom_id,
            view,
            view_code: code,
            orientation: study_orientation,
            rows,
            cols,
            monochrome1: rng.bernoulli(0.35),
            window: rng.bernoulli(0.5),
            rescale: rng.bernoulli(0.5),
            syntax,
            seed: rng.next_u64(),
        });
    }
}
