//! lb on veth pairs as the kernel creates them (GRO off, so no NAPI on the peers; checksum
//! offload on): in native mode the kernel drops every frame lb redirects out of such a
//! veth. lb cannot fix the peers from its namespace; it says so at start and in `lb
//! status`, with the command to run on each peer, and counts the lost frames
//! (`xdp_redirect_lost`). The command it prints is then run as printed, and traffic flows.
//! Needs root.

use std::{net::SocketAddr, time::Duration};

use lb_tests::{
    client::http_get,
    process::{Daemon, Instance, stat_packets},
    servers::{HTTP_PORT, Servers},
    topology::Lab,
};

/// The command lb advises for `iface` in `lb status --json`, and the advice's level.
fn advice(status: &serde_json::Value, iface: &str) -> (String, String) {
    let entry = status["interfaces"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["name"] == iface))
        .unwrap_or_else(|| panic!("{iface} not in {status}"));
    (
        entry["advice"]["level"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        entry["advice"]["command"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[test]
fn untuned_veth_peers_are_named_with_their_command_and_lost_frames_are_counted() {
    lb_tests::require_root!();
    let lab = Lab::untuned("lbt", 1);
    let _servers = Servers::start(&lab.backends);
    let instance = Instance::new();
    // Sweeps (and so the advice) every half second.
    let daemon = Daemon::start(instance.run(
        &lab.lb,
        &lab.lb_ifaces,
        &["--xdp-mode", "native", "--conntrack-sweep", "0.5"],
    ));
    let vip = SocketAddr::new(lab.vip(false), 80);
    let vip_arg = vip.to_string();
    let backend = SocketAddr::new(lab.backends[0].v4.into(), HTTP_PORT).to_string();
    instance.ok(&["vip", "add", &vip_arg]);
    instance.ok(&["backend", "add", &vip_arg, &backend]);
    // Each lb interface and the peer the advice must name, with its namespace.
    let peers = [
        (&lab.lb_ifaces[0], &lab.client_dev, &lab.client),
        (&lab.lb_ifaces[1], &lab.backends[0].dev, &lab.backends[0].ns),
    ];

    // `lb run` says it at start, naming each peer and the command.
    let log = daemon.stderr();
    for (iface, peer, _) in &peers {
        let command = format!("ethtool -K {peer} tx off gro on");
        assert!(
            log.lines().any(|line| line.contains("WARN")
                && line.contains(&format!("{iface} is a veth whose peer {peer}"))
                && line.contains(&command)),
            "no start-up warning for {iface} with `{command}`:\n{log}"
        );
    }

    // The black hole: the client's SYNs are balanced and redirected, then dropped.
    let failed = lab.client.enter(|| http_get(vip));
    assert!(failed.is_err(), "untuned veth forwarded: {failed:?}");
    let lost = lb_tests::eventually(Duration::from_secs(5), "xdp_redirect_lost counts", || {
        let stats = instance.stats();
        match stat_packets(&stats, "xdp_redirect_lost") {
            0 => Err(stats["counters"].clone()),
            lost => Ok(lost),
        }
    });
    assert!(stat_packets(&instance.stats(), "fwd_new_flow") > 0);
    daemon.wait_for_log("frame(s) lb had redirected", 1, Duration::from_secs(5));

    // `lb status` says the same, with the count.
    let text = instance.ok(&["status"]);
    for (iface, peer, _) in &peers {
        assert!(
            text.contains(&format!("warning: {iface} is a veth whose peer {peer}"))
                && text.contains(&format!("`ethtool -K {peer} tx off gro on`")),
            "{text}"
        );
    }
    assert!(
        text.contains("frames redirected out of an attached interface were dropped"),
        "{text}"
    );
    let json = instance.status();
    assert!(json["xdp_redirect_lost"].as_u64() >= Some(lost), "{json}");

    // The command, run as printed where each peer is, is the fix: the warnings end and
    // traffic flows.
    for (iface, _, ns) in &peers {
        let (level, command) = advice(&json, iface);
        assert_eq!(level, "warning", "{json}");
        let words: Vec<&str> = command.split_whitespace().collect();
        let output = ns
            .command(words[0])
            .args(&words[1..])
            .output()
            .expect("run the advised command");
        assert!(output.status.success(), "`{command}`: {output:?}");
    }
    lb_tests::eventually(Duration::from_secs(15), "the warnings end", || {
        let json = instance.status();
        let levels: Vec<String> = peers
            .iter()
            .map(|(iface, _, _)| advice(&json, iface).0)
            .collect();
        if levels.iter().all(|level| level == "note") {
            Ok(())
        } else {
            Err(levels)
        }
    });
    let answer = lab.client.enter(|| http_get(vip));
    assert_eq!(
        answer.as_deref(),
        Ok("backend-1"),
        "after the advised command"
    );
    instance.down();
}

#[test]
fn partial_checksums_from_senders_behind_a_veth_are_counted_and_named() {
    lb_tests::require_root!();
    let lab = Lab::untuned("lbt", 1);
    // NAPI on the peers (redirects arrive), checksum offload still on (the default).
    let peers = [
        (&lab.lb_ifaces[0], &lab.client_dev, &lab.client),
        (&lab.lb_ifaces[1], &lab.backends[0].dev, &lab.backends[0].ns),
    ];
    for (_, peer, ns) in &peers {
        let output = ns
            .command("ethtool")
            .args(["-K", peer, "gro", "on"])
            .output()
            .expect("run ethtool");
        assert!(output.status.success(), "{output:?}");
    }
    let _servers = Servers::start(&lab.backends);
    let instance = Instance::new();
    let daemon = Daemon::start(instance.run(&lab.lb, &lab.lb_ifaces, &["--xdp-mode", "native"]));
    let vip = SocketAddr::new(lab.vip(false), 80);
    let vip_arg = vip.to_string();
    let backend = SocketAddr::new(lab.backends[0].v4.into(), HTTP_PORT).to_string();
    instance.ok(&["vip", "add", &vip_arg]);
    instance.ok(&["backend", "add", &vip_arg, &backend]);

    // Redirected, then dropped by the backend for its checksum: nothing lost on the way.
    let failed = lab.client.enter(|| http_get(vip));
    assert!(failed.is_err(), "a partial checksum arrived: {failed:?}");
    let stats = instance.stats();
    assert!(stat_packets(&stats, "syn_checksum_partial") > 0, "{stats}");
    assert_eq!(stat_packets(&stats, "xdp_redirect_lost"), 0, "{stats}");
    let log = daemon.wait_for_log(
        "client SYN(s) arrived with a checksum",
        1,
        Duration::from_secs(5),
    );
    assert!(
        log.contains(&format!("ethtool -K {} tx off gro on", lab.client_dev)),
        "{log}"
    );
    let text = instance.ok(&["status"]);
    assert!(text.contains("(syn_checksum_partial)"), "{text}");

    // The advised command ends it: full checksums from the senders.
    for (_, peer, ns) in &peers {
        let output = ns
            .command("ethtool")
            .args(["-K", peer, "tx", "off", "gro", "on"])
            .output()
            .expect("run ethtool");
        assert!(output.status.success(), "{output:?}");
    }
    let answer = lab.client.enter(|| http_get(vip));
    assert_eq!(answer.as_deref(), Ok("backend-1"), "after tx off");
    instance.down();
}
