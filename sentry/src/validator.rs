//! Who may have which identity: the token a sidecar presents with its CSR
//! must prove the app id and namespace it asks for.
//!
//! - `insecure`: no proof (self-hosted on one machine, Dapr's default there).
//! - `jwks`: a bootstrap JWT per app id, signed by the operator's key
//!   ([`crate::jwt`]), for VMs.
//! - `kubernetes`: a service account token checked with the API server's
//!   TokenReview, and the pod's `dapr.io/app-id` annotation
//!   ([`crate::kubernetes`]).

use std::time::SystemTime;

use skiff_proto::sentry::sign_certificate_request::TokenValidator;

use crate::SpiffeId;
use crate::jwt::{Jwks, JwtError};
use crate::kubernetes::{KubeError, KubeValidator};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Insecure,
    Jwks,
    Kubernetes,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Insecure => "insecure",
            Method::Jwks => "jwks",
            Method::Kubernetes => "kubernetes",
        })
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "insecure" => Ok(Method::Insecure),
            "jwks" | "jwt" => Ok(Method::Jwks),
            "kubernetes" => Ok(Method::Kubernetes),
            _ => Err(format!(
                "{s:?}: token validator must be insecure, jwks or kubernetes"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Denied {
    #[error("token validator {0} is not enabled on this sentry")]
    NotEnabled(Method),
    #[error("a token is required by the {0} validator")]
    MissingToken(Method),
    #[error("JWT refused: {0}")]
    Jwt(#[from] JwtError),
    #[error("Kubernetes token refused: {0}")]
    Kube(#[from] KubeError),
}

/// The validators one sentry runs; the first configured is the default for
/// requests that do not name one.
pub struct Validators {
    default: Method,
    insecure: bool,
    jwks: Option<Jwks>,
    kubernetes: Option<KubeValidator>,
    /// JWT audience: the trust domain.
    audience: String,
}

impl Validators {
    pub fn new(default: Method, trust_domain: &str) -> Self {
        Self {
            default,
            insecure: false,
            jwks: None,
            kubernetes: None,
            audience: trust_domain.to_owned(),
        }
    }

    pub fn insecure(mut self) -> Self {
        self.insecure = true;
        self
    }

    pub fn with_jwks(mut self, jwks: Jwks) -> Self {
        self.jwks = Some(jwks);
        self
    }

    pub fn with_kubernetes(mut self, k: KubeValidator) -> Self {
        self.kubernetes = Some(k);
        self
    }

    /// Which method a request is judged by.
    pub fn method(&self, asked: TokenValidator) -> Method {
        match asked {
            TokenValidator::Unknown => self.default,
            TokenValidator::Insecure => Method::Insecure,
            TokenValidator::Jwks => Method::Jwks,
            TokenValidator::Kubernetes => Method::Kubernetes,
        }
    }

    /// Whether `token` proves `id` under `method`.
    pub async fn validate(&self, method: Method, id: &SpiffeId, token: &str) -> Result<(), Denied> {
        match method {
            Method::Insecure if self.insecure => Ok(()),
            Method::Jwks => {
                let jwks = self.jwks.as_ref().ok_or(Denied::NotEnabled(method))?;
                if token.trim().is_empty() {
                    return Err(Denied::MissingToken(method));
                }
                Ok(jwks.verify(token, id, &self.audience, SystemTime::now())?)
            }
            Method::Kubernetes => {
                let k = self.kubernetes.as_ref().ok_or(Denied::NotEnabled(method))?;
                if token.trim().is_empty() {
                    return Err(Denied::MissingToken(method));
                }
                Ok(k.validate(id, token.trim()).await?)
            }
            Method::Insecure => Err(Denied::NotEnabled(method)),
        }
    }
}
