//! The `trainer` command line: parses the arguments, resolves the reporter and the devices
//! once, and calls the command.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use cxr_dataset::log::Reporter;
use trainer::parallel::Devices;

/// `println!` whose failed write (a closed pipe: `trainer selftest | head`) returns from the
/// command as an I/O error (exit 5) instead of panicking ([`cxr_dataset::log::say`]).
macro_rules! say {
    ($($arg:tt)*) => {
        cxr_dataset::log::say([format!($($arg)*)]).map_err(trainer::Error::Io)?
    };
}

mod cli;
mod commands;
mod compare;
mod demo;
mod pooled;
mod session;
use cli::{Cli, Command};
use session::Session;

/// See `mimalloc` in the workspace manifest.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The reporter, the devices, then the command.
fn run(cli: Cli) -> (Reporter, anyhow::Result<()>) {
    let log = Reporter::new(cli.log);
    let backends = cli.device;
    let devices = match Devices::of(&backends, cli.precision, cli.all_reduce).context("--device, --precision") {
        Ok(d) => d,
        Err(e) => return (log, Err(e)),
    };
    let s = Session { log, devices, backends, precision: cli.precision };
    let outcome = match cli.command {
        Command::Pretrain(args) => commands::pretrain(&s, &args),
        Command::LinearEval(args) => commands::linear_eval(&s, &args),
        Command::Run(args) => commands::run(&s, &args),
        Command::Ablate(args) => commands::ablate(&s, &args),
        Command::Demo(args) => demo::demo(&s, &args),
        Command::CompareReference(args) => compare::compare(&s, &args),
        Command::ImportTorch { file, model, prefix, out } => commands::import(&s, &file, model, &prefix, &out),
        Command::Bench(args) => commands::bench(&s, &args),
        Command::Selftest { golden } => commands::selftest(&s, golden),
        Command::EhrColumns { ehr, dataset } => commands::ehr_columns(&ehr, dataset.as_deref()),
        Command::PairedDelta(args) => commands::paired_delta(&args),
    };
    (s.log, outcome)
}

/// The exit status of a failed run: the kind of the first trainer error in the chain (1 for
/// anything else).
fn exit_code(err: &anyhow::Error) -> u8 {
    cxr_dataset::log::exit_status(err.as_ref(), trainer::Error::exit_code)
}

/// burn makes the tensors of a loaded optimizer record on its default device (burn-optim 0.22.1,
/// `ModuleOptimizer::load_record`) and moves them to their parameter's device at the next step.
/// That default is the first GPU backend compiled in, so in a cuda build on a machine without a
/// GPU a resumed run on the CPU would panic there. `BURN_DEVICE=flex` makes it the CPU, unless
/// the environment says otherwise (`.cargo/config.toml` sets the same for `cargo test`).
#[allow(unsafe_code)]
fn cpu_default_device() {
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: called first in `main`, before any thread exists, so no other thread reads
        // the environment while it changes.
        unsafe { std::env::set_var("BURN_DEVICE", "flex") }
    }
}

fn main() -> ExitCode {
    cpu_default_device();
    trainer::memory::keep_freed_memory();
    let (log, outcome) = run(Cli::parse());
    log.exit(outcome, exit_code)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use trainer::backend::Backend;

    /// Failures exit with their kind's status: a setting 3, a missing dataset 4, a bad flag
    /// value (an unknown device or EHR feature among them) is clap's 2.
    #[test]
    fn failures_exit_with_their_kinds_status() {
        let status = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("trainer").chain(args.iter().copied())).unwrap();
            exit_code(&run(cli).1.unwrap_err())
        };
        let dir = std::env::temp_dir().join(format!("trainer-exit-{}", std::process::id()));
        let out = dir.to_str().unwrap();
        assert_eq!(status(&["pretrain", "--dataset", out, "--out", out, "--batch-size", "0"]), 3);
        let bad = Cli::try_parse_from(["trainer", "pretrain", "--dataset", out, "--out", out, "--ehr", "sex,nonsense"]);
        let bad = bad.unwrap_err();
        assert_eq!(bad.exit_code(), 2);
        assert!(bad.to_string().contains("unknown EHR feature \"nonsense\"; available: none, demographics"), "{bad}");
        assert_eq!(status(&["pretrain", "--dataset", out, "--out", out]), 4);
        let bad = Cli::try_parse_from(["trainer", "--precision", "f64", "pretrain", "--dataset", out, "--out", out]);
        assert_eq!(bad.unwrap_err().exit_code(), 2);
        // --device and --ehr are parsed once, by the argument parser, into typed values.
        let bad = Cli::try_parse_from(["trainer", "--device", "cpu,tpu", "ehr-columns"]).unwrap_err();
        assert_eq!(bad.exit_code(), 2);
        assert!(bad.to_string().contains("unknown device \"tpu\""), "{bad}");
        let two = Cli::try_parse_from(["trainer", "--device", "cpu, cpu", "ehr-columns", "--ehr", "stay,sex"]).unwrap();
        assert_eq!(two.device, vec![Backend::Cpu; 2]);
        let demo = Cli::try_parse_from(["trainer", "demo"]).unwrap();
        assert_eq!(demo.device, [Backend::Cpu], "one CPU unless told, the demo too");
        match &two.command {
            Command::EhrColumns { ehr, .. } => assert_eq!(ehr.spelling(), "stay,sex"),
            other => panic!("{other:?}"),
        }
        assert_eq!(status(&["--device", "cpu,cpu", "--all-reduce", "nccl", "ehr-columns"]), 3);
        assert_eq!(status(&["paired-delta", "--a", out, "--b", out, "--b", out]), 3, "one --b per --a");
        let cli = Cli::try_parse_from(["trainer", "paired-delta", "--a", out, "--b", out]).unwrap();
        let err = format!("{:#}", run(cli).1.unwrap_err());
        assert!(err.contains(&format!("{out}/test-scores.json")), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `selftest` passes on the CPU with the shipped cases (exit 0), fails with exit 1 when a
    /// folder's case differs from what the trainer computes, and a missing folder is an
    /// unusable input (4).
    #[test]
    fn selftest_exits_0_when_every_case_passes_and_1_when_one_fails() {
        let outcome = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("trainer").chain(args.iter().copied())).unwrap();
            run(cli).1
        };
        outcome(&["selftest"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let golden = trainer::selftest::Golden::Shipped;
        let case = golden.case("projection_head").unwrap();
        std::fs::write(dir.path().join("projection_head.json"), serde_json::to_vec(&case.json).unwrap()).unwrap();
        // The same case with its expected output changed by 1%.
        let mut tensors = std::collections::BTreeMap::new();
        for (name, raw) in &case.tensors {
            let mut v = raw.to_f32().unwrap();
            if name == "output" {
                v.iter_mut().for_each(|x| *x *= 1.01);
            }
            tensors.insert(name.clone(), (raw.shape.clone(), v));
        }
        let bytes = cxr_dataset::tensors::to_bytes(&tensors).unwrap();
        std::fs::write(dir.path().join("projection_head.safetensors"), bytes).unwrap();
        let folder = dir.path().to_str().unwrap();
        let err = outcome(&["selftest", "--golden", folder]).unwrap_err();
        assert_eq!(exit_code(&err), 1);
        assert_eq!(err.to_string(), "selftest: 1 of 9 cases failed: projection_head");
        let missing = dir.path().join("missing");
        assert_eq!(exit_code(&outcome(&["selftest", "--golden", missing.to_str().unwrap()]).unwrap_err()), 4);
    }

    /// The cuda build without a GPU (CI, this machine): `--device cuda` stops before any
    /// tensor with the device status and names what is missing. With a GPU, a step runs.
    #[cfg(feature = "cuda")]
    #[test]
    fn the_cuda_build_runs_or_names_what_is_missing() {
        let cli =
            Cli::try_parse_from(["trainer", "--device", "cuda", "bench", "--steps", "1", "--warmup", "0"]).unwrap();
        match run(cli).1 {
            Ok(()) => eprintln!("a CUDA GPU is here: one bench step ran"),
            Err(e) => {
                let text = format!("{e:#}");
                assert_eq!(exit_code(&e), 6, "{text}");
                assert!(text.contains("--device cuda:0: ") && text.contains("libcuda.so"), "{text}");
                assert!(!text.contains("searched for library names"), "one sentence, not cudarc's list: {text}");
            }
        }
    }
}
