//! The resolved settings of one build: what the command line (or `BuildConfig::new`'s
//! reference defaults) decides, and the text of the settings hashed into the version.

use std::path::PathBuf;

use cxr_dataset::Uncertain;

use crate::build::encode::MissingPolicy;
use crate::build::labels::{Labeler, SplitSource, Unlabeled};
use crate::build::link::MatchRule;
use crate::images::preprocess::{Geometry, Output};
use crate::images::{ImageSource, RunOptions};
use crate::sources::discover::Roots;

/// Resolved settings of one build.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    pub roots: Roots,
    pub out: PathBuf,
    pub rule: MatchRule,
    pub missing: MissingPolicy,
    /// Drop images whose subject has no sex (the reference's filter) or one other than M/F
    /// (counted apart); when false both are kept and encoded 0/0.
    pub drop_missing_sex: bool,
    /// Keep only AP, PA, LATERAL, LL and blank views (the reference's filter); when false rare
    /// views are kept and flagged in `view_other`.
    pub drop_rare_views: bool,
    pub labeler: Labeler,
    /// Images whose study has no label row.
    pub unlabeled: Unlabeled,
    pub uncertain: Uncertain,
    pub split: SplitSource,
    /// Images per Parquet part and per image shard.
    pub shard_size: usize,
    /// Which image files feed the shards.
    pub images: ImageSource,
    /// Side of the square 8-bit output images.
    pub image_size: usize,
    /// Crop to the centred square or pad to a square.
    pub geometry: Geometry,
    /// Histogram-equalise each image after the VOI.
    pub equalize: bool,
    /// Hash every byte of every image file, checked against `SHA256SUMS.txt` where the
    /// project has one, instead of trusting the list (or hashing the first and last 64 KiB of
    /// unlisted files) (`--verify-inputs full`; [`crate::images::fingerprint`]).
    pub verify_inputs_full: bool,
    /// How the image stage runs (fail-fast, shard subset, merge, workers); never changes
    /// the output.
    pub run: RunOptions,
}

impl BuildConfig {
    /// The data in `roots`, built into `out` with the reference's choices: calendar-date
    /// matching, imputed blank views, drops as the reference, CheXpert labels with U-zeros,
    /// the official split, 256-pixel centre crops from DICOM (else JPG), shards of 4096.
    pub fn new(roots: Roots, out: PathBuf) -> Self {
        Self {
            roots,
            out,
            rule: MatchRule::Date,
            missing: MissingPolicy::Impute,
            drop_missing_sex: true,
            drop_rare_views: true,
            labeler: Labeler::Chexpert,
            unlabeled: Unlabeled::Drop,
            uncertain: Uncertain::Zeros,
            split: SplitSource::Official,
            shard_size: 4096,
            images: ImageSource::Auto,
            image_size: 256,
            geometry: Geometry::Crop,
            equalize: false,
            verify_inputs_full: false,
            run: RunOptions::default(),
        }
    }

    /// What the image stage makes of each decoded image.
    pub fn output(&self) -> Output {
        Output { size: self.image_size, geometry: self.geometry, equalize: self.equalize }
    }

    /// The settings that change the output, as text hashed into the version.
    pub fn describe(&self) -> String {
        let rule = match self.rule {
            MatchRule::Date => "date".to_string(),
            MatchRule::DateTime { icu_tolerance_s } => format!("datetime(icu_tolerance_s={icu_tolerance_s})"),
        };
        format!(
            "match={rule}\nmissing={}\ndrop_missing_sex={}\ndrop_rare_views={}\nlabeler={:?}\nunlabeled={}\nuncertain={}\nsplit={}\nshard_size={}\nimages={}\nimage_size={}\npreprocessing={}\n",
            self.missing.name(),
            self.drop_missing_sex,
            self.drop_rare_views,
            self.labeler,
            self.unlabeled.name(),
            self.uncertain.name(),
            self.split.describe(),
            self.shard_size,
            self.images.name(),
            self.image_size,
            self.output().describe(),
        )
    }
}
