//! Replacing a file so that readers (and a crash) see either the old or the new version,
//! never half of one; and removing the temporaries a crash left behind.

use std::{
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
};

/// Writes `text` so that `path` always holds either the old or the new file (creating its
/// directory if needed): a temporary file in the same directory, synced, renamed over
/// `path`, and the directory synced.
pub(crate) fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file_name = path.file_name().map_or_else(
        || "state.toml".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let temp = dir.join(temp_name(&file_name, std::process::id()));
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(error) = result {
        // The write already failed; a temporary that cannot be removed is cleaned up by
        // the next start (`remove_stale_temps`).
        if let Err(cleanup) = std::fs::remove_file(&temp) {
            tracing::debug!(temp = %temp.display(), %cleanup, "temporary state file left for the next start");
        }
        return Err(error);
    }
    // The new file is in place; syncing the directory only makes the rename durable sooner.
    if let Err(error) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), %error, "syncing the directory failed");
    }
    Ok(())
}

/// The temporary name [`write_atomically`] writes `path`'s next version under, for
/// process `pid`.
pub(crate) fn temp_name(file_name: &str, pid: u32) -> String {
    format!(".{file_name}.{pid}.tmp")
}

/// Removes temporary files a [`write_atomically`] left next to `path` when its process
/// died between writing and renaming. A file whose process still runs is left alone; so
/// is anything else in the directory. Returns what was removed; an error names the path
/// it failed on.
pub(crate) fn remove_stale_temps(path: &Path) -> Result<Vec<PathBuf>, (PathBuf, std::io::Error)> {
    let (Some(dir), Some(file_name)) = (path.parent(), path.file_name()) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.", file_name.to_string_lossy());
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err((dir.to_owned(), error)),
    };
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
        if alive || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        std::fs::remove_file(entry.path()).map_err(|error| (entry.path(), error))?;
        removed.push(entry.path());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporary_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.toml");
        // A pid no process has (above the kernel's pid_max limit of 2^22).
        let dead = dir.path().join(temp_name("state.toml", 4_194_305));
        // This test's own process is alive, but it is us: a leftover of an earlier save.
        let ours = dir.path().join(temp_name("state.toml", std::process::id()));
        // pid 1 is alive and not us: its save may be under way.
        let live = dir.path().join(temp_name("state.toml", 1));
        let unrelated = [
            dir.path().join(".other.toml.7.tmp"),
            dir.path().join("state.toml.bak"),
            dir.path().join(".state.toml.notapid.tmp"),
        ];
        for file in [&path, &dead, &ours, &live].into_iter().chain(&unrelated) {
            std::fs::write(file, "x").expect("write");
        }
        let mut removed = remove_stale_temps(&path).expect("clean");
        removed.sort();
        let mut expected = vec![dead, ours];
        expected.sort();
        assert_eq!(removed, expected);
        for kept in [&path, &live].into_iter().chain(&unrelated) {
            assert!(kept.exists(), "{} was removed", kept.display());
        }
        assert_eq!(
            remove_stale_temps(&dir.path().join("absent/state.toml")).expect("no dir"),
            Vec::<PathBuf>::new()
        );
    }
}
