//! `$SKIFF_HOME` (default `~/.skiff`): where `skiff init` puts the local CA,
//! the default Configuration and components, and where `skiff run` keeps
//! its run records and logs. The sidecars read the same directory (their
//! registry, the embedded CA), so the CLI hands it to them as `SKIFF_HOME`.

use std::path::{Path, PathBuf};

/// The directory of the embedded CA (skiffd's `identity::EMBEDDED_DIR`).
pub const SENTRY_DIR: &str = "sentry";
pub const COMPONENTS_DIR: &str = "components";
pub const CONFIG_FILE: &str = "config.yaml";
pub const RUNS_DIR: &str = "runs";
pub const LOGS_DIR: &str = "logs";

#[derive(Clone, Debug)]
pub struct Home {
    pub root: PathBuf,
}

impl Home {
    /// `$SKIFF_HOME`, else `$HOME/.skiff`.
    pub fn from_env() -> Self {
        let root = std::env::var_os("SKIFF_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(std::env::temp_dir)
                    .join(".skiff")
            });
        Self { root }
    }

    pub fn sentry(&self) -> PathBuf {
        self.root.join(SENTRY_DIR)
    }

    pub fn components(&self) -> PathBuf {
        self.root.join(COMPONENTS_DIR)
    }

    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    pub fn runs(&self) -> PathBuf {
        self.root.join(RUNS_DIR)
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join(LOGS_DIR)
    }

    pub fn path(&self) -> &Path {
        &self.root
    }
}
