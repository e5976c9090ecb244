//! Temporary files for the tests: a fresh directory per call under the system's temp directory
//! (named after what it is for, the process and a random number, so parallel tests never share
//! one), directories removed on drop, and config files written into them.

use std::path::{Path, PathBuf};

/// A path under the system's temp directory that no other test uses: `rtw-{what}-{pid}-{random}`
/// (nothing is created).
pub fn temp_path(what: &str) -> PathBuf {
    let unique = format!(
        "rtw-{what}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    );
    std::env::temp_dir().join(unique)
}

/// A new, empty directory of its own (see [`temp_path`]), left in place.
pub fn temp_dir(what: &str) -> PathBuf {
    let d = temp_path(what);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Writes `toml` to `dir/config.toml` and returns its path.
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}

/// A temporary directory, removed on drop (even when a test fails).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        TempDir(temp_dir(what))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config file (`.0` is its path) in a temporary directory of its own, removed on drop.
pub struct Config(pub PathBuf, TempDir);

impl Config {
    pub fn new(what: &str, toml: &str) -> Config {
        let dir = TempDir::new(what);
        Config(write_config(&dir.0, toml), dir)
    }
}
