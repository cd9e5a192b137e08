-- link_icu_date: the ICU stay covering each image, by calendar date (the reference's rule).
-- Inputs:  images(dicom_id, subject_id, study_date)
--          icustays(subject_id, stay_id, intime, outtime, los, file_row) where file_row is
--          the row's position in icustays.csv
-- Output:  dicom_id, stay_id, icu_los (one row per image that has a covering ICU stay)
-- Rule:    date(intime) <= study_date <= date(outtime); when several stays cover the study,
--          the one LAST IN THE FILE wins, as in the reference's overwriting loop.
SELECT dicom_id, stay_id, icu_los
FROM (
    SELECT
        i.dicom_id,
        s.stay_id,
        s.los AS icu_los,
        ROW_NUMBER() OVER (PARTITION BY i.dicom_id ORDER BY s.file_row DESC) AS rank
    FROM images AS i
    INNER JOIN icustays AS s ON i.subject_id = s.subject_id
    WHERE CAST(s.intime AS DATE) <= i.study_date
      AND i.study_date <= CAST(s.outtime AS DATE)
) AS covering
WHERE rank = 1
