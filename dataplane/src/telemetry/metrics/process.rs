//! `process_*`, read from `/proc` at scrape time.

use super::Encoder;

/// `process_*` as Prometheus' Go client names them (Dapr's dashboards read
/// `process_start_time_seconds` and `process_resident_memory_bytes`).
pub(super) fn render_process(e: &mut Encoder) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    e.header(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
    );
    e.sample("process_resident_memory_bytes", "", rss_kib * 1024);
    // Fields after the command name (which may hold spaces) in /proc/self/stat.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let num = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on every Linux ABI Rust targets.
    const TICKS: f64 = 100.0;
    e.header(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent in seconds.",
    );
    e.sample(
        "process_cpu_seconds_total",
        "",
        (num(11) + num(12)) as f64 / TICKS,
    );
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    e.header(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
    );
    e.sample(
        "process_start_time_seconds",
        "",
        boot as f64 + num(19) as f64 / TICKS,
    );
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    e.header(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
    );
    e.sample("process_open_fds", "", fds);
}
