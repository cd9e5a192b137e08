//! The one place a backend is chosen: `--device` on the command line, `CXR_TEST_DEVICE` in the
//! tests. `cpu` is burn-flex (pure Rust, its own gemm with AVX-512 kernels picked at run time),
//! the default and the fastest measured on the CPU (see the README's `trainer bench`). Opt-in
//! features add the others, each a long extra build: `wgpu` (a GPU through Vulkan, Metal or
//! DX12, or a software Vulkan driver such as Mesa's lavapipe), `cuda` (an NVIDIA GPU through
//! burn-cuda: `cuda` or `cuda:N`) and `ndarray` (burn-ndarray on the CPU; with `openblas`, its
//! matrix products through the system's OpenBLAS).

use std::str::FromStr;

use burn::tensor::{DType, Device, FloatDType};

use crate::{Error, Result};

/// A backend the trainer can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// burn-flex on the CPU.
    #[default]
    Cpu,
    /// wgpu's default adapter (needs the `wgpu` feature).
    Wgpu,
    /// burn-ndarray on the CPU (needs the `ndarray` feature).
    Ndarray,
    /// NVIDIA GPU number N through burn-cuda (needs the `cuda` feature).
    Cuda(usize),
}

/// The float type the networks compute in (`--precision`). Parameters, gradients, the
/// optimizer's state and the EMA target are f32 whatever it is: bf16 and f16 are mixed
/// precision (`model` says where the casts are; statistics and the MSN loss stay f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats throughout (the default; the parity tests' precision).
    #[default]
    F32,
    /// Forward and backward in f16 (5 exponent bits): mixed precision as bf16, and pretraining
    /// scales its loss dynamically so that small gradients do not flush to zero
    /// (`pretrain::LossScale`).
    F16,
    /// Forward and backward in bfloat16 (f32's range, 8 bits of mantissa): mixed precision.
    Bf16,
}

impl Precision {
    /// The compute float type.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }
}

impl Backend {
    /// Names `FromStr` takes (`cuda` also as `cuda:N`).
    pub const NAMES: [&'static str; 4] = ["cpu", "wgpu", "cuda", "ndarray"];

    /// What runs the model, for printouts.
    pub fn label(self) -> &'static str {
        match self {
            Backend::Cpu => "burn-flex",
            Backend::Wgpu => "wgpu",
            Backend::Ndarray => "burn-ndarray",
            Backend::Cuda(_) => "burn-cuda",
        }
    }

    /// Whether this build can run on it.
    pub fn compiled(self) -> bool {
        match self {
            Backend::Cpu => true,
            Backend::Wgpu => cfg!(feature = "wgpu"),
            Backend::Ndarray => cfg!(feature = "ndarray"),
            Backend::Cuda(_) => cfg!(feature = "cuda"),
        }
    }

    /// The backend `CXR_TEST_DEVICE` names (default cpu): how the tests run on every backend
    /// this build has (`CXR_TEST_DEVICE=wgpu cargo test -p trainer --features wgpu`).
    pub fn from_test_env() -> Result<Backend> {
        match std::env::var("CXR_TEST_DEVICE") {
            Ok(name) => name.parse().map_err(|e: Error| Error::Config(format!("CXR_TEST_DEVICE: {e}"))),
            Err(_) => Ok(Backend::Cpu),
        }
    }

    /// The device for inference (no gradients), its default float type f32 (the parameters'),
    /// checked to compute in `precision` when that is a half type. Must be called before any
    /// tensor is made on that device (burn fixes a device's types at its first tensor).
    pub fn device(self, precision: Precision) -> Result<Device> {
        let mut device = match self {
            Backend::Cpu => Device::flex(),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
            // Deprecated in burn 0.22 in favour of flex; kept opt-in for the comparison.
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            Backend::Ndarray => Device::ndarray(),
            #[cfg(feature = "cuda")]
            Backend::Cuda(index) => cuda_device(index)?,
            #[cfg(not(all(feature = "wgpu", feature = "ndarray", feature = "cuda")))]
            #[allow(unreachable_patterns)]
            _ => return Err(not_compiled(self)),
        };
        if precision != Precision::F32 {
            half_supported(self, &device, precision)?;
        }
        // f32 tensors by default whatever `precision` is: the parameters are made in f32.
        if device.settings().float_dtype != FloatDType::F32 {
            device
                .configure(FloatDType::F32)
                .map_err(|e| Error::Device(format!("{self:?} cannot use f32 tensors: {e:?}")))?;
        }
        Ok(device)
    }

    /// The device with autodiff, for training.
    pub fn autodiff(self, precision: Precision) -> Result<Device> {
        Ok(self.device(precision)?.autodiff())
    }
}

/// CUDA device `index`, checked first: the driver library loads, the GPU exists and NVRTC
/// compiles a kernel (burn would panic at the first tensor otherwise).
#[cfg(feature = "cuda")]
fn cuda_device(index: usize) -> Result<Device> {
    let missing = |why: String| {
        Error::Device(format!(
            "--device cuda:{index}: {why}; the cuda build needs an NVIDIA GPU, its driver (libcuda.so) and \
             NVRTC (libnvrtc.so, from the CUDA toolkit or the nvidia-cuda-nvrtc wheel) on the library path"
        ))
    };
    // cudarc panics when a library cannot be loaded: caught, without the panic's printout.
    let quietly = |f: &dyn Fn() -> std::result::Result<(), String>| {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        std::panic::set_hook(hook);
        out.unwrap_or_else(|p| {
            let why = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            // cudarc's message lists every file name it tried: the first sentence says it.
            let why = why.map(|w| w.split(" - searched for library names").next().unwrap_or_default().to_string());
            Err(why.unwrap_or_else(|| "a CUDA library could not be loaded".into()))
        })
    };
    quietly(&|| {
        let count =
            cudarc::driver::CudaContext::device_count().map_err(|e| format!("the CUDA driver reports {e:?}"))?;
        if index >= count.max(0) as usize {
            return Err(format!("this machine has {count} CUDA device(s)"));
        }
        Ok(())
    })
    .map_err(missing)?;
    quietly(&|| {
        cudarc::nvrtc::compile_ptx("extern \"C\" __global__ void probe() {}")
            .map(|_| ())
            .map_err(|e| format!("NVRTC cannot compile a kernel: {e:?}"))
    })
    .map_err(missing)?;
    Ok(Device::cuda(index))
}

fn not_compiled(backend: Backend) -> Error {
    let feature = match backend {
        Backend::Ndarray => "ndarray",
        Backend::Cuda(_) => "cuda",
        _ => "wgpu",
    };
    Error::Config(format!(
        "{feature}: this trainer was built without it; rebuild with `--features {feature}` \
         (`cargo build --release -p trainer-cli --features {feature}` from the repository root)"
    ))
}

/// Whether `device` computes in `precision`'s float type: burn-ndarray does not; on a GPU, the
/// adapter may not (wgpu's WGSL compiler has no bf16): a cast is tried, its panic caught.
fn half_supported(backend: Backend, device: &Device, precision: Precision) -> Result<()> {
    if backend == Backend::Ndarray {
        return Err(Error::Config(format!(
            "--precision {precision:?} is not for --device ndarray; use cpu, wgpu or cuda, or f32"
        )));
    }
    if computes_in(device, precision) {
        return Ok(());
    }
    Err(Error::Device(format!(
        "{backend} cannot compute in {:?} (--precision); use --precision f32{}",
        precision.dtype(),
        if backend == Backend::Wgpu && !cfg!(feature = "vulkan") {
            ", or a build with --features vulkan (SPIR-V: f16, bf16)"
        } else {
            " (this adapter does not offer it)"
        }
    )))
}

/// Whether `device` computes in `precision`'s float type: the backend says it supports the
/// type (asked first, so an adapter without it, lavapipe's for bf16, never runs a kernel in it),
/// then a cast and a product are tried, a panic caught.
pub fn computes_in(device: &Device, precision: Precision) -> bool {
    let dtype = precision.dtype();
    if !device.supports_dtype(dtype) {
        return false;
    }
    let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = burn::tensor::Tensor::<1>::ones([4], device).cast(dtype).mul_scalar(2.0).cast(DType::F32);
        t.into_data().convert::<f32>().try_to_vec::<f32>().ok()
    }));
    matches!(probe, Ok(Some(v)) if v == [2.0; 4])
}

/// The `--device` word: `cpu`, `wgpu`, `ndarray` or `cuda:N`.
impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Cpu => f.write_str("cpu"),
            Backend::Wgpu => f.write_str("wgpu"),
            Backend::Ndarray => f.write_str("ndarray"),
            Backend::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Backend> {
        let cuda = |n: &str| n.parse().map(Backend::Cuda).ok();
        let backend = match s.trim() {
            "cpu" => Backend::Cpu,
            "wgpu" => Backend::Wgpu,
            "ndarray" => Backend::Ndarray,
            "cuda" => Backend::Cuda(0),
            other => match other.strip_prefix("cuda:").and_then(cuda) {
                Some(b) => b,
                None => {
                    return Err(Error::Config(format!(
                        "unknown device {other:?}; choose cpu, wgpu, cuda, cuda:N or ndarray"
                    )));
                }
            },
        };
        if !backend.compiled() {
            return Err(not_compiled(backend));
        }
        Ok(backend)
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Precision> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            "bf16" => Ok(Precision::Bf16),
            other => Err(Error::Config(format!("unknown precision {other:?}; choose f32, f16 or bf16"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_half_precision_keeps_f32_parameters() {
        assert_eq!("cpu".parse::<Backend>().unwrap(), Backend::Cpu);
        assert_eq!("wgpu".parse::<Backend>().is_ok(), cfg!(feature = "wgpu"));
        assert_eq!("ndarray".parse::<Backend>().is_ok(), cfg!(feature = "ndarray"));
        assert!(
            "tpu".parse::<Backend>().unwrap_err().to_string().contains("choose cpu, wgpu, cuda, cuda:N or ndarray")
        );
        assert!("cuda:x".parse::<Backend>().is_err());
        // Without the feature, cuda names the feature to build with.
        assert_eq!("cuda:1".parse::<Backend>().ok(), cfg!(feature = "cuda").then_some(Backend::Cuda(1)));
        if !cfg!(feature = "cuda") {
            assert!("cuda".parse::<Backend>().unwrap_err().to_string().contains("--features cuda"));
        }
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!("f64".parse::<Precision>().is_err());
        // Mixed precision: the device's tensors (the parameters) stay f32; burn-flex computes in
        // bf16 and f16 through f32.
        let device = Backend::Cpu.device(Precision::Bf16).unwrap();
        assert_eq!(device.settings().float_dtype, FloatDType::F32);
        assert!(Backend::Cpu.autodiff(Precision::F16).is_ok());
    }
}
