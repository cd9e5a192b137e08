-- link_admission_date: the hospital admission covering each image, by calendar date
-- (the reference implementation's rule, for paper reproduction).
-- Inputs:  images(dicom_id, subject_id, study_date)
--          admissions(subject_id, hadm_id, admittime, dischtime, hospital_expire_flag,
--                     file_row) where file_row is the row's position in admissions.csv
-- Output:  dicom_id, hadm_id, died_in_stay (one row per image that has a covering admission)
-- Rule:    date(admittime) <= study_date <= date(dischtime); when several admissions cover
--          the study, the one LAST IN THE FILE wins, as in the reference, whose loop over the
--          admissions overwrites earlier matches (MIMIC-IV's files are not in time order).
SELECT dicom_id, hadm_id, died_in_stay
FROM (
    SELECT
        i.dicom_id,
        a.hadm_id,
        a.hospital_expire_flag AS died_in_stay,
        ROW_NUMBER() OVER (PARTITION BY i.dicom_id ORDER BY a.file_row DESC) AS rank
    FROM images AS i
    INNER JOIN admissions AS a ON i.subject_id = a.subject_id
    WHERE CAST(a.admittime AS DATE) <= i.study_date
      AND i.study_date <= CAST(a.dischtime AS DATE)
) AS covering
WHERE rank = 1
