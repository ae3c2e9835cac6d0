//! The counter table `lb run` prints on stdout (`--stats-interval`, and at exit).

use std::time::Duration;

use comfy_table::{CellAlignment, Table, presets::NOTHING};
use lb_common::stats::Stat;

use crate::datapath::stats::Snapshot;

/// A table of the non-zero counters, with rates over `elapsed` when a previous snapshot is
/// given. Columns: name, packets, bytes, packets per second; as wide as the longest cell.
pub(crate) fn render(now: &Snapshot, previous: Option<(&Snapshot, Duration)>) -> String {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_header(vec!["counter", "packets", "bytes", "pkt/s"]);
    for &stat in Stat::ALL {
        let counter = now.get(stat);
        if counter.packets == 0 {
            continue;
        }
        let rate = match previous {
            Some((before, elapsed)) if !elapsed.is_zero() => {
                let delta = counter.packets.saturating_sub(before.get(stat).packets);
                format!("{:.1}", delta as f64 / elapsed.as_secs_f64())
            }
            _ => "-".to_owned(),
        };
        table.add_row(vec![
            stat.name().to_owned(),
            counter.packets.to_string(),
            counter.bytes.to_string(),
            rate,
        ]);
    }
    // No margin left of the names, so a line starts with its counter's name.
    if let Some(names) = table.column_mut(0) {
        names.set_padding((0, 1));
    }
    for column in 1..4 {
        if let Some(column) = table.column_mut(column) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    // The preset pads every cell; trailing blanks only get in the way of log readers.
    table
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use lb_common::stats::Counter;

    use super::*;

    fn snapshot(values: &[(Stat, u64)]) -> Snapshot {
        let mut counters = vec![Counter::default(); Stat::ALL.len()];
        for &(stat, packets) in values {
            counters[stat.index() as usize] = Counter {
                packets,
                bytes: packets * 100,
            };
        }
        Snapshot { counters }
    }

    #[test]
    fn render_lists_nonzero_counters_with_rates() {
        let before = snapshot(&[(Stat::Tcp, 10)]);
        let now = snapshot(&[(Stat::Tcp, 30), (Stat::Pass, 30)]);
        let table = render(&now, Some((&before, Duration::from_secs(2))));
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["tcp", "30", "3000", "10.0"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["xdp_pass", "30", "3000", "15.0"]
        );
        assert!(!table.contains("udp"));
    }

    #[test]
    fn render_without_history_has_no_rate() {
        let table = render(&snapshot(&[(Stat::Udp, 1)]), None);
        assert!(
            table.lines().nth(1).is_some_and(|l| l.ends_with('-')),
            "{table}"
        );
    }

    #[test]
    fn long_counter_names_keep_their_columns() {
        let table = render(&snapshot(&[(Stat::DropForwardingDisabled, 7)]), None);
        let row = table.lines().nth(1).expect("a row");
        assert!(row.starts_with("drop_forwarding_disabled "), "{table}");
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["drop_forwarding_disabled", "7", "700", "-"],
            "{table}"
        );
    }
}
