//! Everything operators and scripts feed the daemon goes through three parsers: the TOML
//! file, the API's JSON lines and the command line. None may panic, whatever the input;
//! each either accepts or says why not.

use std::path::Path;

use clap::Parser as _;
use lb_userspace::{
    api::{error::ErrorCode, wire as api},
    cli::args::Cli,
    model::config,
};
use proptest::prelude::*;

/// Text that is mostly made of the parsers' own vocabulary, so inputs get deep.
fn vocabulary() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "[[vip]]\n",
        "address = ",
        "\"198.18.1.1:80\"",
        "\"[fd00::1]:80\"",
        "proto = ",
        "\"udp\"",
        "backends = [",
        "{ address = \"198.18.2.2:8080\", weight = ",
        "65535",
        "0",
        "-1",
        " }",
        "]",
        "\n",
        "check = { probe = ",
        "\"http:/\"",
        "interval = 0.1",
        "}",
        "drain = true",
        "{\"op\":",
        "\"vip-add\"",
        "\"backend-add\"",
        ",\"vip\":",
        ",\"backend\":",
        ",\"weight\":",
        ",\"version\":",
        "1",
        "\"",
        "{",
        ":",
        ",",
        "null",
        "1e309",
        "\u{0}",
        "é",
        "[",
        "=",
        "#",
    ]);
    prop::collection::vec(pieces, 0..40).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn config_files_never_panic(text in prop_oneof![vocabulary(), any::<String>()]) {
        if let Err(error) = config::parse(&text, Path::new("fuzz.toml")) {
            prop_assert!(error.to_string().starts_with("fuzz.toml:"), "{error}");
        }
    }

    #[test]
    fn api_requests_never_panic(text in prop_oneof![vocabulary(), any::<String>()]) {
        if let Err(error) = api::parse_request(&text) {
            // Every refusal is coded; only a version mismatch is not a plain bad request.
            match error.code {
                ErrorCode::BadRequest => prop_assert!(error.message.starts_with("bad request: "), "{error}"),
                code => prop_assert_eq!(code, ErrorCode::VersionMismatch, "{}", error),
            }
        }
    }

    #[test]
    fn command_lines_never_panic(args in prop::collection::vec(prop_oneof![
        prop::sample::select(vec![
            "run", "vip", "backend", "add", "del", "set", "drain", "list", "stats", "status",
            "down", "--iface", "--weight", "--proto", "udp", "tcp", "--check", "http:/",
            "--interval", "--json", "--watch", "198.18.1.1:80", "[fd00::1]:80", "198.18.1.1",
            "65536", "--table-size", "--undrain", "--no-check", "--api", "set-check",
        ]).prop_map(str::to_owned),
        any::<String>(),
    ], 0..8)) {
        let mut argv = vec!["lb".to_owned()];
        argv.extend(args);
        // Accepted or refused, either will do: the property is that parsing returns.
        drop(Cli::try_parse_from(argv));
    }
}
