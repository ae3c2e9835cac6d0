//! `lb vip add --allow-source` against the real daemon and real connections in namespaces:
//! a client outside the VIP's prefixes gets nothing and `lb stats` names why; inside, it is
//! served. Bad prefixes are refused and change nothing. Needs root.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    client::WhoConnection,
    process::{Instance, stat_packets},
    servers::{Servers, WHO_PORT},
    topology::Lab,
};
use serde_json::Value;

fn vip_list(instance: &Instance) -> Value {
    let text = instance.ok(&["vip", "list", "--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn a_client_outside_allow_source_gets_nothing_and_stats_say_why() {
    lb_tests::require_root!();
    let lab = Lab::new("lbs", 2);
    let instance = Instance::new();
    let _daemon = instance.start(&lab, &[]);
    let _servers = Servers::start(&lab.backends);
    let vip = SocketAddr::new(lab.vip(false), WHO_PORT);
    let vip_arg = vip.to_string();
    let client = lab.client_addr(false);
    let add_backends = || {
        for backend in &lab.backends {
            let addr = SocketAddr::new(backend.addr(false), WHO_PORT).to_string();
            instance.ok(&["backend", "add", &vip_arg, &addr]);
        }
    };

    // Bad input is refused and changes nothing.
    for (args, reason) in [
        (vec!["--allow-source", "198.18.0.1/24"], "host bits are set"),
        (vec!["--allow-source", "198.18.0.0/33"], "0 to 32"),
        (vec!["--allow-source", "a.b.c.d/8"], "not an IP address"),
        (vec!["--allow-source", "fd00::/64"], "is IPv6 but VIP"),
        (vec!["--on-down", "drop"], "invalid value"),
    ] {
        let stderr = instance.fails(&[&["vip", "add", &vip_arg][..], &args].concat());
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert_eq!(
            vip_list(&instance),
            Value::Array(vec![]),
            "{args:?} added a VIP"
        );
    }
    let many: Vec<String> = (0..65).map(|i| format!("198.19.{i}.0/24")).collect();
    let mut args = vec!["vip", "add", vip_arg.as_str()];
    for prefix in &many {
        args.extend(["--allow-source", prefix.as_str()]);
    }
    let stderr = instance.fails(&args);
    assert!(stderr.contains("at most 64"), "{stderr}");
    assert_eq!(vip_list(&instance), Value::Array(vec![]));

    // Outside: the SYN is dropped, the connection never opens.
    instance.ok(&["vip", "add", &vip_arg, "--allow-source", "198.19.250.0/24"]);
    add_backends();
    let listed = vip_list(&instance);
    assert_eq!(
        listed[0]["allow_sources"],
        serde_json::json!(["198.19.250.0/24"])
    );
    assert_eq!(listed[0]["on_down"], "keep-tcp", "{listed}");
    let text = instance.ok(&["vip", "list"]);
    assert!(
        text.contains("198.19.250.0/24") && text.contains("keep-tcp"),
        "{text}"
    );
    let started = Instant::now();
    let refused = lab.client.enter(|| WhoConnection::open(vip).map(|_| ()));
    assert!(refused.is_err(), "a client outside the prefixes connected");
    eprintln!("refused connect gave up after {:?}", started.elapsed());
    let dropped = stat_packets(&instance.stats(), "drop_source_not_allowed");
    assert!(dropped >= 1, "no drop_source_not_allowed counted");
    let stats = instance.ok(&["stats"]);
    assert!(stats.contains("drop_source_not_allowed"), "{stats}");

    // Inside: the same client, allowed by its own /32, is served.
    instance.ok(&["vip", "del", &vip_arg]);
    let own = format!("{client}/32");
    instance.ok(&[
        "vip",
        "add",
        &vip_arg,
        "--allow-source",
        "198.19.250.0/24",
        "--allow-source",
        &own,
        "--on-down",
        "move",
    ]);
    add_backends();
    let answer = lb_tests::eventually(Duration::from_secs(5), "served through the VIP", || {
        lab.client
            .enter(|| WhoConnection::open(vip).and_then(|mut c| c.ask()))
    });
    assert!(answer.starts_with("backend-"), "{answer}");
    assert_eq!(vip_list(&instance)[0]["on_down"], "move");
    assert_eq!(
        stat_packets(&instance.stats(), "drop_source_not_allowed"),
        dropped,
        "an allowed client was counted as refused"
    );
    instance.down();
}
