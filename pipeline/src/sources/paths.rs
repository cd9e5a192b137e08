//! Identifiers and paths that come from input data, checked before they reach the file system.
//!
//! Every file path a build or an evaluation export makes from a table cell (a MIMIC record
//! list's `path`, a CheXpert `Path`, an NIH file name, a MIMIC-CXR path made from
//! `subject_id`, `study_id` and `dicom_id`) goes through [`inside`]: absolute paths, `..`,
//! drive letters and links that resolve outside the root are refused, with a reason the
//! rejects list shows. The MIMIC-CXR identifiers are checked against DATA.md section 1's
//! patterns by [`check_image_ids`].

use std::path::{Component, Path, PathBuf};

/// Why a path or an identifier must not be used (a reject's reason).
pub type Reject = String;

/// `rel` as a relative path that stays under whatever root it is joined to, judged from its
/// text alone: not empty, not absolute, no drive letter, no `..`.
pub fn relative(rel: &str) -> Result<&Path, Reject> {
    let p = Path::new(rel);
    if rel.is_empty() {
        return Err("empty path".into());
    }
    if p.is_absolute() || rel.starts_with(['/', '\\']) || rel.contains(':') {
        return Err(format!("path {rel:?} is absolute; refusing to read outside the dataset root"));
    }
    if p.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) || rel.contains("..") {
        return Err(format!("path {rel:?} leaves the dataset root; refusing to read it"));
    }
    Ok(p)
}

/// The file `rel` under `root`, refused (see [`relative`]) when its text leaves the root or
/// when it resolves, through links, to a file outside it. A file that does not exist passes
/// (reading it then fails with its own reason).
pub fn inside(root: &Path, rel: &str) -> Result<PathBuf, Reject> {
    let full = root.join(relative(rel)?);
    if let (Ok(real), Ok(base)) = (full.canonicalize(), root.canonicalize())
        && !real.starts_with(&base)
    {
        return Err(format!(
            "path {rel:?} is a link to {} outside the dataset root; refusing to read it",
            real.display()
        ));
    }
    Ok(full)
}

/// A MIMIC-CXR `dicom_id`: 5 dash-separated groups of 8 lowercase hex digits.
pub fn is_dicom_id(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups.iter().all(|g| g.len() == 8 && g.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// A MIMIC `subject_id`: 8 digits starting with 1.
pub fn is_subject_id(id: i64) -> bool {
    (10_000_000..=19_999_999).contains(&id)
}

/// A MIMIC-CXR `study_id`: 8 digits starting with 5.
pub fn is_study_id(id: i64) -> bool {
    (50_000_000..=59_999_999).contains(&id)
}

/// Why an image's identifiers are not MIMIC-CXR's (DATA.md section 1), if they are not.
pub fn check_image_ids(dicom_id: Option<&str>, subject_id: Option<i64>, study_id: Option<i64>) -> Result<(), Reject> {
    let dicom = dicom_id.unwrap_or("");
    if !is_dicom_id(dicom) {
        return Err(format!(
            "dicom_id {dicom:?} is not 5 dash-separated groups of 8 lowercase hex digits (DATA.md section 1)"
        ));
    }
    match subject_id {
        Some(s) if is_subject_id(s) => {}
        s => return Err(format!("subject_id {s:?} of image {dicom} is not 8 digits starting with 1")),
    }
    match study_id {
        Some(s) if is_study_id(s) => Ok(()),
        s => Err(format!("study_id {s:?} of image {dicom} is not 8 digits starting with 5")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_the_root_are_refused() {
        for bad in ["", "/etc/passwd", "\\x", "C:\\x.jpg", "a/../../b.jpg", "..", "files/../../x.dcm", "a/..b"] {
            assert!(relative(bad).is_err(), "{bad:?}");
        }
        for good in ["files/p10/p10000032/s50414267/x.dcm", "./a.jpg", "CheXpert-v1.0-small/train.csv"] {
            assert!(relative(good).is_ok(), "{good:?}");
        }
        let dir = std::env::temp_dir().join(format!("cxr-paths-test-{}", std::process::id()));
        let (root, outside) = (dir.join("root"), dir.join("outside.jpg"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(&outside, b"x").unwrap();
        std::fs::write(root.join("in.jpg"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link.jpg")).unwrap();
        assert_eq!(inside(&root, "in.jpg").unwrap(), root.join("in.jpg"));
        let err = inside(&root, "link.jpg").unwrap_err();
        assert!(err.contains("is a link to") && err.contains("outside.jpg"), "{err}");
        assert!(inside(&root, "missing.jpg").is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mimic_ids_follow_data_md() {
        assert!(is_dicom_id("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"));
        for bad in [
            "02AA804E-bde0afdd-112c0b34-7bc16630-4e384014",
            "02aa804e-bde0afdd-112c0b34-7bc16630",
            "02aa804e-bde0afdd-112c0b34-7bc16630-4e38401g",
            "../../../../../../../outside/planted",
            "",
        ] {
            assert!(!is_dicom_id(bad), "{bad:?}");
        }
        let id = Some("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014");
        assert!(check_image_ids(id, Some(10000032), Some(50414267)).is_ok());
        assert!(check_image_ids(id, Some(20000032), Some(50414267)).unwrap_err().contains("subject_id"));
        assert!(check_image_ids(id, Some(10000032), Some(40414267)).unwrap_err().contains("study_id"));
        assert!(check_image_ids(id, None, Some(50414267)).is_err());
    }
}
