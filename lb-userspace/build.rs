//! Builds the XDP datapath (`lb-ebpf`) with nightly and bpf-linker, into OUT_DIR, so the
//! `lb` binary can embed it. `cargo xtask setup` installs both; without them the build stops
//! here with a message that says so.
use std::{
    env,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya_build::Toolchain;

const EBPF_PACKAGE: &str = "lb-ebpf";
/// The binaries of lb-ebpf that the `lb` binary embeds: the datapath and the backends' decap.
const EBPF_OBJECTS: [&str; 2] = ["lb", "decap"];
/// What the datapath is built from besides its own directory, which aya-build watches: the
/// types it shares with the userspace, and the workspace's manifest (its profile) and lock
/// (its dependencies' versions). Watched here rather than by making lb-ebpf a
/// build-dependency, which compiled it and aya-ebpf for the host for nothing else.
const DATAPATH_INPUTS: [&str; 3] = ["../lb-common", "../Cargo.toml", "../Cargo.lock"];

fn main() -> anyhow::Result<()> {
    for input in DATAPATH_INPUTS {
        println!("cargo:rerun-if-changed={input}");
    }
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
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let shared = shared_ebpf_dir(&out_dir);
    // aya-build builds into `$OUT_DIR/aya-build/target`: pointed at one directory for every
    // profile (check, dev, release, clippy), the datapath is built once, not once each.
    // Always `--release`; the nested cargo's lock serialises concurrent builds.
    std::fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    // Held until the objects are copied out: another profile's build script must not
    // rewrite them while this one reads them.
    let lock = lock_exclusive(&shared.join(".lock"))?;
    // SAFETY: a build script is single-threaded; nothing else reads the environment now.
    unsafe { env::set_var("OUT_DIR", &shared) };
    let built = aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    );
    // SAFETY: as above.
    unsafe { env::set_var("OUT_DIR", &out_dir) };
    built?;
    for object in EBPF_OBJECTS {
        let built = shared.join(object);
        // Absent only with AYA_BUILD_SKIP, which datapath_build_id reports.
        if built.exists() {
            std::fs::copy(&built, out_dir.join(object))
                .with_context(|| format!("copying {} into OUT_DIR", built.display()))?;
        }
    }
    drop(lock);
    datapath_build_id()
}

/// Opens and locks `path`; the lock goes with the file when it is dropped.
fn lock_exclusive(path: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("locking {}", path.display()));
    }
    Ok(file)
}

/// `<target>/lb-ebpf`, beside the profiles' directories: OUT_DIR is
/// `<target>/[<triple>/]<profile>/build/<crate>-<hash>/out`, so the directory above the
/// profile's is found by looking for `build` among its ancestors.
fn shared_ebpf_dir(out_dir: &Path) -> PathBuf {
    let profile_dir = out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "build"))
        .and_then(Path::parent);
    match profile_dir.and_then(Path::parent) {
        Some(target) => target.join("lb-ebpf"),
        // An unusual layout: keep the build per profile rather than guess.
        None => out_dir.to_owned(),
    }
}

/// `LB_DATAPATH_BUILD`: the first 12 hex digits of the SHA-256 of the embedded `lb` object,
/// so `lb --version` and `lb status` tell datapath builds apart whatever the package version.
fn datapath_build_id() -> anyhow::Result<()> {
    use sha2::Digest as _;
    let out_dir = env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
    let object = Path::new(&out_dir).join("lb");
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
    if env::var_os("AYA_BUILD_SKIP").is_some() {
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
