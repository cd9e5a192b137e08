//! The MIMIC-CXR / MIMIC-CXR-JPG tables and tree against DATA.md section 1, one fact a test.

use std::collections::{HashMap, HashSet};

use cxr_dataset::LABELS;

use crate::fixture::{CXR_DCM, CXR_JPG, Csv, header_line, large_tables, small};

const METADATA_HEADER: &str = "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning";

/// The five real first rows of the metadata file, quoted in DATA.md.
pub const REAL_METADATA: &str = "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning
02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect
174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,21800506,213014.531,CHEST (PA AND LAT),lateral,Erect
2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,10000032,53189527,CHEST (PA AND LAT),PA,3056,2544,21800626,165500.312,CHEST (PA AND LAT),postero-anterior,Erect
e084de3b-be89b11e-20fe3f9f-9c8d8dfe-4cfd202c,10000032,53189527,CHEST (PA AND LAT),LATERAL,3056,2544,21800626,165500.312,CHEST (PA AND LAT),lateral,Erect
68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714,10000032,53911762,CHEST (PORTABLE AP),AP,2705,2539,21800723,80556.875,CHEST (PORTABLE AP),antero-posterior,
";

const VIEWS: [&str; 17] = [
    "PA",
    "AP",
    "LATERAL",
    "LL",
    "",
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

fn is_subject_id(s: &str) -> bool {
    s.len() == 8 && s.starts_with('1') && s.bytes().all(|b| b.is_ascii_digit())
}
fn is_study_id(s: &str) -> bool {
    s.len() == 8 && s.starts_with('5') && s.bytes().all(|b| b.is_ascii_digit())
}
fn is_dicom_id(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().all(|g| g.len() == 8 && g.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}
/// StudyTime: HHMMSS.fff as an unpadded float.
fn is_study_time(s: &str) -> bool {
    let Some((int, frac)) = s.split_once('.') else { return false };
    let ok_digits = !int.is_empty() && int.len() <= 6 && int.bytes().all(|b| b.is_ascii_digit());
    let unpadded = int == "0" || !int.starts_with('0');
    let v: u32 = int.parse().unwrap_or(999_999);
    ok_digits
        && unpadded
        && !frac.is_empty()
        && frac.bytes().all(|b| b.is_ascii_digit())
        && v / 10000 < 24
        && v / 100 % 100 < 60
        && v % 100 < 60
}
fn is_study_date(s: &str) -> bool {
    s.len() == 8 && s.starts_with("21") && chrono::NaiveDate::parse_from_str(s, "%Y%m%d").is_ok()
}

fn check_metadata_rows(m: &Csv) {
    assert_eq!(m.header.join(","), METADATA_HEADER);
    for r in &m.rows {
        assert_eq!(r.len(), 12);
        assert!(is_dicom_id(&r[0]), "dicom_id {}", r[0]);
        assert!(is_subject_id(&r[1]), "subject_id {}", r[1]);
        assert!(is_study_id(&r[2]), "study_id {}", r[2]);
        assert!(VIEWS.contains(&r[4].as_str()), "view {:?}", r[4]);
        assert!(r[5].parse::<u16>().is_ok() && r[6].parse::<u16>().is_ok());
        assert!(is_study_date(&r[7]), "StudyDate {}", r[7]);
        assert!(is_study_time(&r[8]), "StudyTime {}", r[8]);
        assert!(["Erect", "Recumbent", ""].contains(&r[11].as_str()), "orientation {:?}", r[11]);
    }
}

fn metadata(a: &crate::fixture::Archive) -> Csv {
    Csv::read(&a.root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz"))
}

#[test]
fn validators_accept_the_real_metadata_rows() {
    check_metadata_rows(&Csv::parse(REAL_METADATA));
}

#[test]
fn metadata_has_the_twelve_real_columns_and_value_formats() {
    let path = small().root.join(CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz");
    assert_eq!(header_line(&path), METADATA_HEADER);
    check_metadata_rows(&metadata(small()));
    check_metadata_rows(&metadata(large_tables()));
}

#[test]
fn metadata_is_sorted_by_subject_then_study_and_studies_share_date_and_time() {
    let m = metadata(large_tables());
    let keys: Vec<(u32, u32)> = m.rows.iter().map(|r| (r[1].parse().unwrap(), r[2].parse().unwrap())).collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]));
    let mut per_study: HashMap<&str, (&str, &str)> = HashMap::new();
    for r in &m.rows {
        let e = per_study.entry(&r[2]).or_insert((&r[7], &r[8]));
        assert_eq!(*e, (r[7].as_str(), r[8].as_str()), "study {}", r[2]);
    }
    // Unpadded times before 10:00 occur (like the real 80556.875).
    assert!(m.column("StudyTime").any(|t| t.split('.').next().unwrap().len() == 5));
}

#[test]
fn view_mix_follows_the_real_order_with_blank_and_rare_views() {
    let m = metadata(large_tables());
    let mut n: HashMap<&str, usize> = HashMap::new();
    for v in m.column("ViewPosition") {
        *n.entry(v).or_default() += 1;
    }
    let c = |v: &str| n.get(v).copied().unwrap_or(0);
    assert!(c("AP") > c("PA") && c("PA") > c("LATERAL") && c("LATERAL") > c("LL") && c("LL") > c(""), "{n:?}");
    assert!(c("") > 0);
    let rare: usize = VIEWS[5..].iter().map(|v| c(v)).sum();
    assert!(rare > 0 && rare * 100 < m.rows.len(), "rare views: {rare}");
    // Each view carries the matching code meaning; a blank view may still have one.
    for r in &m.rows {
        let expected = match r[4].as_str() {
            "PA" => "postero-anterior",
            "AP" => "antero-posterior",
            "LATERAL" => "lateral",
            "LL" => "left lateral",
            _ => continue,
        };
        assert_eq!(r[10], expected);
    }
}

#[test]
fn some_orientations_are_blank() {
    let m = metadata(large_tables());
    let blank = m.column("PatientOrientationCodeSequence_CodeMeaning").filter(|o| o.is_empty()).count();
    let recumbent = m.column("PatientOrientationCodeSequence_CodeMeaning").filter(|o| *o == "Recumbent").count();
    assert!(blank > 0 && recumbent > 0 && blank < m.rows.len() / 4);
}

#[test]
fn split_is_patient_level_with_the_three_official_names() {
    let a = large_tables();
    let s = Csv::read(&a.root.join(CXR_JPG).join("mimic-cxr-2.0.0-split.csv.gz"));
    assert_eq!(s.header, ["dicom_id", "study_id", "subject_id", "split"]);
    let mut of_subject: HashMap<&str, &str> = HashMap::new();
    let mut names = HashSet::new();
    for r in &s.rows {
        names.insert(r[3].as_str());
        let prev = of_subject.insert(&r[2], &r[3]);
        assert!(prev.is_none_or(|p| p == r[3]), "subject {} in two splits", r[2]);
    }
    assert_eq!(names, HashSet::from(["train", "validate", "test"]));
    let meta: HashSet<String> = metadata(a).column("dicom_id").map(str::to_string).collect();
    let split: HashSet<String> = s.column("dicom_id").map(str::to_string).collect();
    assert_eq!(meta, split);
}

#[test]
fn label_files_have_one_row_per_study_in_mimic_order_with_real_cell_values() {
    let a = large_tables();
    let studies: HashSet<String> = metadata(a).column("study_id").map(str::to_string).collect();
    for name in ["chexpert", "negbio"] {
        let path = a.root.join(CXR_JPG).join(format!("mimic-cxr-2.0.0-{name}.csv.gz"));
        let t = Csv::read(&path);
        let mut expected = vec!["subject_id", "study_id"];
        expected.extend(LABELS);
        assert_eq!(t.header, expected);
        let ids: Vec<&str> = t.column("study_id").collect();
        let unique: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(ids.len(), unique.len(), "{name}: a study has two rows");
        assert!(unique.len() < studies.len(), "{name}: some studies have no row");
        assert!(unique.iter().all(|s| studies.contains(*s)));
        let mut seen = HashSet::new();
        let mut all_blank = 0;
        for r in &t.rows {
            for cell in &r[2..] {
                assert!(["1.0", "0.0", "-1.0", ""].contains(&cell.as_str()), "{name}: cell {cell:?}");
                seen.insert(cell.clone());
            }
            all_blank += usize::from(r[2..].iter().all(String::is_empty));
            // No Finding is positive only without a positive or uncertain pathology.
            let pathology = (2..16)
                .filter(|&c| !["No Finding", "Support Devices"].contains(&t.header[c].as_str()))
                .any(|c| r[c] == "1.0" || r[c] == "-1.0");
            if pathology {
                assert_ne!(r[t.col("No Finding")], "1.0");
            }
        }
        assert_eq!(seen.len(), 4, "{name}: all four cell values occur");
        assert!(all_blank > 0, "{name}: some rows are all blank");
    }
}

#[test]
fn test_set_labels_of_v2_1_cover_the_test_studies() {
    let a = large_tables();
    let t = Csv::read(&a.root.join(CXR_JPG).join("mimic-cxr-2.1.0-test-set-labeled.csv"));
    assert_eq!(t.header[0], "study_id");
    assert_eq!(&t.header[1..], LABELS);
    let split = Csv::read(&a.root.join(CXR_JPG).join("mimic-cxr-2.0.0-split.csv.gz"));
    let test: HashSet<&str> = split.rows.iter().filter(|r| r[3] == "test").map(|r| r[1].as_str()).collect();
    let labeled: HashSet<&str> = t.column("study_id").collect();
    assert_eq!(test, labeled);
}

#[test]
fn tree_and_lists_follow_the_physionet_layout() {
    let a = small();
    let dcm = a.root.join(CXR_DCM);
    let rec = Csv::read(&dcm.join("cxr-record-list.csv.gz"));
    assert_eq!(rec.header, ["subject_id", "study_id", "dicom_id", "path"]);
    for r in &rec.rows {
        let expected = format!("files/p{}/p{}/s{}/{}.dcm", &r[0][..2], r[0], r[1], r[2]);
        assert_eq!(r[3], expected);
        assert!(dcm.join(&r[3]).is_file(), "{} missing", r[3]);
        let jpg = a.root.join(CXR_JPG).join(expected.replace(".dcm", ".jpg"));
        assert!(jpg.is_file(), "{} missing", jpg.display());
    }
    let st = Csv::read(&dcm.join("cxr-study-list.csv.gz"));
    assert_eq!(st.header, ["subject_id", "study_id", "path"]);
    for r in &st.rows {
        assert_eq!(r[2], format!("files/p{}/p{}/s{}.txt", &r[0][..2], r[0], r[1]));
        let report = fs_err::read_to_string(dcm.join(&r[2])).unwrap();
        assert!(report.contains("FINAL REPORT") && report.contains("IMPRESSION:"));
    }
    assert_eq!(rec.rows.len(), a.summary.images);
    // Top folders are p10..p19.
    let tops: HashSet<String> = rec.rows.iter().map(|r| r[3][6..9].to_string()).collect();
    assert!(tops.iter().all(|t| t.starts_with("p1")), "{tops:?}");
}

#[test]
fn jpgs_are_8_bit_gray_at_the_metadata_size() {
    let a = small();
    let m = metadata(a);
    for r in m.rows.iter().take(12) {
        let path = a.root.join(CXR_JPG).join(format!("files/p{}/p{}/s{}/{}.jpg", &r[1][..2], r[1], r[2], r[0]));
        let img = image::open(&path).unwrap();
        assert_eq!(img.color(), image::ColorType::L8);
        assert_eq!((img.height().to_string(), img.width().to_string()), (r[5].clone(), r[6].clone()));
    }
}
