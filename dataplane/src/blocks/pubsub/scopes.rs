//! Topic scoping from a pub/sub component's metadata, as daprd reads it:
//! `publishingScopes` / `subscriptionScopes` (`app1=t1,t2;app2=t3`, spaces
//! ignored; a listed app is limited to its topics, `app1=` to none),
//! `allowedTopics` (a whitelist for everyone) and `protectedTopics` (only
//! apps whose scope names them).

use skiff_components::Properties;

#[derive(Clone, Debug, Default)]
pub struct Scopes {
    /// This app's publishing topics, when the component lists it.
    publishing: Vec<String>,
    subscribing: Vec<String>,
    allowed: Vec<String>,
    protected: Vec<String>,
}

fn list(v: Option<&str>) -> Vec<String> {
    v.map(|s| s.replace(' ', ""))
        .filter(|s| !s.is_empty())
        .map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The topics `scopes` gives `app_id` (daprd's `GetScopedTopics`).
fn scoped(v: Option<&str>, app_id: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let Some(v) = v.map(|s| s.replace(' ', "")).filter(|s| !s.is_empty()) else {
        return out;
    };
    for app in v.split(';') {
        let mut parts = app.split('=');
        if parts.next() != Some(app_id) {
            continue;
        }
        let Some(topics) = parts.next() else { continue };
        for t in topics.split(',') {
            if !out.iter().any(|o| o == t) {
                out.push(t.to_owned());
            }
        }
    }
    out
}

impl Scopes {
    pub fn from_metadata(meta: &Properties, app_id: &str) -> Self {
        Self {
            publishing: scoped(meta.get("publishingScopes"), app_id),
            subscribing: scoped(meta.get("subscriptionScopes"), app_id),
            allowed: list(meta.get("allowedTopics")),
            protected: list(meta.get("protectedTopics")),
        }
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.allows(topic, &self.publishing)
    }

    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.allows(topic, &self.subscribing)
    }

    /// daprd's `isOperationAllowed`.
    fn allows(&self, topic: &str, scoped: &[String]) -> bool {
        if !self.allowed.is_empty() && !self.allowed.iter().any(|t| t == topic) {
            return false;
        }
        let protected = self.protected.iter().any(|t| t == topic);
        if scoped.is_empty() && !protected {
            return true;
        }
        scoped.iter().any(|t| t == topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(pairs: &[(&str, &str)], app: &str) -> Scopes {
        let mut p = Properties::new();
        for (k, v) in pairs {
            p.insert(*k, *v);
        }
        Scopes::from_metadata(&p, app)
    }

    #[test]
    fn publishing_scopes_limit_listed_apps_only() {
        let m = [("publishingScopes", "a=t1, t2;b=;c=t3")];
        let a = scopes(&m, "a");
        assert!(a.may_publish("t1") && a.may_publish("t2") && !a.may_publish("t3"));
        let b = scopes(&m, "b");
        assert!(
            !b.may_publish("t1") && !b.may_publish("t3"),
            "b= means no topics"
        );
        let free = scopes(&m, "z");
        assert!(free.may_publish("anything"));
        assert!(free.may_subscribe("anything"));
    }

    #[test]
    fn allowed_and_protected_topics() {
        let m = [
            ("allowedTopics", "t1,t2,secret"),
            ("protectedTopics", "secret"),
            ("subscriptionScopes", "auditor=secret"),
        ];
        let any = scopes(&m, "x");
        assert!(any.may_publish("t1") && !any.may_publish("t9"));
        assert!(!any.may_subscribe("secret"), "protected needs a scope");
        assert!(scopes(&m, "auditor").may_subscribe("secret"));
    }
}
