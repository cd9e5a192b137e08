use std::fmt;
use std::str::FromStr;

/// A patient-level data split, spelled as in `mimic-cxr-2.0.0-split.csv.gz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Train,
    Validate,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Validate, Split::Test];

    /// The spelling used in the split CSV and in built datasets.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validate => "validate",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A split name that is not `train`, `validate` or `test`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown split {0:?}: expected train, validate or test")]
pub struct ParseSplitError(pub String);

impl FromStr for Split {
    type Err = ParseSplitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(Split::Train),
            "validate" => Ok(Split::Validate),
            "test" => Ok(Split::Test),
            other => Err(ParseSplitError(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_other_spellings() {
        for s in Split::ALL {
            assert_eq!(s.as_str().parse::<Split>(), Ok(s));
        }
        assert!("valid".parse::<Split>().is_err());
        assert!("Train".parse::<Split>().is_err());
    }
}
