//! Reading and writing `lb decap`'s record of what it changed on the host. The record and
//! its rules are [`crate::model::decap`].

use std::path::Path;

use crate::{
    model::decap::{Record, RecordError},
    store::atomic,
};

/// The record at `path`; an empty one when there is no file.
pub fn load(path: &Path) -> Result<Record, RecordError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Record::from_json(&text, path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
        Err(source) => Err(RecordError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes the record atomically; an empty record removes the file.
pub fn save(record: &Record, path: &Path) -> Result<(), RecordError> {
    let write = |source| RecordError::Write {
        path: path.to_owned(),
        source,
    };
    if record.is_empty() {
        return match std::fs::remove_file(path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(write(error)),
            _ => Ok(()),
        };
    }
    let text = record
        .to_json()
        .map_err(|e| write(std::io::Error::other(e.to_string())))?;
    atomic::write_atomically(path, &text).map_err(write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decap::SysctlChange;

    #[test]
    fn the_record_round_trips_and_refuses_other_versions() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub/record.json");
        assert_eq!(load(&path).expect("no file"), Record::default());
        let record = Record {
            sysctls: vec![SysctlChange {
                key: "net.ipv4.conf.eth0.rp_filter".to_owned(),
                old: "1".to_owned(),
                new: "0".to_owned(),
                needed_by: vec!["eth0".to_owned()],
            }],
            ..Record::default()
        };
        save(&record, &path).expect("save");
        assert_eq!(load(&path).expect("load"), record);
        std::fs::write(
            &path,
            r#"{"version":9,"interfaces":{},"sysctls":[],"addresses":[]}"#,
        )
        .expect("write");
        assert!(matches!(
            load(&path),
            Err(RecordError::Version { found: 9, .. })
        ));
        save(&Record::default(), &path).expect("empty save");
        assert!(!path.exists(), "an empty record is no file");
    }
}
