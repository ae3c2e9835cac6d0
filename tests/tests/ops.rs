//! Running lb as an operator does (issue 19): logs a collector can read, listings that end
//! quietly when their reader goes away, `--watch` in a pipe, map sizes and the kernel
//! memory they take, `lb check-config`, and which build the CLI and the daemon are.
//! Most tests need root (a daemon in a namespace); `check-config` does not.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixListener,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use lb_tests::process::{Instance, lb_binary};
use serde_json::Value;

use lb_tests::pair::PairLab as Lab;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The complete lines of a log read while its writer may still be mid-line.
fn complete_lines(log: &str) -> Vec<&str> {
    match log.rfind('\n') {
        Some(end) => log[..end].lines().collect(),
        None => Vec::new(),
    }
}

const ESC: char = '\u{1b}';

#[test]
fn the_log_has_no_colour_codes_off_a_terminal_and_json_lines_parse() {
    lb_tests::require_root!();
    let lab = Lab::new();
    let daemon = lab.start(&["--conntrack-size", "4096", "--max-vips", "4"]);
    lab.instance.ok(&["vip", "add", "198.18.1.1:80"]);
    // A refused request and the sweeps log too.
    lab.instance.fails(&["vip", "add", "198.18.1.1:80"]);
    // The change is logged before the daemon answers; its line reaches us through a pipe.
    let log = daemon.wait_for_log(" applied", 1, Duration::from_secs(5));
    let (status, _) = daemon.terminate();
    assert!(status.success());
    let lines = complete_lines(&log);
    assert!(lines.len() >= 3, "the daemon logged its start: {log}");
    assert!(
        !log.contains(ESC),
        "a log on a pipe carries no escape codes: {log:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("INFO") && l.contains("attached")),
        "text lines name their level: {log}"
    );

    // Restarted with JSON logs (it adopts the pinned datapath): every line is an object.
    let daemon = lab.start(&["--log-format", "json"]);
    lab.instance.ok(&["vip", "add", "198.18.1.2:80"]);
    let log = daemon.wait_for_log("\"message\":\"applied\"", 1, Duration::from_secs(5));
    let lines = complete_lines(&log);
    assert!(lines.len() >= 3, "the daemon logged its start: {log}");
    for line in &lines {
        let object: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        for field in ["timestamp", "level", "target"] {
            assert!(object[field].is_string(), "no {field}: {line}");
        }
        assert!(
            object["fields"]["message"].is_string(),
            "no message: {line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"level\":\"INFO\"") && l.contains("attached")),
        "{log}"
    );
    assert!(!log.contains(ESC), "{log:?}");
    drop(daemon);
    lab.instance.down();
}

/// `[[vip]]` entries for `vips` VIPs of `per_vip` backends each.
fn many_backends(vips: u8, per_vip: u8) -> String {
    let mut file = String::new();
    for v in 0..vips {
        file.push_str(&format!(
            "[[vip]]\naddress = \"198.18.1.{}:80\"\nbackends = [\n",
            v + 1
        ));
        for b in 0..per_vip {
            file.push_str(&format!(
                "  {{ address = \"198.19.{v}.{}:8080\" }},\n",
                b + 1
            ));
        }
        file.push_str("]\n\n");
    }
    file
}

/// `lb <args> | head -1` through a shell: lb's own exit status, its stderr, and what
/// head printed.
fn piped_to_head(instance: &Instance, args: &[&str]) -> (String, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (status_file, err_file) = (dir.path().join("status"), dir.path().join("stderr"));
    let script = format!(
        "{{ \"$0\" --api \"$1\" {} 2>'{}'; echo $? >'{}'; }} | head -1",
        args.join(" "),
        err_file.display(),
        status_file.display()
    );
    let output = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(lb_binary())
        .arg(&instance.api)
        .output()
        .expect("run the pipeline");
    assert!(output.status.success(), "the pipeline ran");
    let read = |path: &Path| std::fs::read_to_string(path).expect("read");
    (
        read(&status_file).trim().to_owned(),
        read(&err_file),
        text(&output.stdout),
    )
}

#[test]
fn a_listing_whose_reader_closes_the_pipe_ends_quietly_with_status_0() {
    lb_tests::require_root!();
    let lab = Lab::new();
    let config = tempfile::Builder::new()
        .prefix("lb-many-backends-")
        .suffix(".toml")
        .tempfile()
        .expect("config file");
    std::fs::write(config.path(), many_backends(16, 125)).expect("write config");
    let _daemon = lab.start(&["--config", config.path().to_str().expect("utf-8")]);
    for args in [&["backend", "list"][..], &["backend", "list", "--json"]] {
        let whole = lab.instance.ok(args);
        let (status, stderr, head) = piped_to_head(&lab.instance, args);
        assert_eq!(
            status,
            "0",
            "`lb {}` exits 0 when head closes the pipe: {stderr}",
            args.join(" ")
        );
        assert_eq!(stderr, "", "`lb {}` says nothing", args.join(" "));
        assert_eq!(
            head.lines().next(),
            whole.lines().next(),
            "head got the first line"
        );
        // Longer than a pipe holds (64 KiB) and what head reads at once: lb was still
        // writing when head left, so the broken pipe was met, not raced past.
        assert!(whole.len() > 128 << 10, "{} bytes", whole.len());
        eprintln!(
            "`lb {} | head -1`: exit {status}, stderr empty, of {} bytes",
            args.join(" "),
            whole.len()
        );
    }
    // A broken pipe elsewhere still fails: no daemon behind the socket is an error.
    let nobody = Instance::new();
    let (status, stderr, _) = piped_to_head(&nobody, &["backend", "list"]);
    assert_eq!(status, "1", "{stderr}");
    assert!(stderr.contains("no lb daemon is listening"), "{stderr}");
    lab.instance.down();
}

#[test]
fn stats_watch_in_a_pipe_prints_plain_frames() {
    lb_tests::require_root!();
    let lab = Lab::new();
    let _daemon = lab.start(&[]);
    lab.instance.ok(&["vip", "add", "198.18.1.1:80"]);
    lab.instance
        .ok(&["backend", "add", "198.18.1.1:80", "198.19.0.1:8080"]);
    let output = lab
        .instance
        .cli(&["stats", "--watch", "--interval", "0.2", "--count", "3"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let frames = text(&output.stdout);
    assert!(
        !output.stdout.contains(&0x1b),
        "no escape codes in a pipe: {frames:?}"
    );
    let headers = frames.lines().filter(|l| l.starts_with("--- ")).count();
    assert_eq!(headers, 3, "one timestamp line per frame:\n{frames}");
    assert_eq!(
        frames.matches("198.19.0.1:8080").count(),
        3,
        "each frame lists the backend:\n{frames}"
    );
    lab.instance.down();
}

/// `bpftool -j <args>`, parsed.
fn bpftool(args: &[&str]) -> Value {
    let output = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool is installed (cargo xtask setup)");
    assert!(
        output.status.success(),
        "bpftool {}: {}",
        args.join(" "),
        text(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("bpftool -j prints JSON")
}

/// The programs of the datapath pinned in `pin_dir`: the one attached through `link_<if>`
/// and those registered in its JUMPS map (a program array dumps program ids).
fn datapath_programs(pin_dir: &Path, iface: &str) -> Vec<u64> {
    let pinned = |name: &str| pin_dir.join(name).to_string_lossy().into_owned();
    let link = bpftool(&["link", "show", "pinned", &pinned(&format!("link_{iface}"))]);
    let mut programs = vec![link["prog_id"].as_u64().expect("the link's prog_id")];
    let jumps = bpftool(&["map", "dump", "pinned", &pinned("JUMPS")]);
    for entry in jumps.as_array().expect("JUMPS entries") {
        let bytes: Vec<u8> = entry["value"]
            .as_array()
            .expect("a value of bytes")
            .iter()
            .map(|b| {
                let hex = b.as_str().expect("a hex byte");
                u8::from_str_radix(hex.trim_start_matches("0x"), 16).expect("hex")
            })
            .collect();
        let id = u32::from_le_bytes(bytes.try_into().expect("a 4-byte program id"));
        programs.push(u64::from(id));
    }
    programs
}

/// The ids of the maps called `name` that the datapath's programs use (the attached `lb`
/// and the tail-called ones in JUMPS).
fn map_ids_named(pin_dir: &Path, iface: &str, name: &str) -> Vec<u64> {
    let mut ids: Vec<u64> = datapath_programs(pin_dir, iface)
        .into_iter()
        .flat_map(|program| {
            bpftool(&["prog", "show", "id", &program.to_string()])["map_ids"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|id| id.as_u64())
        })
        .filter(|id| bpftool(&["map", "show", "id", &id.to_string()])["name"] == name)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The id of the map pinned at `pin_dir/name`.
fn pinned_map_id(pin_dir: &Path, name: &str) -> u64 {
    let path = pin_dir.join(name).to_string_lossy().into_owned();
    bpftool(&["map", "show", "pinned", &path])["id"]
        .as_u64()
        .expect("a map id")
}

/// During a restart the pinned JUMPS map holds the new load's `lb_encap` and `lb_too_big`
/// while the interface still runs the old `lb`: the old `lb` hands them their arguments
/// through ENCAP_ARGS and TOO_BIG_ARGS, so every load must use the one pinned map of each.
/// Also: a pin directory of the previous release (without these two pins) is adopted, the
/// two maps created and pinned, and `lb down` removes them with the rest.
#[test]
fn a_restart_keeps_the_tail_calls_argument_maps_shared_by_old_and_new_programs() {
    lb_tests::require_root!();
    let lab = Lab::new();
    let pin_dir = lab.instance.pin_dir.clone();
    let args = ["ENCAP_ARGS", "TOO_BIG_ARGS"];
    let ids = |when: &str| {
        args.map(|name| {
            let used = map_ids_named(&pin_dir, &lab.lb_if, name);
            let pinned = pinned_map_id(&pin_dir, name);
            assert_eq!(
                used,
                [pinned],
                "{when}: every program uses the pinned {name} (id {pinned})"
            );
            pinned
        })
    };
    let daemon = lab.start(&[]);
    let programs = datapath_programs(&pin_dir, &lab.lb_if);
    let first = ids("first start");
    let (status, _) = daemon.terminate();
    assert!(status.success());

    let daemon = lab.start(&[]);
    let restarted = datapath_programs(&pin_dir, &lab.lb_if);
    assert!(
        restarted.iter().all(|p| !programs.contains(p)),
        "a new load: {programs:?} then {restarted:?}"
    );
    assert_eq!(
        ids("after a restart"),
        first,
        "the old programs' maps are the new programs' maps"
    );
    let (status, _) = daemon.terminate();
    assert!(status.success());

    // The previous release pinned neither: its pin directory is adopted as it is.
    for name in args {
        std::fs::remove_file(pin_dir.join(name)).expect("remove the pin");
    }
    let daemon = lab.start(&[]);
    let recreated = ids("adopting a pin directory without them");
    assert!(
        recreated.iter().all(|id| !first.contains(id)),
        "created anew"
    );
    lab.instance.down();
    drop(daemon);
    let left: Vec<_> = std::fs::read_dir(&pin_dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "lb down left pins: {left:?}");
    lb_tests::loud(&format!(
        "ops: ENCAP_ARGS and TOO_BIG_ARGS ids {first:?} shared across a restart; \
         recreated as {recreated:?} when missing"
    ));
}

/// The kernel's memlock of every map the datapath's programs use, by map name, as
/// bpftool reports them.
fn memlock_by_bpftool(pin_dir: &Path, iface: &str) -> Vec<(String, u64)> {
    let mut ids: Vec<u64> = datapath_programs(pin_dir, iface)
        .into_iter()
        .flat_map(|program| {
            bpftool(&["prog", "show", "id", &program.to_string()])["map_ids"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|id| id.as_u64())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert!(ids.len() > 10, "bpftool lists the datapath's maps: {ids:?}");
    let mut maps: Vec<(String, u64)> = ids
        .iter()
        .map(|id| {
            let map = bpftool(&["map", "show", "id", &id.to_string()]);
            (
                map["name"].as_str().unwrap_or_default().to_owned(),
                map["bytes_memlock"].as_u64().expect("bytes_memlock"),
            )
        })
        .collect();
    maps.sort();
    maps
}

/// `lb status --json`'s map memory: the total and each map by name.
fn reported_memory(status: &Value) -> (u64, Vec<(String, u64)>) {
    let memory = &status["map_memory"];
    let mut maps: Vec<(String, u64)> = memory["maps"]
        .as_array()
        .unwrap_or_else(|| panic!("no map_memory in status: {status}"))
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_owned(),
                m["bytes"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    maps.sort();
    (memory["total_bytes"].as_u64().expect("total_bytes"), maps)
}

fn bytes_of<'a>(maps: &'a [(String, u64)], name: &str) -> &'a u64 {
    &maps
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no map {name} in {maps:?}"))
        .1
}

#[test]
fn sizes_shape_the_maps_and_status_reports_their_memory_as_the_kernel_does() {
    lb_tests::require_root!();
    let lab = Lab::new();
    let sizes = [
        "--table-size",
        "1009",
        "--max-vips",
        "4",
        "--max-backends",
        "64",
    ];
    let mut first = sizes.to_vec();
    first.extend(["--conntrack-size", "65536"]);
    let daemon = lab.start(&first);
    let status = lab.status();
    assert_eq!(
        (
            &status["table_size"],
            &status["max_vips"],
            &status["max_backends"],
            &status["conntrack_capacity"]
        ),
        (
            &Value::from(1009),
            &Value::from(4),
            &Value::from(64),
            &Value::from(65536)
        ),
        "{status}"
    );
    let (total, reported) = reported_memory(&status);
    let kernel = memlock_by_bpftool(&lab.instance.pin_dir, &lab.lb_if);
    assert_eq!(reported, kernel, "per map, lb status against bpftool");
    assert_eq!(total, kernel.iter().map(|(_, b)| b).sum::<u64>());
    // The sizes reached the maps: 8 bytes a Maglev slot, 2 tables of 1009 per VIP.
    assert!(*bytes_of(&reported, "MAGLEV") >= 4 * 2 * 1009 * 8);
    assert!(*bytes_of(&reported, "MAGLEV") < 2 * 4 * 2 * 1009 * 8);
    let max_entries = |name: &str| {
        let map = bpftool(&[
            "map",
            "show",
            "pinned",
            &lab.instance.pin_dir.join(name).to_string_lossy(),
        ]);
        map["max_entries"].as_u64().expect("max_entries")
    };
    assert_eq!(max_entries("BACKENDS"), 64);
    assert_eq!(max_entries("BACKEND_STATS"), 64);
    assert_eq!(max_entries("ENDPOINTS"), 128);
    assert_eq!(max_entries("VIPS"), 8);
    assert_eq!(max_entries("CONNTRACK"), 65536);
    let log = daemon.stderr();
    assert!(
        log.contains("maps: ") && log.contains("of kernel memory (CONNTRACK"),
        "the figure is logged at start: {log}"
    );
    let text_status = lab.instance.ok(&["status"]);
    assert!(text_status.contains("of kernel memory"), "{text_status}");

    // Bad sizes change nothing: each is refused before the pinned datapath is touched.
    let (status, _) = daemon.terminate();
    assert!(status.success());
    assert!(lab.lb.has_xdp(), "the pinned datapath still forwards");
    for (args, reason) in [
        (
            vec!["--max-backends", "128"],
            "created with --max-backends 64, not 128",
        ),
        (vec!["--max-vips", "8"], "created with --max-vips 4, not 8"),
        (vec!["--max-vips", "0"], "--max-vips"),
        (vec!["--max-backends", "65537"], "--max-backends"),
        (vec!["--max-backends", "many"], "--max-backends"),
        (
            vec!["--max-vips", "1024", "--table-size", "1048573"],
            "Maglev slots",
        ),
    ] {
        let output = lab.lb_run(&args).output().expect("run lb");
        let stderr = text(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(reason),
            "{args:?}: {stderr}"
        );
        assert!(lab.lb.has_xdp(), "{args:?} left the datapath attached");
    }
    // Without size flags, the pinned sizes are adopted.
    let daemon = lab.start(&[]);
    assert_eq!(lab.status()["max_backends"], 64);
    drop(daemon);
    lab.instance.down();

    // A smaller conntrack table takes less memory, and only the two conntrack tables, the
    // proven-flow filter and the unproven rings shrink (the unproven table is a quarter of
    // the proven one, the filter 4 bits per proven slot, the rings as the unproven table).
    let mut second = sizes.to_vec();
    second.extend(["--conntrack-size", "16384"]);
    let daemon = lab.start(&second);
    let (smaller_total, smaller) = reported_memory(&lab.status());
    assert_eq!(
        smaller,
        memlock_by_bpftool(&lab.instance.pin_dir, &lab.lb_if)
    );
    assert!(
        bytes_of(&smaller, "CONNTRACK") < bytes_of(&reported, "CONNTRACK"),
        "{smaller:?} against {reported:?}"
    );
    assert!(
        bytes_of(&smaller, "CT_UNPROVEN") < bytes_of(&reported, "CT_UNPROVEN"),
        "{smaller:?} against {reported:?}"
    );
    assert!(
        bytes_of(&smaller, "PROVEN_FILTER") < bytes_of(&reported, "PROVEN_FILTER"),
        "{smaller:?} against {reported:?}"
    );
    assert_eq!(
        total - smaller_total,
        ["CONNTRACK", "CT_UNPROVEN", "PROVEN_FILTER", "UNPROVEN_RING"]
            .map(|map| bytes_of(&reported, map) - bytes_of(&smaller, map))
            .iter()
            .sum::<u64>(),
        "only CONNTRACK, CT_UNPROVEN, PROVEN_FILTER and UNPROVEN_RING changed"
    );
    lb_tests::loud(&format!(
        "map memory: {total} bytes with --conntrack-size 65536, {smaller_total} with 16384 \
         (CONNTRACK {} -> {})",
        bytes_of(&reported, "CONNTRACK"),
        bytes_of(&smaller, "CONNTRACK")
    ));
    drop(daemon);
    lab.instance.down();
}

/// A config file that lives as long as the test.
fn config_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new()
        .prefix("lb-check-")
        .suffix(".toml")
        .tempfile()
        .expect("config file");
    std::fs::write(file.path(), text).expect("write config");
    file
}

fn check_config(path: &Path) -> Output {
    Command::new(lb_binary())
        .arg("check-config")
        .arg(path)
        // The message alone: the backtrace of where it was raised differs by command.
        .env("RUST_LIB_BACKTRACE", "0")
        .output()
        .expect("run lb check-config")
}

const GOOD_CONFIG: &str = "[cluster]
hash_seed = \"00000000deadbeef\"

[[vip]]
address = \"198.18.1.1:80\"
check = { probe = \"http:/healthz\" }
backends = [
  { address = \"198.18.2.2:8080\", weight = 200 },
  { address = \"198.18.2.3:8080\", drain = true },
]

[[vip]]
address = \"[fd00::1]:53\"
proto = \"udp\"
mode = \"dsr-ipip\"
backends = [{ address = \"[fd00::2:2]:53\" }]
";

/// Bad files, each with the line its error must name and a word of the reason.
const BAD_CONFIGS: [(&str, &str, usize, &str); 6] = [
    (
        "TOML syntax",
        "[[vip]]\naddress = \"198.18.1.1:80\"\nbackends = [\n  { address = \"198.18.2.2:80\" \n]\n",
        4,
        "",
    ),
    (
        "unknown key",
        "[[vip]]\naddress = \"198.18.1.1:80\"\ncolour = \"blue\"\n",
        3,
        "colour",
    ),
    (
        "bad address",
        "[[vip]]\naddress = \"198.18.1.1:80\"\nbackends = [\n  { address = \"198.18.2.300:80\" },\n]\n",
        4,
        "",
    ),
    (
        "duplicate backend",
        "[[vip]]\naddress = \"198.18.1.1:80\"\nbackends = [\n  { address = \"198.18.2.2:80\" },\n  { address = \"198.18.2.2:80\" },\n]\n",
        5,
        "already",
    ),
    (
        "bad weight",
        "[[vip]]\naddress = \"198.18.1.1:80\"\nbackends = [\n  { address = \"198.18.2.2:80\", weight = 0 },\n]\n",
        4,
        "weight",
    ),
    (
        "bad cluster seed",
        "[cluster]\nannounce_table = 4242\nhash_seed = \"not-hex\"\n",
        3,
        "hex",
    ),
];

#[test]
fn check_config_summarises_a_good_file_and_names_the_line_of_each_bad_one() {
    let good = config_file(GOOD_CONFIG);
    let output = check_config(good.path());
    let summary = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        summary.contains("is valid: 2 VIPs, 3 backends"),
        "{summary}"
    );
    for part in [
        "198.18.1.1:80/tcp",
        "nat",
        "2 (1 draining)",
        "http:/healthz",
        "[fd00::1]:53/udp",
        "dsr-ipip",
        "hash seed set",
    ] {
        assert!(summary.contains(part), "{part}: {summary}");
    }
    for (class, body, line, reason) in BAD_CONFIGS {
        let file = config_file(body);
        let output = check_config(file.path());
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{class}: {stderr}");
        assert!(output.stdout.is_empty(), "{class}: nothing on stdout");
        let at = format!("{}:{line}: ", file.path().display());
        assert!(
            stderr.contains(&at) && stderr.contains(reason),
            "{class}: wants `{at}` and `{reason}`: {stderr}"
        );
        assert_eq!(
            std::fs::read_to_string(file.path()).expect("still there"),
            body,
            "{class}: the file is left as it was"
        );
    }
    let missing = check_config(Path::new("/nonexistent/lb.toml"));
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("cannot read /nonexistent/lb.toml"));
}

#[test]
fn lb_run_refuses_a_bad_config_with_the_words_of_check_config() {
    lb_tests::require_root!();
    let lab = Lab::new();
    for (class, body, _, _) in BAD_CONFIGS {
        let file = config_file(body);
        let checked = text(&check_config(file.path()).stderr);
        let output = lab
            .lb_run(&["--config", file.path().to_str().expect("utf-8")])
            .env("RUST_LIB_BACKTRACE", "0")
            .output()
            .expect("run lb");
        assert!(!output.status.success(), "{class}");
        assert_eq!(
            text(&output.stderr),
            checked,
            "{class}: one reading, one error"
        );
        assert!(!lab.lb.has_xdp(), "{class}: nothing attached");
    }
}

/// `lb --version`: "lb 0.1.0 (datapath 3f2a9c1b7d4e)", as (version, datapath build).
fn own_version() -> (String, String) {
    let output = Command::new(lb_binary())
        .arg("--version")
        .output()
        .expect("lb --version");
    assert!(output.status.success());
    let line = text(&output.stdout);
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["lb", version, "(datapath", build] if build.ends_with(')') => {
            let build = build.trim_end_matches(')');
            assert_eq!(build.len(), 12, "{line}");
            assert!(build.chars().all(|c| c.is_ascii_hexdigit()), "{line}");
            ((*version).to_owned(), build.to_owned())
        }
        _ => panic!("`lb --version` printed {line:?}"),
    }
}

/// A stand-in daemon on `socket` that answers every request with `status` (one
/// connection at a time, until the test ends).
fn fake_daemon(socket: &Path, status: Value) {
    let listener = UnixListener::bind(socket).expect("bind the fake daemon's socket");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = String::new();
            if BufReader::new(&stream).read_line(&mut request).is_err() {
                continue;
            }
            let answer = serde_json::json!({ "ok": true, "version": 1, "result": status });
            // A client that left is its own test's failure, seen there.
            writeln!(stream, "{answer}").unwrap_or_default();
        }
    });
}

#[test]
fn status_warns_when_the_daemon_is_another_build_and_not_when_it_is_the_same() {
    lb_tests::require_root!();
    let (version, build) = own_version();
    let lab = Lab::new();
    let _daemon = lab.start(&[]);
    let output = lab.instance.cli(&["status"]);
    assert!(output.status.success());
    assert_eq!(text(&output.stderr), "", "the same build: no warning");
    assert!(
        text(&output.stdout).starts_with(&format!("lb {version} (datapath {build}) running")),
        "{}",
        text(&output.stdout)
    );
    let mut status = lab.status();
    assert_eq!(status["version"], version.as_str());
    assert_eq!(status["datapath_build"], build.as_str());

    // The same answer from a daemon of another release.
    status["version"] = "0.0.1-older".into();
    status["datapath_build"] = "0123456789ab".into();
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("older.sock");
    fake_daemon(&socket, status);
    let socket_arg = socket.to_str().expect("utf-8");
    for args in [&["status"][..], &["status", "--json"]] {
        let output = Command::new(lb_binary())
            .args(["--api", socket_arg])
            .args(args)
            .output()
            .expect("run lb status");
        let stderr = text(&output.stderr);
        assert!(
            output.status.success(),
            "a warning, not a failure: {stderr}"
        );
        assert!(
            stderr.contains("WARN")
                && stderr.contains("the daemon runs lb 0.0.1-older (datapath 0123456789ab)")
                && stderr.contains(&format!("this is lb {version} (datapath {build})")),
            "{stderr}"
        );
        assert!(!stderr.contains(ESC), "{stderr:?}");
    }
    // On a terminal the warning is coloured, unless NO_COLOR says otherwise.
    let on_terminal = |no_color: bool| {
        let mut command = Command::new("script");
        command
            .args(["-qec"])
            .arg(format!(
                "{} --api {socket_arg} status",
                lb_binary().display()
            ))
            .arg("/dev/null")
            .stdin(Stdio::null());
        if no_color {
            command.env("NO_COLOR", "1");
        } else {
            command.env_remove("NO_COLOR");
        }
        let started = Instant::now();
        let output = command.output().expect("run lb under script");
        assert!(started.elapsed() < Duration::from_secs(30));
        text(&output.stdout)
    };
    let coloured = on_terminal(false);
    assert!(
        coloured.contains("the daemon runs lb 0.0.1-older") && coloured.contains(ESC),
        "{coloured:?}"
    );
    let plain = on_terminal(true);
    assert!(
        plain.contains("the daemon runs lb 0.0.1-older") && !plain.contains(ESC),
        "{plain:?}"
    );
    lab.instance.down();
}
