//! The kernel memory the datapath's maps take, as the kernel accounts it, and how it reads.

use serde::{Deserialize, Serialize};

/// One map and the bytes the kernel charges for it (`memlock` in its fdinfo).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapMemory {
    /// The kernel's name for the map (at most 15 characters).
    pub name: String,
    pub bytes: u64,
}

/// Every map of the loaded datapath, largest first, and their sum.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryReport {
    pub total_bytes: u64,
    pub maps: Vec<MapMemory>,
}

/// Maps a summary names one by one; the rest are counted together.
const NAMED_IN_SUMMARY: usize = 4;

impl MemoryReport {
    pub fn new(mut maps: Vec<MapMemory>) -> Self {
        maps.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
        Self {
            total_bytes: maps.iter().map(|m| m.bytes).sum(),
            maps,
        }
    }

    /// "331 MiB of kernel memory (CONNTRACK 256 MiB, MAGLEV 64 MiB, ..., 12 others 1.2 MiB)".
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .maps
            .iter()
            .take(NAMED_IN_SUMMARY)
            .map(|m| format!("{} {}", m.name, bytes(m.bytes)))
            .collect();
        let rest = &self.maps[self.maps.len().min(NAMED_IN_SUMMARY)..];
        if !rest.is_empty() {
            parts.push(format!(
                "{} others {}",
                rest.len(),
                bytes(rest.iter().map(|m| m.bytes).sum())
            ));
        }
        format!(
            "{} of kernel memory ({})",
            bytes(self.total_bytes),
            parts.join(", ")
        )
    }
}

/// Binary units, three significant digits at most: "331 MiB", "6.1 MiB", "640 KiB".
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value >= 10.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(name: &str, bytes: u64) -> MapMemory {
        MapMemory {
            name: name.to_owned(),
            bytes,
        }
    }

    #[test]
    fn the_report_sums_and_sorts_and_the_summary_names_the_largest() {
        let report = MemoryReport::new(vec![
            map("STATS", 4096),
            map("CONNTRACK", 256 << 20),
            map("MAGLEV", 67_110_912),
            map("HOPS", 6 << 20),
            map("VIPS", 20_480),
            map("META", 512),
        ]);
        assert_eq!(report.maps[0].name, "CONNTRACK");
        assert_eq!(
            report.total_bytes,
            (256 << 20) + 67_110_912 + (6 << 20) + 20_480 + 4096 + 512
        );
        assert_eq!(
            report.summary(),
            "326 MiB of kernel memory (CONNTRACK 256 MiB, MAGLEV 64 MiB, HOPS 6.0 MiB, \
             VIPS 20 KiB, 2 others 4.5 KiB)"
        );
        assert_eq!(
            MemoryReport::new(vec![map("META", 100)]).summary(),
            "100 B of kernel memory (META 100 B)"
        );
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(640 << 10), "640 KiB");
        assert_eq!(bytes(331 << 20), "331 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
