//! A component's metadata: the `spec.metadata` name/value pairs of its
//! YAML, secrets already resolved by the sidecar. Names match
//! case-insensitively, as in Dapr. Values are never printed: `Debug` shows
//! names only, so a password cannot reach a log line through this type.

use std::time::Duration;

/// Why a metadata value was refused (names the field, never its value).
#[derive(Debug, thiserror::Error)]
#[error("metadata {field}: {why}")]
pub struct MetadataError {
    pub field: String,
    pub why: String,
}

/// Name/value pairs, in the order the YAML gave them.
#[derive(Clone, Default)]
pub struct Properties {
    pairs: Vec<(String, String)>,
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.pairs.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Properties {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self
            .pairs
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(&name))
        {
            Some(slot) => slot.1 = value,
            None => self.pairs.push((name, value)),
        }
    }

    /// The value of `name` (any case), if set and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The first of several names (aliases) that is set.
    pub fn get_any(&self, names: &[&str]) -> Option<&str> {
        names.iter().find_map(|n| self.get(n))
    }

    pub fn string_or(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    pub fn required(&self, name: &str) -> Result<&str, MetadataError> {
        self.get(name).ok_or_else(|| MetadataError {
            field: name.to_owned(),
            why: "is required".to_owned(),
        })
    }

    /// A boolean as Dapr reads one (`true`, `1`, `yes`, `on`, any case).
    pub fn bool_or(&self, name: &str, default: bool) -> Result<bool, MetadataError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => truthy(v).ok_or_else(|| MetadataError {
                field: name.to_owned(),
                why: "is not a boolean".to_owned(),
            }),
        }
    }

    pub fn int_or<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, MetadataError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| MetadataError {
                field: name.to_owned(),
                why: "is not an integer".to_owned(),
            }),
        }
    }

    /// A Go duration (`5s`, `1h`) or a bare number of seconds.
    pub fn duration_or(&self, name: &str, default: Duration) -> Result<Duration, MetadataError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => crate::util::parse_duration(v).ok_or_else(|| MetadataError {
                field: name.to_owned(),
                why: "is not a duration (like 5s or 1h)".to_owned(),
            }),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Dapr's truthy values; `None` when the text is not a boolean.
pub fn truthy(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "on" | "t" => Some(true),
        "false" | "0" | "no" | "n" | "off" | "f" => Some(false),
        _ => None,
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Properties {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut p = Self::new();
        for (k, v) in iter {
            p.insert(k, v);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_in_any_case_and_debug_hides_values() {
        let p: Properties = [("redisPassword", "hunter2"), ("RedisHost", "h:1")]
            .into_iter()
            .collect();
        assert_eq!(p.get("redishost"), Some("h:1"));
        assert_eq!(p.get("REDISPASSWORD"), Some("hunter2"));
        assert!(!format!("{p:?}").contains("hunter2"));
        assert!(p.bool_or("enableTLS", false).is_ok_and(|b| !b));
        let bad: Properties = [("enableTLS", "perhaps")].into_iter().collect();
        let e = bad.bool_or("enableTLS", false).expect_err("not a bool");
        assert!(!e.to_string().contains("perhaps"));
    }
}
