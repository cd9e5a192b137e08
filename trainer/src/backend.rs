//! The one place a backend is chosen: `--device` on the command line, `CXR_TEST_DEVICE` in the
//! tests. `cpu` is burn-flex (pure Rust, its own gemm with AVX-512 kernels picked at run time),
//! the default and the fastest measured on the CPU (see the README's `trainer bench`). Opt-in
//! features add the others, each a long extra build: `wgpu` (a GPU through Vulkan, Metal or
//! DX12, or a software Vulkan driver such as Mesa's lavapipe) and `ndarray` (burn-ndarray on
//! the CPU; with `openblas`, its matrix products through the system's OpenBLAS).

use std::str::FromStr;

use burn::tensor::{Device, FloatDType};

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
}

/// The float type of a backend's tensors (parameters, activations and gradients alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// 32-bit floats everywhere (the default; the parity tests' precision).
    #[default]
    F32,
    /// 16-bit floats everywhere (half precision; GPU only).
    F16,
    /// bfloat16 everywhere (GPU only, where the adapter supports it).
    Bf16,
}

impl Backend {
    /// Names `FromStr` takes.
    pub const NAMES: [&'static str; 3] = ["cpu", "wgpu", "ndarray"];

    /// What runs the model, for printouts.
    pub fn label(self) -> &'static str {
        match self {
            Backend::Cpu => "burn-flex",
            Backend::Wgpu => "wgpu",
            Backend::Ndarray => "burn-ndarray",
        }
    }

    /// Whether this build can run on it.
    pub fn compiled(self) -> bool {
        match self {
            Backend::Cpu => true,
            Backend::Wgpu => cfg!(feature = "wgpu"),
            Backend::Ndarray => cfg!(feature = "ndarray"),
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

    /// The device for inference (no gradients), its float type set to `precision`. Must be
    /// called before any tensor is made on that device (burn fixes a device's types at its
    /// first tensor); asking again for the same precision is fine.
    pub fn device(self, precision: Precision) -> Result<Device> {
        let mut device = match self {
            Backend::Cpu => Device::flex(),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
            // Deprecated in burn 0.22 in favour of flex; kept opt-in for the comparison.
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            Backend::Ndarray => Device::ndarray(),
            #[cfg(not(all(feature = "wgpu", feature = "ndarray")))]
            #[allow(unreachable_patterns)]
            _ => return Err(not_compiled(self)),
        };
        let want = match precision {
            Precision::F32 => FloatDType::F32,
            Precision::F16 | Precision::Bf16 if self != Backend::Wgpu => return Err(cpu_half()),
            Precision::F16 => FloatDType::F16,
            Precision::Bf16 => FloatDType::BF16,
        };
        if device.settings().float_dtype != want {
            device
                .configure(want)
                .map_err(|e| Error::Config(format!("{self:?} cannot use {precision:?} floats: {e:?}")))?;
        }
        Ok(device)
    }

    /// The device with autodiff, for training.
    pub fn autodiff(self, precision: Precision) -> Result<Device> {
        Ok(self.device(precision)?.autodiff())
    }
}

fn not_compiled(backend: Backend) -> Error {
    let feature = match backend {
        Backend::Ndarray => "ndarray",
        _ => "wgpu",
    };
    Error::Config(format!(
        "{feature}: this trainer was built without it; rebuild with `--features {feature}` \
         (e.g. `cargo build --release --features {feature}`)"
    ))
}

fn cpu_half() -> Error {
    Error::Config("half precision (f16, bf16) is for --device wgpu; the CPU backends train in f32".into())
}

impl FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Backend> {
        let backend = match s {
            "cpu" => Backend::Cpu,
            "wgpu" => Backend::Wgpu,
            "ndarray" => Backend::Ndarray,
            other => return Err(Error::Config(format!("unknown device {other:?}; choose cpu, wgpu or ndarray"))),
        };
        if !backend.compiled() {
            return Err(not_compiled(backend));
        }
        Ok(backend)
    }
}

impl Precision {
    /// Names `FromStr` takes.
    pub const NAMES: [&'static str; 3] = ["f32", "f16", "bf16"];
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
    fn names_parse_and_the_cpu_refuses_half_precision() {
        assert_eq!("cpu".parse::<Backend>().unwrap(), Backend::Cpu);
        assert_eq!("wgpu".parse::<Backend>().is_ok(), cfg!(feature = "wgpu"));
        assert_eq!("ndarray".parse::<Backend>().is_ok(), cfg!(feature = "ndarray"));
        assert!("cuda".parse::<Backend>().unwrap_err().to_string().contains("choose cpu, wgpu or ndarray"));
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!("f64".parse::<Precision>().is_err());
        assert!(Backend::Cpu.device(Precision::F16).unwrap_err().to_string().contains("f32"));
        assert!(Backend::Cpu.autodiff(Precision::F32).is_ok());
    }
}
