//! What stands in for LLVM in the `cuda` build. burn-cuda's runtime, cubecl-cuda, always
//! compiles in two kernel compilers: CUDA C++ through NVRTC (its `cpp` backend, which the
//! trainer selects: NVRTC comes with every CUDA driver install) and PTX through LLVM (the
//! crate `cubecl-llvm`, whose build script downloads an LLVM 23 bundle from a host these
//! machines cannot reach, and compiles C++ shims against its headers). With the LLVM
//! compiler unused, the repository's `.cargo/config.toml` sets `DOCS_RS`, under which
//! cubecl-llvm's and the LLVM bundler's build scripts do nothing, so the build needs no network,
//! no LLVM and no CUDA toolkit; the LLVM functions the Rust code references are then defined
//! here, each a function that names itself and aborts. None of them is reachable from the
//! trainer: cubecl-cuda calls LLVM only on its `Llvm` backend, and the trainer's cuda build
//! turns on `cpp` (see trainer/Cargo.toml), the default it reads.
//!
//! The list is `trainer/llvm-absent.txt` (how it was made is written there); the build script
//! writes one definition per name. Their signatures are not LLVM's: a symbol is all the linker
//! needs, and no call arrives.

// Defining C symbols is `unsafe` (`no_mangle`); nothing here calls anything.
#![allow(unsafe_code, non_snake_case, missing_docs)]

/// Says which LLVM function was called, and that this build has no LLVM; then aborts (an
/// `extern "C"` function must not unwind).
fn absent(name: &str) -> ! {
    eprintln!(
        "internal error: the LLVM function {name} was called, but this cuda build compiles kernels with NVRTC and \
         has no LLVM (trainer/src/llvm_absent.rs); please report it"
    );
    std::process::abort()
}

include!(concat!(env!("OUT_DIR"), "/llvm_absent.rs"));
