//! The notify hook (`lb run --notify`, `[notify]` in --config): a backend whose health
//! check fails and recovers has the command run once per change, with the VIP, the
//! backend, the old and the new state, in order; the log and the metrics say the same.
//! Needs root.

use std::{
    net::{SocketAddr, TcpListener},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_tests::{
    metrics::{sample, scrape},
    pair::PairLab,
    process::{FAST_CHECK, FAST_CHECK_FALL},
};

const VIP: &str = "198.18.1.1:80";

/// A hook that appends its arguments and two of its variables to `runs`, one line a run.
fn recording_hook(dir: &Path, runs: &Path) -> PathBuf {
    let path = dir.join("record-hook");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$* proto=$LB_PROTO new=$LB_NEW_STATE\" >> {}\n",
            runs.display()
        ),
    )
    .expect("write the hook");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn lines(runs: &Path) -> Vec<String> {
    std::fs::read_to_string(runs)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until the hook has run `count` times in all; every run so far.
fn wait_for_runs(runs: &Path, count: usize) -> Vec<String> {
    lb_tests::eventually(
        FAST_CHECK_FALL + Duration::from_secs(5),
        &format!("{count} run(s) of the notify hook"),
        || {
            let seen = lines(runs);
            if seen.len() >= count {
                Ok(seen)
            } else {
                Err(seen)
            }
        },
    )
}

/// The backend: a TCP listener on the client's side of the pair (the check only connects).
fn listen(lab: &PairLab, port: u16) -> TcpListener {
    lab.client
        .enter(|| TcpListener::bind(("198.18.0.1", port)))
        .expect("listen for the health check")
}

/// A pair lab, a directory for the hook and its record of runs.
struct HookLab {
    lab: PairLab,
    dir: tempfile::TempDir,
    runs: PathBuf,
    hook: PathBuf,
}

impl HookLab {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let runs = dir.path().join("runs");
        let hook = recording_hook(dir.path(), &runs);
        Self {
            lab: PairLab::new(),
            dir,
            runs,
            hook,
        }
    }
}

#[test]
fn a_failing_backend_runs_the_hook_once_per_change_with_vip_backend_and_states() {
    lb_tests::require_root!();
    let HookLab {
        lab,
        dir: _dir,
        runs,
        hook,
    } = HookLab::new();
    let hook_arg = hook.to_string_lossy().into_owned();
    let metrics: SocketAddr = "127.0.0.1:9465".parse().expect("addr");
    let metrics_arg = metrics.to_string();
    let daemon = lab.start(&["--notify", &hook_arg, "--metrics", &metrics_arg]);

    let listener = listen(&lab, 0);
    let port = listener.local_addr().expect("bound").port();
    let backend = format!("198.18.0.1:{port}");
    lab.instance
        .ok(&[&["vip", "add", VIP, "--check", "tcp"][..], &FAST_CHECK].concat());
    lab.instance.ok(&["backend", "add", VIP, &backend]);
    lab.instance
        .wait_for_health(&backend, "up", Duration::from_secs(3));

    // Down, up, down again: three changes, each run once, in order (runs are serial, so a
    // run repeated for an earlier change comes before the third's).
    let limit = FAST_CHECK_FALL + Duration::from_secs(2);
    drop(listener);
    lab.instance.wait_for_health(&backend, "down", limit);
    let listener = listen(&lab, port);
    lab.instance.wait_for_health(&backend, "up", limit);
    drop(listener);
    lab.instance.wait_for_health(&backend, "down", limit);
    let seen = wait_for_runs(&runs, 3);
    let expected: Vec<String> = [("up", "down"), ("down", "up"), ("up", "down")]
        .iter()
        .map(|(from, to)| format!("{VIP} {backend} {from} {to} proto=tcp new={to}"))
        .collect();
    assert_eq!(seen, expected, "one run per change, with its arguments");

    // The same changes as log events and as a metric.
    let log = daemon.wait_for_log("notify hook ran", 3, Duration::from_secs(5));
    assert_eq!(
        log.matches("backend down: no new flows").count(),
        2,
        "{log}"
    );
    assert_eq!(
        log.matches("backend up: takes new flows again").count(),
        1,
        "{log}"
    );
    assert!(log.contains("from=up to=down"), "{log}");
    let text = scrape(&lab.lb, metrics);
    let labels =
        |to: &str| format!("vip=\"{VIP}\",proto=\"tcp\",backend=\"{backend}\",to=\"{to}\"");
    assert_eq!(
        sample(&text, "lb_backend_health_changes_total", &labels("down")),
        2
    );
    assert_eq!(
        sample(&text, "lb_backend_health_changes_total", &labels("up")),
        1
    );
    assert_eq!(sample(&text, "lb_notify_runs_total", "result=\"ok\""), 3);
    let status = lab.status();
    assert_eq!(status["notify"]["runs"]["ok"], 3, "{status}");
    assert_eq!(lines(&runs).len(), 3, "no run after the last change");
    lab.instance.down();
}

#[test]
fn the_config_files_hook_takes_arguments_is_reloaded_and_its_failures_are_counted() {
    lb_tests::require_root!();
    let HookLab {
        lab,
        dir,
        runs,
        hook,
    } = HookLab::new();
    let listener = listen(&lab, 0);
    let port = listener.local_addr().expect("bound").port();
    let backend = format!("198.18.0.1:{port}");
    let config = dir.path().join("lb.toml");
    let write_config = |notify: &str| {
        std::fs::write(
            &config,
            format!(
                "{notify}\n[[vip]]\naddress = \"{VIP}\"\n\
                 check = {{ probe = \"tcp\", interval = 0.3, timeout = 0.2, rise = 2, fall = 2 }}\n\
                 backends = [{{ address = \"{backend}\" }}]\n"
            ),
        )
        .expect("write the config");
    };
    // A program that cannot run is refused at start, naming it.
    write_config("[notify]\ncommand = [\"/nonexistent/lb-hook\"]");
    let config_arg = config.to_string_lossy().into_owned();
    let refused = lab
        .lb_run(&["--config", &config_arg])
        .output()
        .expect("run lb");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/lb-hook is not an executable file"),
        "{stderr}"
    );

    write_config(&format!(
        "[notify]\ncommand = [\"{}\", \"--site\", \"east 1\"]\ntimeout = 5",
        hook.display()
    ));
    let daemon = lab.start(&["--config", &config_arg]);
    lab.instance
        .wait_for_health(&backend, "up", Duration::from_secs(3));
    drop(listener);
    let seen = wait_for_runs(&runs, 1);
    assert_eq!(
        seen,
        [format!(
            "--site east 1 {VIP} {backend} up down proto=tcp new=down"
        )]
    );

    // A reload to a hook that fails: reported as a change, run, logged and counted.
    write_config("[notify]\ncommand = [\"/bin/false\"]");
    let report = lab.instance.ok(&["reload"]);
    assert!(report.contains("~ notify hook:"), "{report}");
    assert!(report.contains("-> /bin/false"), "{report}");
    let _listener = listen(&lab, port);
    daemon.wait_for_log(
        "notify hook failed",
        1,
        FAST_CHECK_FALL + Duration::from_secs(5),
    );
    let status = lab.status();
    assert_eq!(status["notify"]["command"], "/bin/false", "{status}");
    assert_eq!(status["notify"]["runs"]["failed"], 1, "{status}");
    assert_eq!(lines(&runs).len(), 1, "the old hook runs no more");
    lab.instance.down();
}
