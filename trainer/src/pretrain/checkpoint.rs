//! The run folder's state files: `checkpoint.json` (where a run stands, for `--resume`) and
//! `best.json` (the epoch with the lowest mean loss), written atomically.

use std::path::Path;

use crate::{Error, Result};

/// Where a run stands: written atomically as `checkpoint.json` after the model and optimizer
/// files it names, so a run killed at any point resumes from a consistent state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub dataset_version: String,
    /// Steps done.
    pub step: usize,
    /// Epoch and batch index within it of the next step.
    pub epoch: usize,
    pub batch: usize,
    /// NaN (`null` in the file) before the first step.
    #[serde(deserialize_with = "f32_or_nan")]
    pub first_loss: f32,
    pub model: String,
    pub optimizer: String,
    /// The loss scale after `step` (f16 runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<super::LossScale>,
}

/// A model record (burnpack) read whole into memory. burn's `ModuleRecord::load` keeps the path
/// and reads the tensors' bytes when a device first needs them: on wgpu and CUDA that is later,
/// on a worker thread, by which time the run may have written a newer file there or a stale run
/// been removed ("No such file or directory", seen on lavapipe). `bytes` is the file's content.
pub fn model_record(file: &Path, bytes: Vec<u8>) -> Result<burn::store::ModuleRecord> {
    burn::store::ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map_err(|e| Error::record(file, e))
}

/// An optimizer record from its file's content, `bytes`, for the reason [`model_record`] gives.
pub fn optimizer_record(file: &Path, bytes: Vec<u8>) -> Result<burn::optim::OptimizerRecord> {
    burn::optim::OptimizerRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map_err(|e| Error::record(file, e))
}

/// An `f32` that JSON wrote as `null` (NaN has no JSON form) reads back as NaN.
fn f32_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f32, D::Error> {
    Ok(<Option<f32> as serde::Deserialize>::deserialize(d)?.unwrap_or(f32::NAN))
}

/// Name of the checkpoint state file in a run folder.
pub const CHECKPOINT: &str = "checkpoint.json";

/// The epoch with the lowest mean training loss so far, whose model is kept as
/// [`BEST_MODEL`] (the checkpoint the reference evaluates); written as `best.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BestCheckpoint {
    pub epoch: usize,
    /// Steps done at the end of that epoch.
    pub step: usize,
    pub mean_loss: f32,
    pub model: String,
}

/// File names of [`BestCheckpoint`] and its model in a run folder.
pub const BEST: &str = "best.json";
pub const BEST_MODEL: &str = "best-model.bpk";

/// Which pretraining checkpoint an evaluation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointChoice {
    /// The end of the epoch with the lowest mean training loss (the reference's choice);
    /// runs without `best.json` (imported, or stopped within the first epoch) fall back to
    /// the last checkpoint.
    LowestLoss,
    /// The last checkpoint.
    Last,
}

/// Reads a run's lowest-loss checkpoint, if it has one.
pub fn read_best(run: &Path) -> Result<Option<BestCheckpoint>> {
    let path = run.join(BEST);
    match fs_err::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| Error::input(&path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(cxr_dataset::files::write_atomic(path, bytes)?)
}

/// Reads a run's checkpoint state.
pub fn read_checkpoint(run: &Path) -> Result<Checkpoint> {
    let path = run.join(CHECKPOINT);
    let text = fs_err::read_to_string(&path)
        .map_err(|e| Error::input(&path, format!("no checkpoint to resume from ({e})")))?;
    serde_json::from_str(&text).map_err(|e| Error::input(&path, e))
}

/// A run folder's files, with the checkpoint a resumed run starts from.
pub(super) struct RunFiles {
    pub run: std::path::PathBuf,
    pub dataset_version: String,
    /// Where the run stands (`--resume`); `None` for a fresh run.
    pub checkpoint: Option<Checkpoint>,
}

impl RunFiles {
    /// The folder `run` (created), trained on dataset `version`; with `resume`, its
    /// checkpoint, which must be of the same dataset. A fresh run forgets an earlier run's
    /// lowest-loss epoch in the same folder.
    pub fn open(run: &Path, version: &str, resume: bool) -> Result<Self> {
        fs_err::create_dir_all(run)?;
        let checkpoint = if resume { Some(read_checkpoint(run)?) } else { None };
        match &checkpoint {
            Some(c) if c.dataset_version != version => {
                return Err(Error::input(
                    run,
                    format!(
                        "the run was trained on dataset {}, not {version}; resume with the same dataset",
                        c.dataset_version
                    ),
                ));
            }
            Some(_) => {}
            None => {
                for f in [BEST, BEST_MODEL] {
                    if run.join(f).exists() {
                        fs_err::remove_file(run.join(f))?;
                    }
                }
            }
        }
        Ok(Self { run: run.to_path_buf(), dataset_version: version.to_string(), checkpoint })
    }

    /// `config.json`: the resolved config with the dataset version and the EHR columns.
    pub fn write_config(&self, cfg: &super::PretrainConfig, columns: &[String]) -> Result<()> {
        let mut saved = serde_json::to_value(cfg)?;
        saved["dataset_version"] = self.dataset_version.clone().into();
        saved["ehr_columns"] = columns.into();
        Ok(fs_err::write(self.run.join("config.json"), serde_json::to_string_pretty(&saved)?)?)
    }

    /// A record written to `name` through a temporary file, so `name` is whole or absent.
    fn save_record(
        &self,
        name: &str,
        save: impl FnOnce(&Path) -> std::result::Result<(), burn::store::RecordError>,
    ) -> Result<()> {
        let (tmp, path) = (self.run.join(format!("{name}.tmp")), self.run.join(name));
        save(&tmp).map_err(|e| Error::record(&path, e))?;
        Ok(fs_err::rename(&tmp, &path)?)
    }

    /// A checkpoint after `step` steps, the next step at `(epoch, batch)`: the model and
    /// optimizer files, then `checkpoint.json` atomically; older checkpoint files are removed.
    pub fn save(
        &self,
        net: &crate::model::fusion::MsnNet,
        optimizer: burn::optim::OptimizerRecord,
        step: usize,
        (epoch, batch): (usize, usize),
        first_loss: f32,
        loss_scale: Option<super::LossScale>,
    ) -> Result<()> {
        use burn::module::Module;
        let model = format!("model-{step:08}.bpk");
        let optim = format!("optimizer-{step:08}.bpk");
        self.save_record(&model, |p| net.clone().into_record().save(p))?;
        self.save_record(&optim, |p| optimizer.save(p))?;
        let c = Checkpoint {
            dataset_version: self.dataset_version.clone(),
            step,
            epoch,
            batch,
            first_loss,
            model: model.clone(),
            optimizer: optim.clone(),
            loss_scale,
        };
        write_atomic(&self.run.join(CHECKPOINT), serde_json::to_string_pretty(&c)?.as_bytes())?;
        // Older checkpoints are no longer referenced.
        for e in fs_err::read_dir(&self.run)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".bpk") && name != model && name != optim && name != BEST_MODEL {
                fs_err::remove_file(e.path())?;
            }
        }
        Ok(())
    }

    /// The lowest-loss epoch's model and `best.json`.
    pub fn save_best(&self, net: &crate::model::fusion::MsnNet, best: &BestCheckpoint) -> Result<()> {
        use burn::module::Module;
        self.save_record(BEST_MODEL, |p| net.clone().into_record().save(p))?;
        write_atomic(&self.run.join(BEST), serde_json::to_string_pretty(best)?.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::nn::{Initializer, LinearConfig};
    use burn::tensor::Device;

    /// A record read by [`model_record`] no longer needs its file: removed (a stale run) or
    /// replaced (a newer checkpoint) before the tensors are read, the load still gets what was
    /// read. burn's own `ModuleRecord::load` reads the file again at that point and fails.
    #[test]
    fn a_model_record_outlives_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.bpk");
        let device = Device::flex();
        let saved = LinearConfig::new(3, 2).with_initializer(Initializer::Constant { value: 0.25 }).init(&device);
        saved.clone().into_record().save(&file).unwrap();
        let record = model_record(&file, fs_err::read(&file).unwrap()).unwrap();
        fs_err::remove_file(&file).unwrap();
        let fresh = LinearConfig::new(3, 2).with_initializer(Initializer::Zeros).init(&device);
        let loaded = fresh.try_load_record(record).unwrap();
        let values = |l: &burn::nn::Linear| l.weight.val().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(values(&loaded), vec![0.25; 6]);
        assert_eq!(values(&loaded), values(&saved));
    }
}
