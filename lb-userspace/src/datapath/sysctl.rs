//! Reading and writing sysctls through /proc/sys, by their sysctl(8) names
//! (`net.ipv4.conf.eth0.rp_filter`; a dot inside an interface name is written `/`, as
//! `net.ipv4.conf.eth0/100.rp_filter`, and means `.` again in the path).

use std::{
    io,
    path::{Path, PathBuf},
};

use thiserror::Error;

const PROC_SYS: &str = "/proc/sys";

#[derive(Debug, Error)]
pub enum SysctlError {
    #[error("reading sysctl {key} ({})", path.display())]
    Read {
        key: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("setting sysctl {key} to {value} ({})", path.display())]
    Write {
        key: String,
        value: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl SysctlError {
    /// Whether the sysctl does not exist (an interface that went away, say).
    pub fn is_missing(&self) -> bool {
        let (Self::Read { source, .. } | Self::Write { source, .. }) = self;
        source.kind() == io::ErrorKind::NotFound
    }
}

/// The file of sysctl `key` under `root` (normally /proc/sys).
pub fn path_under(root: &Path, key: &str) -> PathBuf {
    key.split('.').fold(root.to_owned(), |path, part| {
        path.join(part.replace('/', "."))
    })
}

/// The value of sysctl `key`, trimmed.
pub fn read(key: &str) -> Result<String, SysctlError> {
    read_under(Path::new(PROC_SYS), key)
}

/// Sets sysctl `key` to `value`.
pub fn write(key: &str, value: &str) -> Result<(), SysctlError> {
    write_under(Path::new(PROC_SYS), key, value)
}

fn read_under(root: &Path, key: &str) -> Result<String, SysctlError> {
    let path = path_under(root, key);
    std::fs::read_to_string(&path)
        .map(|text| text.trim().to_owned())
        .map_err(|source| SysctlError::Read {
            key: key.to_owned(),
            path,
            source,
        })
}

fn write_under(root: &Path, key: &str, value: &str) -> Result<(), SysctlError> {
    let path = path_under(root, key);
    // Opened without O_CREAT: a sysctl that does not exist is an error, not a new file.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut file| io::Write::write_all(&mut file, format!("{value}\n").as_bytes()))
        .map_err(|source| SysctlError::Write {
            key: key.to_owned(),
            value: value.to_owned(),
            path,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_proc_sys_paths() {
        assert_eq!(
            path_under(Path::new("/proc/sys"), "net.ipv4.conf.eth0/100.rp_filter"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
    }

    #[test]
    fn reads_and_writes_existing_files_only() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("net/ipv4/conf/all");
        std::fs::create_dir_all(&dir).expect("dirs");
        std::fs::write(dir.join("arp_ignore"), "0\n").expect("write");
        assert_eq!(
            read_under(root.path(), "net.ipv4.conf.all.arp_ignore").expect("read"),
            "0"
        );
        write_under(root.path(), "net.ipv4.conf.all.arp_ignore", "1").expect("write");
        assert_eq!(
            read_under(root.path(), "net.ipv4.conf.all.arp_ignore").expect("read"),
            "1"
        );
        let missing = write_under(root.path(), "net.ipv4.conf.gone.arp_ignore", "1")
            .expect_err("no such sysctl");
        assert!(missing.is_missing(), "{missing}");
        assert!(!dir.parent().expect("conf").join("gone").exists());
    }
}
