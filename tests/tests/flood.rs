//! Floods and slow clients against the HTTP API port, while a normal client
//! keeps calling through it: thousands of idle HTTP/1.1 and h2 connections,
//! connections past `--max-connections`, slowloris heads, rapid resets and
//! a CONTINUATION flood, and h2 clients that open streams for big answers
//! and never read them (no flow-control window). The normal client gets no error, the slow and
//! hostile connections are closed, memory stays bounded, and everything
//! works once the flood is gone. The figures are printed (perf/RESULTS.md
//! records them); only gross starvation fails the latency check, as these
//! machines are shared and noisy.

use std::process::Command;
use std::time::{Duration, Instant};

use skiff_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IDLE_H1: usize = 8000;
const IDLE_H2: usize = 2000;
const MAX_CONNECTIONS: usize = 11_000;
/// Connections opened once the idle ones are in: some fit, the rest are
/// past the limit and closed at once.
const EXTRA: usize = 1500;
const SLOWLORIS: usize = 200;
/// The normal client's calls in each round: about 6 s of them, as long as
/// the rapid resets last, so its p99 describes the whole flood and not
/// only the first instant, when ~1,700 connections arrive in the same
/// millisecond and the calls then in flight wait behind them.
const CALLS: usize = 1000;
/// Clients that never read, and the big answers each asks for.
const NEVER_READ: usize = 10;
const NEVER_READ_STREAMS: u32 = 20;
/// `--stream-stall-timeout` of the flooded sidecar.
const STALL: Duration = Duration::from_secs(3);

/// Raises this process's soft open-file limit to its hard one (the
/// sidecars it starts inherit it): the flood needs about 12,000
/// descriptors on each side.
fn raise_nofile() {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let hard: u64 = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("the open-file limit");
    assert!(
        hard >= 16_384,
        "the hard open-file limit is {hard}; the flood test needs 16384"
    );
    let pid = std::process::id().to_string();
    let ok = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "prlimit --nofile={hard} failed");
}

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with a 7-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, mut n: usize) {
    if n < 127 {
        out.push(first | n as u8);
        return;
    }
    out.push(first | 127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// A literal header field without indexing, new name (RFC 7541 §6.2.2).
fn literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0);
    hpack_int(out, 0, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, value.len());
    out.extend_from_slice(value);
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 4;
const CANCEL: u32 = 8;
const SETTINGS: u8 = 4;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

fn get_block(path: &str) -> Vec<u8> {
    let mut b = Vec::new();
    literal(&mut b, ":method", b"GET");
    literal(&mut b, ":scheme", b"http");
    literal(&mut b, ":path", path.as_bytes());
    literal(&mut b, ":authority", b"localhost");
    b
}

async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect")
}

/// An HTTP/1.1 connection that made one call and now sits idle.
async fn idle_h1(port: u16) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(b"GET /v1.0/healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .ok()?;
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf[..n].starts_with(b"HTTP/1.1 204").then_some(s)
}

/// An h2 connection that sent its preface and settings and nothing more.
async fn idle_h2(port: u16) -> Option<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.ok()?;
    Some(s)
}

/// What became of a connection that asked for /v1.0/healthz.
enum Fate {
    Served,
    Refused,
}

/// The connection is returned, so it stays open (and counts) until the
/// test drops it.
async fn extra(port: u16) -> Option<(Fate, TcpStream)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let _ = s
        .write_all(b"GET /v1.0/healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 512];
    match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
        Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 ") => Some((Fate::Served, s)),
        Ok(_) => Some((Fate::Refused, s)),
        Err(_) => None,
    }
}

/// A slowloris head: a byte every 200 ms, never finished. Returns how long
/// the sidecar took to close it (None: it never did, within 20 s).
async fn slowloris(port: u16) -> Option<Duration> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let start = Instant::now();
    s.write_all(b"GET /v1.0/healthz HTTP/1.1\r\nx-slow: ")
        .await
        .ok()?;
    let mut buf = [0u8; 64];
    while start.elapsed() < Duration::from_secs(20) {
        if s.write_all(b"a").await.is_err() {
            return Some(start.elapsed());
        }
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            // An answer (408/400) or the close: either way it is over.
            let _ = r;
            return Some(start.elapsed());
        }
    }
    None
}

/// HEADERS then RST_STREAM, about 1000 a second for `within`, on a
/// connection opened again each time the sidecar closes it. Returns the
/// resets sent and the connections the sidecar closed.
async fn rapid_reset(port: u16, within: Duration) -> (u32, u32) {
    let start = Instant::now();
    let (mut sent, mut closed) = (0, 0);
    while start.elapsed() < within && sent < 20_000 {
        let (n, was_closed) = rapid_reset_one(port, start, within).await;
        sent += n;
        closed += u32::from(was_closed);
    }
    (sent, closed)
}

async fn rapid_reset_one(port: u16, start: Instant, within: Duration) -> (u32, bool) {
    let n = 20_000;
    let mut s = connect(port).await;
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    if s.write_all(&hello).await.is_err() {
        return (0, true);
    }
    let block = get_block("/v1.0/invoke/callee/method/ping");
    let mut sent = 0;
    let mut was_closed = false;
    // Drain whatever the sidecar writes so it is never blocked on us.
    let (mut rd, mut wr) = s.into_split();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    while sent < n && start.elapsed() < within {
        let id = 1 + 2 * sent;
        let mut batch = frame(HEADERS, END_STREAM | END_HEADERS, id, &block);
        batch.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        if wr.write_all(&batch).await.is_err() || reader.is_finished() {
            was_closed = true;
            break;
        }
        sent += 1;
        if sent % 100 == 0 {
            // About 1000 resets a second, the rapid-reset class.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(wr);
    reader.abort();
    (sent, was_closed)
}

/// One header block sent as HEADERS and endless CONTINUATION frames.
/// Returns the bytes the sidecar took before closing the connection.
async fn continuation_flood(port: u16, limit: usize) -> usize {
    let mut s = connect(port).await;
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    if s.write_all(&hello).await.is_err() {
        return 0;
    }
    let mut chunk = Vec::new();
    while chunk.len() < 16000 {
        literal(&mut chunk, "x-flood", &[b'f'; 500]);
    }
    let (mut rd, mut wr) = s.into_split();
    let closed = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    let mut first = get_block("/v1.0/healthz");
    first.extend_from_slice(&chunk);
    let mut sent = 0;
    let mut f = frame(HEADERS, END_STREAM, 1, &first);
    while sent < limit {
        if closed.is_finished() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(5), wr.write_all(&f)).await {
            Ok(Ok(())) => sent += f.len(),
            _ => break,
        }
        f = frame(CONTINUATION, 0, 1, &chunk);
    }
    closed.abort();
    sent
}

/// A client that grants no flow-control window (SETTINGS_INITIAL_WINDOW
/// _SIZE 0), asks for `streams` answers of 10 MB each and reads nothing
/// until well after the stall timeout. Returns how many of its streams the
/// sidecar reset with CANCEL by then.
async fn never_reads(port: u16, streams: u32) -> u32 {
    let mut s = connect(port).await;
    let mut settings = SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    settings.extend(0u32.to_be_bytes());
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &settings));
    let block = get_block("/v1.0/invoke/callee/method/source?bytes=10000000");
    for i in 0..streams {
        hello.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, &block));
    }
    if s.write_all(&hello).await.is_err() {
        return 0;
    }
    tokio::time::sleep(STALL * 2).await;
    // Now read what came: heads, and a reset for each stalled answer.
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut chunk)).await
    {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let (mut at, mut cancelled) = (0, 0);
    while at + 9 <= buf.len() {
        let len =
            usize::from(buf[at]) << 16 | usize::from(buf[at + 1]) << 8 | usize::from(buf[at + 2]);
        let payload = &buf[(at + 9).min(buf.len())..(at + 9 + len).min(buf.len())];
        if buf[at + 3] == RST_STREAM && payload.len() == 4 && payload == CANCEL.to_be_bytes() {
            cancelled += 1;
        }
        at += 9 + len;
    }
    cancelled
}

/// What a hostile client's task reports.
enum Hostile {
    Resets {
        sent: u32,
        closed: u32,
    },
    /// Bytes of one header block the sidecar took before closing.
    Continuation(usize),
    /// Streams of a never-reading client that were reset.
    NeverRead(u32),
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

async fn calls(c: &HttpClient, url: &str, n: usize) -> (Vec<Duration>, usize) {
    let (mut lat, mut errors) = (Vec::with_capacity(n), 0);
    for _ in 0..n {
        let t = Instant::now();
        match c.request(request("GET", url, "")).await {
            Ok(r) if r.status() == 200 => {
                let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                lat.push(t.elapsed());
            }
            other => {
                errors += 1;
                match other {
                    Ok(r) => {
                        let status = r.status();
                        let body = http_body_util::BodyExt::collect(r.into_body()).await;
                        let text = body.map(|b| b.to_bytes()).unwrap_or_default();
                        eprintln!("call failed: {status} {}", String::from_utf8_lossy(&text));
                    }
                    Err(e) => eprintln!("call failed: {e}"),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (lat, errors)
}

/// The normal client, on an OS thread and a runtime of its own. The hostile
/// tasks run tight write loops on this test's runtime; measured from there,
/// the normal client's latency would count the time its task waited behind
/// them for a worker, which is the test's queue and not the sidecar's. It
/// keeps one pooled connection for both rounds (a new one could be refused
/// once the flood holds `--max-connections`).
struct NormalClient {
    go: std::sync::mpsc::Sender<()>,
    rounds: std::sync::mpsc::Receiver<(Vec<Duration>, usize)>,
    thread: std::thread::JoinHandle<()>,
}

impl NormalClient {
    /// Starts the thread; it runs its first (quiet) round at once.
    fn start(url: String) -> Self {
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let (tx, rounds) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let c = http_client();
                let _ = tx.send(calls(&c, &url, CALLS).await);
                if go_rx.recv().is_ok() {
                    let _ = tx.send(calls(&c, &url, CALLS).await);
                }
            });
        });
        Self { go, rounds, thread }
    }

    /// The next round's latencies and error count, waited for off the
    /// test's runtime.
    async fn round(&mut self, start: bool) -> (Vec<Duration>, usize) {
        if start {
            self.go.send(()).expect("the normal client's thread");
        }
        tokio::task::block_in_place(|| self.rounds.recv().expect("a round"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_and_slow_clients_leave_a_normal_client_served() {
    raise_nofile();
    let w = World::new();
    let echo = w.echo("e");
    let _callee = w.sidecar("callee", SidecarOpts::app(echo.http_port));
    let o = SidecarOpts {
        args: vec![
            "--header-timeout".into(),
            "2s".into(),
            "--max-connections".into(),
            MAX_CONNECTIONS.to_string(),
            "--stream-stall-timeout".into(),
            format!("{}s", STALL.as_secs()),
        ],
        ..SidecarOpts::default()
    };
    let caller = w.sidecar("caller", o);
    let port = caller.http_port;
    let url = format!("{}/v1.0/invoke/callee/method/ping", caller.http());
    wait_outbound_ready(&caller, Duration::from_secs(10)).await;

    let mut normal = NormalClient::start(url.clone());
    let (quiet, errors) = normal.round(false).await;
    assert_eq!(errors, 0, "calls failed before any flood");
    let quiet_p99 = p99(quiet);
    let rss_quiet = caller.proc.rss_kib();

    // Idle connections, opened 200 at a time.
    let mut idle = Vec::new();
    for batch in 0..(IDLE_H1 + IDLE_H2).div_ceil(200) {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200 {
            let n = batch * 200 + i;
            if n < IDLE_H1 {
                set.spawn(idle_h1(port));
            } else if n < IDLE_H1 + IDLE_H2 {
                set.spawn(idle_h2(port));
            }
        }
        while let Some(r) = set.join_next().await {
            idle.extend(r.expect("task"));
        }
    }
    let opened = idle.len();
    assert!(
        opened >= (IDLE_H1 + IDLE_H2) * 99 / 100,
        "only {opened} idle connections were taken"
    );

    // Hostile clients, all at once, while the normal client calls.
    // The h2 attackers connect first, so the limit does not refuse them
    // before they can attack.
    let mut hostile = tokio::task::JoinSet::new();
    hostile.spawn(async move {
        let (sent, closed) = rapid_reset(port, Duration::from_secs(6)).await;
        Hostile::Resets { sent, closed }
    });
    hostile.spawn(async move { Hostile::Continuation(continuation_flood(port, 64 << 20).await) });
    for _ in 0..NEVER_READ {
        hostile
            .spawn(async move { Hostile::NeverRead(never_reads(port, NEVER_READ_STREAMS).await) });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let slow: Vec<_> = (0..SLOWLORIS)
        .map(|_| tokio::spawn(slowloris(port)))
        .collect();
    let extras: Vec<_> = (0..EXTRA).map(|_| tokio::spawn(extra(port))).collect();
    let rss_watch = {
        let pid = caller.proc.pid();
        tokio::spawn(async move {
            let mut max = 0u64;
            for _ in 0..100 {
                max = max.max(rss_kib_of(pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max
        })
    };
    let (flooded, errors) = normal.round(true).await;
    let flood_worst = flooded.iter().max().copied().unwrap_or_default();
    let flood_p99 = p99(flooded);
    normal.thread.join().expect("the normal client's thread");

    let mut closed_after = Vec::new();
    for s in slow {
        closed_after.push(s.await.expect("task"));
    }
    let (mut served, mut refused, mut held) = (0, 0, Vec::new());
    for e in extras {
        match e.await.expect("task") {
            Some((Fate::Served, s)) => {
                served += 1;
                held.push(s);
            }
            Some((Fate::Refused, _)) => refused += 1,
            None => {}
        }
    }
    let (mut resets, mut reset_closes, mut cont_bytes, mut stalled) = (0, 0, 0, 0);
    while let Some(r) = hostile.join_next().await {
        match r.expect("task") {
            Hostile::Resets { sent, closed } => (resets, reset_closes) = (sent, closed),
            Hostile::Continuation(bytes) => cont_bytes = bytes,
            Hostile::NeverRead(n) => stalled += n,
        }
    }
    let rss_max = rss_watch.await.expect("task");
    let worst_close = closed_after.iter().flatten().max().copied();
    println!(
        "flood: quiet p99 {quiet_p99:?}, flooded p99 {flood_p99:?} ({:.2}x, worst call \
         {flood_worst:?}); {opened} idle \
         connections; extras {served} served / {refused} refused; {resets} rapid resets sent \
         ({reset_closes} connections closed by the sidecar for them); \
         CONTINUATION flood closed after {cont_bytes} bytes; slowloris closed within \
         {worst_close:?}; {stalled} never-read answers reset; RSS {rss_quiet} KiB quiet, \
         {rss_max} KiB at most",
        flood_p99.as_secs_f64() / quiet_p99.as_secs_f64()
    );
    assert_eq!(errors, 0, "the normal client saw errors during the flood");
    assert!(
        closed_after.iter().all(Option::is_some),
        "a slowloris connection outlived the header timeout by far: {closed_after:?}"
    );
    assert!(
        refused >= EXTRA + opened - MAX_CONNECTIONS - 50,
        "connections past --max-connections were not refused ({served} served, {refused} refused)"
    );
    assert_eq!(
        stalled,
        NEVER_READ as u32 * NEVER_READ_STREAMS,
        "answers nobody read were not all reset at the stall timeout"
    );
    assert!(
        cont_bytes < 8 << 20,
        "the CONTINUATION flood was taken for {cont_bytes} bytes"
    );
    // Bounded: about 60 KiB a connection at most, whatever the floods did,
    // and for each answer nobody reads the stream window the callee filled
    // (1 MiB) until the stall timeout resets it.
    let never_read = u64::from(NEVER_READ as u32 * NEVER_READ_STREAMS);
    let bound = rss_quiet + 60 * (opened + EXTRA + SLOWLORIS) as u64 + 1536 * never_read;
    assert!(
        rss_max < bound,
        "RSS grew to {rss_max} KiB (bound {bound} KiB)"
    );
    // Gross starvation only: the 2x target is measured in perf/RESULTS.md.
    assert!(
        flood_p99 < quiet_p99 * 20 + Duration::from_millis(50),
        "the flood starved the normal client: p99 {flood_p99:?} against {quiet_p99:?}"
    );

    // Gone: the sidecar serves new connections as before.
    drop(idle);
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (after, errors) = calls(&http_client(), &url, 50).await;
    assert_eq!(errors, 0, "calls failed after the flood");
    assert_eq!(after.len(), 50);
}
