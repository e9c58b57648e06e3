//! Finds the protobuf descriptor set that the `envoy-types` crate ships beside its generated code
//! (`src/generated/types.bin`) and copies it into OUT_DIR, so that Envoy configuration can be read by
//! reflection with exactly the message definitions the Rust types were generated from.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

const ENVOY_TYPES_DIR: &str = "envoy-types-0.7.7";
const DESCRIPTORS: &str = "src/generated/types.bin";

fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(dir) = env::var("SLUICE_ENVOY_TYPES_DIR") {
        out.push(PathBuf::from(dir));
    }
    let cargo_home = env::var("CARGO_HOME")
        .map(PathBuf::from)
        .ok()
        .or_else(|| env::var("HOME").ok().map(|h| Path::new(&h).join(".cargo")));
    if let Some(home) = cargo_home {
        let src = home.join("registry").join("src");
        if let Ok(entries) = fs::read_dir(&src) {
            for e in entries.flatten() {
                out.push(e.path().join(ENVOY_TYPES_DIR));
            }
        }
    }
    // `cargo vendor` layout next to the workspace.
    if let Ok(manifest) = env::var("CARGO_MANIFEST_DIR") {
        out.push(
            Path::new(&manifest)
                .join("..")
                .join("vendor")
                .join("envoy-types"),
        );
    }
    out
}

/// Generate Sluice's own gRPC API (`sluice.control.v1`) with the protoc binary that the
/// `protoc-bin-vendored` package ships, so that no system protoc is needed. (A build script:
/// its `expect`s report a broken build environment; no runtime input reaches them.)
fn compile_api() {
    println!("cargo:rerun-if-changed=proto/sluice/control/v1/releases.proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .expect("protoc-bin-vendored ships protoc for this platform");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .compile_with_config(
            config,
            &["proto/sluice/control/v1/releases.proto"],
            &["proto"],
        )
        .expect("compile proto/sluice/control/v1/releases.proto");
}

fn main() {
    compile_api();
    println!("cargo:rerun-if-env-changed=SLUICE_ENVOY_TYPES_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts"));
    let found = candidates()
        .into_iter()
        .map(|dir| dir.join(DESCRIPTORS))
        .find(|p| p.is_file());
    let Some(path) = found else {
        panic!(
            "cannot find {ENVOY_TYPES_DIR}/{DESCRIPTORS}; run `cargo fetch` first or set SLUICE_ENVOY_TYPES_DIR"
        );
    };
    println!("cargo:rerun-if-changed={}", path.display());
    fs::copy(&path, out_dir.join("envoy_descriptors.bin"))
        .expect("copy descriptor set into OUT_DIR");
}
