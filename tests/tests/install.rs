//! `cargo xtask install` and `cargo xtask package` as a newcomer runs them: the installed
//! tree file by file, the binary, man pages and completions working, the unit as systemd
//! reads it, and the package's files and fields, as lintian checks them. Needs cargo and
//! no root, but for `deb_lifecycle` (the package installed, upgraded and removed with
//! dpkg, its daemon in namespaces). With `--debug`: the tree, the unit and the package's
//! fields do not depend on the profile, and `cargo xtask test` builds the dev profile only.

mod deb_lifecycle;

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

/// The workspace root (this package lives one level below it).
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
}

/// `cargo xtask <args>` from the workspace root; panics with its stderr when it fails.
fn xtask(args: &[&str]) -> Output {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .arg("xtask")
        .args(args)
        .output()
        .expect("run cargo xtask");
    assert!(
        output.status.success(),
        "`cargo xtask {}` failed ({}):\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// One `cargo xtask install --prefix <tmp>` for the whole file.
fn installed() -> &'static Path {
    static PREFIX: OnceLock<tempfile::TempDir> = OnceLock::new();
    PREFIX
        .get_or_init(|| {
            let prefix = tempfile::tempdir().expect("tempdir");
            let text = prefix.path().to_str().expect("UTF-8 temporary path");
            xtask(&["install", "--debug", "--prefix", text]);
            prefix
        })
        .path()
}

/// Every file under `dir` (no directories), relative to it; a symlink or other special
/// file fails the test.
fn files_under(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, files: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                walk(root, &entry.path(), files);
            } else {
                assert!(kind.is_file(), "{} is not a file", entry.path().display());
                let relative = entry
                    .path()
                    .strip_prefix(root)
                    .expect("under root")
                    .to_owned();
                files.insert(relative.to_string_lossy().into_owned());
            }
        }
    }
    let mut files = BTreeSet::new();
    walk(dir, dir, &mut files);
    files
}

/// What an install puts under `prefix` (`lib/`, `share/`, `bin/`) and `etc` (relative).
fn expected_tree(prefix: &str, etc: &str) -> BTreeSet<String> {
    let mut files: BTreeSet<String> = [
        format!("{prefix}bin/lb"),
        format!("{prefix}lib/systemd/system/lb.service"),
        format!("{prefix}share/bash-completion/completions/lb"),
        format!("{prefix}share/zsh/site-functions/_lb"),
        format!("{prefix}share/fish/vendor_completions.d/lb.fish"),
        format!("{prefix}share/doc/lb/README.md.gz"),
        format!("{prefix}share/lb/grafana/lb.json"),
        format!("{etc}default/lb"),
        format!("{etc}lb/lb.toml"),
    ]
    .into();
    for page in lb_userspace::cli::manpages::page_names(&lb_userspace::cli::command()) {
        files.insert(format!("{prefix}share/man/man1/{page}.1.gz"));
    }
    files
}

fn run_ok(command: &mut Command) -> String {
    let output = command.output().expect("start the command");
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn install_puts_every_file_in_place_and_nothing_else() {
    let prefix = installed();
    assert_eq!(files_under(prefix), expected_tree("", "etc/"));
    let lb = prefix.join("bin/lb");
    let mode = std::fs::metadata(&lb).expect("bin/lb").permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "bin/lb is executable: {mode:o}");
    let version = run_ok(Command::new(&lb).arg("--version"));
    assert!(version.starts_with("lb "), "lb --version: {version}");
    for file in [
        "lib/systemd/system/lb.service",
        "etc/default/lb",
        "etc/lb/lb.toml",
    ] {
        let text = std::fs::read_to_string(prefix.join(file)).expect("read");
        assert!(
            !text.contains('@'),
            "a placeholder is left in {file}:\n{text}"
        );
    }
    // lb.toml and the man pages point to the README where it is installed.
    let readme = prefix.join("share/doc/lb/README.md.gz");
    let config = std::fs::read_to_string(prefix.join("etc/lb/lb.toml")).expect("lb.toml");
    assert!(config.contains(&readme.display().to_string()), "{config}");
    let page = run_ok(
        Command::new("gzip")
            .arg("-dc")
            .arg(prefix.join("share/man/man1/lb.1.gz")),
    );
    // roff writes a hyphen as `\-`.
    let in_roff = readme.display().to_string().replace('-', "\\-");
    assert!(page.contains(&in_roff), "no {in_roff} in lb.1:\n{page}");
    let text = run_ok(Command::new("gzip").arg("-dc").arg(&readme));
    assert!(text.starts_with("# lb"), "{text}");
}

#[test]
fn the_unit_runs_the_installed_binary_with_the_installed_files() {
    let prefix = installed();
    let unit = std::fs::read_to_string(prefix.join("lib/systemd/system/lb.service")).expect("unit");
    let (bin, etc) = (prefix.join("bin"), prefix.join("etc"));
    let lines: Vec<&str> = unit.lines().collect();
    let exec_start = format!(
        "ExecStart={}/lb run --config {}/lb/lb.toml --state /var/lib/lb/state.toml $LB_OPTS",
        bin.display(),
        etc.display()
    );
    for expected in [
        exec_start.as_str(),
        &format!("ExecReload={}/lb reload", bin.display()),
        &format!("EnvironmentFile=-{}/default/lb", etc.display()),
        "Type=notify",
        "NotifyAccess=main",
        "KillMode=mixed",
        "LimitMEMLOCK=infinity",
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN",
    ] {
        assert!(lines.contains(&expected), "no `{expected}` in:\n{unit}");
    }
}

#[test]
fn systemd_analyze_accepts_the_installed_unit() {
    let prefix = installed();
    let unit = prefix.join("lib/systemd/system/lb.service");
    // Documentation=man:lb(1) is checked too: against the installed pages.
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .env("MANPATH", prefix.join("share/man"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): `cargo xtask setup` installs it (Debian package systemd)")
        });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "systemd-analyze verify refused the unit:\n{stderr}"
    );
    assert!(
        !stderr.contains("lb.service"),
        "systemd-analyze verify warns about the unit:\n{stderr}"
    );
}

#[test]
fn every_man_page_parses_and_completions_name_the_subcommands() {
    let prefix = installed();
    for page in lb_userspace::cli::manpages::page_names(&lb_userspace::cli::command()) {
        let file = prefix.join(format!("share/man/man1/{page}.1.gz"));
        let roff = run_ok(Command::new("gzip").arg("-dc").arg(&file));
        assert!(
            roff.lines()
                .any(|l| l.starts_with(&format!(".TH {page} 1"))),
            "{page}: no .TH header:\n{roff}"
        );
        // groff's warnings (-ww) on stderr mean a page man would render wrong.
        let output = Command::new("sh")
            .arg("-c")
            .arg("gzip -dc \"$1\" | groff -man -Tutf8 -ww -z")
            .arg("sh")
            .arg(&file)
            .output()
            .expect("run groff");
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "groff on {page}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let top_level = ["run", "vip", "backend", "status", "down", "completions"];
    for (file, marker) in [
        ("share/bash-completion/completions/lb", "complete -F _lb"),
        ("share/zsh/site-functions/_lb", "#compdef lb"),
        ("share/fish/vendor_completions.d/lb.fish", "complete -c lb"),
    ] {
        let script = std::fs::read_to_string(prefix.join(file)).expect("completion script");
        assert!(script.contains(marker), "{file} has no `{marker}`");
        for command in top_level {
            assert!(
                script.contains(command),
                "{file} does not complete `{command}`"
            );
        }
    }
}

#[test]
fn lb_completions_prints_each_shell_and_refuses_an_unknown_one() {
    let lb = installed().join("bin/lb");
    for shell in ["bash", "zsh", "fish"] {
        let script = run_ok(Command::new(&lb).args(["completions", shell]));
        assert!(script.contains("vip"), "{shell}: {script}");
    }
    let refused = Command::new(&lb)
        .args(["completions", "tcsh"])
        .output()
        .expect("run lb");
    assert_eq!(refused.status.code(), Some(2), "clap's usage error");
    assert!(refused.stdout.is_empty(), "no script for an unknown shell");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("invalid value 'tcsh'") && stderr.contains("bash"),
        "the error names the value and the shells: {stderr}"
    );
}

#[test]
fn a_second_install_keeps_the_operators_files() {
    let prefix = tempfile::tempdir().expect("tempdir");
    let config = prefix.path().join("etc/lb/lb.toml");
    let environment = prefix.path().join("etc/default/lb");
    for (file, text) in [(&config, "# mine\n"), (&environment, "LB_IFACES=eth7\n")] {
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(file, text).expect("write");
    }
    let output = xtask(&[
        "install",
        "--debug",
        "--prefix",
        prefix.path().to_str().expect("UTF-8"),
    ]);
    assert_eq!(std::fs::read_to_string(&config).expect("read"), "# mine\n");
    assert_eq!(
        std::fs::read_to_string(&environment).expect("read"),
        "LB_IFACES=eth7\n"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("kept {}", config.display())),
        "{stderr}"
    );
    assert_eq!(files_under(prefix.path()), expected_tree("", "etc/"));
}

/// The package's own files beyond the install tree: Debian's documents.
const PACKAGE_DOCS: [&str; 2] = [
    "usr/share/doc/lb/copyright",
    "usr/share/doc/lb/changelog.gz",
];

/// One file of the package's data.
fn packaged_file(deb: &Path, path: &str) -> Vec<u8> {
    let output = Command::new("sh")
        .arg("-c")
        .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -xO \"$2\"")
        .arg("sh")
        .arg(deb)
        .arg(format!("./{path}"))
        .output()
        .expect("run dpkg-deb and tar");
    assert!(
        output.status.success() && !output.stdout.is_empty(),
        "no {path} in the package: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[test]
fn the_package_holds_the_install_tree_under_usr_and_passes_lintian() {
    let output = xtask(&["package", "--debug"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let deb = PathBuf::from(stdout.lines().last().expect("the .deb's path").trim());
    assert!(deb.is_file(), "{} is not a file", deb.display());
    assert_eq!(deb.extension().and_then(|e| e.to_str()), Some("deb"));
    // First: Debian's own verdict, before the checks of the parts it covers.
    lintian_finds_no_error_and_only_accepted_warnings(&deb);

    let arch = run_ok(Command::new("dpkg").arg("--print-architecture"));
    let field = |name: &str| {
        run_ok(
            Command::new("dpkg-deb")
                .args(["--field"])
                .arg(&deb)
                .arg(name),
        )
        .trim()
        .to_owned()
    };
    assert_eq!(field("Package"), "lb");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(field("Architecture"), arch.trim());
    assert!(!field("Installed-Size").is_empty());
    assert_eq!(
        field("Maintainer"),
        "lb developers <lb-dev@lists.example.org>"
    );
    // As dpkg-shlibdeps computes it: the C library and the unwinder.
    let depends = field("Depends");
    assert!(
        depends.starts_with("libc6 (>= ") && depends.contains("libgcc-s1"),
        "{depends}"
    );
    assert_eq!(field("Suggests"), "bash-completion");

    let listing = run_ok(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let mut files = BTreeSet::new();
    for line in listing.lines() {
        let columns: Vec<&str> = line.split_whitespace().collect();
        let (Some(mode), Some(owner), Some(path)) =
            (columns.first(), columns.get(1), columns.last())
        else {
            panic!("unexpected dpkg-deb line: {line}");
        };
        assert_eq!(*owner, "root/root", "{line}");
        if mode.starts_with('-') {
            files.insert(path.trim_start_matches("./").to_owned());
        }
        if path.ends_with("/bin/lb") {
            assert_eq!(*mode, "-rwxr-xr-x", "{line}");
        }
    }
    let mut expected = expected_tree("usr/", "etc/");
    expected.extend(PACKAGE_DOCS.map(str::to_owned));
    assert_eq!(files, expected);

    let info = |file: &str| run_ok(Command::new("dpkg-deb").arg("--info").arg(&deb).arg(file));
    assert_eq!(info("conffiles"), "/etc/default/lb\n/etc/lb/lb.toml\n");
    // Every file but the conffiles, as dh_md5sums lists them.
    let summed: BTreeSet<String> = info("md5sums")
        .lines()
        .map(|line| line.split_once("  ").expect("md5sums line").1.to_owned())
        .collect();
    let not_conffiles: BTreeSet<String> = files
        .iter()
        .filter(|f| !f.starts_with("etc/"))
        .cloned()
        .collect();
    assert_eq!(summed, not_conffiles);
    let postinst = info("postinst");
    assert!(
        postinst.contains("[ -d /run/systemd/system ]") && postinst.contains("daemon-reload"),
        "postinst reloads systemd only where it runs:\n{postinst}"
    );
    for script in ["postinst", "prerm", "postrm"] {
        run_ok(Command::new("sh").arg("-n").arg("-c").arg(info(script)));
    }
    let unit =
        String::from_utf8(packaged_file(&deb, "usr/lib/systemd/system/lb.service")).expect("UTF-8");
    assert!(
        unit.lines().any(|l| l == "ExecReload=/usr/bin/lb reload"),
        "{unit}"
    );
    assert!(
        unit.lines()
            .any(|l| l.starts_with("ExecStart=/usr/bin/lb run --config /etc/lb/lb.toml ")),
        "{unit}"
    );

    // Stripped, as dh_strip leaves a binary: no symbol table, no DWARF (rustc's
    // .debug_gdb_scripts is loaded data, not debug information: strip keeps it).
    let bin = packaged_file(&deb, "usr/bin/lb");
    let elf = object::File::parse(bin.as_slice()).expect("usr/bin/lb is ELF");
    let kept: Vec<&str> = object::Object::sections(&elf)
        .filter_map(|s| object::ObjectSection::name(&s).ok())
        .filter(|name| {
            *name == ".symtab" || (name.starts_with(".debug_") && *name != ".debug_gdb_scripts")
        })
        .collect();
    assert!(kept.is_empty(), "usr/bin/lb is not stripped: {kept:?}");

    // Debian's documents: a machine-readable copyright, a changelog of this version.
    let copyright =
        String::from_utf8(packaged_file(&deb, "usr/share/doc/lb/copyright")).expect("UTF-8");
    assert!(
        copyright.starts_with(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        ),
        "{copyright}"
    );
    for expected in [
        "License: Expat or Apache-2.0\n",
        "\nLicense: Expat\n",
        " aya 0.",
    ] {
        assert!(
            copyright.contains(expected),
            "no `{expected}`:\n{copyright}"
        );
    }
    assert!(
        !copyright.contains("@MAINTAINER@") && !copyright.contains("@CRATES@"),
        "a placeholder is left:\n{copyright}"
    );
    let changelog = tempfile::NamedTempFile::new().expect("temp file");
    let text = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -xO ./usr/share/doc/lb/changelog.gz | gzip -dc")
            .arg("sh")
            .arg(&deb),
    );
    std::fs::write(changelog.path(), text).expect("write");
    let version = run_ok(
        Command::new("dpkg-parsechangelog")
            .arg("-l")
            .arg(changelog.path())
            .args(["--show-field", "Version"]),
    );
    assert_eq!(version.trim(), env!("CARGO_PKG_VERSION"));
}

/// The warning tags docs/ARCHITECTURE.md accepts, in backquotes on its line
/// "Accepted lintian warnings: ..." (with why each stays).
fn accepted_lintian_warnings() -> Vec<String> {
    let architecture =
        std::fs::read_to_string(workspace_root().join("docs/ARCHITECTURE.md")).expect("read");
    let line = architecture
        .lines()
        .find_map(|line| line.strip_prefix("Accepted lintian warnings:"))
        .expect("docs/ARCHITECTURE.md has its line \"Accepted lintian warnings: ...\"");
    line.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// lintian (`cargo xtask setup` installs it): no error, and no warning that
/// docs/ARCHITECTURE.md does not accept.
fn lintian_finds_no_error_and_only_accepted_warnings(deb: &Path) {
    let output = Command::new("lintian")
        .arg(deb)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run lintian ({e}): `cargo xtask setup` installs it (Debian package lintian)"
            )
        });
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.code().is_some_and(|code| code <= 2),
        "lintian did not run ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !report.lines().any(|l| l.starts_with("E: ")),
        "lintian errors:\n{report}"
    );
    let accepted = accepted_lintian_warnings();
    for warning in report.lines().filter(|l| l.starts_with("W: ")) {
        let tag = warning
            .split_whitespace()
            .nth(2)
            .unwrap_or_else(|| panic!("a lintian line without a tag: {warning}"));
        assert!(
            accepted.iter().any(|a| a == tag),
            "lintian warns `{warning}`: fix it, or accept it in docs/ARCHITECTURE.md \
             (\"Accepted lintian warnings\") with why it stays"
        );
    }
}

#[test]
fn the_shipped_config_is_valid_as_shipped_and_with_its_examples_uncommented() {
    let path = workspace_root().join("dist/lb.toml");
    let shipped = std::fs::read_to_string(&path).expect("dist/lb.toml");
    let state = lb_userspace::model::config::parse(&shipped, &path).expect("valid as shipped");
    assert!(state.vips.is_empty(), "the shipped file declares nothing");
    // Examples are `#key = ...` and indented `#  { ... }`; prose is `# text`, `## text`.
    let examples: String = shipped
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with("  ") => rest,
            Some(rest) if !rest.is_empty() && !rest.starts_with([' ', '#']) => rest,
            _ => line,
        })
        .flat_map(|line| [line, "\n"])
        .collect();
    let (state, cluster) = lb_userspace::model::config::parse_with_cluster(&examples, &path)
        .unwrap_or_else(|e| panic!("the examples do not validate: {e}\n{examples}"));
    assert!(cluster.hash_seed.is_some() && cluster.announce_table == Some(4242));
    assert_eq!(state.vips.len(), 2, "{examples}");
    let backends: usize = state.vips.values().map(|v| v.backends.len()).sum();
    assert_eq!(backends, 5, "{examples}");
    assert!(
        state.vips.values().any(|v| !v.quic.is_empty()),
        "the QUIC example: {examples}"
    );
}
