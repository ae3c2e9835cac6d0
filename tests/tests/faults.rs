//! Faults in namespaces, against the real binary and real traffic: a backend's link going
//! down mid-stream. Needs root.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    client::WhoConnection,
    process::{Daemon, FAST_CHECK, FAST_CHECK_FALL, Instance},
    servers::{Servers, WHO_PORT},
    topology::Lab,
};

/// Long-lived connections held through the fault.
const CONNECTIONS: usize = 30;
/// New connections opened once the dead backend is out.
const NEW_CONNECTIONS: usize = 60;

/// Asks every connection which backend holds it; all must still answer as before.
fn ask_all(held: &mut [(WhoConnection, String)], when: &str) -> usize {
    for (connection, backend) in held.iter_mut() {
        let answer = connection
            .ask()
            .unwrap_or_else(|e| panic!("{when}: a connection to {backend} broke: {e}"));
        assert_eq!(&answer, backend, "{when}: a connection changed backend");
    }
    held.len()
}

/// Opens [`NEW_CONNECTIONS`] connections from the client, each asked once; who answered.
fn new_connections(lab: &Lab, vip: SocketAddr) -> Vec<String> {
    lab.client.enter(|| {
        (0..NEW_CONNECTIONS)
            .map(|_| {
                let mut connection = WhoConnection::open(vip).expect("a new connection");
                connection.ask().expect("a new connection answers")
            })
            .collect()
    })
}

#[test]
fn a_backend_link_going_down_mid_stream_leaves_the_other_flows_alone() {
    lb_tests::require_root!();
    let limit = FAST_CHECK_FALL;
    let lab = Lab::new("lbf", 3);
    let instance = Instance::new();
    let daemon = Daemon::start(instance.run(&lab.lb, &lab.lb_ifaces, &[]));
    let _servers = Servers::start(&lab.backends);
    let vip = SocketAddr::new(lab.vip(false), WHO_PORT);
    let vip_arg = vip.to_string();
    instance.ok(&[&["vip", "add", &vip_arg, "--check", "tcp"][..], &FAST_CHECK].concat());
    let endpoints: Vec<String> = lab
        .backends
        .iter()
        .map(|b| SocketAddr::new(b.v4.into(), WHO_PORT).to_string())
        .collect();
    for endpoint in &endpoints {
        instance.ok(&["backend", "add", &vip_arg, endpoint]);
    }
    for endpoint in &endpoints {
        instance.wait_for_health(endpoint, "up", Duration::from_secs(3));
    }

    let mut held: Vec<(WhoConnection, String)> = lab.client.enter(|| {
        (0..CONNECTIONS)
            .map(|_| {
                let mut connection = WhoConnection::open(vip).expect("connect through the VIP");
                let backend = connection.ask().expect("first answer");
                (connection, backend)
            })
            .collect()
    });
    let mut per_backend = BTreeMap::<String, usize>::new();
    for (_, backend) in &held {
        *per_backend.entry(backend.clone()).or_default() += 1;
    }
    // The busiest backend fails, so the fault hits as many flows as it can.
    let (victim_name, victim_flows) = per_backend
        .iter()
        .max_by_key(|(_, flows)| **flows)
        .map(|(name, flows)| (name.clone(), *flows))
        .expect("connections were made");
    let victim = lab
        .backends
        .iter()
        .position(|b| b.name == victim_name)
        .expect("a lab backend answered");
    let mut survivors: Vec<(WhoConnection, String)> = held
        .drain(..)
        .filter(|(_, backend)| *backend != victim_name)
        .collect();
    assert!(
        !survivors.is_empty(),
        "flows on other backends: {per_backend:?}"
    );

    let dead = &lab.backends[victim];
    dead.ns.ip(&["link", "set", &dead.dev, "down"]);
    let failed_at = Instant::now();
    let mut asked = ask_all(&mut survivors, "while the link was down");
    // Timed by the daemon's own log line, read as it is written: polling `lb backend list`
    // between rounds of questions measured the poll as much as the check (1.1 s under a
    // full CI load, for a check that took under 0.8 s).
    let log = daemon.wait_for_log(
        "backend down: no new flows",
        1,
        limit + Duration::from_millis(500),
    );
    let marked_down = failed_at.elapsed();
    let down: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("backend down"))
        .collect();
    assert!(
        down.len() == 1 && down[0].contains(&endpoints[victim]),
        "the dead backend, and no other, went down: {down:?}"
    );
    assert!(
        marked_down <= limit + Duration::from_millis(250),
        "took {marked_down:?}"
    );
    // The listing reads the snapshot the controller publishes once the maps are rebuilt,
    // a moment after its log line: new flows are tested from then on.
    instance.wait_for_health(&endpoints[victim], "down", Duration::from_secs(1));

    let fresh = new_connections(&lab, vip);
    assert!(
        fresh.iter().all(|b| *b != victim_name),
        "a new flow went to the dead backend: {fresh:?}"
    );
    asked += ask_all(&mut survivors, "after the backend was marked down");

    // The link returns (its routes with it): the backend is taken back and gets new flows.
    dead.ns.ip(&["link", "set", &dead.dev, "up"]);
    let gateway = dead.gateway_v4.to_string();
    dead.ns
        .ip(&["route", "replace", "default", "via", &gateway]);
    let back = instance.wait_for_health(&endpoints[victim], "up", Duration::from_secs(5));
    let after = new_connections(&lab, vip);
    assert!(
        after.contains(&victim_name),
        "the recovered backend takes new flows again: {after:?}"
    );
    asked += ask_all(&mut survivors, "after the backend came back");
    eprintln!(
        "{victim_name}'s link went down under {victim_flows} of {CONNECTIONS} connections: \
         marked down after {marked_down:?} (bound {limit:?}); the {} others answered \
         {asked} asks without a failure; {NEW_CONNECTIONS} new connections avoided it; back up \
         {back:?} after the link returned",
        survivors.len()
    );
    instance.down();
}
