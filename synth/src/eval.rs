//! Synthetic CheXpert (v1.0-small) and NIH ChestX-ray14 trees in their published layouts
//! (DATA.md sections 3 and 4), drawn from the same finding model and procedural radiograph as
//! the MIMIC archive, so a probe trained on one can be tested on the others.
//!
//! CheXpert: `CheXpert-v1.0-small/{train,valid}.csv` with the label columns in CheXpert's own
//! order, `Sex` Male/Female (a few Unknown), frontal AP/PA and lateral JPGs under
//! `{train,valid}/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg`; train labels are report
//! labels (1.0 / 0.0 / -1.0 / blank), valid labels are 0/1 for every finding.
//!
//! NIH: `Data_Entry_2017.csv` with its quirks (CRLF, a trailing comma after the header, two
//! header names holding a comma, zero-padded patient ids, ages like `058Y` and a few invalid
//! ones like `412Y`), PNGs split over `images_001/images/` and `images_002/images/` (a few
//! RGBA), and patient-disjoint `train_val_list.txt` / `test_list.txt`. The NIH findings come
//! from the MIMIC ones where they correspond (Effusion = Pleural Effusion, Infiltration = Lung
//! Opacity, Mass or Nodule = Lung Lesion, Pleural_Thickening = Pleural Other, ...);
//! Emphysema, Fibrosis and Hernia have no drawing and are rare random labels.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use cxr_dataset::{NIH_LABELS, Split};
use rayon::prelude::*;

use crate::studies::{Image, Label, Setting, Study, Syntax, finding::*, findings, report_labels, view_code};
use crate::{render, table};
use pipeline::eval::CHEXPERT_DIR;
use pipeline::rng::Rng;
use pipeline::{Error, Result};

/// CheXpert's label columns, in its CSV order.
pub const CHEXPERT_COLUMNS: [&str; 14] = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
];

/// What a synthetic evaluation tree holds.
#[derive(Debug, Clone)]
pub struct EvalSummary {
    pub out: PathBuf,
    pub patients: usize,
    pub images: usize,
}

/// A synthetic patient's study: findings, demographics and the rendering inputs.
fn study(seed: u64, stream: u64, patient: u32, index: u32) -> Study {
    let mut r = Rng::derive(seed, stream, u64::from(patient) << 8 | u64::from(index));
    let subject_seed = Rng::derive(seed, stream + 1, u64::from(patient)).next_u64();
    let mut sr = Rng::new(subject_seed);
    let sex = if sr.bernoulli(0.55) { 'M' } else { 'F' };
    let age = (18.0 + 70.0 * sr.f64()).round() as u32 + index;
    let setting =
        *r.pick(&[(Setting::Outpatient, 0.3), (Setting::Ed, 0.25), (Setting::Ward, 0.3), (Setting::Icu, 0.15)]);
    let mut s = Study {
        subject_id: patient,
        study_id: index + 1,
        time: NaiveDate::from_ymd_opt(2010, 1, 1).and_then(|d| d.and_hms_opt(12, 0, 0)).unwrap_or_default(),
        setting,
        age,
        sex,
        died_in_stay: false,
        procedure: if matches!(setting, Setting::Ward | Setting::Icu) {
            "CHEST (PORTABLE AP)"
        } else {
            "CHEST (PA AND LAT)"
        },
        truth: [false; 14],
        chexpert: None,
        negbio: None,
        split: Split::Train,
        images: Vec::new(),
        seed: r.next_u64(),
        subject_seed,
    };
    s.truth = findings(&mut r, &s);
    s
}

fn image(s: &Study, view: &'static str, (cols, rows): (u16, u16), seed: u64) -> Image {
    Image {
        dicom_id: String::new(),
        view,
        view_code: view_code(view),
        orientation: if s.procedure.contains("PORT") { "Recumbent" } else { "Erect" },
        rows,
        cols,
        monochrome1: false,
        window: false,
        rescale: false,
        syntax: Syntax::ExplicitLittle,
        seed,
    }
}

fn to_u8(display: &[u16]) -> Vec<u8> {
    display.iter().map(|v| (v >> 4) as u8).collect()
}

fn write_jpg(path: &Path, gray: &[u8], (cols, rows): (u16, u16)) -> Result<()> {
    let mut buf = Vec::with_capacity(gray.len() / 4);
    jpeg_encoder::Encoder::new(&mut buf, 95)
        .encode(gray, cols, rows, jpeg_encoder::ColorType::Luma)
        .map_err(|e| Error::Image { path: path.to_path_buf(), message: e.to_string() })?;
    table::write_atomic(path, &buf)
}

fn write_png(path: &Path, gray: &[u8], (cols, rows): (u16, u16), rgba: bool) -> Result<()> {
    use image::ImageEncoder;
    let err = |e: image::ImageError| Error::Image { path: path.to_path_buf(), message: e.to_string() };
    let mut buf = Vec::new();
    let enc = image::codecs::png::PngEncoder::new(&mut buf);
    if rgba {
        let px: Vec<u8> = gray.iter().flat_map(|&g| [g, g, g, 255]).collect();
        enc.write_image(&px, u32::from(cols), u32::from(rows), image::ExtendedColorType::Rgba8).map_err(err)?;
    } else {
        enc.write_image(gray, u32::from(cols), u32::from(rows), image::ExtendedColorType::L8).map_err(err)?;
    }
    table::write_atomic(path, &buf)
}

fn csv_line(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| if f.contains([',', '"']) { format!("\"{}\"", f.replace('"', "\"\"")) } else { f.clone() })
        .collect::<Vec<_>>()
        .join(",")
}

/// Writes a CheXpert-v1.0-small tree under `out`: `patients` training patients (one to three
/// studies each) and a validation set of a tenth as many patients (at least 5).
pub fn write_chexpert(out: &Path, patients: usize, seed: u64, size: (u16, u16)) -> Result<EvalSummary> {
    let base = out.join(CHEXPERT_DIR);
    let valid_patients = (patients / 10).max(5);
    let header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
        .iter()
        .map(|s| s.to_string())
        .chain(CHEXPERT_COLUMNS.iter().map(|s| s.to_string()))
        .collect::<Vec<_>>();
    let mut images = 0;
    for (set, first, count) in [("train", 1, patients), ("valid", patients + 1, valid_patients)] {
        let mut lines = vec![csv_line(&header)];
        let mut jobs = Vec::new();
        for p in first..first + count {
            let patient = p as u32;
            let mut pr = Rng::derive(seed, 71, u64::from(patient));
            let studies = if set == "valid" { 1 } else { 1 + pr.weighted(&[0.6, 0.3, 0.1]) as u32 };
            for k in 0..studies {
                let s = study(seed, 70, patient, k);
                let mut r = Rng::new(s.seed ^ 0xC4E);
                let frontal = if s.procedure.contains("PORT") { "AP" } else { "PA" };
                let mut views = vec![frontal];
                if frontal == "PA" && r.bernoulli(0.6) {
                    views.push("LATERAL");
                }
                let labels: [Label; 14] = if set == "valid" {
                    std::array::from_fn(|i| if s.truth[i] { Label::Positive } else { Label::Negative })
                } else {
                    report_labels(&mut r, &s.truth, 0.12, 1.0)
                };
                let sex = match (r.bernoulli(0.005), s.sex) {
                    (true, _) => "Unknown",
                    (_, 'M') => "Male",
                    _ => "Female",
                };
                for (v, view) in views.iter().enumerate() {
                    let lateral = *view == "LATERAL";
                    let rel = format!(
                        "{CHEXPERT_DIR}/{set}/patient{patient:05}/study{}/view{}_{}.jpg",
                        k + 1,
                        v + 1,
                        if lateral { "lateral" } else { "frontal" }
                    );
                    let mut row = vec![
                        rel.clone(),
                        sex.to_string(),
                        s.age.to_string(),
                        if lateral { "Lateral" } else { "Frontal" }.to_string(),
                        if lateral { String::new() } else { view.to_string() },
                    ];
                    for name in CHEXPERT_COLUMNS {
                        let i = cxr_dataset::label_index(name).unwrap_or(NO_FINDING);
                        let cell = match (set, labels[i]) {
                            ("valid", Label::Positive) => "1.0",
                            ("valid", _) => "0.0",
                            (_, l) => l.as_csv(),
                        };
                        row.push(cell.to_string());
                    }
                    lines.push(csv_line(&row));
                    jobs.push((rel, s.clone(), image(&s, view, size, r.next_u64())));
                }
            }
        }
        jobs.par_iter().try_for_each(|(rel, s, im)| write_jpg(&out.join(rel), &to_u8(&render::render(s, im)), size))?;
        images += jobs.len();
        let mut text = lines.join("\n");
        text.push('\n');
        table::write_atomic(&base.join(format!("{set}.csv")), text.as_bytes())?;
    }
    Ok(EvalSummary { out: out.to_path_buf(), patients: patients + valid_patients, images })
}

/// NIH findings of a study, from the MIMIC findings (see the module documentation).
fn nih_findings(s: &Study, r: &mut Rng) -> Vec<&'static str> {
    let t = &s.truth;
    let mut f = Vec::new();
    let mut add = |on: bool, name: &'static str| {
        if on {
            f.push(name);
        }
    };
    add(t[ATELECTASIS], "Atelectasis");
    add(t[CARDIOMEGALY], "Cardiomegaly");
    add(t[EFFUSION], "Effusion");
    add(t[LUNG_OPACITY] && !t[CONSOLIDATION], "Infiltration");
    let lesion_is_mass = r.bernoulli(0.35);
    add(t[LUNG_LESION] && lesion_is_mass, "Mass");
    add(t[LUNG_LESION] && !lesion_is_mass, "Nodule");
    add(t[PNEUMONIA], "Pneumonia");
    add(t[PNEUMOTHORAX], "Pneumothorax");
    add(t[CONSOLIDATION], "Consolidation");
    add(t[EDEMA], "Edema");
    add(r.bernoulli(0.02), "Emphysema");
    add(r.bernoulli(0.015), "Fibrosis");
    add(t[PLEURAL_OTHER], "Pleural_Thickening");
    add(r.bernoulli(0.003), "Hernia");
    f.sort_by_key(|n| NIH_LABELS.iter().position(|l| l == n));
    f
}

/// Writes an NIH ChestX-ray14 tree under `out`: `patients` patients with one to four
/// follow-up images each; a fifth of the patients are in the test list.
pub fn write_nih(out: &Path, patients: usize, seed: u64, size: (u16, u16)) -> Result<EvalSummary> {
    let mut lines = vec!["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],".to_string()];
    let (mut train_val, mut test) = (Vec::new(), Vec::new());
    let mut jobs = Vec::new();
    for p in 1..=patients as u32 {
        let mut pr = Rng::derive(seed, 81, u64::from(p));
        let follow_ups = 1 + pr.weighted(&[0.5, 0.25, 0.15, 0.1]) as u32;
        let in_test = pr.bernoulli(0.2);
        for k in 0..follow_ups {
            let s = study(seed, 80, p, k);
            let mut r = Rng::new(s.seed ^ 0x4E1);
            let name = format!("{p:08}_{k:03}.png");
            let view = if s.procedure.contains("PORT") { "AP" } else { "PA" };
            let found = nih_findings(&s, &mut r);
            let labels = if found.is_empty() { "No Finding".to_string() } else { found.join("|") };
            // A few ages are invalid in the real file (e.g. 412Y).
            let age = if r.bernoulli(0.01) { 400 + r.range_i64(0, 20) } else { i64::from(s.age) };
            lines.push(format!(
                "{name},{labels},{k},{p:05},{age:03}Y,{},{view},{},{},0.143,0.143",
                s.sex,
                2000 + r.range_i64(0, 1000),
                2000 + r.range_i64(0, 1000)
            ));
            let dir = if p as usize <= patients / 2 { "images_001" } else { "images_002" };
            let rgba = r.bernoulli(0.05);
            jobs.push((format!("{dir}/images/{name}"), s.clone(), image(&s, view, size, r.next_u64()), rgba));
            if in_test { test.push(name) } else { train_val.push(name) }
        }
    }
    jobs.par_iter()
        .try_for_each(|(rel, s, im, rgba)| write_png(&out.join(rel), &to_u8(&render::render(s, im)), size, *rgba))?;
    let crlf = |lines: &[String]| {
        let mut t = lines.join("\r\n");
        t.push_str("\r\n");
        t
    };
    table::write_atomic(&out.join("Data_Entry_2017.csv"), crlf(&lines).as_bytes())?;
    table::write_atomic(&out.join("train_val_list.txt"), (train_val.join("\n") + "\n").as_bytes())?;
    table::write_atomic(&out.join("test_list.txt"), (test.join("\n") + "\n").as_bytes())?;
    Ok(EvalSummary { out: out.to_path_buf(), patients, images: jobs.len() })
}
