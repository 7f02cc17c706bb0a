//! The workload identity every crate names: the SPIFFE ID
//! `spiffe://<trust-domain>/ns/<namespace>/<app-id>` that the CA mints into
//! certificates and that policy keys on.

use std::fmt;
use std::str::FromStr;

/// The trust domain of self-hosted deployments, as in Dapr.
pub const DEFAULT_TRUST_DOMAIN: &str = "public";

/// Why a SPIFFE ID was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("SPIFFE ID must start with spiffe://, got {0:?}")]
    Scheme(String),
    #[error("SPIFFE ID {0:?} must have the path /ns/<namespace>/<app-id>")]
    Path(String),
    #[error("invalid {what} {value:?}: {why}")]
    Component {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

/// A workload identity: who a sidecar is, as named in its certificate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    app_id: String,
}

impl SpiffeId {
    /// Builds an identity after validating each component.
    pub fn new(trust_domain: &str, namespace: &str, app_id: &str) -> Result<Self, IdError> {
        validate_trust_domain(trust_domain)?;
        validate_segment("namespace", namespace)?;
        validate_segment("app id", app_id)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            app_id: app_id.to_owned(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/{}",
            self.trust_domain, self.namespace, self.app_id
        )
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdError::Scheme(s.to_owned()))?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| IdError::Path(s.to_owned()))?;
        let mut parts = path.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some(app), None) => Self::new(td, ns, app),
            _ => Err(IdError::Path(s.to_owned())),
        }
    }
}

fn validate_trust_domain(td: &str) -> Result<(), IdError> {
    // SPIFFE: lowercase letters, digits, '.', '-' and '_'.
    let ok = !td.is_empty()
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdError::Component {
            what: "trust domain",
            value: td.to_owned(),
            why: "use lowercase letters, digits, '.', '-' or '_'",
        })
    }
}

fn validate_segment(what: &'static str, v: &str) -> Result<(), IdError> {
    let why = if v.is_empty() {
        "must not be empty"
    } else if v == "." || v == ".." {
        "must not be a dot segment"
    } else if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        "use letters, digits, '.', '-' or '_'"
    } else {
        return Ok(());
    };
    Err(IdError::Component {
        what,
        value: v.to_owned(),
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id: SpiffeId = "spiffe://public/ns/default/orders".parse().expect("valid");
        assert_eq!(id.trust_domain(), "public");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.app_id(), "orders");
        assert_eq!(id.to_string(), "spiffe://public/ns/default/orders");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "http://public/ns/default/a",
            "spiffe://public",
            "spiffe://public/ns/default",
            "spiffe://public/ns/default/a/b",
            "spiffe://public/nx/default/a",
            "spiffe://Public/ns/default/a",
            "spiffe://public/ns/../a",
            "spiffe://public/ns/default/",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} should be rejected");
        }
    }
}
