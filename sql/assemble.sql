-- assemble: one row per image with its raw EHR variables and their provenance.
-- Inputs:  images(dicom_id, subject_id, study_id, study_date, study_datetime, view,
--                 orientation)
--          patients(subject_id, gender, anchor_age, anchor_year)
--          admission_link(dicom_id, hadm_id, died_in_stay)   -- from link_admission_*
--          icu_link(dicom_id, stay_id, icu_los)              -- from link_icu_*
--          admissions(hadm_id, race)
-- Output:  dicom_id, subject_id, study_id, study_date, study_datetime, view, orientation,
--          sex, age, race, hadm_id, stay_id, died_in_stay, icu_stay, icu_los
-- Rule:    sex = patients.gender; age = anchor_age + (year(study_date) - anchor_year)
--          (anchor_age 91 means "over 89"); race of the covering admission; an image with
--          no covering admission has died_in_stay = 0, with no covering ICU stay icu_stay = 0.
SELECT
    i.dicom_id,
    i.subject_id,
    i.study_id,
    i.study_date,
    i.study_datetime,
    i.view,
    i.orientation,
    p.gender AS sex,
    p.anchor_age + (EXTRACT(YEAR FROM i.study_date) - p.anchor_year) AS age,
    a.race,
    l.hadm_id,
    u.stay_id,
    CASE WHEN l.died_in_stay THEN 1 ELSE 0 END AS died_in_stay,
    CASE WHEN u.stay_id IS NULL THEN 0 ELSE 1 END AS icu_stay,
    u.icu_los
FROM images AS i
LEFT JOIN patients AS p ON i.subject_id = p.subject_id
LEFT JOIN admission_link AS l ON i.dicom_id = l.dicom_id
LEFT JOIN icu_link AS u ON i.dicom_id = u.dicom_id
LEFT JOIN admissions AS a ON l.hadm_id = a.hadm_id
ORDER BY i.subject_id, i.study_id, i.dicom_id
