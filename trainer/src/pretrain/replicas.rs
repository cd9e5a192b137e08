//! Data-parallel training steps: one replica of the network and of the optimizer per device
//! ([`crate::parallel::Devices`]), each batch split into one shard per device and trained on
//! the device's own thread, the loss and the gradients summed over the devices through a
//! [`crate::parallel::Collective`], the same update applied everywhere.
//!
//! On a GPU (CubeCL: wgpu and CUDA alike) three things keep the replicas equal, each found
//! through SPIR-V on lavapipe, where the data-parallel tests failed without it:
//! - each replica's work is submitted on one stream of its device for the whole run
//!   ([`StreamId`]). CubeCL gives every OS thread its own stream, and the step's threads are new
//!   each step: a replica's weights and Adam moments made on one stream and updated on another
//!   came out wrong from the second step (head weights 1.0 off one device's);
//! - each device's step ends with a sync, since a read from another stream (the caller's, of
//!   any replica) does not wait for the update;
//! - every replica starts in buffers of its own ([`own_copy`]).

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::tensor::{Device, StreamId, Tensor};

use super::{
    LossScale, PretrainConfig, StepOutput, StepSchedule, StepTimes, batch_tensors, optimizer, train_step_with,
};
use crate::model::fusion::MsnNet;
use crate::msn::MsnLossOutput;
use crate::parallel::{AllReduce, BackendAllReduce, Devices, HostAllReduce, Local, panic_message, shard_ranges};
use crate::views::Batch;
use crate::{Error, Result};

/// One replica per device, kept equal: [`Replicas::step`] trains each on its shard of a batch.
pub struct Replicas {
    replicas: Vec<(MsnNet, ModuleOptimizer)>,
    devices: Devices,
    /// The stream each replica's work is submitted on, by device: the first, the stream of
    /// the thread that made the replicas (it reads and saves the main replica).
    streams: Vec<StreamId>,
    /// The loss scale of f16 runs (one for all replicas: they see the same summed gradients,
    /// so they skip the same steps).
    loss_scale: Option<LossScale>,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas").field("devices", &self.devices).finish_non_exhaustive()
    }
}

impl Replicas {
    /// `net` (on the main device) copied to every device, each with a fresh optimizer.
    pub fn new(net: MsnNet, devices: &Devices) -> Self {
        let streams: Vec<_> =
            (0..devices.len()).map(|i| if i == 0 { StreamId::current() } else { StreamId::allocate() }).collect();
        let replicas = devices
            .list
            .iter()
            .zip(&streams)
            .map(|(d, stream)| (stream.executes(|| own_copy(net.clone(), d)), optimizer()))
            .collect();
        Self { replicas, devices: devices.clone(), streams, loss_scale: None }
    }

    /// Trains with dynamic loss scaling from `scale` (f16), or without (`None`).
    #[must_use]
    pub fn with_loss_scale(self, scale: Option<LossScale>) -> Self {
        Self { loss_scale: scale, ..self }
    }

    /// The loss scale after the last step (`None` without loss scaling).
    pub fn loss_scale(&self) -> Option<LossScale> {
        self.loss_scale
    }

    /// Loads the optimizer state into every replica (`load` is called once per device).
    pub fn load_optimizer(&mut self, load: impl Fn() -> Result<OptimizerRecord>) -> Result<()> {
        for ((_, optim), stream) in self.replicas.iter_mut().zip(&self.streams) {
            let o = std::mem::replace(optim, optimizer());
            *optim = stream.executes(|| Ok::<_, Error>(o.load_record(load()?)))?;
        }
        Ok(())
    }

    /// The main device's replica (all are equal).
    pub fn net(&self) -> &MsnNet {
        &self.replicas[0].0
    }

    /// Every device's replica, in device order.
    pub fn nets(&self) -> impl Iterator<Item = &MsnNet> {
        self.replicas.iter().map(|(n, _)| n)
    }

    pub fn optimizer_record(&self) -> OptimizerRecord {
        self.replicas[0].1.to_record()
    }

    pub fn into_net(self) -> MsnNet {
        self.replicas.into_iter().next().map(|(n, _)| n).expect("a run has at least one device")
    }

    /// One training step on `batch`, split over the devices: the global loss and the main
    /// device's step times. A batch smaller than the number of devices is an error.
    pub fn step(&mut self, batch: &Batch, cfg: &PretrainConfig, s: StepSchedule) -> Result<(MsnLossOutput, StepTimes)> {
        let k = self.replicas.len();
        let scale = self.loss_scale.map(|l| l.scale);
        // One device through NCCL still takes the group's path (a check of NCCL on one GPU).
        if k == 1 && self.devices.all_reduce == AllReduce::Host {
            let (net, mut optim) = self.replicas.pop().expect("one replica");
            let out = self.streams[0].executes(|| {
                let views = batch_tensors(batch, cfg, self.devices.main());
                train_step_with(net, &mut optim, views, cfg, s, &Local, scale)
            })?;
            self.replicas.push((out.net, optim));
            self.scaled(out.applied);
            return Ok((out.loss, out.times));
        }
        if batch.size < k {
            return Err(Error::Internal(format!("a batch of {} cannot be split over {k} devices", batch.size)));
        }
        let shards = shard_ranges(batch.size, k);
        let host = HostAllReduce::new(k);
        let backend = BackendAllReduce { devices: self.devices.list.clone() };
        let replicas = std::mem::take(&mut self.replicas);
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = replicas
                .into_iter()
                .zip(&shards)
                .zip(&self.devices.list)
                .zip(&self.streams)
                .enumerate()
                .map(|(rank, ((((net, mut optim), rows), device), stream))| {
                    let (host, backend, all_reduce) = (&host, &backend, self.devices.all_reduce);
                    scope.spawn(move || {
                        stream.executes(|| {
                            let views = batch_tensors(&batch.shard(rows.clone(), cfg.views.focal_views), cfg, device);
                            let run = std::panic::AssertUnwindSafe(|| {
                                let out = match all_reduce {
                                    AllReduce::Host => {
                                        train_step_with(net, &mut optim, views, cfg, s, &host.rank(rank), scale)
                                    }
                                    AllReduce::Nccl => train_step_with(net, &mut optim, views, cfg, s, backend, scale),
                                }?;
                                // Done before the step returns: a read from another stream (the
                                // caller's, of any replica) does not wait for this one's work.
                                device.sync().map_err(|e| Error::Device(format!("device {rank}: {e:?}")))?;
                                Ok::<_, Error>(out)
                            });
                            let out = std::panic::catch_unwind(run);
                            if !matches!(out, Ok(Ok(_))) {
                                host.abort();
                            }
                            (out, optim)
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        let mut first = None;
        let mut failures = Vec::new();
        for r in results {
            match r {
                Ok((Ok(Ok(StepOutput { net, loss, times, applied })), optim)) => {
                    first.get_or_insert((loss, times, applied));
                    self.replicas.push((net, optim));
                }
                Ok((Ok(Err(e)), _)) => failures.push(e.to_string()),
                Ok((Err(panic), _)) | Err(panic) => failures.push(panic_message(panic)),
            }
        }
        match first {
            Some((loss, times, applied)) if failures.is_empty() => {
                self.scaled(applied);
                Ok((loss, times))
            }
            _ => {
                // The device that failed first says why; the others only that it did.
                failures.sort_by_key(|m| m.contains("another device"));
                let hint = if self.devices.all_reduce == AllReduce::Nccl {
                    " (NCCL: libnccl.so.2 must be on the library path; --all-reduce host needs none)"
                } else {
                    ""
                };
                Err(Error::Device(format!("a data-parallel step failed: {}{hint}", failures.join("; "))))
            }
        }
    }

    /// The loss scale after a step that `applied` its update or skipped it.
    fn scaled(&mut self, applied: bool) {
        self.loss_scale = self.loss_scale.map(|l| l.after(applied));
    }
}

/// `net` on `device` in buffers of its own, so that every replica starts alike. Otherwise the
/// main one would keep the buffers its EMA target shares with its anchor (the target starts as
/// a clone), and the others not (or, on the same device, burn's `fork` would keep them shared
/// between replicas); through SPIR-V, where burn fuses the EMA update into one kernel, that
/// alone put the main replica's target 1e-13 off the others'.
fn own_copy(net: MsnNet, device: &Device) -> MsnNet {
    struct Copy<'a>(&'a Device);
    impl ModuleMapper for Copy<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| {
                let grad = t.is_require_grad();
                let copy = Tensor::from_data(t.into_data(), self.0);
                if grad { copy.require_grad() } else { copy }
            })
        }
    }
    net.map(&mut Copy(device))
}
