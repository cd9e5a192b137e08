//! From raw EHR variables to the encoded columns of DATA.md section 5: cohort filters,
//! the missing-value policy for view and orientation (imputation fitted on the training split
//! only), and the one-hot / normalised / binned columns named by the dataset contract.

use std::collections::HashMap;

use cxr_dataset::features::{
    AGE_BINS5_EDGES, AGE_BINS10_EDGES, ORIENTATION_CATEGORIES, VIEW_CATEGORIES, Variable, age_bin, age_norm,
    race_category,
};
use polars::prelude::*;

use crate::{Error, Result};

/// What to do with a blank (or, when kept, rare) view or a blank orientation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MissingPolicy {
    /// The most frequent category given the other scan variable, fitted on training rows
    /// (the reference's imputer, effectively).
    Impute,
    /// An extra `*_unknown` column.
    Unknown,
    /// Drop the image.
    Drop,
}

impl MissingPolicy {
    pub fn name(self) -> &'static str {
        match self {
            Self::Impute => "impute",
            Self::Unknown => "unknown",
            Self::Drop => "drop",
        }
    }
}

fn pe(context: &str) -> impl Fn(PolarsError) -> Error + '_ {
    move |e| Error::Polars { context: context.to_string(), source: e }
}

/// A text column's values, empty as `None`, borrowed from the frame.
fn strings<'a>(df: &'a DataFrame, name: &str) -> Result<Vec<Option<&'a str>>> {
    let c = df.column(name).map_err(pe(name))?;
    let ca = c.str().map_err(pe(name))?;
    Ok(ca.iter().map(|v| v.filter(|s| !s.is_empty())).collect())
}

fn floats(df: &DataFrame, name: &str) -> Result<Vec<Option<f64>>> {
    let c = df.column(name).map_err(pe(name))?.cast(&DataType::Float64).map_err(pe(name))?;
    Ok(c.f64().map_err(pe(name))?.iter().collect())
}

/// Most frequent `(view, orientation)` combinations among training rows.
#[derive(Debug, Default)]
pub struct ScanImputer {
    counts: HashMap<(usize, usize), usize>,
}

impl ScanImputer {
    /// Fits on rows where `train[i]` and both variables are known.
    pub fn fit(views: &[Option<usize>], orients: &[Option<usize>], train: &[bool]) -> Self {
        let mut counts = HashMap::new();
        for i in 0..views.len() {
            if let (true, Some(v), Some(o)) = (train[i], views[i], orients[i]) {
                *counts.entry((v, o)).or_insert(0) += 1;
            }
        }
        Self { counts }
    }

    fn best(&self, keep: impl Fn(&(usize, usize)) -> bool) -> Option<(usize, usize)> {
        // Highest count; ties broken by category order, so the result is deterministic.
        self.counts.iter().filter(|(k, _)| keep(k)).max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map(|(k, _)| *k)
    }

    /// Fills what is missing; `None` only when nothing was fitted.
    pub fn impute(&self, view: Option<usize>, orient: Option<usize>) -> Option<(usize, usize)> {
        match (view, orient) {
            (Some(v), Some(o)) => Some((v, o)),
            (None, Some(o)) => self.best(|k| k.1 == o).or_else(|| self.best(|_| true)).map(|k| (k.0, o)),
            (Some(v), None) => self.best(|k| k.0 == v).or_else(|| self.best(|_| true)).map(|k| (v, k.1)),
            (None, None) => self.best(|_| true),
        }
    }
}

/// The column flagging a rare view (LPO, SWIMMERS, ...) when rare views are kept: such an
/// image has all four view columns 0 and `view_other` 1; it is neither imputed nor flagged
/// as imputed.
pub const VIEW_OTHER: &str = "view_other";

/// Encoded and policy-applied columns for the rows of `df` (which has `sex`, `age`, `race`,
/// `view`, `orientation`, `died_in_stay`, `icu_stay`, `split`). Returns the frame with the encoded
/// columns and `view_imputed` / `orientation_imputed` added (and [`VIEW_OTHER`] when
/// `rare_views` is true: the rows may hold views outside the four categories), and rows
/// dropped by the `drop` policy removed, plus the number dropped.
pub fn encode(df: &DataFrame, policy: MissingPolicy, rare_views: bool) -> Result<(DataFrame, usize)> {
    let view_of = |s: &Option<&str>| s.and_then(|v| VIEW_CATEGORIES.iter().position(|c| *c == v));
    let orient_of = |s: &Option<&str>| s.and_then(|v| ORIENTATION_CATEGORIES.iter().position(|c| *c == v));
    let raw_views = strings(df, "view")?;
    let views: Vec<Option<usize>> = raw_views.iter().map(view_of).collect();
    // A present view outside the categories: only when rare views are kept.
    let other: Vec<bool> =
        raw_views.iter().zip(&views).map(|(r, v)| rare_views && r.is_some() && v.is_none()).collect();
    let orients: Vec<Option<usize>> = strings(df, "orientation")?.iter().map(orient_of).collect();
    let train: Vec<bool> = strings(df, "split")?.iter().map(|s| *s == Some("train")).collect();
    let scan = Scan::with_policy(views, orients, other, &train, policy);
    let raw = Raw {
        sex: strings(df, "sex")?,
        age: floats(df, "age")?,
        race: strings(df, "race")?,
        died: floats(df, "died_in_stay")?,
        icu: floats(df, "icu_stay")?,
    };

    let mut out = df.clone();
    for c in columns(&raw, &scan, policy, rare_views) {
        out.with_column(c).map_err(pe("encoded columns"))?;
    }
    let dropped = scan.keep.iter().filter(|k| !**k).count();
    if dropped > 0 {
        let mask = BooleanChunked::from_slice("keep".into(), &scan.keep);
        out = out.filter(&mask).map_err(pe("drop policy"))?;
    }
    Ok((out, dropped))
}

/// The raw EHR variables other than the scan's, one entry per row.
struct Raw<'a> {
    sex: Vec<Option<&'a str>>,
    age: Vec<Option<f64>>,
    race: Vec<Option<&'a str>>,
    died: Vec<Option<f64>>,
    icu: Vec<Option<f64>>,
}

/// View and orientation (category indices) after the missing-value policy, per row.
struct Scan {
    view: Vec<Option<usize>>,
    orient: Vec<Option<usize>>,
    /// A rare view, kept.
    other: Vec<bool>,
    view_imputed: Vec<bool>,
    orient_imputed: Vec<bool>,
    /// False for the rows the `drop` policy removes.
    keep: Vec<bool>,
}

impl Scan {
    /// Applies `policy` to the rows with a missing view or orientation (the imputer is fitted
    /// on the `train` rows).
    fn with_policy(
        views: Vec<Option<usize>>,
        orients: Vec<Option<usize>>,
        other: Vec<bool>,
        train: &[bool],
        policy: MissingPolicy,
    ) -> Self {
        let n = views.len();
        let imputer = ScanImputer::fit(&views, &orients, train);
        let mut s = Self {
            view: views,
            orient: orients,
            other,
            view_imputed: vec![false; n],
            orient_imputed: vec![false; n],
            keep: vec![true; n],
        };
        for i in 0..n {
            let (view, orient) = (s.view[i], s.orient[i]);
            if (view.is_some() || s.other[i]) && orient.is_some() {
                continue;
            }
            match policy {
                MissingPolicy::Drop => s.keep[i] = false,
                MissingPolicy::Unknown => {}
                // A rare view says nothing about the orientation: the overall most frequent one.
                MissingPolicy::Impute if s.other[i] => {
                    if let Some((_, o)) = imputer.impute(None, None) {
                        s.orient_imputed[i] = true;
                        s.orient[i] = Some(o);
                    }
                }
                MissingPolicy::Impute => {
                    if let Some((v, o)) = imputer.impute(view, orient) {
                        s.view_imputed[i] = view.is_none();
                        s.orient_imputed[i] = orient.is_none();
                        s.view[i] = Some(v);
                        s.orient[i] = Some(o);
                    }
                }
            }
        }
        s
    }
}

/// The encoded columns of DATA.md section 5, in catalog order, then the imputation flags.
fn columns(raw: &Raw<'_>, scan: &Scan, policy: MissingPolicy, rare_views: bool) -> Vec<Column> {
    let n = scan.view.len();
    let mut cols: Vec<Column> = Vec::new();
    let mut push = |name: String, values: Vec<f32>| cols.push(Column::new(name.into(), values));
    let onehot = |k: usize, idx: &dyn Fn(usize) -> Option<usize>| -> Vec<f32> {
        (0..n).map(|i| if idx(i) == Some(k) { 1.0 } else { 0.0 }).collect()
    };
    let names = |v: Variable| v.columns();
    let sex_idx = |i: usize| match raw.sex[i] {
        Some("M") => Some(0),
        Some("F") => Some(1),
        _ => None,
    };
    for (k, name) in names(Variable::Sex).into_iter().enumerate() {
        push(name, onehot(k, &sex_idx));
    }
    let age_norm_name = names(Variable::AgeNorm).into_iter().next().unwrap_or_else(|| "age_norm".into());
    push(age_norm_name, raw.age.iter().map(|a| a.map_or(f32::NAN, |a| age_norm(a) as f32)).collect());
    for (var, edges) in [(Variable::AgeBins5, &AGE_BINS5_EDGES[..]), (Variable::AgeBins10, &AGE_BINS10_EDGES[..])] {
        let bin = |i: usize| raw.age[i].map(|a| age_bin(a, edges));
        for (k, name) in names(var).into_iter().enumerate() {
            push(name, onehot(k, &bin));
        }
    }
    for (k, name) in names(Variable::Race).into_iter().enumerate() {
        push(name, onehot(k, &|i| Some(race_category(raw.race[i]))));
    }
    for (k, name) in names(Variable::View).into_iter().enumerate() {
        push(name, onehot(k, &|i| scan.view[i]));
    }
    for (k, name) in names(Variable::Orientation).into_iter().enumerate() {
        push(name, onehot(k, &|i| scan.orient[i]));
    }
    let indicator = |f: &dyn Fn(usize) -> bool| -> Vec<f32> { (0..n).map(|i| f32::from(u8::from(f(i)))).collect() };
    if rare_views {
        push(VIEW_OTHER.into(), indicator(&|i| scan.other[i]));
    }
    if policy == MissingPolicy::Unknown {
        push("view_unknown".into(), indicator(&|i| scan.view[i].is_none() && !scan.other[i]));
        push("orientation_unknown".into(), indicator(&|i| scan.orient[i].is_none()));
    }
    let died = |i: usize| raw.died[i].unwrap_or(0.0) > 0.5;
    let icu = |i: usize| raw.icu[i].unwrap_or(0.0) > 0.5;
    let mort = names(Variable::Mortality);
    push(mort[0].clone(), indicator(&|i| !died(i)));
    push(mort[1].clone(), indicator(&died));
    let icu_names = names(Variable::Icu);
    push(icu_names[0].clone(), indicator(&icu));
    push(icu_names[1].clone(), indicator(&|i| !icu(i)));
    cols.push(Column::new("view_imputed".into(), scan.view_imputed.clone()));
    cols.push(Column::new("orientation_imputed".into(), scan.orient_imputed.clone()));
    cols
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imputer_uses_the_other_variable_and_training_rows_only() {
        // PA=0, LATERAL=1, AP=2; Erect=0, Recumbent=1.
        let views = [Some(2), Some(2), Some(0), Some(0), Some(0), Some(1), None, None];
        let orients = [Some(1), Some(1), Some(0), Some(0), Some(1), Some(1), Some(1), Some(0)];
        let mut train = [true; 8];
        let imp = ScanImputer::fit(&views, &orients, &train);
        assert_eq!(imp.impute(None, Some(1)), Some((2, 1)), "recumbent films are mostly AP");
        assert_eq!(imp.impute(None, Some(0)), Some((0, 0)), "erect films are mostly PA");
        assert_eq!(imp.impute(Some(1), None), Some((1, 1)));
        // Rows outside the training split do not count.
        train[0] = false;
        train[1] = false;
        let imp = ScanImputer::fit(&views, &orients, &train);
        // PA/Recumbent and LATERAL/Recumbent now tie; ties go to the first category.
        assert_eq!(imp.impute(None, Some(1)), Some((0, 1)));
    }
}
