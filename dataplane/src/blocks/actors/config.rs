//! What an app's `GET /dapr/config` says about the actors it hosts, read
//! the way daprd 1.18 reads it (`../shared/dapr-actors-contract.md` §1.2).
//!
//! The answer is the app's, so it is read leniently where daprd is
//! lenient: unknown fields (the Python SDK still sends `actorScanInterval`,
//! older SDKs `remindersStoragePartitions`) are ignored, and a duration
//! that does not parse falls back to its default with a warning rather
//! than refusing the app's actors. Durations are Go's, including the
//! Python SDK's `1h0m0s0ms0μs`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::policy::resiliency::parse_duration;

/// How long an actor may sit unused before it is deactivated.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// How long a rebalance waits for an actor's call in progress.
pub const DEFAULT_DRAIN_ONGOING_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How deep a reentrant call chain may go.
pub const DEFAULT_MAX_STACK_DEPTH: u32 = 32;
/// daprd's `--actors-disseminate-timeout`: how long a placement round may
/// take. A drain must end well within it.
pub const DEFAULT_DISSEMINATE_TIMEOUT: Duration = Duration::from_secs(30);
/// The share of a round a clamped drain may use (the rest is the round's
/// own work), and the least it is given.
const DRAIN_SHARE_OF_ROUND: f64 = 0.8;
const DRAIN_FLOOR: Duration = Duration::from_secs(2);

/// Reentrancy of one actor type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reentrancy {
    pub enabled: bool,
    pub max_stack_depth: u32,
}

impl Default for Reentrancy {
    fn default() -> Self {
        Self {
            enabled: false,
            max_stack_depth: DEFAULT_MAX_STACK_DEPTH,
        }
    }
}

/// The settings of one hosted actor type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeConfig {
    pub idle_timeout: Duration,
    /// Already clamped to fit in a placement round.
    pub drain_ongoing_call_timeout: Duration,
    pub drain_rebalanced: bool,
    pub reentrancy: Reentrancy,
}

/// The hosted types and their settings; empty when the app hosts none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppActors {
    pub types: BTreeMap<String, TypeConfig>,
}

#[derive(Debug, thiserror::Error)]
#[error("the app's /dapr/config is not the JSON object daprd expects: {0}")]
pub struct ConfigError(String);

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Raw {
    entities: Vec<String>,
    actor_idle_timeout: Option<String>,
    drain_ongoing_call_timeout: Option<String>,
    drain_rebalanced_actors: Option<bool>,
    reentrancy: Option<RawReentrancy>,
    entities_config: Vec<RawEntity>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawEntity {
    entities: Vec<String>,
    actor_idle_timeout: Option<String>,
    drain_ongoing_call_timeout: Option<String>,
    drain_rebalanced_actors: Option<bool>,
    reentrancy: Option<RawReentrancy>,
}

#[derive(Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawReentrancy {
    enabled: bool,
    max_stack_depth: Option<u32>,
}

impl From<Option<RawReentrancy>> for Reentrancy {
    fn from(r: Option<RawReentrancy>) -> Self {
        let r = r.unwrap_or_default();
        Self {
            enabled: r.enabled,
            max_stack_depth: r.max_stack_depth.unwrap_or(DEFAULT_MAX_STACK_DEPTH),
        }
    }
}

/// Reads `body`; `disseminate` is the placement round's timeout the
/// drains must fit in. Warnings name what fell back to a default.
pub fn parse(body: &[u8], disseminate: Duration) -> Result<(AppActors, Vec<String>), ConfigError> {
    // serde would also take an array for a struct; Go does not.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ConfigError("expected an object".into()));
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| ConfigError(e.to_string()))?;
    let mut warnings = Vec::new();
    let w = &mut warnings;
    let idle = duration(
        w,
        "actorIdleTimeout",
        &raw.actor_idle_timeout,
        DEFAULT_IDLE_TIMEOUT,
    );
    let drain = duration(
        w,
        "drainOngoingCallTimeout",
        &raw.drain_ongoing_call_timeout,
        DEFAULT_DRAIN_ONGOING_CALL_TIMEOUT,
    );
    let global = TypeConfig {
        idle_timeout: idle,
        drain_ongoing_call_timeout: clamp_drain(drain, disseminate),
        // Draining is on unless the app says false.
        drain_rebalanced: raw.drain_rebalanced_actors.unwrap_or(true),
        reentrancy: raw.reentrancy.into(),
    };
    let mut types: BTreeMap<String, TypeConfig> = raw
        .entities
        .iter()
        .filter(|t| !t.is_empty())
        .map(|t| (t.clone(), global.clone()))
        .collect();
    for e in &raw.entities_config {
        // As daprd: a type's own entry starts from the defaults for its
        // idle timeout and reentrancy, and from the app's settings for
        // draining.
        let own = TypeConfig {
            idle_timeout: duration(
                &mut warnings,
                "entitiesConfig.actorIdleTimeout",
                &e.actor_idle_timeout,
                DEFAULT_IDLE_TIMEOUT,
            ),
            drain_ongoing_call_timeout: match e.drain_ongoing_call_timeout.as_deref() {
                None | Some("") => global.drain_ongoing_call_timeout,
                Some(_) => clamp_drain(
                    duration(
                        &mut warnings,
                        "entitiesConfig.drainOngoingCallTimeout",
                        &e.drain_ongoing_call_timeout,
                        drain,
                    ),
                    disseminate,
                ),
            },
            drain_rebalanced: e.drain_rebalanced_actors.unwrap_or(global.drain_rebalanced),
            reentrancy: e.reentrancy.into(),
        };
        for t in &e.entities {
            match types.get_mut(t) {
                Some(c) => *c = own.clone(),
                None => warnings.push(format!(
                    "entitiesConfig names {t:?}, which is not in entities: ignored"
                )),
            }
        }
    }
    Ok((AppActors { types }, warnings))
}

/// A Go duration, or `default` (with a warning when it was malformed).
fn duration(
    warnings: &mut Vec<String>,
    field: &str,
    v: &Option<String>,
    default: Duration,
) -> Duration {
    match v.as_deref() {
        None | Some("") => default,
        Some(s) => parse_duration(s).unwrap_or_else(|why| {
            warnings.push(format!("{field}: {why}; using {default:?}"));
            default
        }),
    }
}

/// A drain that would not fit in a placement round is cut to a share of
/// it (daprd 1.18).
fn clamp_drain(d: Duration, disseminate: Duration) -> Duration {
    if d < disseminate {
        d
    } else {
        disseminate.mul_f64(DRAIN_SHARE_OF_ROUND).max(DRAIN_FLOOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> (AppActors, Vec<String>) {
        parse(json.as_bytes(), DEFAULT_DISSEMINATE_TIMEOUT).expect("parses")
    }

    #[test]
    fn no_entities_hosts_nothing() {
        assert!(read("{}").0.types.is_empty());
        assert!(parse(b"[]", DEFAULT_DISSEMINATE_TIMEOUT).is_err());
        assert!(parse(b"not json", DEFAULT_DISSEMINATE_TIMEOUT).is_err());
    }

    #[test]
    fn defaults_are_daprds() {
        let (a, w) = read(r#"{"entities":["Cart"]}"#);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            a.types["Cart"],
            TypeConfig {
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                drain_ongoing_call_timeout: DEFAULT_DRAIN_ONGOING_CALL_TIMEOUT,
                drain_rebalanced: true,
                reentrancy: Reentrancy::default(),
            }
        );
    }

    #[test]
    fn the_python_sdks_answer_reads() {
        // What dapr-ext-fastapi 1.19 sends, unknown fields included.
        let (a, w) = read(
            r#"{"entities":["DemoActor"],"actorIdleTimeout":"1h0m0s0ms0μs",
                "actorScanInterval":"0h0m30s0ms0μs","drainOngoingCallTimeout":"0h1m0s0ms0μs",
                "drainRebalancedActors":true,"reentrancy":{"enabled":true,"maxStackDepth":8},
                "remindersStoragePartitions":0}"#,
        );
        assert!(w.is_empty(), "{w:?}");
        let t = &a.types["DemoActor"];
        assert_eq!(t.idle_timeout, Duration::from_secs(3600));
        // 60 s does not fit in a 30 s round: 80% of it.
        assert_eq!(t.drain_ongoing_call_timeout, Duration::from_secs(24));
        assert_eq!(
            t.reentrancy,
            Reentrancy {
                enabled: true,
                max_stack_depth: 8
            }
        );
    }

    #[test]
    fn a_bad_duration_falls_back_with_a_warning() {
        let (a, w) = read(r#"{"entities":["A"],"actorIdleTimeout":"soon"}"#);
        assert_eq!(a.types["A"].idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("actorIdleTimeout"), "{w:?}");
    }

    #[test]
    fn a_types_own_entry_overrides_and_others_keep_the_apps() {
        let (a, w) = read(
            r#"{"entities":["A","B"],"actorIdleTimeout":"5m","drainRebalancedActors":false,
                "reentrancy":{"enabled":true},
                "entitiesConfig":[{"entities":["B","Ghost"],"actorIdleTimeout":"10s"}]}"#,
        );
        assert_eq!(a.types["A"].idle_timeout, Duration::from_secs(300));
        assert!(a.types["A"].reentrancy.enabled);
        let b = &a.types["B"];
        assert_eq!(b.idle_timeout, Duration::from_secs(10));
        // Draining falls back to the app's setting, reentrancy does not.
        assert!(!b.drain_rebalanced);
        assert!(!b.reentrancy.enabled);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("Ghost"), "{w:?}");
    }

    #[test]
    fn a_drain_that_fits_the_round_is_kept() {
        assert_eq!(
            clamp_drain(Duration::from_secs(10), Duration::from_secs(30)),
            Duration::from_secs(10)
        );
        assert_eq!(
            clamp_drain(Duration::from_secs(5), Duration::from_secs(1)),
            DRAIN_FLOOR
        );
    }
}
