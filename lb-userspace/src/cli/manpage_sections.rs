//! What the man pages say beyond the clap definitions: the files lb reads and writes, its
//! environment, the daemon's signals and configuration file, exit statuses and examples.
//! [`crate::cli::manpages`] renders them after each page's options.

use std::path::{Path, PathBuf};

/// The install's own paths, for the FILES sections (`lb manpages --sysconfdir --docdir`).
#[derive(Clone, Debug)]
pub(crate) struct InstallPaths {
    /// Where `default/lb` and `lb/lb.toml` are (/etc).
    pub(crate) sysconfdir: PathBuf,
    /// Where README.md.gz is (/usr/share/doc/lb).
    pub(crate) docdir: PathBuf,
}

/// One section of a page.
pub(crate) struct Section {
    pub(crate) title: &'static str,
    pub(crate) body: Vec<Block>,
}

/// A block of a section, rendered as man(7) does it.
pub(crate) enum Block {
    /// A paragraph.
    Text(String),
    /// A tagged paragraph: the tag in bold, the text indented below it.
    Item { tag: String, text: String },
    /// What an example does, then its command lines, indented and not filled.
    Example {
        what: &'static str,
        lines: Vec<&'static str>,
    },
}

fn text(text: impl Into<String>) -> Block {
    Block::Text(text.into())
}

fn item(tag: impl Into<String>, text: impl Into<String>) -> Block {
    Block::Item {
        tag: tag.into(),
        text: text.into(),
    }
}

fn example(what: &'static str, lines: &[&'static str]) -> Block {
    Block::Example {
        what,
        lines: lines.to_vec(),
    }
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

/// The sections `page` (a page name such as `lb-run`) gets, in order.
pub(crate) fn for_page(page: &str, paths: &InstallPaths) -> Vec<Section> {
    match page {
        "lb" => vec![
            environment(),
            files(paths),
            exit_status(),
            examples(LB_EXAMPLES),
            see_also(&["lb-run", "lb-down", "lb-vip", "lb-backend", "systemctl(1)"]),
        ],
        "lb-run" => vec![
            configuration_file(paths),
            signals(),
            environment(),
            files(paths),
            examples(RUN_EXAMPLES),
            see_also(&[
                "lb",
                "lb-reload",
                "lb-down",
                "lb-check-config",
                "systemd.service(5)",
            ]),
        ],
        "lb-down" => vec![
            Section {
                title: "FILES",
                body: vec![
                    pins(),
                    item(
                        "/var/lib/lb/state.toml",
                        "Kept: the next lb run starts from it, with a fresh datapath.",
                    ),
                ],
            },
            examples(DOWN_EXAMPLES),
            see_also(&["lb-run", "lb"]),
        ],
        "lb-reload" => vec![
            Section {
                title: "SIGNALS",
                body: vec![text(
                    "SIGHUP to the daemon does the same; a file it refuses is logged, and \
                     the daemon keeps its state.",
                )],
            },
            examples(RELOAD_EXAMPLES),
            see_also(&["lb-run", "lb-check-config"]),
        ],
        "lb-capture" => vec![
            Section {
                title: "SIGNALS",
                body: vec![item(
                    "SIGINT, SIGTERM",
                    "Ask the daemon to stop the capture: the packets already on their way \
                     and the capture's counts are still written, then lb capture exits 0. \
                     If the daemon has not ended the capture 5 seconds later, or on a \
                     second signal, the connection is cut.",
                )],
            },
            Section {
                title: "OUTPUT",
                body: vec![text(
                    "pcapng: one interface per interface lb runs on; each packet as \
                     received (direction inbound) and, if lb sent it on, as sent \
                     (outbound), with a comment: verdict, reason counter, VIP, backend, \
                     mode, conntrack state, table fingerprint, CPU. At the end an \
                     interface statistics block counts the packets captured \
                     (isb_usrdeliv) and lost (isb_ifdrop). Status lines go to stderr, \
                     never to stdout.",
                )],
            },
            examples(CAPTURE_EXAMPLES),
            see_also(&["lb-explain", "lb-stats", "tcpdump(8)", "tshark(1)"]),
        ],
        "lb-decap-attach" | "lb-decap-detach" | "lb-decap-status" => vec![
            Section {
                title: "FILES",
                body: decap_files(),
            },
            examples(DECAP_EXAMPLES),
            see_also(&["lb-decap", "lb-run"]),
        ],
        _ => match page_examples(page) {
            Some(lines) => vec![examples(lines)],
            None => Vec::new(),
        },
    }
}

/// Examples of the leaf commands that have no other section.
fn page_examples(page: &str) -> Option<&'static [(&'static str, &'static [&'static str])]> {
    Some(match page {
        "lb-vip-add" => &[
            (
                "An HTTP VIP, its backends checked on /healthz:",
                &["lb vip add 192.0.2.10:80 --check http:/healthz"],
            ),
            (
                "A UDP VIP in direct server return (backends run lb decap attach):",
                &["lb vip add 192.0.2.10:53 --proto udp --mode dsr-ipip"],
            ),
        ],
        "lb-backend-add" => &[(
            "Two backends, the second taking twice the new flows:",
            &[
                "lb backend add 192.0.2.10:80 198.51.100.11:8080",
                "lb backend add 192.0.2.10:80 198.51.100.12:8080 --weight 200",
            ],
        )],
        "lb-backend-drain" => &[(
            "No new flows to a backend; watch its flows end, then remove it:",
            &[
                "lb backend drain 192.0.2.10:80 198.51.100.11:8080",
                "lb conntrack list 192.0.2.10:80 --backend 198.51.100.11:8080",
                "lb backend del 192.0.2.10:80 198.51.100.11:8080",
            ],
        )],
        "lb-backend-set" => &[(
            "Halve a backend's share, or end its drain:",
            &[
                "lb backend set 192.0.2.10:80 198.51.100.11:8080 --weight 50",
                "lb backend set 192.0.2.10:80 198.51.100.11:8080 --undrain",
            ],
        )],
        "lb-status" => &[(
            "What the daemon runs on, as a table and for scripts:",
            &["lb status", "lb status --json"],
        )],
        "lb-stats" => &[(
            "Totals, then live rates every 2 seconds:",
            &["lb stats", "lb stats --watch --interval 2"],
        )],
        "lb-check-config" => &[(
            "Check a file before reloading it:",
            &["lb check-config /etc/lb/lb.toml"],
        )],
        "lb-conntrack-list" => &[(
            "The flows of one VIP:",
            &["lb conntrack list 192.0.2.10:80 --limit 20"],
        )],
        "lb-explain" => &[(
            "Where the next packet of a client's flow goes, and why:",
            &["lb explain 203.0.113.7:40000 192.0.2.10:80"],
        )],
        _ => return None,
    })
}

const LB_EXAMPLES: &[(&str, &[&str])] = &[
    (
        "A VIP with two backends on a running daemon, then what it serves:",
        &[
            "lb vip add 192.0.2.10:80",
            "lb backend add 192.0.2.10:80 198.51.100.11:8080",
            "lb backend add 192.0.2.10:80 198.51.100.12:8080",
            "lb status",
        ],
    ),
    (
        "Stop forwarding (stopping the daemon alone leaves the datapath forwarding):",
        &["systemctl stop lb", "lb down"],
    ),
];

const RUN_EXAMPLES: &[(&str, &[&str])] = &[
    (
        "The daemon on eth0 with a declared state and metrics (lb.service runs it so):",
        &["lb run --iface eth0 --config /etc/lb/lb.toml --metrics 127.0.0.1:9100"],
    ),
    (
        "Reload the declared state of a running daemon (each line does it):",
        &[
            "systemctl reload lb",
            "lb reload",
            "kill -HUP $(systemctl show --property MainPID --value lb)",
        ],
    ),
];

const DOWN_EXAMPLES: &[(&str, &[&str])] = &[
    (
        "Stop forwarding: the daemon, then the datapath:",
        &["systemctl stop lb", "lb down"],
    ),
    (
        "A datapath pinned elsewhere (lb run --pin-dir):",
        &["lb down --pin-dir /sys/fs/bpf/lb-test"],
    ),
];

const CAPTURE_EXAMPLES: &[(&str, &[&str])] = &[
    (
        "Watch one VIP's packets live, then read a file's comments:",
        &[
            "lb capture --vip 192.0.2.10:80 -w - | tcpdump -nr -",
            "lb capture --vip 192.0.2.10:80 --count 100 -w vip.pcapng",
            "tshark -r vip.pcapng -T fields -e frame.comment",
        ],
    ),
    (
        "Why are a client's packets dropped?",
        &["lb capture --drops --client 203.0.113.7 --count 10 -w drops.pcapng"],
    ),
    (
        "One packet in 100 of a busy VIP, headers only:",
        &["lb capture --vip 192.0.2.10:443 --sample 1/100 --snaplen 128 -w sample.pcapng"],
    ),
];

const RELOAD_EXAMPLES: &[(&str, &[&str])] = &[(
    "Check the edited file, then apply it:",
    &["lb check-config /etc/lb/lb.toml", "lb reload"],
)];

const DECAP_EXAMPLES: &[(&str, &[&str])] = &[
    (
        "On a DSR backend: take apart the lb's tunnels to two VIPs arriving on eth0, from \
         the lb's prefix only:",
        &[
            "lb decap attach --iface eth0 --vip 192.0.2.10 --vip 2001:db8::10 --allow-source 198.51.100.0/24",
        ],
    ),
    ("Undo all of it:", &["lb decap detach --all"]),
];

fn examples(list: &[(&'static str, &'static [&'static str])]) -> Section {
    Section {
        title: "EXAMPLES",
        body: list
            .iter()
            .map(|(what, lines)| example(what, lines))
            .collect(),
    }
}

fn see_also(pages: &[&str]) -> Section {
    let names: Vec<String> = pages
        .iter()
        .map(|page| {
            if page.ends_with(')') {
                (*page).to_owned()
            } else {
                format!("{page}(1)")
            }
        })
        .collect();
    Section {
        title: "SEE ALSO",
        body: vec![text(names.join(", "))],
    }
}

fn environment() -> Section {
    Section {
        title: "ENVIRONMENT",
        body: vec![
            item(
                "LB_API",
                "The daemon's API socket when --api is not given (default /run/lb/lb.sock). \
                 lb.service sets it for lb run and lb reload alike.",
            ),
            item(
                "LB_IFACES",
                "The interfaces of lb run when --iface is not given, separated by spaces. \
                 lb.service reads it from /etc/default/lb; lb run refuses an empty one and \
                 names that file.",
            ),
            item(
                "RUST_LOG",
                "Which log lines reach stderr, as a tracing filter: info by default; \
                 RUST_LOG=debug for more, RUST_LOG=warn for less.",
            ),
            item(
                "NO_COLOR",
                "Any value but empty: no colour in the log, even on a terminal.",
            ),
            item(
                "NOTIFY_SOCKET",
                "Set by systemd for a Type=notify unit: lb run sends READY=1 once the \
                 datapath is attached and the API socket served, and STOPPING=1 as it stops.",
            ),
        ],
    }
}

fn pins() -> Block {
    item(
        "/sys/fs/bpf/lb",
        "The pinned datapath (lb run --pin-dir): one file per map and link_<IF> per \
         attached interface. While it exists the XDP program forwards, daemon or not; a \
         new daemon adopts it; lb down removes it. Without lb, rm -r /sys/fs/bpf/lb \
         detaches the program (no daemon may be running).",
    )
}

fn decap_files() -> Vec<Block> {
    vec![
        item(
            "/sys/fs/bpf/lb-decap/netns-<INODE>",
            "lb decap's pins, one directory per interface; <INODE> is the network \
             namespace's (stat -L -c %i /proc/self/ns/net).",
        ),
        item(
            "/run/lb-decap/netns-<INODE>.json",
            "What lb decap attach changed (sysctls, addresses on lo), so that detach \
             undoes exactly that.",
        ),
    ]
}

fn files(paths: &InstallPaths) -> Section {
    let mut body = vec![
        item(
            "/run/lb/lb.sock",
            "The daemon's API socket (root only), removed when lb.service stops.",
        ),
        item(
            path(&paths.sysconfdir, "default/lb"),
            "lb.service's settings: LB_IFACES (the interfaces, required) and LB_OPTS \
             (more lb run flags); a change needs systemctl restart lb.",
        ),
        item(
            path(&paths.sysconfdir, "lb/lb.toml"),
            "The declared VIPs and backends (format in lb-run(1)), applied by \
             lb.service at every start and reload.",
        ),
        item(
            "/var/lib/lb/state.toml",
            "The live state, saved on every change and read at start (lb run --state).",
        ),
        pins(),
    ];
    body.extend(decap_files());
    body.push(item(
        path(&paths.docdir, "README.md.gz"),
        "The README: deployment, forwarding modes, DSR backends, safe uninstall.",
    ));
    Section {
        title: "FILES",
        body,
    }
}

fn exit_status() -> Section {
    Section {
        title: "EXIT STATUS",
        body: vec![
            item("0", "Done."),
            item(
                "1",
                "Failed or refused; stderr says why, and a refused change changed nothing.",
            ),
            item("2", "The command line is wrong (usage on stderr)."),
        ],
    }
}

fn signals() -> Section {
    Section {
        title: "SIGNALS",
        body: vec![
            item(
                "SIGHUP",
                "Re-read --config and make the live state equal to it, as lb reload does: \
                 checked in full first, then applied like lb backend changes, tracked flows \
                 kept. A file that does not parse or validate is logged with its line and \
                 changes nothing. Without --config there is nothing to re-read.",
            ),
            item(
                "SIGTERM, SIGINT",
                "Stop the daemon, not the datapath: the XDP program stays attached through \
                 its pins and keeps forwarding every tracked flow, and the next lb run \
                 adopts it (so do systemctl stop, restart and a package upgrade). lb down \
                 stops forwarding.",
            ),
        ],
    }
}

fn configuration_file(paths: &InstallPaths) -> Section {
    let lb_toml = path(&paths.sysconfdir, "lb/lb.toml");
    Section {
        title: "CONFIGURATION FILE",
        body: vec![
            text(format!(
                "--config names a TOML file of declared VIPs and backends ({lb_toml} under \
                 lb.service). Each start and each reload (SIGHUP, lb reload) applies it, \
                 replacing what lb vip and lb backend changed since. A file is read in full \
                 and checked like the lb vip add and lb backend add commands it stands for \
                 before anything changes; an error names the file and the line. lb \
                 check-config checks a file without a daemon. The state file (--state) has \
                 the same format."
            )),
            item(
                "[[vip]]",
                "One table per VIP. address = \"ADDRESS:PORT\" (IPv6: \"[ADDRESS]:PORT\"), \
                 required; proto = \"tcp\" (default) or \"udp\"; mode = \"nat\" (default), \
                 \"dsr-ipip\" or \"dsr-l2\"; on_down = \"keep-tcp\" (default) or \"move\"; \
                 allow_sources = [\"PREFIX\", ...] (clients that may open flows; absent: \
                 any); check = { probe = \"tcp\" | \"http:/PATH\" | \"udp:PAYLOAD\", \
                 interval = SECS, timeout = SECS, rise = N, fall = N, expect = \"TEXT\" }; \
                 quic = [\"config=N,server-id-len=L,nonce-len=M\", ...] (UDP VIPs: QUIC-LB \
                 configs, plaintext, at most 7 with one server-id-len; the first is the one \
                 servers issue connection IDs with).",
            ),
            item(
                "backends",
                "In a [[vip]]: backends = [ { address = \"ADDRESS:PORT\", weight = N, \
                 drain = BOOL, server_id = \"HEX\" }, ... ]; weight 1 to 65535 (default \
                 100) is the share of new flows, drain = true takes no new flows while its \
                 flows continue; server_id (QUIC VIPs) is the server id its connection IDs \
                 carry, server-id-len bytes in hex (absent: derived from ADDRESS:PORT).",
            ),
            item(
                "[cluster]",
                "What every lb node of a cluster sets alike: hash_seed = \"16 hex digits\" \
                 (secret, the same on every node) and announce_table = TABLE (the kernel \
                 table where this node announces the VIPs it can serve).",
            ),
            item(
                "[node]",
                "Written by the daemon in its state file: drained = true after lb node drain.",
            ),
            example(
                "A VIP with a health check and two backends:",
                &[
                    "[[vip]]",
                    "address = \"192.0.2.10:80\"",
                    "check = { probe = \"http:/healthz\", interval = 2.0, rise = 2, fall = 3 }",
                    "backends = [",
                    "  { address = \"198.51.100.11:8080\" },",
                    "  { address = \"198.51.100.12:8080\", weight = 200 },",
                    "]",
                ],
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;
    use crate::cli::args::Cli;

    fn paths() -> InstallPaths {
        InstallPaths {
            sysconfdir: "/etc".into(),
            docdir: "/usr/share/doc/lb".into(),
        }
    }

    fn every_page() -> Vec<String> {
        crate::cli::manpages::page_names(&Cli::command())
    }

    #[test]
    fn every_lb_command_in_an_example_parses() {
        let mut checked = 0;
        for page in every_page() {
            for section in for_page(&page, &paths()) {
                for block in &section.body {
                    let Block::Example { lines, .. } = block else {
                        continue;
                    };
                    for line in lines.iter().filter(|l| l.starts_with("lb ")) {
                        // The lb command of a pipeline (`lb capture -w - | tcpdump -nr -`).
                        let words = line.split_whitespace().take_while(|w| *w != "|");
                        if let Err(error) = Cli::try_parse_from(words) {
                            panic!("{page}: `{line}` does not parse:\n{error}");
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 20, "only {checked} example commands");
    }

    #[test]
    fn sections_name_only_pages_that_exist() {
        let pages = every_page();
        for page in &pages {
            for section in for_page(page, &paths()) {
                if section.title != "SEE ALSO" {
                    continue;
                }
                for block in &section.body {
                    let Block::Text(text) = block else { continue };
                    let own = text
                        .split(", ")
                        .filter(|n| n.starts_with("lb"))
                        .filter_map(|n| n.strip_suffix("(1)"));
                    for name in own {
                        assert!(
                            pages.iter().any(|p| p == name),
                            "{page} refers to {name}(1)"
                        );
                    }
                }
            }
        }
    }
}
