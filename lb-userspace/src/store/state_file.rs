//! Reading and writing the state file (and `--config`, the same format): size-limited
//! reads, atomic saves. The format itself is [`crate::model::config`].

use std::path::{Path, PathBuf};

use crate::{
    model::config::{ConfigError, DeclaredFile, MAX_FILE_BYTES, parse_declared, render},
    model::state::State,
    store::atomic,
};

/// Reads and validates a file.
pub(crate) fn load(path: &Path) -> Result<State, ConfigError> {
    load_declared(path).map(|file| file.state)
}

/// Everything a `--config` file declares: its state, `[cluster]` and `[notify]`.
pub(crate) fn load_declared(path: &Path) -> Result<DeclaredFile, ConfigError> {
    let read = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    if std::fs::metadata(path).map_err(read)?.len() > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    parse_declared(&text, path)
}

/// Reads `path` if it exists.
pub(crate) fn load_if_present(path: &Path) -> Result<Option<State>, ConfigError> {
    match std::fs::symlink_metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        _ => load(path).map(Some),
    }
}

/// Writes `state` so that `path` always holds either the old or the new file.
pub(crate) fn save(path: &Path, state: &State) -> Result<(), ConfigError> {
    let text = render(state)?;
    atomic::write_atomically(path, &text).map_err(|source| ConfigError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Removes temporary state files an earlier daemon left when it died mid-save.
pub(crate) fn remove_stale_temps(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    atomic::remove_stale_temps(path).map_err(|(path, source)| ConfigError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::parse;

    #[test]
    fn save_replaces_the_file_atomically() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.toml");
        let state = parse(
            "[[vip]]\naddress = \"198.18.1.1:80\"\n",
            Path::new("test.toml"),
        )
        .expect("valid file");
        save(&path, &State::default()).expect("first save");
        save(&path, &state).expect("second save");
        assert_eq!(load(&path).expect("load"), state);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name() != "state.toml")
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        assert!(
            load_if_present(&dir.path().join("missing.toml"))
                .expect("absent is fine")
                .is_none()
        );
    }
}
