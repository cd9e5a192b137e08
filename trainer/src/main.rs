//! The `trainer` command line. Pretraining and evaluation (on burn) are being built; what
//! exists today resolves an `--ehr` choice into the dataset columns it reads, so every
//! ablation can be checked against a built dataset before training.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cxr_dataset::features::EhrSelection;

/// EHR-augmented MSN pretraining and linear evaluation of Vision Transformers.
#[derive(Debug, Parser)]
#[command(name = "trainer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the dataset columns an --ehr choice feeds to the model, and the EHR vector width.
    EhrColumns {
        /// Groups (demographics, scan, stay) and/or variables (sex, age-norm, age-bins5,
        /// age-bins10, view, orientation, mortality, icu), comma-separated; `none` = vanilla MSN.
        #[arg(long, default_value = "demographics,scan,stay")]
        ehr: String,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::EhrColumns { ehr } => match ehr.parse::<EhrSelection>() {
            Ok(sel) => {
                println!("ehr: {sel}");
                println!("width: {}", sel.width());
                for c in sel.columns() {
                    println!("{c}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: --ehr {ehr}: {e}");
                ExitCode::from(2)
            }
        },
    }
}
