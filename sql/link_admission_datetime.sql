-- link_admission_datetime: the hospital admission covering each image, to the second,
-- counting the ED visit that led to the admission.
-- Inputs:  images(dicom_id, subject_id, study_datetime)
--          admissions(subject_id, hadm_id, admittime, dischtime, edregtime,
--                     hospital_expire_flag)
-- Output:  dicom_id, hadm_id, died_in_stay (one row per image that has a covering admission)
-- Rule:    min(edregtime, admittime) <= study_datetime <= dischtime; when several
--          admissions cover the study, the latest admittime (then highest hadm_id) wins.
SELECT dicom_id, hadm_id, died_in_stay
FROM (
    SELECT
        i.dicom_id,
        a.hadm_id,
        a.hospital_expire_flag AS died_in_stay,
        ROW_NUMBER() OVER (PARTITION BY i.dicom_id ORDER BY a.admittime DESC, a.hadm_id DESC) AS rank
    FROM images AS i
    INNER JOIN admissions AS a ON i.subject_id = a.subject_id
    WHERE (CASE WHEN a.edregtime IS NOT NULL AND a.edregtime < a.admittime THEN a.edregtime ELSE a.admittime END)
              <= i.study_datetime
      AND i.study_datetime <= a.dischtime
) AS covering
WHERE rank = 1
