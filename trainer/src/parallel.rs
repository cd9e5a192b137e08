//! What data parallelism over the devices of one machine (DDP) is built on: the device list
//! of a run ([`Devices`]), the split of a batch into per-device shards, and the cross-device
//! sums. The training step on each device is `pretrain::Replicas`: one replica of the network
//! and of the optimizer per device, the MSN loss's Sinkhorn normalisation and me-max mean
//! computed over the global batch (lightly's `gather_distributed`), the gradients summed over
//! the devices, and the same update applied on every replica, so the replicas stay equal
//! without ever broadcasting weights.
//!
//! Every cross-device sum goes through a [`Collective`] (an all-reduce sum of a tensor's
//! values): [`Local`] (one device), [`HostAllReduce`] (through host memory, any backend, and
//! the CPU tests) or [`BackendAllReduce`] (burn's `all_reduce`: NCCL between CUDA GPUs).
//!
//! What stays per device: the BatchNorm statistics of the projection heads (anchor and target)
//! are those of each device's shard, as in the reference (PyTorch Lightning's DDP without
//! `sync_batchnorm`); with one device they are the whole batch's. The views, masks and
//! augmentations of a sample do not depend on the number of devices.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Condvar, Mutex, PoisonError};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::distributed::ReduceOperation;
use burn::tensor::{Device, Tensor, TensorData};

use crate::backend::{Backend, Precision};
use crate::{Error, Result};

/// The cross-device reductions of a data-parallel step: an element-wise sum of a tensor over
/// every device of the group (each device calls it with a tensor of the same shape, in the
/// same order). Values only: no gradient flows through it.
pub trait Collective {
    /// The number of devices in the group.
    fn devices(&self) -> usize;
    fn all_reduce_sum<const D: usize>(&self, x: Tensor<D>) -> Tensor<D>;
}

/// One device: the sum over devices is the tensor itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl Collective for Local {
    fn devices(&self) -> usize {
        1
    }
    fn all_reduce_sum<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        x
    }
}

/// An all-reduce through host memory among the threads of one process that each drive one
/// device ([`HostAllReduce::rank`] gives each its handle). Works on every backend; the sum is
/// taken in rank order, so every device gets the same bits and a run is reproducible. When a
/// device fails ([`HostAllReduce::abort`]), the others stop at their next all-reduce (a panic
/// naming the group) instead of waiting forever.
#[derive(Debug)]
pub struct HostAllReduce {
    state: Mutex<HostState>,
    turn: Condvar,
}

#[derive(Debug)]
struct HostState {
    /// This round's contributions, by rank.
    parts: Vec<Option<Vec<f32>>>,
    arrived: usize,
    round: u64,
    sum: std::sync::Arc<Vec<f32>>,
    aborted: bool,
}

/// One device's handle on a [`HostAllReduce`].
#[derive(Debug, Clone, Copy)]
pub struct HostRank<'a> {
    group: &'a HostAllReduce,
    rank: usize,
}

impl HostAllReduce {
    pub fn new(devices: usize) -> Self {
        Self {
            state: Mutex::new(HostState {
                parts: vec![None; devices],
                arrived: 0,
                round: 0,
                sum: Default::default(),
                aborted: false,
            }),
            turn: Condvar::new(),
        }
    }

    /// The handle of device `rank` (0-based, below the group's size).
    pub fn rank(&self, rank: usize) -> HostRank<'_> {
        HostRank { group: self, rank }
    }

    /// Releases every device waiting in an all-reduce, now and later: the group has failed.
    pub fn abort(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).aborted = true;
        self.turn.notify_all();
    }

    fn sum(&self, rank: usize, mine: Vec<f32>) -> std::sync::Arc<Vec<f32>> {
        let failed = || -> ! { panic!("another device of the data-parallel group failed") };
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.aborted {
            failed();
        }
        s.parts[rank] = Some(mine);
        s.arrived += 1;
        if s.arrived == s.parts.len() {
            let mut parts = s.parts.iter_mut().map(|p| p.take().unwrap_or_default());
            let mut total = parts.next().unwrap_or_default();
            for p in parts {
                total.iter_mut().zip(&p).for_each(|(t, v)| *t += v);
            }
            s.sum = std::sync::Arc::new(total);
            s.arrived = 0;
            s.round += 1;
            self.turn.notify_all();
            return s.sum.clone();
        }
        let round = s.round;
        while s.round == round && !s.aborted {
            s = self.turn.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        if s.round == round {
            failed();
        }
        // The next round cannot finish (and replace the sum) before this device joins it.
        s.sum.clone()
    }
}

impl Collective for HostRank<'_> {
    fn devices(&self) -> usize {
        self.group.state.lock().unwrap_or_else(PoisonError::into_inner).parts.len()
    }
    fn all_reduce_sum<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let (dims, device, dtype) = (x.dims(), x.device(), x.dtype());
        let mine: Vec<f32> =
            x.into_data().convert::<f32>().try_to_vec::<f32>().expect("a tensor converted to f32 reads as f32");
        let total = self.group.sum(self.rank, mine);
        // Summed in f32, handed back in the tensor's own type (half precision stays half).
        Tensor::from_data(TensorData::new(total.to_vec(), dims).convert_dtype(dtype), &device)
    }
}

/// burn's own all-reduce between the devices of a backend with a transport between them (on
/// CUDA: NCCL, loaded at run time; burn-flex, wgpu and ndarray have none).
#[derive(Debug, Clone)]
pub struct BackendAllReduce {
    pub devices: Vec<Device>,
}

impl Collective for BackendAllReduce {
    fn devices(&self) -> usize {
        self.devices.len()
    }
    fn all_reduce_sum<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        burn::tensor::distributed::all_reduce(x, ReduceOperation::Sum, self.devices.clone()).resolve()
    }
}

/// How the devices of a data-parallel run exchange their sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AllReduce {
    /// Through host memory (every backend).
    Host,
    /// burn's collective all-reduce: NCCL between CUDA GPUs.
    Nccl,
}

/// The devices a run trains on (autodiff devices), the first one the main device (the
/// checkpoints are its replica; evaluation runs on it), and how they all-reduce.
#[derive(Debug, Clone)]
pub struct Devices {
    pub(crate) list: Vec<Device>,
    pub(crate) all_reduce: AllReduce,
}

impl From<&Device> for Devices {
    fn from(device: &Device) -> Self {
        Self { list: vec![device.clone()], all_reduce: AllReduce::Host }
    }
}

impl From<&Devices> for Devices {
    fn from(devices: &Devices) -> Self {
        devices.clone()
    }
}

impl Devices {
    /// The devices of `--device` (a comma-separated list: `cuda:0,cuda:1`; `cpu,cpu` runs the
    /// data-parallel code on one CPU), with autodiff, checked to compute in `precision`, and
    /// `all_reduce` (default: NCCL when every device is a CUDA GPU, else host).
    pub fn parse(list: &str, precision: Precision, all_reduce: Option<AllReduce>) -> Result<Self> {
        let backends: Vec<Backend> =
            list.split(',').map(|s| s.trim().parse()).collect::<Result<_>>().map_err(|e| match e {
                Error::Config(m) => Error::Config(format!("--device {list}: {m}")),
                e => e,
            })?;
        Self::of(&backends, precision, all_reduce)
    }

    /// The devices `backends` (parsed from `--device`, in order; the first is the main one)
    /// with autodiff, checked to compute in `precision`, exchanging their sums by `all_reduce` (default: NCCL
    /// when every device is a CUDA GPU, else host).
    pub fn of(backends: &[Backend], precision: Precision, all_reduce: Option<AllReduce>) -> Result<Self> {
        if backends.is_empty() {
            return Err(Error::Config("--device: name at least one device".into()));
        }
        let list = backends.iter().map(Backend::to_string).collect::<Vec<_>>().join(",");
        let cuda = backends.iter().all(|b| matches!(b, Backend::Cuda(_)));
        if backends.windows(2).any(|w| std::mem::discriminant(&w[0]) != std::mem::discriminant(&w[1])) {
            return Err(Error::Config(format!("--device {list}: the devices of a run must all be of one kind")));
        }
        let distinct: HashSet<_> = backends.iter().map(|b| format!("{b:?}")).collect();
        if cuda && distinct.len() < backends.len() {
            return Err(Error::Config(format!("--device {list}: a GPU is named twice")));
        }
        let all_reduce =
            all_reduce.unwrap_or(if cuda && backends.len() > 1 { AllReduce::Nccl } else { AllReduce::Host });
        if all_reduce == AllReduce::Nccl && !cuda {
            return Err(Error::Config(format!(
                "--all-reduce nccl is for CUDA GPUs (--device cuda:0,cuda:1,...), not {list}; use --all-reduce host"
            )));
        }
        let list = backends.iter().map(|b| b.autodiff(precision)).collect::<Result<_>>()?;
        Ok(Self { list, all_reduce })
    }

    /// `list` (autodiff devices, the first the main one; not empty) exchanging their sums
    /// by `all_reduce`.
    pub fn new(list: Vec<Device>, all_reduce: AllReduce) -> Result<Self> {
        if list.is_empty() {
            return Err(Error::Config("a run needs at least one device".into()));
        }
        Ok(Self { list, all_reduce })
    }

    /// The main device.
    pub fn main(&self) -> &Device {
        &self.list[0]
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn all_reduce(&self) -> AllReduce {
        self.all_reduce
    }
}

/// The rows of each of `devices` shards of a batch of `n` (the first `n % devices` one larger).
pub fn shard_ranges(n: usize, devices: usize) -> Vec<Range<usize>> {
    let (base, extra) = (n / devices, n % devices);
    let mut start = 0;
    (0..devices)
        .map(|d| {
            let len = base + usize::from(d < extra);
            start += len;
            start - len..start
        })
        .collect()
}

/// The gradients summed over the devices of `c` (one all-reduce of all of them, flattened in
/// the network's parameter order).
pub fn all_reduce_gradients<M: Module>(mut grads: GradientsParams, net: &M, c: &impl Collective) -> GradientsParams {
    if c.devices() == 1 {
        return grads;
    }
    struct Gather<'a> {
        grads: &'a mut GradientsParams,
        order: Vec<(ParamId, usize)>,
        flat: Vec<Tensor<1>>,
    }
    impl ModuleVisitor for Gather<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            // The EMA target shares the anchor's ids and has no gradients: each id once.
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let n = g.shape().num_elements();
                self.order.push((param.id, n));
                self.flat.push(g.reshape([n]));
            }
        }
    }
    struct Scatter {
        grads: GradientsParams,
        order: std::vec::IntoIter<(ParamId, usize)>,
        next: Option<(ParamId, usize)>,
        flat: Tensor<1>,
        offset: usize,
    }
    impl ModuleVisitor for Scatter {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some((id, n)) = self.next
                && id == param.id
            {
                let g = self.flat.clone().slice(self.offset..self.offset + n).reshape(param.val().dims());
                self.grads.register::<D>(id, g);
                self.offset += n;
                self.next = self.order.next();
            }
        }
    }
    let mut gather = Gather { grads: &mut grads, order: Vec::new(), flat: Vec::new() };
    net.visit(&mut gather);
    let Gather { order, flat, .. } = gather;
    if flat.is_empty() {
        return grads;
    }
    let flat = c.all_reduce_sum(Tensor::cat(flat, 0));
    let mut order = order.into_iter();
    let next = order.next();
    let mut scatter = Scatter { grads, order, next, flat, offset: 0 };
    net.visit(&mut scatter);
    scatter.grads
}

/// The text of a panic's payload.
pub(crate) fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a device's thread panicked".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_in_order_and_differ_by_at_most_one() {
        assert_eq!(shard_ranges(7, 3), vec![0..3, 3..5, 5..7]);
        assert_eq!(shard_ranges(6, 2), vec![0..3, 3..6]);
        assert_eq!(shard_ranges(5, 1), vec![0..5]);
    }

    #[test]
    fn host_all_reduce_sums_in_rank_order_and_a_failure_releases_the_others() {
        let device = Device::flex();
        let group = HostAllReduce::new(3);
        let sums: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|r| {
                    let (group, device) = (&group, &device);
                    s.spawn(move || {
                        let c = group.rank(r);
                        // Two rounds back to back: the second must not mix with the first.
                        let a = c.all_reduce_sum(Tensor::<1>::from_floats([r as f32, 1.0], device));
                        let b = c.all_reduce_sum(Tensor::<1>::from_floats([10.0 * r as f32], device));
                        let mut v = a.into_data().try_to_vec::<f32>().unwrap();
                        v.extend(b.into_data().try_to_vec::<f32>().unwrap());
                        v
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(sums.iter().all(|v| v == &vec![3.0, 3.0, 30.0]), "{sums:?}");
        // Device 1 fails before its all-reduce: device 0 is released with a panic, not a hang.
        let group = HostAllReduce::new(2);
        let waiting = std::thread::scope(|s| {
            let h = s.spawn(|| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    group.rank(0).all_reduce_sum(Tensor::<1>::from_floats([1.0], &device))
                }))
            });
            group.abort();
            h.join().unwrap()
        });
        let message = panic_message(waiting.unwrap_err());
        assert!(message.contains("another device"), "{message}");
    }

    /// Two devices with different gradients both end with their sum, parameter by parameter.
    #[test]
    fn gradients_are_summed_over_the_devices() {
        let device = Device::flex().autodiff();
        let layer = burn::nn::LinearConfig::new(3, 2).init(&device);
        let group = HostAllReduce::new(2);
        let grads_of = |x: f32| {
            let out = layer.forward(Tensor::<2>::full([1, 3], x, &device)).sum();
            GradientsParams::from_grads(out.backward(), &layer)
        };
        let weight =
            |g: &GradientsParams| g.get::<2>(layer.weight.id).unwrap().into_data().try_to_vec::<f32>().unwrap();
        let bias = |g: &GradientsParams| {
            g.get::<1>(layer.bias.as_ref().unwrap().id).unwrap().into_data().try_to_vec::<f32>().unwrap()
        };
        let summed: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = [1.0f32, 2.0]
                .into_iter()
                .enumerate()
                .map(|(rank, x)| {
                    let (group, grads_of, layer) = (&group, &grads_of, &layer);
                    s.spawn(move || all_reduce_gradients(grads_of(x), layer, &group.rank(rank)))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // d(sum(xW + b))/dW = x for every weight, /db = 1: summed over x = 1 and 2.
        for g in &summed {
            assert_eq!(weight(g), vec![3.0; 6]);
            assert_eq!(bias(g), vec![2.0; 2]);
        }
        assert_eq!(weight(&all_reduce_gradients(grads_of(1.0), &layer, &Local)), vec![1.0; 6]);
    }

    #[test]
    fn device_lists_parse_and_refuse_what_cannot_run() {
        let two = Devices::parse("cpu,cpu", Precision::F32, None).unwrap();
        assert_eq!((two.len(), two.all_reduce()), (2, AllReduce::Host));
        let err = Devices::parse("cpu,cpu", Precision::F32, Some(AllReduce::Nccl)).unwrap_err().to_string();
        assert!(err.contains("--all-reduce host"), "{err}");
        assert!(Devices::parse("cpu,tpu", Precision::F32, None).unwrap_err().to_string().contains("--device cpu,tpu"));
        if cfg!(feature = "cuda") {
            assert!(Devices::parse("cuda:0,cuda:0", Precision::F32, None).unwrap_err().to_string().contains("twice"));
        }
    }
}
