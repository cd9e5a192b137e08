//! Image metadata from DICOM headers, for when the MIMIC-CXR-JPG metadata table is absent:
//! the same columns as `mimic-cxr-2.0.0-metadata.csv.gz`, read from PatientID, StudyDate,
//! StudyTime, ViewPosition, the view and patient-orientation code sequences, Rows and Columns.
//! Files are read up to the pixel data only, in parallel.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use polars::prelude::*;
use rayon::prelude::*;

use crate::sources::ingest::{self, Duplicates, date_days};
use crate::sources::paths;
use crate::sources::schema::{Schema, parse_hhmmss};
use crate::{Error, Result};

/// One image's header values.
#[derive(Debug, Clone)]
struct Header {
    dicom_id: String,
    subject_id: i64,
    study_id: i64,
    procedure: Option<String>,
    view: Option<String>,
    rows: i64,
    columns: i64,
    study_date: i32,
    /// Seconds after midnight; none when the header has no StudyTime.
    study_time: Option<f64>,
    view_meaning: Option<String>,
    orientation: Option<String>,
}

/// The DICOM files whose headers a build reads.
#[derive(Debug, Clone, Default)]
pub struct DicomFiles {
    /// Sorted.
    pub files: Vec<PathBuf>,
    /// Record-list rows and files that must not be read (a path leaving the root, a link
    /// outside it), with why: rejects of the build.
    pub rejects: Vec<HeaderReject>,
    /// Exact duplicate rows dropped from the record list.
    pub duplicates: Option<Duplicates>,
}

/// Every `.dcm` under `root/files` (from the record list when there is one: its `path` cells,
/// checked to stay under `root`), sorted; files that resolve outside `root` are rejects.
pub fn dicom_files(root: &Path, record_list: Option<&Path>) -> Result<DicomFiles> {
    let mut out = DicomFiles::default();
    let mut relative = Vec::new();
    if let Some(list) = record_list {
        let schema = Schema::get("mimic-cxr/record-list")?;
        let read = ingest::read(list, &schema, "2.0.0")?;
        out.duplicates = read.dropped(list, &schema);
        let column = read.frame.column("path").and_then(|c| c.str().cloned());
        let column = column.map_err(|e| Error::Polars { context: list.display().to_string(), source: e })?;
        for (row, p) in column.iter().enumerate() {
            let p = p.unwrap_or("");
            match paths::relative(p) {
                Ok(_) => relative.push(p.to_string()),
                Err(why) => out.rejects.push((PathBuf::from(p), format!("{}, row {}: {why}", list.display(), row + 1))),
            }
        }
    } else {
        let mut stack = vec![root.join("files")];
        while let Some(dir) = stack.pop() {
            for entry in fs_err::read_dir(&dir)? {
                let p = entry?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "dcm")
                    && let Ok(rel) = p.strip_prefix(root)
                {
                    relative.push(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    let checked: Vec<std::result::Result<PathBuf, HeaderReject>> =
        relative.par_iter().map(|rel| paths::inside(root, rel).map_err(|why| (root.join(rel), why))).collect();
    for c in checked {
        match c {
            Ok(p) => out.files.push(p),
            Err(r) => out.rejects.push(r),
        }
    }
    out.files.sort();
    Ok(out)
}

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let e = obj.element_opt(tag).ok()??;
    let s = e.to_str().ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string();
    (!s.is_empty()).then_some(s)
}

fn code_meaning(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let items = obj.element_opt(tag).ok()??.items()?;
    let item = items.first()?;
    let s = item.element(tags::CODE_MEANING).ok()?.to_str().ok()?;
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn header(path: &Path) -> Result<Header> {
    let bad = |message: String| Error::DicomHeader { path: path.to_path_buf(), message };
    let obj = OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(path).map_err(|e| bad(e.to_string()))?;
    let dicom_id = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let study_dir =
        path.parent().and_then(Path::file_name).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let study_id: i64 = study_dir
        .strip_prefix('s')
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("the folder {study_dir:?} is not sSTUDY_ID")))?;
    let subject_id: i64 = text(&obj, tags::PATIENT_ID)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("PatientID (0010,0020) is missing or not a subject_id".into()))?;
    let date = text(&obj, tags::STUDY_DATE).ok_or_else(|| bad("StudyDate (0008,0020) is missing".into()))?;
    let study_date = NaiveDate::parse_from_str(&date, "%Y%m%d")
        .map(date_days)
        .map_err(|_| bad(format!("StudyDate (0008,0020) {date:?} is not YYYYMMDD")))?;
    // A missing StudyTime is unknown, not midnight.
    let study_time = match text(&obj, tags::STUDY_TIME) {
        Some(time) => {
            Some(parse_hhmmss(&time).ok_or_else(|| bad(format!("StudyTime (0008,0030) {time:?} is not HHMMSS.fff")))?)
        }
        None => None,
    };
    let int = |tag| obj.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<i64>().ok());
    Ok(Header {
        dicom_id,
        subject_id,
        study_id,
        procedure: text(&obj, tags::PERFORMED_PROCEDURE_STEP_DESCRIPTION),
        view: text(&obj, tags::VIEW_POSITION),
        rows: int(tags::ROWS).ok_or_else(|| bad("Rows (0028,0010) is missing".into()))?,
        columns: int(tags::COLUMNS).ok_or_else(|| bad("Columns (0028,0011) is missing".into()))?,
        study_date,
        study_time,
        view_meaning: code_meaning(&obj, tags::VIEW_CODE_SEQUENCE),
        orientation: code_meaning(&obj, tags::PATIENT_ORIENTATION_CODE_SEQUENCE),
    })
}

/// A file whose header could not be read, with why.
pub type HeaderReject = (PathBuf, String);

/// The metadata frame (same columns and types as the metadata table read by `ingest`) of the
/// readable headers, and the files whose header is unreadable or lacks what linkage needs
/// (rejects, unless `fail_fast`: then the first is the error). Fails when no header is
/// readable.
pub fn read(files: &[PathBuf], fail_fast: bool) -> Result<(DataFrame, Vec<HeaderReject>)> {
    let read: Vec<Result<Header>> = files.par_iter().map(|p| header(p)).collect();
    let mut headers = Vec::with_capacity(read.len());
    let mut read_from: Vec<&Path> = Vec::with_capacity(read.len());
    let mut rejects = Vec::new();
    for (path, r) in files.iter().zip(read) {
        match r {
            Ok(h) => {
                headers.push(h);
                read_from.push(path);
            }
            Err(e) if fail_fast => return Err(e),
            Err(e) => rejects.push((path.clone(), e.to_string())),
        }
    }
    let mut first_of: std::collections::HashMap<&str, &Path> = std::collections::HashMap::new();
    for (h, path) in headers.iter().zip(read_from) {
        if let Some(first) = first_of.insert(&h.dicom_id, path) {
            return Err(Error::input(
                path,
                format!(
                    "dicom_id {} is also the name of {}: an image id must name one file; remove one of them",
                    h.dicom_id,
                    first.display()
                ),
            ));
        }
    }
    if headers.is_empty()
        && let Some((path, why)) = rejects.first()
    {
        return Err(Error::input(path, format!("{why}; none of the {} DICOM headers is readable", rejects.len())));
    }
    Ok((frame(&headers)?, rejects))
}

fn frame(headers: &[Header]) -> Result<DataFrame> {
    let n = headers.len();
    let s = |f: &dyn Fn(&Header) -> Option<String>| headers.iter().map(f).collect::<Vec<_>>();
    let cols = vec![
        Column::new("dicom_id".into(), headers.iter().map(|h| h.dicom_id.clone()).collect::<Vec<_>>()),
        Column::new("subject_id".into(), headers.iter().map(|h| h.subject_id).collect::<Vec<_>>()),
        Column::new("study_id".into(), headers.iter().map(|h| h.study_id).collect::<Vec<_>>()),
        Column::new("PerformedProcedureStepDescription".into(), s(&|h| h.procedure.clone())),
        Column::new("ViewPosition".into(), s(&|h| h.view.clone())),
        Column::new("Rows".into(), headers.iter().map(|h| h.rows).collect::<Vec<_>>()),
        Column::new("Columns".into(), headers.iter().map(|h| h.columns).collect::<Vec<_>>()),
        Int32Chunked::from_vec("StudyDate".into(), headers.iter().map(|h| h.study_date).collect())
            .into_date()
            .into_column(),
        Column::new("StudyTime".into(), headers.iter().map(|h| h.study_time).collect::<Vec<_>>()),
        Column::new("ProcedureCodeSequence_CodeMeaning".into(), s(&|h| h.procedure.clone())),
        Column::new("ViewCodeSequence_CodeMeaning".into(), s(&|h| h.view_meaning.clone())),
        Column::new("PatientOrientationCodeSequence_CodeMeaning".into(), s(&|h| h.orientation.clone())),
    ];
    DataFrame::new(n, cols).map_err(|e| Error::Polars { context: "metadata from DICOM headers".into(), source: e })
}
