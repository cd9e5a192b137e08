-- link_icu_datetime: the ICU stay covering each image, to the second, with a tolerance
-- before ICU admission (a film taken just before the transfer belongs to the stay).
-- Inputs:  images(dicom_id, subject_id, study_datetime)
--          icustays(subject_id, stay_id, intime, outtime, los, window_start) where
--          window_start = intime - tolerance (--icu-tolerance, set by the caller)
-- Output:  dicom_id, stay_id, icu_los (one row per image that has a covering ICU stay)
-- Rule:    window_start <= study_datetime <= outtime; the latest intime (then highest
--          stay_id) wins.
SELECT dicom_id, stay_id, icu_los
FROM (
    SELECT
        i.dicom_id,
        s.stay_id,
        s.los AS icu_los,
        ROW_NUMBER() OVER (PARTITION BY i.dicom_id ORDER BY s.intime DESC, s.stay_id DESC) AS rank
    FROM images AS i
    INNER JOIN icustays AS s ON i.subject_id = s.subject_id
    WHERE s.window_start <= i.study_datetime
      AND i.study_datetime <= s.outtime
) AS covering
WHERE rank = 1
