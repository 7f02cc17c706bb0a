//! Run records: one JSON file per app under `$SKIFF_HOME/runs/` that
//! `skiff run` writes once the app and its sidecar are up and removes when
//! they stop. `list`, `stop`, `invoke`, `publish`, `logs` and the
//! dashboard read them. A record whose `skiff run` process is gone (killed
//! with SIGKILL, say) is stale: readers skip and delete it.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::home::Home;

/// One running app. Field names follow `dapr list -o json` where Dapr has
/// the field.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub app_id: String,
    pub http_port: u16,
    pub grpc_port: u16,
    pub app_port: u16,
    pub metrics_port: u16,
    pub command: String,
    /// Unix seconds.
    pub created: u64,
    pub cli_pid: u32,
    pub daprd_pid: u32,
    pub app_pid: u32,
    #[serde(default)]
    pub run_template_path: String,
    #[serde(default)]
    pub app_log_path: String,
    #[serde(default)]
    pub daprd_log_path: String,
}

impl Record {
    fn file(home: &Home, app_id: &str) -> PathBuf {
        home.runs().join(format!("{app_id}.json"))
    }

    /// Writes it (aside, then renamed: readers never see half of it).
    pub fn save(&self, home: &Home) -> std::io::Result<()> {
        fs::create_dir_all(home.runs())?;
        let path = Self::file(home, &self.app_id);
        let tmp = path.with_extension(format!("json.{}", std::process::id()));
        fs::write(&tmp, serde_json::to_vec_pretty(self).unwrap_or_default())?;
        fs::rename(tmp, path)
    }

    /// Removes it if it is still this process's.
    pub fn remove(&self, home: &Home) {
        let path = Self::file(home, &self.app_id);
        if read(&path).is_some_and(|r| r.cli_pid == self.cli_pid) {
            let _ = fs::remove_file(path);
        }
    }
}

fn read(path: &Path) -> Option<Record> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Whether `pid` is a live process (not a zombie).
pub fn alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The records of apps running now, by app id; stale ones are deleted.
pub fn live(home: &Home) -> Vec<Record> {
    let Ok(dir) = fs::read_dir(home.runs()) else {
        return Vec::new();
    };
    let mut out: Vec<Record> = Vec::new();
    for e in dir.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        match read(&p) {
            Some(r) if alive(r.cli_pid) => out.push(r),
            Some(_) => {
                let _ = fs::remove_file(&p);
            }
            None => {}
        }
    }
    out.sort_by(|a, b| a.app_id.cmp(&b.app_id));
    out
}

/// The live record of `app_id`.
pub fn find(home: &Home, app_id: &str) -> Option<Record> {
    live(home).into_iter().find(|r| r.app_id == app_id)
}

/// `2026-12-02 21:30:05` (UTC) from Unix seconds.
pub fn date_text(secs: u64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0)) else {
        return "?".to_owned();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `5s`, `3m`, `2h`, `4d`: how long ago.
pub fn age_text(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts() {
        assert_eq!(date_text(0), "1970-01-01 00:00:00");
        assert_eq!(date_text(1_796_245_805), "2026-12-02 21:10:05");
        assert_eq!(age_text(59), "59s");
        assert_eq!(age_text(3599), "59m");
        assert_eq!(age_text(7200), "2h");
        assert_eq!(age_text(3 * 86_400), "3d");
    }

    #[test]
    fn this_process_is_alive_and_pid_zero_is_not() {
        assert!(alive(std::process::id()));
        assert!(!alive(0));
    }
}
