//! The certificate authority's credentials and what it signs.
//!
//! A root (`ca.crt`, the trust anchors every sidecar holds) signs an issuer
//! (`issuer.crt` + `issuer.key`), and the issuer signs workload leaves. The
//! files follow Dapr's names so existing credentials can be used as they are.
//! On first start the CA creates all three; later starts load them. A new
//! issuer signed by the same root can be dropped in while running (see
//! [`Fingerprint`]); leaves from the old issuer stay valid because both chain
//! to the same root.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls_pki_types::CertificateDer;

use crate::SpiffeId;
use crate::csr::Checked;
use crate::pem::{self, PemError};

pub const CA_CERT_FILE: &str = "ca.crt";
pub const ISSUER_CERT_FILE: &str = "issuer.crt";
pub const ISSUER_KEY_FILE: &str = "issuer.key";

/// Workload certificate lifetime unless configured (Dapr's default).
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Leaves start this far in the past so a peer whose clock is behind still
/// accepts them (Dapr's allowance).
pub const CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);
/// Lifetime of a root created on first start. Replacing a root means
/// redistributing trust anchors, so it is long.
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of an issuer created on first start; rotate it sooner by
/// dropping in a new one.
pub const ISSUER_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long a second process waits for the first to finish creating
/// credentials before it takes over a stale lock.
const CREATE_LOCK_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("signing: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("the workload certificate lifetime {0:?} is out of range")]
    Ttl(Duration),
}

pub use crate::keyalg::KeyAlg;

/// A signed leaf and the chain to present with it.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Leaf then issuer.
    pub chain: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
}

impl Issued {
    pub fn chain_pem(&self) -> String {
        pem::encode_chain(&self.chain)
    }
}

/// Loaded credentials: the trust anchors and a working issuer.
pub struct Authority {
    anchors_pem: String,
    issuer_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// Loads `ca.crt`, `issuer.crt` and `issuer.key` from `dir`, checking
    /// that the key belongs to the issuer and the issuer to a root in ca.crt.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let (ca_path, crt_path, key_path) = paths(dir);
        let anchors_pem = read(&ca_path)?;
        let roots = pem::certs(anchors_pem.as_bytes(), &ca_path.display().to_string())?;
        let issuer_pem = read(&crt_path)?;
        let issuer_der =
            pem::certs(issuer_pem.as_bytes(), &crt_path.display().to_string())?.remove(0);
        let key_pem = read(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Invalid {
            path: key_path.clone(),
            why: format!("not a usable ECDSA P-256 or Ed25519 key: {e}"),
        })?;
        check_issuer(&issuer_der, &roots, &key, &crt_path)?;
        let issuer = Issuer::from_ca_cert_der(&issuer_der, key).map_err(|e| CaError::Invalid {
            path: crt_path,
            why: e.to_string(),
        })?;
        Ok(Self {
            anchors_pem,
            issuer_der,
            issuer,
        })
    }

    /// Loads the credentials in `dir`, creating a root and an issuer there
    /// first if `ca.crt` does not exist. Safe when several processes start
    /// at once: one creates, the others wait and load. Returns whether this
    /// call created them.
    pub fn load_or_create(
        dir: &Path,
        trust_domain: &str,
        alg: KeyAlg,
    ) -> Result<(Self, bool), CaError> {
        let (ca_path, ..) = paths(dir);
        if ca_path.exists() {
            return Ok((Self::load(dir)?, false));
        }
        fs::create_dir_all(dir).map_err(|source| CaError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let lock = dir.join(".create.lock");
        let deadline = std::time::Instant::now() + CREATE_LOCK_WAIT;
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
            {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if ca_path.exists() {
                        return Ok((Self::load(dir)?, false));
                    }
                    if std::time::Instant::now() > deadline {
                        // The creator died mid-way: take over.
                        let _ = fs::remove_file(&lock);
                        continue;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(source) => return Err(CaError::Io { path: lock, source }),
            }
        }
        let created = if ca_path.exists() {
            false
        } else {
            create(dir, trust_domain, alg)?;
            true
        };
        let _ = fs::remove_file(&lock);
        Ok((Self::load(dir)?, created))
    }

    /// The trust anchors (ca.crt) as PEM.
    pub fn anchors_pem(&self) -> &str {
        &self.anchors_pem
    }

    /// Signs a checked CSR into a workload leaf for `id`: the SPIFFE ID as
    /// the only URI SAN, server and client auth, back-dated by
    /// [`CLOCK_SKEW`], valid for `ttl`.
    pub fn sign(&self, csr: &Checked, id: &SpiffeId, ttl: Duration) -> Result<Issued, CaError> {
        self.sign_leaf(&csr.public_key, id, ttl, &[])
    }

    /// A serving certificate for the CA's own endpoint.
    pub fn sign_own(
        &self,
        key: &KeyPair,
        id: &SpiffeId,
        ttl: Duration,
        dns: &[&str],
    ) -> Result<Issued, CaError> {
        self.sign_leaf(key, id, ttl, dns)
    }

    fn sign_leaf(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        id: &SpiffeId,
        ttl: Duration,
        dns: &[&str],
    ) -> Result<Issued, CaError> {
        if ttl.is_zero() || ttl > ROOT_TTL {
            return Err(CaError::Ttl(ttl));
        }
        let now = SystemTime::now();
        let not_after = now + ttl;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        for d in dns {
            p.subject_alt_names.push(SanType::DnsName((*d).try_into()?));
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = (now - CLOCK_SKEW).into();
        p.not_after = not_after.into();
        p.serial_number = Some(serial());
        p.use_authority_key_identifier_extension = true;
        let leaf = p.signed_by(public_key, &self.issuer)?;
        Ok(Issued {
            chain: vec![leaf.der().clone(), self.issuer_der.clone()],
            not_after,
        })
    }
}

/// Modification times and sizes of the three files: cheap to poll, and a
/// change means "reload".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint(Vec<Option<(SystemTime, u64)>>);

impl Fingerprint {
    pub fn of(dir: &Path) -> Self {
        let (a, b, c) = paths(dir);
        Self(
            [a, b, c]
                .iter()
                .map(|p| {
                    fs::metadata(p)
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len())))
                })
                .collect(),
        )
    }
}

fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join(CA_CERT_FILE),
        dir.join(ISSUER_CERT_FILE),
        dir.join(ISSUER_KEY_FILE),
    )
}

fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The issuer's key must match its certificate, and a root in ca.crt must
/// have signed it; otherwise every leaf would be rejected by every peer.
fn check_issuer(
    issuer_der: &CertificateDer<'_>,
    roots: &[CertificateDer<'_>],
    key: &KeyPair,
    path: &Path,
) -> Result<(), CaError> {
    let invalid = |why: String| CaError::Invalid {
        path: path.to_owned(),
        why,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(issuer_der)
        .map_err(|e| invalid(format!("not an X.509 certificate: {e}")))?;
    if cert.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(key).as_slice() {
        return Err(invalid(format!(
            "{ISSUER_KEY_FILE} is not the key of this certificate"
        )));
    }
    let signed_by_a_root = roots.iter().any(|r| {
        x509_parser::parse_x509_certificate(r)
            .is_ok_and(|(_, root)| cert.verify_signature(Some(root.public_key())).is_ok())
    });
    if !signed_by_a_root {
        return Err(invalid(format!("not signed by any root in {CA_CERT_FILE}")));
    }
    if !cert.validity().is_valid() {
        return Err(invalid(format!(
            "outside its validity ({} to {})",
            cert.validity().not_before,
            cert.validity().not_after
        )));
    }
    Ok(())
}

/// Creates a root and an issuer in `dir`. The key files are written 0600
/// and each file appears complete (written aside, then renamed), ca.crt last
/// because its presence means "done". The root key is not kept: rotating
/// the issuer of such a CA means new credentials; operators who rotate
/// issuers make their root with `skiff-sentry root` and keep its key offline.
pub fn create(dir: &Path, trust_domain: &str, alg: KeyAlg) -> Result<(), CaError> {
    fs::create_dir_all(dir).map_err(|source| CaError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let (ca_pem, root_key_pem) = create_root(trust_domain, alg)?;
    let root = root_issuer(&ca_pem, &root_key_pem)?;
    let (issuer_pem, issuer_key_pem) = new_issuer(&root, trust_domain, alg, ISSUER_TTL)?;
    write_file(&dir.join(ISSUER_KEY_FILE), &issuer_key_pem, 0o600)?;
    write_file(&dir.join(ISSUER_CERT_FILE), &issuer_pem, 0o644)?;
    write_file(&dir.join(CA_CERT_FILE), &ca_pem, 0o644)?;
    Ok(())
}

/// A self-signed root: its certificate and key, PEM.
pub fn create_root(trust_domain: &str, alg: KeyAlg) -> Result<(String, String), CaError> {
    let now = SystemTime::now();
    let key = KeyPair::generate_for(alg.rcgen())?;
    let mut root = CertificateParams::default();
    root.distinguished_name = name("Skiff root CA", trust_domain);
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    root.not_before = (now - CLOCK_SKEW).into();
    root.not_after = (now + ROOT_TTL).into();
    root.serial_number = Some(serial());
    let cert = root.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A new issuer certificate and key (PEM) signed by `root`; used on first
/// start and by tests that rotate the issuer.
pub fn new_issuer(
    root: &Issuer<'_, KeyPair>,
    trust_domain: &str,
    alg: KeyAlg,
    ttl: Duration,
) -> Result<(String, String), CaError> {
    let now = SystemTime::now();
    let key = KeyPair::generate_for(alg.rcgen())?;
    let mut p = CertificateParams::default();
    p.distinguished_name = name("Skiff issuer", trust_domain);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = (now - CLOCK_SKEW).into();
    p.not_after = (now + ttl).into();
    p.serial_number = Some(serial());
    p.use_authority_key_identifier_extension = true;
    let cert = p.signed_by(&key, root)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A root that can sign, from its certificate and key (PEM), for minting a
/// new issuer.
pub fn root_issuer(ca_pem: &str, key_pem: &str) -> Result<Issuer<'static, KeyPair>, CaError> {
    let key = KeyPair::from_pem(key_pem)?;
    Ok(Issuer::from_ca_cert_pem(ca_pem, key)?)
}

fn name(cn: &str, org: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, org);
    dn
}

/// A random positive 128-bit serial.
fn serial() -> SerialNumber {
    let mut b = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

/// Writes `contents` beside `path`, then renames it into place.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let io = |source| CaError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    // `mode` applies only when the file is created: a stale file of this
    // name left by an earlier run keeps its own, so set it again (before a
    // byte of the contents is written) and the umask cannot widen it.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csr;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("skiff-ca-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn key_files_are_owner_only_even_over_a_stale_temporary() {
        let dir = tmp("mode");
        fs::create_dir_all(&dir).expect("mkdir");
        let key = dir.join("k.key");
        // What an earlier, interrupted write by this process id left.
        let stale = key.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&stale, "old").expect("stale");
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o644)).expect("chmod");
        write_file(&key, "secret", 0o600).expect("write");
        let mode = fs::metadata(&key).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_to_string(&key).expect("read"), "secret");
        Authority::load_or_create(&dir.join("ca"), "public", KeyAlg::EcdsaP256).expect("ca");
        let mode = fs::metadata(dir.join("ca").join(ISSUER_KEY_FILE))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "the issuer key");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn leaf_fields() {
        let dir = tmp("leaf");
        let (ca, created) =
            Authority::load_or_create(&dir, "public", KeyAlg::EcdsaP256).expect("ca");
        assert!(created);
        let id = SpiffeId::new("public", "ns1", "app1").expect("id");
        let (_k, req) = csr::generate(&id, KeyAlg::Ed25519).expect("csr");
        let checked = csr::check(req.as_bytes(), &id).expect("check");
        let ttl = Duration::from_secs(3600);
        let issued = ca.sign(&checked, &id, ttl).expect("sign");
        assert_eq!(issued.chain.len(), 2);
        let (_, leaf) = x509_parser::parse_x509_certificate(&issued.chain[0]).expect("x509");
        let san = leaf.subject_alternative_name().expect("ext").expect("san");
        let uris: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|g| format!("{g}"))
            .collect();
        assert_eq!(uris, vec!["URI(spiffe://public/ns/ns1/app1)".to_string()]);
        let eku = leaf.extended_key_usage().expect("ext").expect("eku").value;
        assert!(eku.server_auth && eku.client_auth && !eku.any);
        assert!(!leaf.is_ca());
        let nb = leaf.validity().not_before.timestamp();
        let na = leaf.validity().not_after.timestamp();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        assert!(
            (now - 15 * 60 - nb).abs() <= 5,
            "not before {nb}, now {now}"
        );
        assert!((na - now - 3600).abs() <= 5, "not after {na}, now {now}");
        // The issuer is the second certificate and the root signed it.
        let (_, issuer) = x509_parser::parse_x509_certificate(&issued.chain[1]).expect("x509");
        assert!(leaf.verify_signature(Some(issuer.public_key())).is_ok());
        // A second load finds the same files.
        let (again, created) =
            Authority::load_or_create(&dir, "public", KeyAlg::EcdsaP256).expect("ca");
        assert!(!created);
        assert_eq!(again.anchors_pem(), ca.anchors_pem());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn load_names_the_bad_file() {
        let dir = tmp("bad");
        create(&dir, "public", KeyAlg::Ed25519).expect("create");
        // An issuer key that is not the issuer's.
        let other = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        write_file(&dir.join(ISSUER_KEY_FILE), &other.serialize_pem(), 0o600).expect("write");
        let err = Authority::load(&dir).err().expect("refused").to_string();
        assert!(
            err.contains("issuer.crt") && err.contains("not the key"),
            "{err}"
        );
        // An issuer from another root.
        let other_dir = tmp("bad-other");
        create(&other_dir, "public", KeyAlg::Ed25519).expect("create");
        for f in [ISSUER_CERT_FILE, ISSUER_KEY_FILE] {
            fs::copy(other_dir.join(f), dir.join(f)).expect("copy");
        }
        let err = Authority::load(&dir).err().expect("refused").to_string();
        assert!(err.contains("not signed by any root"), "{err}");
        fs::write(dir.join(CA_CERT_FILE), "garbage").expect("write");
        let err = Authority::load(&dir).err().expect("refused").to_string();
        assert!(err.contains("ca.crt"), "{err}");
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(&other_dir);
    }
}
