//! What a probe reads: the features of an encoder (a pretraining run's target encoder or a
//! random one; embedded with the eval transform and cached on disk) or of a baseline without
//! one (downsampled pixels, the EHR vector alone).

use std::path::Path;

use cxr_dataset::files::{hex, write_atomic};
use sha2::{Digest, Sha256};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use cxr_dataset::features::{EhrSelection, Group};
use rayon::prelude::*;

use super::SplitData;
use super::to_json_pretty;
use crate::data::Images;
use crate::model::fusion::{FusionShape, MsnNet};
use crate::model::{Vit, VitConfig};
use crate::pretrain::{CheckpointChoice, PretrainConfig, read_best, read_checkpoint};
use crate::rng::Rng;
use crate::transform::ProbeTransform;
use crate::{Error, Result};

/// A frozen or trainable encoder and what identifies it.
#[derive(Debug, Clone)]
pub struct Encoder {
    pub vit: Vit,
    /// Hex digest of the weights' file (or of the random-initialisation settings).
    pub id: String,
    /// The pretraining view side (the default crop).
    pub crop: usize,
    /// What the results record about it.
    pub source: serde_json::Value,
}

/// The target (EMA) encoder of a pretraining run folder, from the checkpoint `choice` names
/// (the lowest-loss epoch falls back to the last checkpoint when the run has none).
pub fn load_encoder(run: &Path, choice: CheckpointChoice, device: &Device) -> Result<Encoder> {
    let path = run.join("config.json");
    let text = fs_err::read_to_string(&path)
        .map_err(|e| Error::input(&path, format!("not a pretraining run folder ({e})")))?;
    let cfg = PretrainConfig::read(&path)?;
    let saved: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::input(&path, e))?;
    let ehr_in = saved["ehr_columns"].as_array().map_or(0, Vec::len);
    let checkpoint = read_checkpoint(run)?;
    let best = match choice {
        CheckpointChoice::LowestLoss => read_best(run)?,
        CheckpointChoice::Last => None,
    };
    let (model, step, selected) = match &best {
        Some(b) => (b.model.clone(), b.step, format!("lowest-loss (epoch {}, mean loss {:.4})", b.epoch, b.mean_loss)),
        None => (checkpoint.model.clone(), checkpoint.step, "last".to_string()),
    };
    let file = run.join(&model);
    let bytes = fs_err::read(&file)?;
    let id = hex(&Sha256::digest(&bytes))[..16].to_string();
    let shape = FusionShape { ehr_in, ehr_dim: cfg.ehr_dim, prototypes: cfg.prototypes };
    let net = MsnNet::new(&cfg.vit, shape, device, &mut Rng::new(cfg.seed));
    let record = crate::pretrain::model_record(&file, bytes)?;
    let net = net.try_load_record(record).map_err(|e| Error::record(&file, e))?;
    Ok(Encoder {
        vit: net.target,
        source: serde_json::json!({
            "run": run.display().to_string(),
            "checkpoint": model,
            "selected": selected,
            "step": step,
            "weights_sha256_16": id,
            "pretraining_dataset": checkpoint.dataset_version,
            "ehr": cfg.ehr,
            "preset": cfg.preset,
            "vit": cfg.vit,
        }),
        id,
        crop: cfg.views.global_size,
    })
}

/// A randomly initialised encoder (the baseline a pretrained one must beat): exactly the
/// initial network of a pretraining run with this model and seed, whatever its EHR choice.
pub fn random_encoder(vit: &VitConfig, seed: u64, device: &Device) -> Encoder {
    let text = format!("random:{seed}:{}", serde_json::to_string(vit).unwrap_or_default());
    let shape = FusionShape { ehr_in: 0, ehr_dim: 1, prototypes: 1 };
    Encoder {
        vit: MsnNet::new(vit, shape, device, &mut Rng::new(seed)).target,
        id: hex(&Sha256::digest(text.as_bytes()))[..16].to_string(),
        crop: vit.image_size,
        source: serde_json::json!({ "random_init": true, "seed": seed, "vit": vit }),
    }
}

/// The encoder's CLS features of `rows` of `images` with the eval transform, `[rows, dim]`.
pub fn embed(vit: &Vit, images: &Images, rows: &[usize], t: &ProbeTransform, device: &Device) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(rows.len() * vit.dim());
    for chunk in rows.chunks(64) {
        let x = eval_batch(images, chunk, t, device)?;
        out.extend(to_vec(vit.forward(x, None).detach())?);
    }
    Ok(out)
}

pub(super) fn eval_batch(images: &Images, rows: &[usize], t: &ProbeTransform, device: &Device) -> Result<Tensor<4>> {
    let n = t.len();
    let mut data = vec![0f32; rows.len() * n];
    data.par_chunks_mut(n).zip(rows.par_iter()).try_for_each(|(dst, &i)| -> Result<()> {
        t.eval(&images.image(i)?, images.side, dst);
        Ok(())
    })?;
    Ok(Tensor::from_data(TensorData::new(data, [rows.len(), t.channels, t.crop, t.crop]), device))
}

/// The values of `t` as f32; a tensor whose data cannot be read as f32 is an internal error
/// (never an empty vector).
pub(super) fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    let dims = t.dims();
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Internal(format!("reading a tensor of shape {dims:?} as f32: {e:?}")))
}

/// Reads or computes (and writes) the cached features `key` in `dir`: `<key>.f32` (rows of
/// `dim` little-endian f32) and `<key>.json` (`about`, plus `rows` and `dim`), which says
/// what they are to other tools (e.g. `trainer/reference/probe_sklearn.py`). A cached file
/// is used only when it holds exactly `rows x dim` values; one of another size is computed
/// again, saying so.
fn cached(
    dir: &Path,
    key: &str,
    about: serde_json::Value,
    compute: impl FnOnce() -> Result<Vec<f32>>,
    (rows, dim): (usize, usize),
    log: &mut dyn FnMut(&str),
) -> Result<Vec<f32>> {
    let path = dir.join(format!("{key}.f32"));
    if let Ok(bytes) = fs_err::read(&path) {
        if bytes.len() == rows * dim * 4 {
            return Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect());
        }
        log(&format!(
            "{}: {} bytes where {rows} rows of {dim} f32 take {}; computing the features again",
            path.display(),
            bytes.len(),
            rows * dim * 4
        ));
    }
    let v = compute()?;
    if v.len() != rows * dim {
        return Err(Error::Internal(format!("{} feature values for {rows} rows of {dim}", v.len())));
    }
    fs_err::create_dir_all(dir)?;
    let mut about = about;
    about["rows"] = rows.into();
    about["dim"] = dim.into();
    fs_err::write(dir.join(format!("{key}.json")), to_json_pretty(&about)?)?;
    write_atomic(&path, &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())?;
    Ok(v)
}

/// What the probe reads: an encoder's features, or a baseline's.
#[derive(Debug, Clone)]
pub enum Source {
    Encoder(Box<Encoder>),
    /// The stored image, area-downsampled to `side x side` and scaled to [0, 1].
    Pixels {
        side: usize,
    },
    /// The EHR vector of an `--ehr` selection (its dataset columns; DATA.md section 5).
    Ehr {
        selection: EhrSelection,
    },
}

impl From<Encoder> for Source {
    fn from(e: Encoder) -> Self {
        Self::Encoder(Box::new(e))
    }
}

/// The probe's baselines without an encoder, what a pretrained encoder has to add to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// The image itself, area-downsampled to 32x32.
    Pixels,
    /// The EHR vector of demographics, scan and stay.
    EhrAlone,
}

impl Baseline {
    pub const ALL: [Self; 2] = [Self::Pixels, Self::EhrAlone];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pixels => "pixels",
            Self::EhrAlone => "ehr-alone",
        }
    }

    /// The baseline of a command-line name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The features the probe reads.
    pub fn source(self) -> Source {
        match self {
            Self::Pixels => Source::Pixels { side: 32 },
            Self::EhrAlone => Source::Ehr { selection: EhrSelection::groups(&Group::ALL) },
        }
    }
}

impl Source {
    /// What the results record about the source.
    pub(super) fn describe(&self) -> serde_json::Value {
        match self {
            Self::Encoder(e) => e.source.clone(),
            Self::Pixels { side } => serde_json::json!({ "baseline": "pixels", "side": side }),
            Self::Ehr { selection } => serde_json::json!({ "baseline": "ehr", "ehr": selection }),
        }
    }

    /// The columns of `ds` the source reads besides the labels.
    pub(super) fn columns(&self, ds: &crate::data::Dataset) -> Result<Vec<String>> {
        match self {
            Self::Ehr { selection } => {
                if selection.is_none() {
                    return Err(Error::Config("the EHR baseline needs an EHR selection other than none".into()));
                }
                ds.ehr_columns(selection)
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// `images` area-downsampled to `side x side`, scaled to [0, 1], `[rows, side * side]`.
pub fn downsample(images: &Images, side: usize) -> Result<Vec<f32>> {
    let s = images.side;
    let bounds: Vec<(usize, usize)> =
        (0..side).map(|o| (o * s / side, ((o + 1) * s).div_ceil(side).max(o * s / side + 1))).collect();
    let rows: Vec<Vec<f32>> = (0..images.len())
        .into_par_iter()
        .map(|i| -> Result<Vec<f32>> {
            let img = images.image(i)?;
            let mut out = Vec::with_capacity(side * side);
            for &(y0, y1) in &bounds {
                for &(x0, x1) in &bounds {
                    let mut sum = 0u64;
                    for y in y0..y1 {
                        sum += img[y * s + x0..y * s + x1].iter().map(|&v| u64::from(v)).sum::<u64>();
                    }
                    out.push(sum as f32 / ((y1 - y0) * (x1 - x0)) as f32 / 255.0);
                }
            }
            Ok(out)
        })
        .collect::<Result<_>>()?;
    Ok(rows.concat())
}

/// The selected feature `columns` of `data`'s rows, `[rows, columns.len()]`.
fn columns_of(data: &SplitData, columns: &[String]) -> Result<Vec<f32>> {
    let at: Vec<usize> = columns
        .iter()
        .map(|c| {
            data.images.columns.iter().rposition(|n| n == c).ok_or_else(|| Error::Internal(format!("no column {c:?}")))
        })
        .collect::<Result<_>>()?;
    Ok((0..data.len()).flat_map(|i| at.iter().map(move |&k| data.images.feature_row(i)[k])).collect())
}

/// The feature rows a probe reads from a [`Source`]: an encoder's with the eval transform
/// (cached on disk under `cache` when given, keyed by the encoder, dataset version, split and
/// transform), or a baseline's.
pub(super) struct Features<'a> {
    pub source: &'a Source,
    /// The source's feature columns (the EHR baseline's).
    pub columns: &'a [String],
    pub transform: &'a ProbeTransform,
    pub cache: Option<&'a Path>,
    pub device: &'a Device,
}

impl Features<'_> {
    /// The width of a feature row.
    pub fn dim(&self) -> usize {
        match self.source {
            Source::Encoder(e) => e.vit.dim(),
            Source::Pixels { side } => side * side,
            Source::Ehr { .. } => self.columns.len(),
        }
    }

    /// `[data.len(), dim]` rows of split `split` of dataset `version`, through `vit` (the
    /// encoder as it is now: frozen, or fine-tuned) for an encoder source.
    pub fn rows(
        &self,
        split: &str,
        version: &str,
        data: &SplitData,
        vit: Option<&Vit>,
        log: &mut dyn FnMut(&str),
    ) -> Result<Vec<f32>> {
        match (self.source, vit) {
            (Source::Encoder(e), Some(vit)) => {
                log(&format!("embedding {} {split} images", data.len()));
                let rows: Vec<usize> = (0..data.len()).collect();
                let compute = || embed(vit, &data.images, &rows, self.transform, self.device);
                let Some(dir) = self.cache else { return compute() };
                let text = format!(
                    "{}|{version}|{split}|{}|{}",
                    e.id,
                    serde_json::to_string(self.transform)?,
                    crate::CODE_DIGEST
                );
                let key = hex(&Sha256::digest(text.as_bytes()))[..24].to_string();
                let about = serde_json::json!({
                    "split": split, "dataset_version": version, "encoder": e.id, "source": e.source,
                    "trainer_code": crate::CODE_DIGEST,
                });
                cached(dir, &key, about, compute, (data.len(), vit.dim()), log)
            }
            (Source::Pixels { side }, _) => downsample(&data.images, *side),
            (Source::Ehr { .. }, _) => columns_of(data, self.columns),
            (Source::Encoder(_), None) => Err(Error::Internal("an encoder source without its network".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The random-init baseline is the initial target encoder of a pretraining run of the
    /// same model and seed, with or without EHR.
    #[test]
    fn the_random_encoder_is_the_initial_network_of_a_run() {
        let device = Device::flex();
        let vit = VitConfig::new(16, 1, 2, 32).with_image_size(16).with_patch_size(8);
        let weights = |v: &Vit| to_vec(v.patch.weight.val()).unwrap();
        let shape = FusionShape { ehr_in: 13, ehr_dim: 8, prototypes: 16 };
        let run = MsnNet::new(&vit, shape, &device, &mut Rng::new(24));
        assert_eq!(weights(&random_encoder(&vit, 24, &device).vit), weights(&run.target));
        assert_ne!(weights(&random_encoder(&vit, 25, &device).vit), weights(&run.target));
    }
}
