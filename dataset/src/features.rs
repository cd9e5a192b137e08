//! The EHR feature catalog: variables, their groups, and the encoded columns of a dataset.
//!
//! A built dataset stores, per image, every encoded column of every [`Variable`] (DATA.md
//! section 5). Training picks a subset by name with an [`EhrSelection`], so every ablation of
//! the paper comes from one built dataset.

use std::fmt;
use std::str::FromStr;

/// The three EHR feature groups of the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Demographics,
    Scan,
    Stay,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Demographics, Group::Scan, Group::Stay];

    pub fn name(self) -> &'static str {
        match self {
            Group::Demographics => "demographics",
            Group::Scan => "scan",
            Group::Stay => "stay",
        }
    }

    /// The variables a group stands for in a selection (age normalised by default; pick
    /// `age-bins5` or `age-bins10` explicitly for the binned encodings).
    pub fn default_variables(self) -> &'static [Variable] {
        match self {
            Group::Demographics => &[Variable::Sex, Variable::AgeNorm],
            Group::Scan => &[Variable::View, Variable::Orientation],
            Group::Stay => &[Variable::Mortality, Variable::Icu],
        }
    }
}

/// One encoded EHR variable. The three age encodings are alternative variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variable {
    Sex,
    AgeNorm,
    AgeBins5,
    AgeBins10,
    /// Race as recorded with the admission, in [`RACE_CATEGORIES`] ([`race_category`]).
    Race,
    View,
    Orientation,
    Mortality,
    Icu,
}

/// Race categories, in encoded column order (`race_white`, ...): MIMIC-IV's recorded values
/// grouped as [`race_category`] says.
pub const RACE_CATEGORIES: [&str; 7] = ["white", "black", "hispanic", "asian", "native", "other", "unknown"];

/// The [`RACE_CATEGORIES`] index of a recorded race (`admissions.race`, `ethnicity` in
/// MIMIC-IV v1.0): by its leading words, `WHITE...` white, `BLACK...` black, `HISPANIC...` and
/// `SOUTH AMERICAN` hispanic, `ASIAN...` asian, `AMERICAN INDIAN...` and `NATIVE HAWAIIAN...`
/// native; `UNKNOWN`, `UNABLE TO OBTAIN`, `PATIENT DECLINED TO ANSWER` and a missing value
/// (no linked admission) unknown; anything else (`OTHER`, `MULTIPLE RACE/ETHNICITY`,
/// `PORTUGUESE`) other.
pub fn race_category(raw: Option<&str>) -> usize {
    let v = raw.map(|r| r.trim().to_ascii_uppercase()).unwrap_or_default();
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| v.starts_with(p));
    if v.is_empty() || starts(&["UNKNOWN", "UNABLE TO OBTAIN", "PATIENT DECLINED"]) {
        6
    } else if starts(&["WHITE"]) {
        0
    } else if starts(&["BLACK"]) {
        1
    } else if starts(&["HISPANIC", "SOUTH AMERICAN"]) {
        2
    } else if starts(&["ASIAN"]) {
        3
    } else if starts(&["AMERICAN INDIAN", "NATIVE HAWAIIAN"]) {
        4
    } else {
        5
    }
}

/// View categories, in encoded column order.
pub const VIEW_CATEGORIES: [&str; 4] = ["PA", "LATERAL", "AP", "LL"];
/// Patient orientation categories, in encoded column order.
pub const ORIENTATION_CATEGORIES: [&str; 2] = ["Erect", "Recumbent"];

impl Variable {
    /// Catalog order; also the order of columns in a selection's EHR vector.
    pub const ALL: [Variable; 9] = [
        Variable::Sex,
        Variable::AgeNorm,
        Variable::AgeBins5,
        Variable::AgeBins10,
        Variable::Race,
        Variable::View,
        Variable::Orientation,
        Variable::Mortality,
        Variable::Icu,
    ];

    /// The variables of the paper's ablations: all but race, which the paper does not use.
    pub const PAPER: [Variable; 8] = [
        Variable::Sex,
        Variable::AgeNorm,
        Variable::AgeBins5,
        Variable::AgeBins10,
        Variable::View,
        Variable::Orientation,
        Variable::Mortality,
        Variable::Icu,
    ];

    /// The name used in `--ehr`.
    pub fn name(self) -> &'static str {
        match self {
            Variable::Sex => "sex",
            Variable::AgeNorm => "age-norm",
            Variable::AgeBins5 => "age-bins5",
            Variable::AgeBins10 => "age-bins10",
            Variable::Race => "race",
            Variable::View => "view",
            Variable::Orientation => "orientation",
            Variable::Mortality => "mortality",
            Variable::Icu => "icu",
        }
    }

    pub fn group(self) -> Group {
        match self {
            Variable::Sex | Variable::AgeNorm | Variable::AgeBins5 | Variable::AgeBins10 | Variable::Race => {
                Group::Demographics
            }
            Variable::View | Variable::Orientation => Group::Scan,
            Variable::Mortality | Variable::Icu => Group::Stay,
        }
    }

    fn is_age(self) -> bool {
        matches!(self, Variable::AgeNorm | Variable::AgeBins5 | Variable::AgeBins10)
    }

    /// The encoded column names of this variable in a built dataset, in order.
    pub fn columns(self) -> Vec<String> {
        match self {
            Variable::Sex => vec!["sex_male".into(), "sex_female".into()],
            Variable::AgeNorm => vec!["age_norm".into()],
            Variable::AgeBins5 => bin_columns("age5", &AGE_BINS5_EDGES),
            Variable::AgeBins10 => bin_columns("age10", &AGE_BINS10_EDGES),
            Variable::Race => RACE_CATEGORIES.iter().map(|c| format!("race_{c}")).collect(),
            Variable::View => VIEW_CATEGORIES.iter().map(|c| format!("view_{c}")).collect(),
            Variable::Orientation => ORIENTATION_CATEGORIES.iter().map(|c| format!("orientation_{c}")).collect(),
            Variable::Mortality => vec!["mortality_alive".into(), "mortality_died".into()],
            Variable::Icu => vec!["icu_icu".into(), "icu_not_icu".into()],
        }
    }
}

impl Variable {
    /// Columns a build writes for this variable only with some settings: `view_unknown` and
    /// `orientation_unknown` (`--missing unknown`), `view_other` (`--keep-rare-views`). A
    /// selection takes them when the dataset has them ([`EhrSelection::columns_in`]), so an
    /// unknown or rare scan is not an all-zero vector.
    pub fn optional_columns(self) -> &'static [&'static str] {
        match self {
            Variable::View => &["view_unknown", "view_other"],
            Variable::Orientation => &["orientation_unknown"],
            _ => &[],
        }
    }
}

impl fmt::Display for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Inner edges of the 5-year age bins: `<=20, (20,25], ..., (85,90], >90` (16 bins).
pub const AGE_BINS5_EDGES: [u32; 15] = [20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90];
/// Inner edges of the 10-year age bins: `<=20, (20,30], ..., (80,90], >90` (9 bins).
pub const AGE_BINS10_EDGES: [u32; 8] = [20, 30, 40, 50, 60, 70, 80, 90];

fn bin_columns(prefix: &str, edges: &[u32]) -> Vec<String> {
    let mut cols = Vec::with_capacity(edges.len() + 1);
    let mut lower = 0;
    for &e in edges {
        cols.push(format!("{prefix}_{lower:02}_{e}"));
        lower = e;
    }
    cols.push(format!("{prefix}_{lower}_up"));
    cols
}

/// Index of the right-closed bin holding `age` given the inner `edges`.
pub fn age_bin(age: f64, edges: &[u32]) -> usize {
    edges.iter().position(|&e| age <= f64::from(e)).unwrap_or(edges.len())
}

/// The reference's age normalisation, `(age - 16) / 84`.
pub fn age_norm(age: f64) -> f64 {
    (age - 16.0) / 84.0
}

/// A choice of EHR variables for training, parsed from `--ehr`.
///
/// The syntax is a comma-separated list of group names (`demographics`, `scan`, `stay`) and
/// variable names (`sex`, `age-norm`, `age-bins5`, `age-bins10`, `race`, `view`,
/// `orientation`, `mortality`, `icu`), or `none` for vanilla MSN. Variables are kept in catalog order, so
/// `scan,demographics` and `demographics,scan` give the same vector. A group brings its
/// default variables, except that an explicit age encoding replaces the default `age-norm`.
///
/// Two selections are equal when they select the same variables. A selection keeps the
/// spelling it was parsed from ([`EhrSelection::spelling`], e.g. `demographics,scan,stay`):
/// that is what tables, folder names and run keys show, and what it serialises to (a JSON
/// string, parsed back on reading; [`Display`](fmt::Display) writes the variables instead).
#[derive(Debug, Clone)]
pub struct EhrSelection {
    variables: Vec<Variable>,
    spelling: String,
}

impl PartialEq for EhrSelection {
    fn eq(&self, other: &Self) -> bool {
        self.variables == other.variables
    }
}

impl Eq for EhrSelection {}

impl Default for EhrSelection {
    fn default() -> Self {
        Self { variables: Vec::new(), spelling: "none".into() }
    }
}

impl serde::Serialize for EhrSelection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.spelling)
    }
}

impl<'de> serde::Deserialize<'de> for EhrSelection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|e| serde::de::Error::custom(format!("EHR selection {text:?}: {e}")))
    }
}

/// Why an `--ehr` value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EhrSelectionError {
    #[error("unknown EHR feature {name:?}; available: none, {available}")]
    Unknown { name: String, available: String },
    #[error("`none` cannot be combined with other EHR features")]
    NoneWithOthers,
    #[error("more than one age encoding selected ({0}); choose one of age-norm, age-bins5, age-bins10")]
    TwoAgeEncodings(String),
    #[error("empty EHR selection; use `none` for vanilla MSN")]
    Empty,
}

impl EhrSelection {
    /// Vanilla MSN: no EHR input.
    pub fn none() -> Self {
        Self::default()
    }

    /// The selected variables in catalog order.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    pub fn is_none(&self) -> bool {
        self.variables.is_empty()
    }

    /// The default variables of `groups`, spelt as their names joined by commas (the groups
    /// in catalog order).
    pub fn groups(groups: &[Group]) -> Self {
        let mut groups = groups.to_vec();
        groups.sort();
        groups.dedup();
        let variables = groups.iter().flat_map(|g| g.default_variables().iter().copied()).collect();
        Self::named(variables, groups.iter().map(|g| g.name()))
    }

    /// The variables `variables` (at most one age encoding), spelt as their names joined by
    /// commas (in catalog order).
    pub fn of_variables(variables: &[Variable]) -> Self {
        let mut variables = variables.to_vec();
        variables.sort();
        variables.dedup();
        Self::named(variables.clone(), variables.iter().map(|v| v.name()))
    }

    /// `variables` in catalog order, spelt `names` (none when there are no variables).
    fn named<'a>(mut variables: Vec<Variable>, names: impl Iterator<Item = &'a str>) -> Self {
        variables.sort();
        variables.dedup();
        if variables.is_empty() {
            return Self::none();
        }
        Self { variables, spelling: names.collect::<Vec<_>>().join(",") }
    }

    /// The selection as it was written (its comma-separated names, trimmed), `none` for none.
    pub fn spelling(&self) -> &str {
        &self.spelling
    }

    /// The encoded column names the EHR vector is built from, in order, for a dataset without
    /// optional columns ([`Variable::optional_columns`]; see [`EhrSelection::columns_in`]).
    pub fn columns(&self) -> Vec<String> {
        self.variables.iter().flat_map(|v| v.columns()).collect()
    }

    /// The encoded column names the EHR vector is built from in a dataset whose columns are
    /// `available`: each variable's columns, then those of its optional columns the build made.
    pub fn columns_in(&self, available: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for v in &self.variables {
            out.extend(v.columns());
            out.extend(
                v.optional_columns().iter().filter(|c| available.iter().any(|a| a == *c)).map(|c| c.to_string()),
            );
        }
        out
    }

    /// Width of the EHR vector (`ehr_in` of METHOD.md section 5).
    pub fn width(&self) -> usize {
        self.columns().len()
    }

    fn available() -> String {
        let groups = Group::ALL.iter().map(|g| g.name());
        let vars = Variable::ALL.iter().map(|v| v.name());
        groups.chain(vars).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for EhrSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.variables.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<_> = self.variables.iter().map(|v| v.name()).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for EhrSelection {
    type Err = EhrSelectionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let tokens: Vec<&str> = s.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
        if tokens.is_empty() {
            return Err(EhrSelectionError::Empty);
        }
        if tokens.contains(&"none") {
            return if tokens.len() == 1 { Ok(Self::none()) } else { Err(EhrSelectionError::NoneWithOthers) };
        }
        let spelling = tokens.join(",");
        let mut explicit = Vec::new();
        let mut from_groups = Vec::new();
        for token in tokens {
            if let Some(g) = Group::ALL.iter().find(|g| g.name() == token) {
                from_groups.extend_from_slice(g.default_variables());
            } else if let Some(v) = Variable::ALL.iter().find(|v| v.name() == token) {
                explicit.push(*v);
            } else {
                return Err(EhrSelectionError::Unknown { name: token.to_string(), available: Self::available() });
            }
        }
        let explicit_age = explicit.iter().any(|v| v.is_age());
        let mut variables: Vec<Variable> = explicit;
        variables.extend(from_groups.into_iter().filter(|v| !(explicit_age && v.is_age())));
        variables.sort();
        variables.dedup();
        let ages: Vec<_> = variables.iter().filter(|v| v.is_age()).map(|v| v.name()).collect();
        if ages.len() > 1 {
            return Err(EhrSelectionError::TwoAgeEncodings(ages.join(", ")));
        }
        Ok(Self { variables, spelling })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_widths_match_data_md() {
        let widths: Vec<usize> = Variable::ALL.iter().map(|v| v.columns().len()).collect();
        assert_eq!(widths, [2, 1, 16, 9, 7, 4, 2, 2, 2]);
        let without_race: Vec<Variable> = Variable::ALL.into_iter().filter(|v| *v != Variable::Race).collect();
        assert_eq!(Variable::PAPER.to_vec(), without_race, "the paper's variables: all but race");
        assert_eq!(Variable::AgeBins5.columns()[0], "age5_00_20");
        assert_eq!(Variable::AgeBins5.columns()[15], "age5_90_up");
        assert_eq!(Variable::AgeBins10.columns()[7], "age10_80_90");
    }

    #[test]
    fn a_selection_keeps_its_spelling_and_round_trips_through_json() {
        let sel: EhrSelection = " demographics, scan,stay ".parse().unwrap();
        assert_eq!(sel.spelling(), "demographics,scan,stay");
        assert_eq!(sel.to_string(), "sex,age-norm,view,orientation,mortality,icu");
        let reordered: EhrSelection = "stay,scan,demographics".parse().unwrap();
        assert_eq!(sel, reordered, "equal: the same variables");
        assert_ne!(sel.spelling(), reordered.spelling());
        let json = serde_json::to_string(&sel).unwrap();
        assert_eq!(json, "\"demographics,scan,stay\"");
        let back: EhrSelection = serde_json::from_str(&json).unwrap();
        assert_eq!((back.spelling(), back.columns()), (sel.spelling(), sel.columns()));
        assert_eq!(EhrSelection::none().spelling(), "none");
        let built = EhrSelection::groups(&[Group::Stay, Group::Demographics, Group::Scan, Group::Stay]);
        assert_eq!((built.spelling(), &built), ("demographics,scan,stay", &sel));
        let one = EhrSelection::of_variables(&[Variable::Icu, Variable::Sex]);
        assert_eq!((one.spelling(), one.columns()), ("sex,icu", "sex,icu".parse::<EhrSelection>().unwrap().columns()));
        assert!(EhrSelection::groups(&[]).is_none() && EhrSelection::of_variables(&[]).spelling() == "none");
        let bad = serde_json::from_str::<EhrSelection>("\"demographics,height\"").unwrap_err().to_string();
        assert!(bad.contains("\"height\"") && bad.contains("available"), "{bad}");
    }

    /// Every `--ehr` group and variable resolves to exactly the columns of DATA.md section 5's
    /// table, written out here from the table (not from the catalog).
    #[test]
    fn every_group_and_variable_resolves_to_the_data_md_columns() {
        let bins5 = "age5_00_20 age5_20_25 age5_25_30 age5_30_35 age5_35_40 age5_40_45 age5_45_50 age5_50_55 \
                     age5_55_60 age5_60_65 age5_65_70 age5_70_75 age5_75_80 age5_80_85 age5_85_90 age5_90_up";
        let bins10 = "age10_00_20 age10_20_30 age10_30_40 age10_40_50 age10_50_60 age10_60_70 age10_70_80 \
                      age10_80_90 age10_90_up";
        let expected = [
            ("sex", "sex_male sex_female".to_string()),
            ("age-norm", "age_norm".to_string()),
            ("age-bins5", bins5.to_string()),
            ("age-bins10", bins10.to_string()),
            ("race", "race_white race_black race_hispanic race_asian race_native race_other race_unknown".to_string()),
            ("view", "view_PA view_LATERAL view_AP view_LL".to_string()),
            ("orientation", "orientation_Erect orientation_Recumbent".to_string()),
            ("mortality", "mortality_alive mortality_died".to_string()),
            ("icu", "icu_icu icu_not_icu".to_string()),
            ("demographics", "sex_male sex_female age_norm".to_string()),
            ("scan", "view_PA view_LATERAL view_AP view_LL orientation_Erect orientation_Recumbent".to_string()),
            ("stay", "mortality_alive mortality_died icu_icu icu_not_icu".to_string()),
            ("demographics,age-bins5", format!("sex_male sex_female {bins5}")),
        ];
        for (choice, columns) in expected {
            let sel: EhrSelection = choice.parse().unwrap();
            let want: Vec<&str> = columns.split_whitespace().collect();
            assert_eq!(sel.columns(), want, "--ehr {choice}");
        }
        assert_eq!(Variable::ALL.len() + Group::ALL.len(), 12, "a new variable or group needs its row above");
    }

    /// Optional columns come with their variable where the dataset has them.
    #[test]
    fn optional_columns_join_their_variable_when_built() {
        let scan: EhrSelection = "scan,sex".parse().unwrap();
        let built: Vec<String> = ["view_other", "orientation_unknown", "race_white"].map(String::from).to_vec();
        assert_eq!(
            scan.columns_in(&built),
            [
                "sex_male",
                "sex_female",
                "view_PA",
                "view_LATERAL",
                "view_AP",
                "view_LL",
                "view_other",
                "orientation_Erect",
                "orientation_Recumbent",
                "orientation_unknown"
            ]
        );
        assert_eq!(scan.columns_in(&[]), scan.columns());
    }

    /// The demo tables' recorded races (MIMIC-IV demo 2.2) and v1.0's fall where documented.
    #[test]
    fn races_group_by_their_leading_words() {
        let cases = [
            ("WHITE", 0),
            ("WHITE - BRAZILIAN", 0),
            ("BLACK/CAPE VERDEAN", 1),
            ("HISPANIC/LATINO - CUBAN", 2),
            ("HISPANIC OR LATINO", 2),
            ("SOUTH AMERICAN", 2),
            ("ASIAN - CHINESE", 3),
            ("AMERICAN INDIAN/ALASKA NATIVE", 4),
            ("NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER", 4),
            ("PORTUGUESE", 5),
            ("OTHER", 5),
            ("MULTIPLE RACE/ETHNICITY", 5),
            ("UNKNOWN", 6),
            ("UNABLE TO OBTAIN", 6),
            ("PATIENT DECLINED TO ANSWER", 6),
        ];
        for (raw, k) in cases {
            assert_eq!(race_category(Some(raw)), k, "{raw}");
        }
        assert_eq!(race_category(None), 6);
        assert_eq!(race_category(Some("")), 6);
    }

    #[test]
    fn age_bins_are_right_closed() {
        assert_eq!(age_bin(18.0, &AGE_BINS5_EDGES), 0);
        assert_eq!(age_bin(20.0, &AGE_BINS5_EDGES), 0);
        assert_eq!(age_bin(20.5, &AGE_BINS5_EDGES), 1);
        assert_eq!(age_bin(25.0, &AGE_BINS5_EDGES), 1);
        assert_eq!(age_bin(90.0, &AGE_BINS5_EDGES), 14);
        assert_eq!(age_bin(91.0, &AGE_BINS5_EDGES), 15);
        assert_eq!(age_bin(30.0, &AGE_BINS10_EDGES), 1);
        assert_eq!(age_bin(95.0, &AGE_BINS10_EDGES), 8);
        assert!((age_norm(100.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn groups_expand_in_catalog_order() {
        let all: EhrSelection = "stay, scan,demographics".parse().unwrap();
        assert_eq!(all.to_string(), "sex,age-norm,view,orientation,mortality,icu");
        assert_eq!(all.width(), 2 + 1 + 4 + 2 + 2 + 2);
        let binned: EhrSelection = "demographics,age-bins10".parse().unwrap();
        assert_eq!(binned.variables(), [Variable::Sex, Variable::AgeBins10]);
        assert!("none".parse::<EhrSelection>().unwrap().is_none());
    }

    #[test]
    fn bad_selections_say_why() {
        let err = "demographics,bmi".parse::<EhrSelection>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"bmi\"") && msg.contains("age-bins5") && msg.contains("stay"), "{msg}");
        assert_eq!("none,sex".parse::<EhrSelection>(), Err(EhrSelectionError::NoneWithOthers));
        assert!(matches!("age-norm,age-bins5".parse::<EhrSelection>(), Err(EhrSelectionError::TwoAgeEncodings(_))));
        assert_eq!(" , ".parse::<EhrSelection>(), Err(EhrSelectionError::Empty));
    }
}
