//! Builds the XDP datapath (`lb-ebpf`) with nightly and bpf-linker, into OUT_DIR, so the
//! `lb` binary can embed it. `cargo xtask setup` installs both; without them the build stops
//! here with a message that says so.
use anyhow::{Context as _, anyhow, bail};
use aya_build::Toolchain;

const EBPF_PACKAGE: &str = "lb-ebpf";

fn main() -> anyhow::Result<()> {
    check_toolchain()?;
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package = metadata
        .packages
        .into_iter()
        .find(|package| package.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("{EBPF_PACKAGE} package not found in the workspace"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )?;
    datapath_build_id()
}

/// `LB_DATAPATH_BUILD`: the first 12 hex digits of the SHA-256 of the embedded `lb` object,
/// so `lb --version` and `lb status` tell datapath builds apart whatever the package version.
fn datapath_build_id() -> anyhow::Result<()> {
    use sha2::Digest as _;
    let out_dir = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
    let object = std::path::Path::new(&out_dir).join("lb");
    let id = match std::fs::read(&object) {
        Ok(bytes) => sha2::Sha256::digest(&bytes)
            .iter()
            .take(6)
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>(),
        // AYA_BUILD_SKIP without an object: nothing is embedded to identify.
        Err(_) => "unknown".to_owned(),
    };
    println!("cargo:rustc-env=LB_DATAPATH_BUILD={id}");
    Ok(())
}

/// Fails early with instructions instead of a cryptic linker error deep in the nested build.
fn check_toolchain() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        return Ok(());
    }
    match which::which("bpf-linker") {
        Ok(linker) => println!("cargo:rerun-if-changed={}", linker.display()),
        Err(_) => bail!(
            "bpf-linker was not found on PATH. The eBPF datapath needs it: \
             run `cargo xtask setup` once, or build with `cargo xtask build`."
        ),
    }
    Ok(())
}
