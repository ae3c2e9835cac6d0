//! Reloading `--config` (SIGHUP and `lb reload`) under real traffic: the real `lb` binary
//! in namespaces, long-lived TCP connections held across every reload. Needs root.

use std::{net::SocketAddr, path::Path, time::Duration};

use lb_tests::{
    client::{WhoConnection, open_who_connections},
    process::{Daemon, Instance},
    servers::{Servers, WHO_PORT},
    topology::Lab,
};

const BUDGET: Duration = Duration::from_secs(120);
const RELOADED: Duration = Duration::from_secs(10);
const CONNECTIONS: usize = 120;

fn endpoint(lab: &Lab, n: usize) -> SocketAddr {
    SocketAddr::new(lab.backends[n].v4.into(), WHO_PORT)
}

/// A config with one VIP and the given (backend index, weight) pairs.
fn config(lab: &Lab, vip: SocketAddr, backends: &[(usize, u32)]) -> String {
    let lines: Vec<String> = backends
        .iter()
        .map(|(n, weight)| {
            format!(
                "  {{ address = \"{}\", weight = {weight} }},",
                endpoint(lab, *n)
            )
        })
        .collect();
    format!(
        "[[vip]]\naddress = \"{vip}\"\nbackends = [\n{}\n]\n",
        lines.join("\n")
    )
}

/// (backend, weight, state) of each backend in `lb backend list --json`, sorted.
fn backends(instance: &Instance) -> Vec<(String, u64, String)> {
    let text = instance.ok(&["backend", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&text).expect("backend list is JSON");
    let mut out: Vec<(String, u64, String)> = list
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|b| {
            (
                b["backend"].as_str().expect("backend").to_owned(),
                b["weight"].as_u64().expect("weight"),
                b["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write the config file");
}

/// Sends the `n`th SIGHUP and waits for the daemon to log its outcome; the log.
fn hangup(daemon: &Daemon, n: usize) -> String {
    // Outcomes of `lb reload` are logged too: wait for one more than before this SIGHUP,
    // not for a total that earlier reloads may already have reached.
    let outcomes_before = log_outcomes(&daemon.stderr());
    daemon.hangup();
    daemon.wait_for_log("SIGHUP received", n, RELOADED);
    lb_tests::eventually(
        RELOADED,
        &format!("a reload outcome logged after SIGHUP {n}"),
        || {
            let log = daemon.stderr();
            if log_outcomes(&log) > outcomes_before {
                Ok(log)
            } else {
                Err(log)
            }
        },
    )
}

/// Reload outcomes in the log: applied, unchanged or refused.
fn log_outcomes(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("reloaded") || l.contains("reload refused"))
        .count()
}

/// Asks every connection which backend holds it.
fn ask_all(lab: &Lab, connections: &mut [WhoConnection]) -> Vec<Result<String, String>> {
    lab.client
        .enter(|| connections.iter_mut().map(WhoConnection::ask).collect())
}

#[test]
fn sighup_and_lb_reload_apply_the_file_and_keep_flows() {
    lb_tests::require_root!();
    let lab = Lab::new("lbrl", 3);
    let _servers = Servers::start(&lab.backends);
    let instance = Instance::new();
    let dir = tempfile::tempdir().expect("a directory for the config");
    let path = dir.path().join("lb.toml");
    let path_arg = path.to_str().expect("utf-8 path");
    let vip = SocketAddr::new(lab.vip(false), WHO_PORT);
    write(&path, &config(&lab, vip, &[(0, 100), (1, 100)]));
    let daemon = instance.start(&lab, &["--config", path_arg]);

    let (mut connections, before) = lab
        .client
        .enter(|| open_who_connections(vip, CONNECTIONS, BUDGET));
    let on = |name: &str| before.iter().filter(|n| *n == name).count();
    assert!(
        on("backend-1") > 0 && on("backend-2") > 0,
        "both backends hold flows"
    );

    // 1. A weight changes (SIGHUP).
    write(&path, &config(&lab, vip, &[(0, 100), (1, 300)]));
    hangup(&daemon, 1);
    let weights: Vec<(String, u64)> = backends(&instance)
        .into_iter()
        .map(|(b, w, _)| (b, w))
        .collect();
    assert_eq!(
        weights,
        vec![
            (endpoint(&lab, 0).to_string(), 100),
            (endpoint(&lab, 1).to_string(), 300)
        ]
    );
    let after = ask_all(&lab, &mut connections);
    let moved: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| a.as_deref() != Ok(b.as_str()))
        .collect();
    assert!(
        moved.is_empty(),
        "a weight change moved or broke {} of {CONNECTIONS} connections: {moved:?}",
        moved.len()
    );
    assert!(
        daemon.stderr().contains("weight 100 -> 300"),
        "the daemon logs the change"
    );

    // 2. A backend joins and one leaves (SIGHUP).
    write(&path, &config(&lab, vip, &[(1, 300), (2, 100)]));
    hangup(&daemon, 2);
    let present: Vec<String> = backends(&instance).into_iter().map(|(b, ..)| b).collect();
    assert_eq!(
        present,
        vec![endpoint(&lab, 1).to_string(), endpoint(&lab, 2).to_string()]
    );
    let after = ask_all(&lab, &mut connections);
    let kept = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| *b == "backend-2" && a.as_deref() == Ok(b.as_str()))
        .count();
    assert_eq!(
        kept,
        on("backend-2"),
        "every connection of the backend that stayed kept it"
    );
    let removed_answered = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| *b == "backend-1" && a.as_deref() == Ok("backend-1"))
        .count();
    let fresh: Vec<String> = lab.client.enter(|| {
        (0..60)
            .map(|_| {
                WhoConnection::open(vip)
                    .and_then(|mut c| c.ask())
                    .expect("a new connection after the reload")
            })
            .collect()
    });
    assert!(
        fresh.iter().all(|n| n != "backend-1"),
        "no new flow reaches the removed backend: {fresh:?}"
    );
    assert!(
        fresh.iter().any(|n| n == "backend-3"),
        "new flows reach the added backend: {fresh:?}"
    );

    // 3. `lb reload`: the same file changes nothing; a drain made through the API since is
    //    undone by the file, and reported.
    let unchanged = instance.ok(&["reload"]);
    assert!(unchanged.contains("no changes"), "{unchanged}");
    let drained = endpoint(&lab, 2).to_string();
    let drain = instance.cli(&["backend", "drain", &vip.to_string(), &drained]);
    assert!(drain.status.success(), "{drain:?}");
    // Whoever changes a daemon run with --config is told that the file wins.
    let note = String::from_utf8_lossy(&drain.stderr);
    assert!(
        note.contains(&format!("declares its state in {path_arg}"))
            && note.contains("replaces this change"),
        "{note}"
    );
    daemon.wait_for_log(
        "changed through the API while --config declares the state",
        1,
        RELOADED,
    );
    let report: serde_json::Value =
        serde_json::from_str(&instance.ok(&["reload", "--json"])).expect("reload --json");
    assert_eq!(report["config"].as_str(), Some(path_arg));
    assert_eq!(
        report["changes"],
        serde_json::json!([{
            "change": "backend-undrained",
            "vip": vip.to_string(),
            "proto": "tcp",
            "backend": drained,
        }])
    );

    // 4. Refused files change nothing, through `lb reload` and through SIGHUP.
    let state_before = std::fs::read(&instance.state).expect("state file");
    let listed_before = backends(&instance);
    let good = config(&lab, vip, &[(1, 300), (2, 100)]);
    let refusals: [(&str, String, &str); 4] = [
        (
            "a TOML syntax error",
            format!("{good}[[vip]\naddress = \"198.18.9.9:80\"\n"),
            ":7:",
        ),
        (
            "a weight out of range",
            config(&lab, vip, &[(1, 300), (2, 0)]),
            ":5:",
        ),
        (
            "a mode change of a VIP with backends",
            good.replace("[[vip]]\n", "[[vip]]\nmode = \"dsr-ipip\"\n"),
            "mode from nat to dsr-ipip",
        ),
        (
            "another hash seed",
            format!("[cluster]\nhash_seed = \"0123456789abcdef\"\n{good}"),
            "hash_seed",
        ),
    ];
    for (n, (what, text, expected)) in refusals.iter().enumerate() {
        write(&path, text);
        let refused = instance.fails(&["reload"]);
        assert!(
            refused.contains(expected) && refused.contains("nothing was changed"),
            "{what}: `lb reload` said: {refused}"
        );
        let log = hangup(&daemon, 3 + n);
        assert!(
            log.matches("reload refused").count() > n,
            "{what}: SIGHUP is refused in the log"
        );
        assert_eq!(backends(&instance), listed_before, "{what} changed nothing");
        assert_eq!(
            std::fs::read(&instance.state).expect("state file"),
            state_before,
            "{what} left the state file as it was"
        );
    }
    let last = ask_all(&lab, &mut connections);
    let survivors = before
        .iter()
        .zip(&last)
        .filter(|(b, a)| *b == "backend-2" && a.as_deref() == Ok(b.as_str()))
        .count();
    assert_eq!(
        survivors,
        on("backend-2"),
        "connections survived every reload"
    );
    eprintln!(
        "{CONNECTIONS} connections: {} on the kept backend all stayed; {removed_answered} of {} on the removed one still answered from it",
        on("backend-2"),
        on("backend-1")
    );
    drop(connections);
    instance.down();
}

#[test]
fn a_daemon_without_config_refuses_reload() {
    lb_tests::require_root!();
    let lab = Lab::new("lbrn", 1);
    let instance = Instance::new();
    let daemon = instance.start(&lab, &[]);
    let refused = instance.fails(&["reload"]);
    assert!(refused.contains("without --config"), "{refused}");
    // Refused through the API, the daemon's log says so too, and who asked.
    let log = daemon.wait_for_log("reload refused", 1, RELOADED);
    assert!(log.contains("asked_by=\"lb reload\""), "{log}");
    daemon.hangup();
    let log = daemon.wait_for_log("reload refused", 2, RELOADED);
    assert!(log.contains("asked_by=\"SIGHUP\""), "{log}");
    assert!(log.contains("without --config"), "{log}");
    assert_eq!(instance.ok(&["vip", "list", "--json"]).trim(), "[]");
    instance.down();
}
