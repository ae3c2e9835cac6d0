//! Katran beside lb, in IPv6 too: `../shared/katran-bench` (its `run.sh`) configures and pins
//! Katran's XDP balancer with its own IPv4 VIP; [`PinnedKatran`] adds an IPv6 VIP with IPv6
//! reals into the pinned program's maps, so kbench can time Katran's IPv6 paths as extra rows
//! (`--extra-prog`), and reads Katran's own counters to prove which path a row took.
//!
//! The map layouts are Katran's (`katran/lib/bpf/balancer_structs.h` at 19f08fe), checked
//! against the BTF of the built object: `vip_definition` 20 bytes (address 0..16, port in
//! network order at 16, proto at 18), `vip_meta` 8 (flags, vip_num), `real_definition` 20
//! (address 0..16, flags at 16), `flow_key` 40, `real_pos_lru` 16, `lb_stats` 16 (v1, v2).
//! aya checks each map's key and value sizes against these when it opens the map, so a
//! Katran built with other layouts fails here rather than being written wrongly.
//!
//! A [`KatranBuild`] picks the build: Katran's own (IPIP, no defines) or its GUE build
//! (`-DGUE_ENCAP`: outer IP and UDP to port [`GUE_DPORT`], the client's packet right behind
//! the UDP header), whose outer source addresses go into `pckt_srcs` as Katran's
//! `addSrcIpForPcktEncap` puts them there.
//!
//! Timing rows against the pinned Katran: `run.sh --extra-prog <prog_pin> ... --cpu <cpu>`
//! with the same `cpu` as [`PinnedKatran::new`], since Katran picks its LRU by the CPU it
//! runs on (another CPU falls back to `fallback_cache` and counts `FALLBACK_LRU_CNTR`).

use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    maps::{Array, ArrayOfMaps, HashMap, Map, MapData, MapInfo, PerCpuArray},
    programs::{ProgramInfo, TestRun as _, TestRunOptions, Xdp},
};
use aya_obj::programs::XdpAttachType;

use crate::packets::{Family, Spec, Transport};

/// Katran's compile-time sizes (balancer_consts.h, default build).
pub const RING_SIZE: u32 = 65_537;
pub const MAX_VIPS: u32 = 512;
pub const MAX_REALS: u32 = 4_096;
/// Above this many new flows in one second on a CPU, Katran stops inserting new flows into
/// the LRU ("under flood"), which makes the new-flow path cheaper than it is.
pub const MAX_CONN_RATE: u64 = 125_000;
/// `real_definition.flags`: the real is an IPv6 address (encapsulate in IPv6).
pub const F_IPV6: u8 = 1;
/// The vip_num of the IPv6 VIP this module adds (kbench's IPv4 VIP is 0).
pub const VIP6_NUM: u32 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// The UDP port Katran's GUE build sends to (balancer_consts.h).
pub const GUE_DPORT: u16 = 6080;
/// `pckt_srcs` indexes: the outer IPv4 and IPv6 source of GUE (balancer_consts.h).
const V4_SRC_INDEX: u32 = 0;
const V6_SRC_INDEX: u32 = 1;

// Offsets into `stats` of Katran's global counters: MAX_VIPS + these (balancer_consts.h).
const LRU_CNTRS: u32 = 0;
const LRU_MISS_CNTR: u32 = 1;
const NEW_CONN_RATE_CNTR: u32 = 2;
const FALLBACK_LRU_CNTR: u32 = 3;
const ENCAP_FAIL_CNTR: u32 = 7;
const CH_DROP_STATS: u32 = 9;
const XDP_TOTAL_CNTR: u32 = 16;
const XDP_TX_CNTR: u32 = 17;
const XDP_DROP_CNTR: u32 = 18;
const XDP_PASS_CNTR: u32 = 19;

type VipDefinition = [u8; 20];
type VipMeta = [u8; 8];
type RealDefinition = [u8; 20];
type FlowKey = [u8; 40];
type RealPosLru = [u8; 16];
/// `struct lb_stats { __u64 v1, v2; }`
type LbStats = [u64; 2];
type Lru = HashMap<MapData, FlowKey, RealPosLru>;

/// Where the machine keeps the shared harness, wherever the checkout sits.
const SHARED_HARNESS: &str = "/work/shared/katran-bench";

/// Where the shared harness is: `LB_KATRAN_BENCH`, else `../shared/katran-bench` beside the
/// checkout if there is one, else the machine's [`SHARED_HARNESS`]. Not checked further:
/// [`check_harness`] says what is missing.
pub fn harness_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LB_KATRAN_BENCH") {
        return PathBuf::from(dir);
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/katran-bench");
    if beside.join("run.sh").is_file() {
        beside
    } else {
        PathBuf::from(SHARED_HARNESS)
    }
}

/// What `run.sh` needs on this host; `Err` names what is missing (the harness, root's
/// tools), so a caller can fail with it instead of passing silently.
pub fn check_harness(harness: &Path) -> Result<(), String> {
    if !harness.join("run.sh").is_file() || !harness.join("kbench.c").is_file() {
        return Err(format!(
            "no katran-bench harness at {} (set LB_KATRAN_BENCH to its directory)",
            harness.display()
        ));
    }
    let missing: Vec<&str> = ["clang", "llc", "gcc", "python3"]
        .into_iter()
        .filter(|tool| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if !missing.is_empty() || !Path::new("/usr/include/bpf/libbpf.h").exists() {
        return Err(format!(
            "katran-bench needs clang, llc, gcc, python3 and libbpf's headers; missing: {}{} \
             (Debian: apt-get install clang llvm gcc libbpf-dev)",
            missing.join(" "),
            if Path::new("/usr/include/bpf/libbpf.h").exists() {
                ""
            } else {
                " /usr/include/bpf/libbpf.h"
            }
        ));
    }
    Ok(())
}

/// The last CPU this thread may run on: kbench's default `--cpu`.
pub fn default_cpu() -> usize {
    let set = affinity();
    (0..libc::CPU_SETSIZE as usize)
        .rev()
        // SAFETY: `i` is below CPU_SETSIZE, inside the set.
        .find(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .unwrap_or(0)
}

fn affinity() -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; `set` is a valid cpu_set_t of the size given.
    let rc = unsafe { libc::sched_getaffinity(0, size_of_val(&set), &raw mut set) };
    assert_eq!(
        rc,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    set
}

fn set_affinity(set: &libc::cpu_set_t) -> Result<(), String> {
    // SAFETY: pid 0 is this thread; `set` is a valid cpu_set_t of the size given.
    let rc = unsafe { libc::sched_setaffinity(0, size_of_val(set), set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// A fresh pin directory name under /sys/fs/bpf, unique per process and call.
pub fn unique_pin_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    PathBuf::from(format!(
        "/sys/fs/bpf/lbt-katran-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Runs `<harness>/run.sh args...`; its stdout, or an error with its exit status, stderr and
/// stdout (exit 3: one of kbench's own Katran rows did not take its path).
pub fn run_sh(harness: &Path, args: &[&OsStr]) -> Result<String, String> {
    let output = Command::new(harness.join("run.sh"))
        .args(args)
        .output()
        .map_err(|e| format!("cannot start {}/run.sh: {e}", harness.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "run.sh {:?} failed ({}):\n{}\n{stdout}",
            args,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// One Ethernet + IPv6 + TCP frame from `src`:`sport` to `dst`:`dport` (a SYN, or a bare ACK),
/// with a 16-byte payload and a valid TCP checksum, for `--extra-pkt` (write it to a file).
/// Katran ignores the Ethernet addresses of what it receives.
pub fn frame6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, syn: bool) -> Vec<u8> {
    frame(IpAddr::V6(src), sport, IpAddr::V6(dst), dport, syn)
}

/// [`frame6`] in IPv4 (with a valid header checksum).
pub fn frame4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, syn: bool) -> Vec<u8> {
    frame(IpAddr::V4(src), sport, IpAddr::V4(dst), dport, syn)
}

fn frame(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, syn: bool) -> Vec<u8> {
    let family = if src.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    let spec = Spec::new(family, Transport::Tcp)
        .between(src, dst)
        .ports(sport, dport);
    let spec = if syn { spec } else { spec.acking(2000) };
    spec.build(b"katran-bench pkt")
}

/// Katran's global counters of one CPU (the `stats` map at MAX_VIPS + offset, and the VIP's
/// own entry), as u64 pairs where Katran keeps two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KatranCounters {
    /// LRU_CNTRS.v1: packets to a VIP.
    pub vip_packets: u64,
    /// LRU_CNTRS.v2: LRU misses (a real chosen by consistent hashing).
    pub lru_misses: u64,
    /// LRU_MISS_CNTR.v1: TCP SYNs (never looked up, always a miss).
    pub syn_misses: u64,
    /// LRU_MISS_CNTR.v2: TCP non-SYN packets not in the LRU.
    pub non_syn_misses: u64,
    /// NEW_CONN_RATE_CNTR.v1: new flows in the current one-second window (not a running
    /// total: it restarts at 1 with each window). Above [`MAX_CONN_RATE`] Katran skips the
    /// LRU insert.
    pub new_conn_rate: u64,
    /// FALLBACK_LRU_CNTR.v1: packets on a CPU without an LRU in lru_mapping.
    pub fallback_lru: u64,
    /// CH_DROP_STATS v1 + v2: drops for a ring slot without a real.
    pub ch_drops: u64,
    /// ENCAP_FAIL_CNTR v1 + v2.
    pub encap_fails: u64,
    pub xdp_total: u64,
    pub xdp_tx: u64,
    pub xdp_drop: u64,
    pub xdp_pass: u64,
    /// stats[VIP6_NUM].v1: packets to the IPv6 VIP.
    pub vip6_packets: u64,
    /// stats[0].v1: packets to kbench's IPv4 VIP.
    pub vip4_packets: u64,
}

impl KatranCounters {
    /// What moved since `earlier`; `new_conn_rate` stays the current window's count.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            vip_packets: self.vip_packets - earlier.vip_packets,
            lru_misses: self.lru_misses - earlier.lru_misses,
            syn_misses: self.syn_misses - earlier.syn_misses,
            non_syn_misses: self.non_syn_misses - earlier.non_syn_misses,
            new_conn_rate: self.new_conn_rate,
            fallback_lru: self.fallback_lru - earlier.fallback_lru,
            ch_drops: self.ch_drops - earlier.ch_drops,
            encap_fails: self.encap_fails - earlier.encap_fails,
            xdp_total: self.xdp_total - earlier.xdp_total,
            xdp_tx: self.xdp_tx - earlier.xdp_tx,
            xdp_drop: self.xdp_drop - earlier.xdp_drop,
            xdp_pass: self.xdp_pass - earlier.xdp_pass,
            vip6_packets: self.vip6_packets - earlier.vip6_packets,
            vip4_packets: self.vip4_packets - earlier.vip4_packets,
        }
    }
}

/// How the pinned Katran encapsulates: a compile-time choice in Katran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encap {
    /// Katran's own OSS build: IPIP and IPv6-in-IPv6 (no defines).
    Ipip,
    /// `-DGUE_ENCAP`: outer IP + UDP to [`GUE_DPORT`] from these sources (`pckt_srcs`).
    Gue {
        source4: Ipv4Addr,
        source6: Ipv6Addr,
    },
}

impl Encap {
    /// run.sh's `--defines` for this build.
    #[must_use]
    pub fn defines(&self) -> &'static str {
        match self {
            Self::Ipip => "",
            Self::Gue { .. } => "-DGUE_ENCAP",
        }
    }
}

/// Which Katran [`PinnedKatran::new`] builds, and where: run.sh rebuilds its objects in
/// `dir` on every run, so builds with other defines need a directory of their own.
#[derive(Clone, Copy, Debug)]
pub struct KatranBuild<'a> {
    pub dir: &'a Path,
    pub encap: Encap,
}

/// Katran configured by kbench (IPv4 VIP 10.200.0.1:80, reals 10.0.0.1..4, an LRU for one
/// CPU) and pinned, plus an IPv6 TCP VIP with IPv6 reals that [`PinnedKatran::new`] adds into
/// its maps. Drop unpins it (the program and its maps, about 0.5 GB of kernel memory, go
/// away with the pin) and removes the pin directory, also when a test panics.
///
/// New flows sent to it are not paced by kbench (extra rows): keep the new flows of every
/// `--extra-new-flow` row on this Katran, warm-up included, below [`MAX_CONN_RATE`] (125000)
/// within any one second, or Katran bypasses the LRU insert and the row is cheaper than
/// Katran's real new-flow path. Sending fewer than 125000 in the whole run is always safe
/// (5 rounds x 20000 calls + 1000 warm-up = 101000 for one row); more needs fewer calls per
/// round than the time between that row's batches allows. [`PinnedKatran::lru_entries`]
/// proves it afterwards: with no bypass the LRU holds every new flow sent.
pub struct PinnedKatran {
    /// The pinned `balancer_ingress`: pass it to `run.sh --extra-prog`.
    pub prog_pin: PathBuf,
    /// The pin directory (created here, removed in Drop).
    pub pin_dir: PathBuf,
    /// The CPU whose LRU kbench set up: time rows with `run.sh --cpu <cpu>`.
    pub cpu: usize,
    /// Index in `reals` of the first IPv6 real (after kbench's IPv4 reals).
    pub first_real6: u32,
    /// The IPv6 reals, at `first_real6..`.
    pub reals6: Vec<Ipv6Addr>,
    /// ctl_array[0]: the router MAC that Katran sends every encapsulated frame to.
    pub router_mac: [u8; 6],
    /// How this build encapsulates.
    pub encap: Encap,
    stats: Option<PerCpuArray<MapData, LbStats>>,
    lru_mapping: Option<ArrayOfMaps<MapData, Lru>>,
}

impl PinnedKatran {
    /// Runs `<harness>/run.sh --build <build.dir> [--defines ...] --pin-katran
    /// <pin_dir>/katran --setup-only --cpu <cpu>`, writes a GUE build's outer sources into
    /// `pckt_srcs`, then adds VIP `vip6`:`port` TCP as vip_num 1 (no flags) with `reals6` at the
    /// indexes after kbench's IPv4 reals (flags F_IPV6), and fills the VIP's ring slots
    /// `1 * RING_SIZE + i` over them: the map writes KatranLb makes (`vip_map`, `reals`,
    /// `ch_rings`). The ring is spread with kbench's own stride (`(i * 7919) % n`, as for its
    /// IPv4 VIP), not with Katran's Maglev, so both families' rings are alike; which real a
    /// flow gets does not change the cost of a call. `pin_dir` must not exist and must be
    /// on bpffs (see [`unique_pin_dir`]); bpffs is mounted on /sys/fs/bpf if it is not.
    pub fn new(
        harness: &Path,
        build: &KatranBuild<'_>,
        pin_dir: &Path,
        cpu: usize,
        vip6: Ipv6Addr,
        port: u16,
        reals6: &[Ipv6Addr],
    ) -> Result<Self, String> {
        check_harness(harness)?;
        if reals6.is_empty() {
            return Err("an IPv6 VIP needs at least one real".into());
        }
        ensure_bpffs()?;
        std::fs::create_dir(pin_dir)
            .map_err(|e| format!("cannot create the pin directory {}: {e}", pin_dir.display()))?;
        // From here on, Drop cleans up whatever exists.
        let mut katran = Self {
            prog_pin: pin_dir.join("katran"),
            pin_dir: pin_dir.to_owned(),
            cpu,
            first_real6: 0,
            reals6: reals6.to_vec(),
            router_mac: [0; 6],
            encap: build.encap,
            stats: None,
            lru_mapping: None,
        };
        let cpu_arg = cpu.to_string();
        let mut args = vec![
            "--build".as_ref(),
            build.dir.as_os_str(),
            "--pin-katran".as_ref(),
            katran.prog_pin.as_os_str(),
            "--setup-only".as_ref(),
            "--cpu".as_ref(),
            cpu_arg.as_ref(),
        ];
        if build.encap != Encap::Ipip {
            args.extend([OsStr::new("--defines"), OsStr::new(build.encap.defines())]);
        }
        run_sh(harness, &args)?;
        katran.configure(vip6, port)?;
        Ok(katran)
    }

    fn configure(&mut self, vip6: Ipv6Addr, port: u16) -> Result<(), String> {
        let mut maps = maps_of(&self.prog_pin)?;
        let mut take = |name: &str| {
            maps.remove(name)
                .ok_or_else(|| format!("the pinned Katran has no map {name}"))
        };
        let mut vip_map: HashMap<MapData, VipDefinition, VipMeta> =
            typed(take("vip_map")?, "vip_map")?;
        let mut reals: Array<MapData, RealDefinition> = typed(take("reals")?, "reals")?;
        let mut ch_rings: Array<MapData, u32> = typed(take("ch_rings")?, "ch_rings")?;
        let ctl: Array<MapData, u64> = typed(take("ctl_array")?, "ctl_array")?;
        self.stats = Some(typed(take("stats")?, "stats")?);
        self.lru_mapping = Some(typed(take("lru_mapping")?, "lru_mapping")?);

        if let Encap::Gue { source4, source6 } = self.encap {
            let mut srcs: Array<MapData, RealDefinition> = typed(
                take("pckt_srcs").map_err(|e| format!("{e} (not a GUE build?)"))?,
                "pckt_srcs",
            )?;
            let mut v4: RealDefinition = [0; 20];
            v4[..4].copy_from_slice(&source4.octets());
            let mut v6: RealDefinition = [0; 20];
            v6[..16].copy_from_slice(&source6.octets());
            v6[16] = F_IPV6;
            srcs.set(V4_SRC_INDEX, v4, 0)
                .map_err(|e| format!("pckt_srcs[v4] = {source4}: {e}"))?;
            srcs.set(V6_SRC_INDEX, v6, 0)
                .map_err(|e| format!("pckt_srcs[v6] = {source6}: {e}"))?;
        }
        let ctl0 = ctl.get(&0, 0).map_err(|e| format!("ctl_array[0]: {e}"))?;
        self.router_mac.copy_from_slice(&ctl0.to_ne_bytes()[..6]);

        // kbench's IPv4 reals are 1..=n (0 means "unset"); the IPv6 ones follow.
        let mut first = 1;
        while first < MAX_REALS
            && reals
                .get(&first, 0)
                .map_err(|e| format!("reals[{first}]: {e}"))?
                != [0; 20]
        {
            first += 1;
        }
        let count = u32::try_from(self.reals6.len()).map_err(|_| "too many reals")?;
        if first + count > MAX_REALS {
            return Err(format!("{count} IPv6 reals do not fit after index {first}"));
        }
        self.first_real6 = first;
        for (i, real) in (first..).zip(&self.reals6) {
            let mut def: RealDefinition = [0; 20];
            def[..16].copy_from_slice(&real.octets());
            def[16] = F_IPV6;
            reals
                .set(i, def, 0)
                .map_err(|e| format!("reals[{i}] = {real}: {e}"))?;
        }
        for i in 0..RING_SIZE {
            let slot = VIP6_NUM * RING_SIZE + i;
            let real = first + (u64::from(i) * 7919 % u64::from(count)) as u32;
            ch_rings
                .set(slot, real, 0)
                .map_err(|e| format!("ch_rings[{slot}]: {e}"))?;
        }
        let mut vip: VipDefinition = [0; 20];
        vip[..16].copy_from_slice(&vip6.octets());
        vip[16..18].copy_from_slice(&port.to_be_bytes());
        vip[18] = IPPROTO_TCP;
        let mut meta: VipMeta = [0; 8];
        meta[4..].copy_from_slice(&VIP6_NUM.to_ne_bytes());
        // Last, as KatranLb does: the VIP only answers once its ring is filled.
        vip_map
            .insert(vip, meta, 0)
            .map_err(|e| format!("vip_map [{vip6}]:{port}: {e}"))?;
        Ok(())
    }

    /// Katran's counters of this CPU (see [`KatranCounters`]).
    pub fn counters(&self) -> KatranCounters {
        let stats = self.stats.as_ref().expect("configured");
        let cpu = self.cpu;
        let pair = |key: u32| -> LbStats {
            let values = stats
                .get(&key, 0)
                .unwrap_or_else(|e| panic!("Katran stats[{key}]: {e}"));
            values[cpu]
        };
        let global = |offset: u32| pair(MAX_VIPS + offset);
        let [vip_packets, lru_misses] = global(LRU_CNTRS);
        let [syn_misses, non_syn_misses] = global(LRU_MISS_CNTR);
        let ch = global(CH_DROP_STATS);
        let encap = global(ENCAP_FAIL_CNTR);
        KatranCounters {
            vip_packets,
            lru_misses,
            syn_misses,
            non_syn_misses,
            new_conn_rate: global(NEW_CONN_RATE_CNTR)[0],
            fallback_lru: global(FALLBACK_LRU_CNTR)[0],
            ch_drops: ch[0] + ch[1],
            encap_fails: encap[0] + encap[1],
            xdp_total: global(XDP_TOTAL_CNTR)[0],
            xdp_tx: global(XDP_TX_CNTR)[0],
            xdp_drop: global(XDP_DROP_CNTR)[0],
            xdp_pass: global(XDP_PASS_CNTR)[0],
            vip6_packets: pair(VIP6_NUM)[0],
            vip4_packets: pair(0)[0],
        }
    }

    /// Entries in this CPU's LRU (the inner map of lru_mapping[cpu]).
    pub fn lru_entries(&self) -> usize {
        let lru = self.lru(self.cpu);
        let mut entries = 0;
        for key in lru.keys() {
            key.unwrap_or_else(|e| panic!("walking the LRU: {e}"));
            entries += 1;
        }
        entries
    }

    /// Whether this CPU's LRU holds the flow of `frame` (an IPv6 TCP frame to the VIP's
    /// port), and at which real index: Katran's flow_key of it.
    pub fn lru_real_of(&self, frame: &[u8]) -> Option<u32> {
        let key = flow_key6(frame)?;
        let value = self.lru(self.cpu).get(&key, 0).ok()?;
        Some(u32::from_ne_bytes(value[..4].try_into().expect("4 bytes")))
    }

    fn lru(&self, cpu: usize) -> Lru {
        let mapping = self.lru_mapping.as_ref().expect("configured");
        let index = u32::try_from(cpu).expect("a CPU number");
        mapping
            .get(&index, 0)
            .unwrap_or_else(|e| panic!("lru_mapping[{cpu}] (kbench sets the bench CPU's): {e}"))
    }

    /// Runs the pinned Katran once on `frame`, on this Katran's CPU (the calling thread moves
    /// there for the call, then back): its action and output frame. Changes its counters
    /// and LRU like any packet.
    pub fn run(&self, frame: &[u8]) -> Result<(u32, Vec<u8>), String> {
        let program = Xdp::from_pin(&self.prog_pin, XdpAttachType::Interface)
            .map_err(|e| format!("{}: {e}", self.prog_pin.display()))?;
        let saved = affinity();
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it (cpu < CPU_SETSIZE
        // is checked by the kernel's answer, a bad CPU gives EINVAL).
        let mut only: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::CPU_SET(self.cpu, &mut only) };
        set_affinity(&only)?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        });
        set_affinity(&saved)?;
        let result = result.map_err(|e| format!("BPF_PROG_TEST_RUN: {e}"))?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }
}

impl Drop for PinnedKatran {
    fn drop(&mut self) {
        // Close our map handles first: with the pin gone, nothing holds Katran.
        self.stats = None;
        self.lru_mapping = None;
        crate::cleanup::remove_file(&self.prog_pin);
        if let Err(e) = std::fs::remove_dir(&self.pin_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                crate::loud(&format!(
                    "katran: cannot remove {}: {e}",
                    self.pin_dir.display()
                ));
            }
        }
    }
}

/// Katran's flow_key of an Ethernet + IPv6 + TCP/UDP frame, as it keys its LRU for a
/// port-specific VIP: source, destination, source port, destination port, proto.
fn flow_key6(frame: &[u8]) -> Option<FlowKey> {
    if frame.len() < 58 || frame[12..14] != [0x86, 0xdd] {
        return None;
    }
    let mut key: FlowKey = [0; 40];
    key[..32].copy_from_slice(&frame[22..54]);
    key[32..36].copy_from_slice(&frame[54..58]);
    key[36] = frame[20];
    Some(key)
}

/// Checks a frame that Katran's GUE build sent: Ethernet, outer IPv4 (no options) or IPv6
/// carrying UDP, UDP to [`GUE_DPORT`] whose length covers the rest, and behind it `inner`
/// (the client's IP packet) byte for byte. Its outer source and destination, or what is off.
pub fn check_gue_frame(out: &[u8], inner: &[u8]) -> Result<(IpAddr, IpAddr), String> {
    let bytes16 = |at: usize| -> [u8; 16] { out[at..at + 16].try_into().expect("16 bytes") };
    let bytes4 = |at: usize| -> [u8; 4] { out[at..at + 4].try_into().expect("4 bytes") };
    let (src, dst, udp_at) = match out.get(12..14) {
        Some([0x08, 0x00]) if out.len() >= 14 + 20 + 8 => {
            if out[14] != 0x45 || out[23] != IPPROTO_UDP {
                return Err(format!(
                    "outer IPv4 {:#04x} proto {}, not UDP without options",
                    out[14], out[23]
                ));
            }
            (IpAddr::from(bytes4(26)), IpAddr::from(bytes4(30)), 14 + 20)
        }
        Some([0x86, 0xdd]) if out.len() >= 14 + 40 + 8 => {
            if out[20] != IPPROTO_UDP {
                return Err(format!("outer IPv6 next header {}, not UDP", out[20]));
            }
            (
                IpAddr::from(bytes16(22)),
                IpAddr::from(bytes16(38)),
                14 + 40,
            )
        }
        _ => return Err(format!("{} bytes: no outer IPv4/IPv6 + UDP", out.len())),
    };
    let dport = u16::from_be_bytes([out[udp_at + 2], out[udp_at + 3]]);
    let udp_len = usize::from(u16::from_be_bytes([out[udp_at + 4], out[udp_at + 5]]));
    if dport != GUE_DPORT {
        return Err(format!("UDP to port {dport}, not {GUE_DPORT}"));
    }
    if udp_len != out.len() - udp_at {
        return Err(format!(
            "UDP length {udp_len}, the frame holds {}",
            out.len() - udp_at
        ));
    }
    if &out[udp_at + 8..] != inner {
        return Err("the client's packet is not intact behind the UDP header".into());
    }
    Ok((src, dst))
}

/// The pinned program's maps by name.
fn maps_of(prog_pin: &Path) -> Result<std::collections::HashMap<String, MapData>, String> {
    let info =
        ProgramInfo::from_pin(prog_pin).map_err(|e| format!("{}: {e}", prog_pin.display()))?;
    let ids = info
        .map_ids()
        .map_err(|e| format!("map ids of {}: {e}", prog_pin.display()))?
        .ok_or("this kernel does not list a program's maps")?;
    let mut maps = std::collections::HashMap::new();
    for id in ids {
        let name = MapInfo::from_id(id)
            .map_err(|e| format!("map {id}: {e}"))?
            .name_as_str()
            .unwrap_or_default()
            .to_owned();
        let data = MapData::from_id(id).map_err(|e| format!("map {id} ({name}): {e}"))?;
        maps.insert(name, data);
    }
    Ok(maps)
}

/// A typed handle over one of Katran's maps; aya checks the key and value sizes.
fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    data: MapData,
    name: &str,
) -> Result<T, String> {
    let map = Map::from_map_data(data).map_err(|e| format!("{name}: {e}"))?;
    T::try_from(map).map_err(|e| format!("{name} (layout differs from balancer_structs.h?): {e}"))
}

fn ensure_bpffs() -> Result<(), String> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let root = Path::new("/sys/fs/bpf");
    let is_bpffs = |p: &Path| rustix::fs::statfs(p).is_ok_and(|s| s.f_type == BPF_FS_MAGIC);
    if is_bpffs(root) {
        return Ok(());
    }
    rustix::mount::mount("bpf", root, "bpf", rustix::mount::MountFlags::empty(), None)
        .map_err(|e| format!("mounting bpffs on /sys/fs/bpf: {e}"))
}

/// One row of kbench's table.
#[derive(Clone, Debug, PartialEq)]
pub struct KbenchRow {
    pub name: String,
    /// TX, PASS, DROP, ... or MIXED.
    pub action: String,
    /// Output length minus input length.
    pub dlen: i64,
    pub ns_per_call: f64,
    pub x_floor: f64,
    pub minus_floor: f64,
    pub p50: f64,
    pub wall: f64,
}

/// One row's entry in kbench's "checks" section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KbenchCheck {
    pub name: String,
    /// Each returned action and its count over the timed calls (warm-up not included).
    pub actions: Vec<(String, u64)>,
    /// Timed calls.
    pub calls: u64,
    pub out_len: u64,
    pub in_len: u64,
    /// Every timed call's output had the first call's length.
    pub same_length: bool,
    /// kbench's decode of the first output frame ("eth ... ip6 A>B proto 41 (IPv6-encap) |
    /// inner C>D tcp P>Q").
    pub out: String,
}

/// kbench's table row named `name`.
pub fn kbench_row(stdout: &str, name: &str) -> Result<KbenchRow, String> {
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !rest.starts_with(' ') {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() != 8 {
            continue;
        }
        let num = |i: usize| -> Result<f64, String> {
            f[i].parse()
                .map_err(|e| format!("kbench row {name}: field {i} {:?}: {e}", f[i]))
        };
        return Ok(KbenchRow {
            name: name.to_owned(),
            action: f[0].to_owned(),
            dlen: f[1]
                .parse()
                .map_err(|e| format!("kbench row {name}: dlen {:?}: {e}", f[1]))?,
            ns_per_call: num(2)?,
            x_floor: num(3)?,
            minus_floor: num(4)?,
            p50: num(6)?,
            wall: num(7)?,
        });
    }
    Err(format!("no row {name:?} in kbench's table:\n{stdout}"))
}

/// kbench's checks entry of row `name`.
pub fn kbench_check(stdout: &str, name: &str) -> Result<KbenchCheck, String> {
    let head = format!("  {name}: ");
    let mut lines = stdout.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix(&head) else {
            continue;
        };
        // "TX=2000 of 2000; output 114 bytes from 74 in (every call the same length)"
        let bad = || format!("kbench's checks line for {name} is not as expected: {line}");
        let (acts, rest) = rest.split_once(" of ").ok_or_else(bad)?;
        let actions = acts
            .split_whitespace()
            .map(|a| {
                let (k, v) = a.split_once('=').ok_or_else(bad)?;
                Ok((k.to_owned(), v.parse().map_err(|_| bad())?))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let (calls, rest) = rest.split_once("; output ").ok_or_else(bad)?;
        let (out_len, rest) = rest.split_once(" bytes from ").ok_or_else(bad)?;
        let (in_len, rest) = rest.split_once(" in (").ok_or_else(bad)?;
        let out = lines
            .next()
            .and_then(|l| l.trim_start().strip_prefix("out: "))
            .ok_or_else(bad)?;
        return Ok(KbenchCheck {
            name: name.to_owned(),
            actions,
            calls: calls.parse().map_err(|_| bad())?,
            out_len: out_len.parse().map_err(|_| bad())?,
            in_len: in_len.parse().map_err(|_| bad())?,
            same_length: rest.starts_with("every call the same length"),
            out: out.to_owned(),
        });
    }
    Err(format!(
        "no checks entry for {name:?} in kbench's output:\n{stdout}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
row                                action  dlen  ns/call x floor  -floor  rounds min-max p50/call wall/call
floor (MAC swap, XDP_TX)           TX        +0     85.2    1.00     0.0    85.2-85.2       80.0     412.3
katran6 established                TX       +40    240.5    2.82   155.3   240.5-240.5      240.0     600.1

checks (first output frame of each row; Katran's own counters over the timed calls):
  katran6 established: TX=2000 of 2000; output 114 bytes from 74 in (every call the same length)
      out: eth 02:00:00:00:00:02>02:00:00:00:00:01 ip6 100::7a69>fd00:2::1 proto 41 (IPv6-encap) | inner fd00::1>fd00:1::100 tcp 31337>80
";

    #[test]
    fn parses_kbench_rows_and_checks() {
        let row = kbench_row(SAMPLE, "katran6 established").unwrap();
        assert_eq!(row.action, "TX");
        assert_eq!(row.dlen, 40);
        assert!((row.ns_per_call - 240.5).abs() < 1e-9);
        assert!((row.x_floor - 2.82).abs() < 1e-9);
        assert!((row.minus_floor - 155.3).abs() < 1e-9);
        let check = kbench_check(SAMPLE, "katran6 established").unwrap();
        assert_eq!(check.actions, vec![("TX".to_owned(), 2000)]);
        assert_eq!((check.calls, check.out_len, check.in_len), (2000, 114, 74));
        assert!(check.same_length);
        assert!(
            check
                .out
                .ends_with("inner fd00::1>fd00:1::100 tcp 31337>80")
        );
        kbench_row(SAMPLE, "katran6").unwrap_err();
    }

    #[test]
    fn flow_key_of_an_ipv6_frame() {
        let src: Ipv6Addr = "fd00::1".parse().unwrap();
        let dst: Ipv6Addr = "fd00:1::100".parse().unwrap();
        let key = flow_key6(&frame6(src, 31337, dst, 80, false)).unwrap();
        assert_eq!(key[..16], src.octets());
        assert_eq!(key[16..32], dst.octets());
        assert_eq!(key[32..36], [0x7a, 0x69, 0, 80]);
        assert_eq!(key[36], 6);
    }
}
