//! Log lines are read by operators and by log pipelines: every field is written for them
//! (`Display`), never Rust's `Debug` (`Some(127.0.0.1:9100)`, `SetBackend { service: .. }`).
//! This reads every logging macro of the crate's sources and refuses a `?field`, a
//! `field = ?value` or a `{:?}` in one.

use std::path::{Path, PathBuf};

/// The macros that write log lines: tracing's, and the daemon's `say!` for the terminal.
const LOG_MACROS: [&str; 6] = ["trace!", "debug!", "info!", "warn!", "error!", "say!"];

#[test]
fn no_log_line_formats_a_field_with_debug() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 50, "read the sources: {} files", files.len());
    let mut offenders = Vec::new();
    let mut calls = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a source file");
        for (line, call) in log_calls(&text) {
            calls += 1;
            if formats_with_debug(&call) {
                offenders.push(format!("{}:{line}: {call}", file.display()));
            }
        }
    }
    assert!(calls > 50, "found the logging calls: {calls}");
    assert!(
        offenders.is_empty(),
        "log fields formatted with Debug (use %field or a Display):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_check_finds_each_form_of_debug_formatting() {
    for call in [
        r#"?changes, "applied""#,
        r#"addr = ?args.metrics, "serving""#,
        r#""programs {:?}", list"#,
        r#""programs {list:?}""#,
        r#""programs {:#?}", list"#,
    ] {
        assert!(formats_with_debug(call), "{call}");
    }
    for call in [
        r#"%addr, "serving""#,
        r#"vip = %key.0, "backend down: no new flows""#,
        r#""is {0} up? {0}", name"#,
        r#"took_us = census.took.as_micros() as u64, "swept""#,
    ] {
        assert!(!formats_with_debug(call), "{call}");
    }
    let text = "fn f() {\n    info!(\n        ?vip,\n        \"x\"\n    );\n}\n";
    assert_eq!(log_calls(text), vec![(2, "?vip, \"x\"".to_owned())]);
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// Each logging macro call of `text`: its line and its arguments on one line.
fn log_calls(text: &str) -> Vec<(usize, String)> {
    let mut calls = Vec::new();
    for name in LOG_MACROS {
        let mut from = 0;
        while let Some(at) = text[from..].find(name) {
            let start = from + at;
            from = start + name.len();
            let preceded_by_ident = text[..start]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            let rest = text[from..].trim_start();
            if preceded_by_ident || !rest.starts_with('(') {
                continue;
            }
            let open = text.len() - rest.len();
            let Some(close) = matching_paren(text, open) else {
                continue;
            };
            let args = text[open + 1..close]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let line = text[..start].matches('\n').count() + 1;
            calls.push((line, args.trim_end_matches(',').to_owned()));
        }
    }
    calls.sort();
    calls
}

/// The index of the `)` closing the `(` at `open`, skipping string literals.
fn matching_paren(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '(' if !in_string => depth += 1,
            ')' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Whether a call's arguments format something with `Debug`: a `?field` or `= ?value`
/// outside string literals, or a `:?}` / `:#?}` inside one.
fn formats_with_debug(args: &str) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    let mut previous = ' ';
    let chars: Vec<char> = args.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                '?' if (previous == ':' || (previous == '#' && i >= 2 && chars[i - 2] == ':'))
                    && chars.get(i + 1) == Some(&'}') =>
                {
                    return true;
                }
                _ => {}
            }
        } else {
            match c {
                '"' => in_string = true,
                '?' if matches!(previous, ' ' | ',' | '=' | '(')
                    && chars
                        .get(i + 1)
                        .is_some_and(|n| n.is_alphabetic() || *n == '_') =>
                {
                    return true;
                }
                _ => {}
            }
        }
        if !c.is_whitespace() || in_string {
            previous = c;
        }
    }
    false
}
