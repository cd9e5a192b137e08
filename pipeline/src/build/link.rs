//! Linkage of images to patients, admissions and ICU stays, run as the SQL queries in `sql/`
//! (embedded at compile time, hashed into the dataset version) on polars' SQL context.

use polars::prelude::*;
use polars::sql::SQLContext;

use crate::{Error, Result};

/// One linkage query.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    pub name: &'static str,
    pub text: &'static str,
}

/// Every query, in the order they run.
pub const QUERIES: &[Query] = &[
    Query { name: "link_admission_date", text: include_str!("../../../sql/link_admission_date.sql") },
    Query { name: "link_admission_datetime", text: include_str!("../../../sql/link_admission_datetime.sql") },
    Query { name: "link_icu_date", text: include_str!("../../../sql/link_icu_date.sql") },
    Query { name: "link_icu_datetime", text: include_str!("../../../sql/link_icu_datetime.sql") },
    Query { name: "assemble", text: include_str!("../../../sql/assemble.sql") },
];

fn query(name: &str) -> Result<&'static Query> {
    QUERIES.iter().find(|q| q.name == name).ok_or_else(|| Error::Internal(format!("no query sql/{name}.sql")))
}

/// How a study is matched to a stay (DATA.md section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchRule {
    /// Calendar dates, as the reference implementation; of several covering admissions (ICU
    /// stays) the last in the table's file order wins, as in the reference's loop.
    Date,
    /// Timestamps: ED registration to discharge; ICU from `intime - icu_tolerance_s`; of
    /// several covering admissions (ICU stays) the latest admittime (intime) wins, then the
    /// highest id.
    DateTime { icu_tolerance_s: i64 },
}

impl MatchRule {
    /// The rule as recorded in each row's `match_rule` column: the coverage test and the
    /// tie-break.
    pub fn name(self) -> &'static str {
        match self {
            MatchRule::Date => "date, last in file order",
            MatchRule::DateTime { .. } => "datetime, latest start",
        }
    }
}

/// The column holding each admission's / ICU stay's row position in its input file (the
/// reference's tie-break under [`MatchRule::Date`]).
pub const FILE_ROW: &str = "file_row";

/// The typed input frames linkage reads, each in its file's row order.
#[derive(Debug, Clone)]
pub struct LinkInputs {
    /// dicom_id, subject_id, study_id, study_date, study_datetime, view, orientation
    pub images: DataFrame,
    pub patients: DataFrame,
    /// With the race column named `race` whatever the release.
    pub admissions: DataFrame,
    pub icustays: DataFrame,
}

/// Runs one embedded query.
pub fn run(ctx: &mut SQLContext, name: &str) -> Result<DataFrame> {
    let q = query(name)?;
    ctx.execute(q.text)
        .and_then(LazyFrame::collect)
        .map_err(|e| Error::Polars { context: format!("sql/{}.sql", q.name), source: e })
}

/// Links every image; returns the `assemble` output plus a `match_rule` column.
pub fn link(inputs: &LinkInputs, rule: MatchRule) -> Result<DataFrame> {
    let ctx = &mut SQLContext::new();
    ctx.register("images", inputs.images.clone().lazy());
    ctx.register("patients", inputs.patients.clone().lazy());
    ctx.register("admissions", inputs.admissions.clone().lazy().with_row_index(FILE_ROW, None));
    let mut icu = inputs.icustays.clone().lazy().with_row_index(FILE_ROW, None);
    if let MatchRule::DateTime { icu_tolerance_s } = rule {
        let ms = DataType::Datetime(TimeUnit::Milliseconds, None);
        icu = icu.with_column(
            (col("intime").cast(ms.clone()).cast(DataType::Int64) - lit(icu_tolerance_s * 1000))
                .cast(ms)
                .alias("window_start"),
        );
    }
    ctx.register("icustays", icu);
    let (adm, icu) = match rule {
        MatchRule::Date => ("link_admission_date", "link_icu_date"),
        MatchRule::DateTime { .. } => ("link_admission_datetime", "link_icu_datetime"),
    };
    let admission_link = run(ctx, adm)?;
    ctx.register("admission_link", admission_link.lazy());
    let icu_link = run(ctx, icu)?;
    ctx.register("icu_link", icu_link.lazy());
    let mut out = run(ctx, "assemble")?;
    let n = out.height();
    out.with_column(Column::new("match_rule".into(), vec![rule.name(); n]))
        .map_err(|e| Error::Polars { context: "match_rule".into(), source: e })?;
    Ok(out)
}

/// The images frame from the metadata table (`StudyDate` as Date, `StudyTime` in seconds).
pub fn images_from_metadata(meta: DataFrame) -> Result<DataFrame> {
    meta.lazy()
        .select([
            col("dicom_id"),
            col("subject_id"),
            col("study_id"),
            col("StudyDate").alias("study_date"),
            ((col("StudyDate").cast(DataType::Int64) * lit(86_400_000i64))
                + (col("StudyTime") * lit(1000.0)).floor().cast(DataType::Int64))
            .cast(DataType::Datetime(TimeUnit::Milliseconds, None))
            .alias("study_datetime"),
            col("ViewPosition").alias("view"),
            col("PatientOrientationCodeSequence_CodeMeaning").alias("orientation"),
        ])
        .collect()
        .map_err(|e| Error::Polars { context: "images from metadata".into(), source: e })
}
