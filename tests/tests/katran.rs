//! Katran's IPv6 paths in the shared katran-bench harness: Katran pinned by kbench, an IPv6
//! VIP with IPv6 reals added into its maps (`lb_tests::katran`), then kbench times it as
//! extra rows (established, new flow, non-VIP). Katran's own counters and LRU, and kbench's
//! decode of the output frames, prove that each row took the path it is named after.
//! Katran's GUE build (`-DGUE_ENCAP`, which the bench times beside lb's dsr-gue) is
//! checked here by its output: UDP to port 6080 from the sources written into `pckt_srcs`.
//!
//! Needs root, the harness (`LB_KATRAN_BENCH`, else `../shared/katran-bench` beside the
//! checkout) and its tools (clang, llc, gcc, libbpf-dev): without them it fails, it never
//! passes by skipping. Holds about 1 GB of kernel memory while it runs (two Katrans: the
//! pinned one and kbench's own, for its IPv4 rows).

use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_tests::katran::{
    self, Encap, KatranBuild, KbenchCheck, MAX_CONN_RATE, PinnedKatran, frame4, frame6,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const ROUNDS: u64 = 1;
const CALLS: u64 = 2000;
const WARMUP: u64 = 100;
/// kbench's first new flow: source port 1024 (then 1025, ...).
const FIRST_NEW_SPORT: u16 = 1024;

const EST: &str = "katran6 established";
const NEW: &str = "katran6 new flow";
const NONVIP: &str = "katran6 non-VIP";

fn v6(text: &str) -> Ipv6Addr {
    text.parse().expect("an IPv6 address")
}

/// One encapsulated frame from Katran: IPv6-in-IPv6 to one of `reals`, to the router MAC
/// from the balancer's (the input's destination), the client's packet inside byte for byte.
fn assert_ip6ip6(katran: &PinnedKatran, input: &[u8], (action, out): &(u32, Vec<u8>)) {
    assert_eq!(*action, XDP_TX, "Katran's action");
    assert_eq!(out.len(), input.len() + 40, "one IPv6 header more");
    assert_eq!(out[..6], katran.router_mac, "to the router's MAC");
    assert_eq!(out[6..12], input[..6], "from the MAC the frame came to");
    assert_eq!(out[12..14], [0x86, 0xdd], "outer ethertype IPv6");
    assert_eq!(out[14] >> 4, 6, "outer IPv6 version");
    assert_eq!(
        usize::from(u16::from_be_bytes([out[18], out[19]])),
        input.len() - 14,
        "outer payload length: the client's IPv6 packet"
    );
    assert_eq!(out[20], 41, "outer next header: IPv6");
    // Katran's source: 0100::/96 with the client's low 32 bits xor its port.
    assert_eq!(out[22..34], [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&out[38..54]).expect("16 bytes"));
    assert!(
        katran.reals6.contains(&dst),
        "outer destination {dst} is no real"
    );
    assert_eq!(
        out[54..],
        input[14..],
        "the client's packet inside, unchanged"
    );
}

fn check_of(stdout: &str, name: &str) -> KbenchCheck {
    katran::kbench_check(stdout, name).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn katran_ipv6_rows_take_their_paths() {
    lb_tests::require_root!();
    let harness = katran::harness_dir();
    katran::check_harness(&harness).unwrap_or_else(|e| panic!("{e}"));
    let build = tempfile::Builder::new()
        .prefix("katran-bench-")
        .tempdir()
        .expect("a build directory");
    let cpu = katran::default_cpu();
    let vip = v6("fd00:1::100");
    let reals = [v6("fd00:2::1"), v6("fd00:2::2"), v6("fd00:2::3")];
    let katran = PinnedKatran::new(
        &harness,
        &KatranBuild {
            dir: build.path(),
            encap: Encap::Ipip,
        },
        &katran::unique_pin_dir("test"),
        cpu,
        vip,
        80,
        &reals,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(katran.first_real6, 5, "after kbench's reals 1..4");

    let client = v6("fd00::1");
    let est = frame6(client, 31337, vip, 80, false);
    let syn = frame6(client, FIRST_NEW_SPORT, vip, 80, true);
    let nonvip = frame6(client, 31337, v6("fd00:9::9"), 80, false);

    // Before kbench: each frame once, on the bench CPU, byte for byte. The established flow's
    // first packet is its one LRU miss, so that every call of its row is a hit; the SYN is
    // kbench's first new flow (sport 1024), so the LRU's count below stays 1 + new flows.
    let first = katran.run(&est).expect("test-run Katran");
    assert_ip6ip6(&katran, &est, &first);
    let real = katran
        .lru_real_of(&est)
        .expect("the established flow is in the LRU");
    assert!((5..8).contains(&real), "LRU real index {real}");
    assert_eq!(
        katran.run(&est).expect("test-run Katran"),
        first,
        "the same real again"
    );
    assert_ip6ip6(&katran, &syn, &katran.run(&syn).expect("test-run Katran"));
    let (action, out) = katran.run(&nonvip).expect("test-run Katran");
    assert_eq!(
        (action, &out),
        (XDP_PASS, &nonvip),
        "non-VIP: passed untouched"
    );
    assert_eq!(
        katran.lru_entries(),
        2,
        "the established flow and the first SYN"
    );
    let primed = katran.counters();
    assert_eq!(primed.lru_misses, 2, "{primed:?}");
    assert_eq!(primed.fallback_lru, 0, "{primed:?}");

    let dir = build.path();
    for (name, frame) in [
        ("est6.bin", &est),
        ("syn6.bin", &syn),
        ("nonvip6.bin", &nonvip),
    ] {
        std::fs::write(dir.join(name), frame).expect("write a frame");
    }
    let (cpu_arg, rounds, calls, warmup) = (
        cpu.to_string(),
        ROUNDS.to_string(),
        CALLS.to_string(),
        WARMUP.to_string(),
    );
    let (est_pkt, syn_pkt, nonvip_pkt) = (
        dir.join("est6.bin"),
        dir.join("syn6.bin"),
        dir.join("nonvip6.bin"),
    );
    let pin = katran.prog_pin.as_os_str();
    let mut args: Vec<&OsStr> = ["--build", "--cpu", "--rounds", "--calls", "--warmup"]
        .into_iter()
        .map(OsStr::new)
        .zip([
            dir.as_os_str(),
            cpu_arg.as_ref(),
            rounds.as_ref(),
            calls.as_ref(),
            warmup.as_ref(),
        ])
        .flat_map(|(flag, value)| [flag, value])
        .collect();
    for (name, pkt, new_flow) in [
        (EST, &est_pkt, false),
        (NEW, &syn_pkt, true),
        (NONVIP, &nonvip_pkt, false),
    ] {
        args.extend([
            OsStr::new("--extra-prog"),
            pin,
            OsStr::new("--extra-pkt"),
            pkt.as_os_str(),
            OsStr::new("--extra-name"),
            OsStr::new(name),
        ]);
        if new_flow {
            args.push(OsStr::new("--extra-new-flow"));
        }
    }
    let stdout = katran::run_sh(&harness, &args).unwrap_or_else(|e| panic!("{e}"));
    lb_tests::loud(&stdout);

    // Katran's counters of the bench CPU over kbench's calls (warm-up included).
    let per_row = ROUNDS * CALLS + WARMUP;
    let d = katran.counters().since(&primed);
    let shown = format!("{d:?}\n{stdout}");
    assert_eq!(d.xdp_total, 3 * per_row, "{shown}");
    assert_eq!(
        d.xdp_tx,
        2 * per_row,
        "both VIP rows: XDP_TX every call\n{shown}"
    );
    assert_eq!(d.xdp_pass, per_row, "{shown}");
    assert_eq!(d.xdp_drop, 0, "{shown}");
    assert_eq!(d.vip_packets, 2 * per_row, "{shown}");
    assert_eq!(d.vip6_packets, 2 * per_row, "{shown}");
    assert_eq!(d.vip4_packets, 0, "{shown}");
    assert_eq!(
        d.lru_misses, per_row,
        "LRU misses: the new-flow row's calls only, the established row hit every time\n{shown}"
    );
    assert_eq!(d.syn_misses, per_row, "{shown}");
    assert_eq!(d.non_syn_misses, 0, "{shown}");
    assert_eq!(d.fallback_lru, 0, "the bench CPU has its LRU\n{shown}");
    assert_eq!((d.ch_drops, d.encap_fails), (0, 0), "{shown}");
    assert!(d.new_conn_rate <= MAX_CONN_RATE, "{shown}");
    // Every new flow was inserted (none bypassed under flood): the established flow plus
    // kbench's flows 0..per_row (flow 0 was the SYN sent above).
    assert_eq!(katran.lru_entries() as u64, 1 + per_row, "{shown}");
    assert!(katran.lru_real_of(&est).is_some(), "{shown}");

    // kbench's own view: actions of the timed calls, lengths, and its decode of the output.
    for name in [EST, NEW] {
        let check = check_of(&stdout, name);
        assert_eq!(
            check.actions,
            vec![("TX".to_owned(), ROUNDS * CALLS)],
            "{name}\n{stdout}"
        );
        assert_eq!(check.calls, ROUNDS * CALLS, "{name}");
        assert_eq!(
            check.out_len,
            check.in_len + 40,
            "{name}: IPv6-in-IPv6\n{stdout}"
        );
        assert!(check.same_length, "{name}\n{stdout}");
        let (outer, inner) = check
            .out
            .split_once(" proto 41 (IPv6-encap) | inner ")
            .unwrap_or_else(|| panic!("{name}: not IPv6-in-IPv6: {}", check.out));
        let outer_dst = outer.rsplit_once('>').map(|(_, d)| d).unwrap_or_default();
        assert!(
            reals.iter().any(|r| r.to_string() == outer_dst),
            "{name}: outer destination {outer_dst:?} is no real: {}",
            check.out
        );
        assert!(
            inner.starts_with("fd00::1>fd00:1::100 tcp ") && inner.ends_with(">80"),
            "{name}: inner {inner:?}"
        );
        let row = katran::kbench_row(&stdout, name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((row.action.as_str(), row.dlen), ("TX", 40), "{name}");
    }
    assert!(check_of(&stdout, EST).out.ends_with("tcp 31337>80"));
    let check = check_of(&stdout, NONVIP);
    assert_eq!(check.actions, vec![("PASS".to_owned(), ROUNDS * CALLS)]);
    assert_eq!(check.out_len, check.in_len);

    for name in [
        "floor (MAC swap, XDP_TX)",
        "katran established (LRU hit)",
        EST,
        "katran new flow (SYN, new sport)",
        NEW,
        "katran non-VIP (XDP_PASS)",
        NONVIP,
    ] {
        let row = katran::kbench_row(&stdout, name).unwrap_or_else(|e| panic!("{e}"));
        lb_tests::loud(&format!(
            "{name:34} {:>8.1} ns/call {:>6.2} x floor {:>7.1} -floor",
            row.ns_per_call, row.x_floor, row.minus_floor
        ));
    }
}

/// Katran's GUE build (`-DGUE_ENCAP`), as the bench times it: both families sent in UDP to
/// port 6080 from the sources written into `pckt_srcs`, toward a real, the client's packet
/// byte for byte behind the UDP header; the established flow stays on its real.
#[test]
fn katran_gue_build_sends_udp_from_its_configured_sources() {
    lb_tests::require_root!();
    let harness = katran::harness_dir();
    katran::check_harness(&harness).unwrap_or_else(|e| panic!("{e}"));
    let build = tempfile::Builder::new()
        .prefix("katran-bench-gue-")
        .tempdir()
        .expect("a build directory");
    let (source4, source6) = (Ipv4Addr::new(172, 16, 0, 1), v6("fd00:16::1"));
    let vip6 = v6("fd00:1::100");
    let reals6 = [v6("fd00:2::1"), v6("fd00:2::2"), v6("fd00:2::3")];
    let katran = PinnedKatran::new(
        &harness,
        &KatranBuild {
            dir: build.path(),
            encap: Encap::Gue { source4, source6 },
        },
        &katran::unique_pin_dir("test-gue"),
        katran::default_cpu(),
        vip6,
        80,
        &reals6,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // kbench's IPv4 VIP and reals (10.0.0.1..4), and the IPv6 VIP added here.
    let vip4 = Ipv4Addr::new(10, 200, 0, 1);
    let reals4: Vec<IpAddr> = (1..=4).map(|i| IpAddr::from([10, 0, 0, i])).collect();
    let cases = [
        (
            frame4(Ipv4Addr::new(192, 0, 2, 1), 31337, vip4, 80, false),
            IpAddr::V4(source4),
            reals4,
        ),
        (
            frame6(v6("fd00::1"), 31337, vip6, 80, false),
            IpAddr::V6(source6),
            reals6.iter().copied().map(IpAddr::V6).collect(),
        ),
    ];
    for (frame, source, reals) in cases {
        let first = katran.run(&frame).expect("test-run Katran");
        assert_eq!(first.0, XDP_TX, "Katran's action");
        assert_eq!(first.1[..6], katran.router_mac, "to the router's MAC");
        let (src, dst) =
            katran::check_gue_frame(&first.1, &frame[14..]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(src, source, "the outer source from pckt_srcs");
        assert!(reals.contains(&dst), "outer destination {dst} is no real");
        assert_eq!(
            katran.run(&frame).expect("test-run Katran"),
            first,
            "the same real and frame again (an LRU hit)"
        );
    }
    let counters = katran.counters();
    assert_eq!(
        (counters.xdp_tx, counters.lru_misses, counters.encap_fails),
        (4, 2, 0),
        "{counters:?}"
    );
}
