//! The Grafana dashboard (dist/grafana/lb.json) reads only series `/metrics` serves: every
//! PromQL expression in it is checked against the families the encoder writes.

use std::collections::BTreeSet;

use super::metrics::fixture_text;

const DASHBOARD: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../dist/grafana/lb.json"
));

/// PromQL words that take a parenthesized list of label names, not series.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// PromQL words that are neither functions nor series.
const KEYWORDS: [&str; 5] = ["and", "or", "unless", "bool", "offset"];

/// The series a scrape serves: a counter `x` is stored as `x_total`.
fn served_series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| match kind {
            "counter" => format!("{name}_total"),
            _ => name.to_owned(),
        })
        .collect()
}

/// Index just past the `close` that ends what starts at `open_at` (strings skipped).
fn past_closing(chars: &[char], open_at: usize, open: char, close: char) -> usize {
    let mut depth = 0usize;
    let mut i = open_at;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = past_string(chars, i) - 1,
            c if c == open => depth += 1,
            c if c == close => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    chars.len()
}

/// Index just past the string literal that starts at `at`.
fn past_string(chars: &[char], at: usize) -> usize {
    let quote = chars[at];
    let mut i = at + 1;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    (i + 1).min(chars.len())
}

/// The series names a PromQL expression reads: identifiers that are not functions,
/// keywords, label names (in `{}` or after `by`...), ranges or Grafana variables.
fn series_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = past_string(&chars, i);
        } else if c == '{' {
            i = past_closing(&chars, i, '{', '}');
        } else if c == '[' {
            i = past_closing(&chars, i, '[', ']');
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A Grafana variable or a number (`5m`, `1e3`): never a series.
            i += 1;
            while i < chars.len() && (word(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if word(c) {
            let start = i;
            while i < chars.len() && word(chars[i]) {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let rest: String = chars[next..].iter().collect();
            // A function, or an aggregation with its grouping first (`sum by (x) (...)`).
            let called = rest.starts_with('(')
                || ["by", "without"].iter().any(|group| {
                    rest.strip_prefix(group)
                        .is_some_and(|after| after.trim_start().starts_with('('))
                });
            if LABEL_LISTS.contains(&ident.as_str()) {
                if called {
                    i = past_closing(&chars, next, '(', ')');
                }
            } else if !called && !KEYWORDS.contains(&ident.as_str()) {
                names.push(ident);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every query in the dashboard, with where it is: panel targets (rows' panels
/// included) and template variables (`label_values(series, label)`: the series only).
fn queries(value: &serde_json::Value, place: &str, found: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(fields) => {
            let place = fields
                .get("title")
                .or_else(|| fields.get("name"))
                .and_then(|t| t.as_str())
                .unwrap_or(place);
            for (key, field) in fields {
                match (key.as_str(), field.as_str()) {
                    ("expr", Some(expr)) => found.push((place.to_owned(), expr.to_owned())),
                    ("query" | "definition", Some(query)) => {
                        let series = query
                            .strip_prefix("label_values(")
                            .and_then(|args| args.rsplit_once(',').map(|(series, _)| series))
                            .unwrap_or(query);
                        found.push((place.to_owned(), series.to_owned()));
                    }
                    _ => queries(field, place, found),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                queries(item, place, found);
            }
        }
        _ => {}
    }
}

#[test]
fn promql_names_are_told_from_functions_labels_and_ranges() {
    for (expr, names) in [
        (
            r#"sum by (name) (rate(lb_a_total{name=~"drop_.*|x{y}", instance=~"$instance"}[$__rate_interval]))"#,
            vec!["lb_a_total"],
        ),
        (
            "lb_b / on (instance, map) group_left (x) lb_c offset 5m",
            vec!["lb_b", "lb_c"],
        ),
        (
            "8 * sum(increase(lb_d[1h])) without (cpu) > bool 1e3",
            vec!["lb_d"],
        ),
        ("max by(vip) (up) or vector(0)", vec!["up"]),
    ] {
        assert_eq!(series_names(expr), names, "{expr}");
    }
}

#[test]
fn every_dashboard_query_reads_only_series_lb_serves() {
    let served = served_series(&fixture_text());
    assert!(
        served.contains("lb_vip_packets_total") && served.contains("lb_backend_active_conns"),
        "the fixture scrape lacks families: {served:?}"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(DASHBOARD).expect("dist/grafana/lb.json is JSON");
    let mut found = Vec::new();
    queries(&dashboard, "dashboard", &mut found);
    assert!(found.len() > 20, "too few queries found: {found:?}");
    let mut unknown = Vec::new();
    for (place, expr) in &found {
        let names = series_names(expr);
        assert!(!names.is_empty(), "{place}: no series in {expr:?}");
        unknown.extend(
            names
                .into_iter()
                .filter(|name| !served.contains(name))
                .map(|name| format!("{place}: {name} (in {expr})")),
        );
    }
    assert!(
        unknown.is_empty(),
        "the dashboard reads series /metrics does not serve:\n{}",
        unknown.join("\n")
    );
}
