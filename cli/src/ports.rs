//! Ports for `skiff run`: a free one when none is given (as `dapr run`
//! does), and, when a given one is taken, which process holds it — read
//! from `/proc/net/tcp{,6}` and the holders' `/proc/<pid>/fd` links, so
//! the error names it.

use std::fs;
use std::net::{Ipv4Addr, TcpListener};

/// A port free on loopback now (the kernel's pick).
pub fn free() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Whether something listens on `port` (on any address).
pub fn in_use(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_err()
        || TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err()
}

/// `pid 1234 (skiffd)` for the process listening on `port`, when this
/// user may see it.
pub fn holder(port: u16) -> Option<String> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return None;
    }
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            let l = link.to_string_lossy();
            if let Some(inode) = l.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']'))
                && inodes.iter().any(|i| i == inode)
            {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                return Some(format!("pid {pid} ({})", comm.trim()));
            }
        }
    }
    None
}

/// Socket inodes in LISTEN state (0A) on `port`.
fn listening_inodes(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let p = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if p == Some(port) && *state == "0A" {
                out.push((*inode).to_owned());
            }
        }
    }
    out
}

/// The error line for a taken port.
pub fn taken(port: u16, what: &str) -> String {
    match holder(port) {
        Some(h) => format!("port {port} ({what}) is in use by {h}; stop it or pick another port"),
        None => format!("port {port} ({what}) is in use; stop what holds it or pick another port"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_port_is_in_use_and_names_this_process() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert!(in_use(port));
        let h = holder(port).expect("holder");
        assert!(h.starts_with(&format!("pid {}", std::process::id())), "{h}");
        drop(l);
        assert!(!in_use(port));
    }
}
