//! The MIMIC-CXR and MIMIC-CXR-JPG tables (record and study lists, metadata, split, CheXpert
//! and NegBio labels, the v2.1.0 radiologist test labels) and the free-text reports.

use std::path::{Path, PathBuf};

use cxr_dataset::{LABELS, Split};
use rayon::prelude::*;

use crate::studies::{Image, Label, Study, finding};
use crate::table::{GzCsv, fmt_study_time, write_atomic};
use pipeline::Result;

/// `files/p10/p10000032/s50414267` for a study, relative to a project root.
pub fn study_dir(s: &Study) -> String {
    let sub = s.subject_id.to_string();
    format!("files/p{}/p{}/s{}", &sub[..2], sub, s.study_id)
}

pub fn image_path(s: &Study, im: &Image, ext: &str) -> String {
    format!("{}/{}.{ext}", study_dir(s), im.dicom_id)
}

/// Writes the DICOM project's lists and reports under `root` (`mimic-cxr/2.0.0`).
pub fn write_dicom_project_tables(studies: &[Study], root: &Path) -> Result<Vec<PathBuf>> {
    let mut w = GzCsv::create(&root.join("cxr-record-list.csv.gz"))?;
    w.row(["subject_id", "study_id", "dicom_id", "path"])?;
    for s in studies {
        for im in &s.images {
            w.row([s.subject_id.to_string(), s.study_id.to_string(), im.dicom_id.clone(), image_path(s, im, "dcm")])?;
        }
    }
    let mut paths = vec![w.finish()?];
    let mut w = GzCsv::create(&root.join("cxr-study-list.csv.gz"))?;
    w.row(["subject_id", "study_id", "path"])?;
    for s in studies {
        w.row([s.subject_id.to_string(), s.study_id.to_string(), format!("{}.txt", study_dir(s))])?;
    }
    paths.push(w.finish()?);
    studies
        .par_iter()
        .try_for_each(|s| write_atomic(&root.join(format!("{}.txt", study_dir(s))), report(s).as_bytes()))?;
    Ok(paths)
}

/// Writes the JPG project's CSVs under `root` (`mimic-cxr-jpg/2.1.0`).
pub fn write_jpg_project_tables(studies: &[Study], root: &Path) -> Result<Vec<PathBuf>> {
    let mut w = GzCsv::create(&root.join("mimic-cxr-2.0.0-metadata.csv.gz"))?;
    w.row([
        "dicom_id",
        "subject_id",
        "study_id",
        "PerformedProcedureStepDescription",
        "ViewPosition",
        "Rows",
        "Columns",
        "StudyDate",
        "StudyTime",
        "ProcedureCodeSequence_CodeMeaning",
        "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning",
    ])?;
    for s in studies {
        let date = s.time.format("%Y%m%d").to_string();
        let time = fmt_study_time(s.time);
        for im in &s.images {
            w.row([
                im.dicom_id.as_str(),
                &s.subject_id.to_string(),
                &s.study_id.to_string(),
                s.procedure,
                im.view,
                &im.rows.to_string(),
                &im.cols.to_string(),
                &date,
                &time,
                s.procedure,
                im.view_code.1,
                im.orientation,
            ])?;
        }
    }
    let mut paths = vec![w.finish()?];

    let mut w = GzCsv::create(&root.join("mimic-cxr-2.0.0-split.csv.gz"))?;
    w.row(["dicom_id", "study_id", "subject_id", "split"])?;
    for s in studies {
        for im in &s.images {
            w.row([im.dicom_id.as_str(), &s.study_id.to_string(), &s.subject_id.to_string(), s.split.as_str()])?;
        }
    }
    paths.push(w.finish()?);

    for (name, pick) in [("chexpert", 0), ("negbio", 1)] {
        let mut w = GzCsv::create(&root.join(format!("mimic-cxr-2.0.0-{name}.csv.gz")))?;
        w.row(["subject_id", "study_id"].into_iter().chain(LABELS))?;
        for s in studies {
            let labels = if pick == 0 { s.chexpert } else { s.negbio };
            if let Some(labels) = labels {
                let ids = [s.subject_id.to_string(), s.study_id.to_string()];
                w.row(ids.iter().map(String::as_str).chain(labels.iter().map(|l| l.as_csv())))?;
            }
        }
        paths.push(w.finish()?);
    }

    // v2.1.0: radiologist labels of the test studies (plain CSV).
    let mut out = String::from("study_id,");
    out.push_str(&LABELS.join(","));
    out.push('\n');
    for s in studies.iter().filter(|s| s.split == Split::Test) {
        out.push_str(&s.study_id.to_string());
        for k in 0..14 {
            out.push(',');
            out.push_str(if s.truth[k] { "1.0" } else { "0.0" });
        }
        out.push('\n');
    }
    let labeled = root.join("mimic-cxr-2.1.0-test-set-labeled.csv");
    write_atomic(&labeled, out.as_bytes())?;
    paths.push(labeled);
    Ok(paths)
}

const NAMES: [&str; 14] = [
    "atelectasis",
    "cardiomegaly",
    "consolidation",
    "pulmonary edema",
    "enlargement of the cardiomediastinal silhouette",
    "acute fracture",
    "focal lung lesion",
    "lung opacity",
    "",
    "pleural effusion",
    "pleural thickening",
    "pneumonia",
    "pneumothorax",
    "support devices",
];

/// A short report in the style of the MIMIC-CXR free text, consistent with the CheXpert row.
pub fn report(s: &Study) -> String {
    let mut findings = Vec::new();
    let labels = s.chexpert.unwrap_or([Label::Blank; 14]);
    for (k, l) in labels.iter().enumerate() {
        if k == finding::NO_FINDING {
            continue;
        }
        let name = NAMES[k];
        match l {
            Label::Positive => findings.push(format!("There is {name}.")),
            Label::Uncertain => {
                findings.push(format!("{}{} cannot be excluded.", name[..1].to_uppercase(), &name[1..]))
            }
            Label::Negative => findings.push(format!("No {name}.")),
            Label::Blank => {}
        }
    }
    let impression = if labels[finding::NO_FINDING] == Label::Positive {
        "No acute cardiopulmonary process.".to_string()
    } else if findings.is_empty() {
        "As above.".to_string()
    } else {
        findings[0].clone()
    };
    let who = if s.sex == 'F' { "woman" } else { "man" };
    format!(
        "                                 FINAL REPORT\n EXAMINATION:  {}\n \n INDICATION:  ___ year old {who} with ___\n \n COMPARISON:  ___\n \n FINDINGS: \n \n {}\n \n IMPRESSION: \n \n {impression}\n",
        s.procedure,
        if findings.is_empty() { "The lungs are clear.".to_string() } else { findings.join(" ") },
    )
}
