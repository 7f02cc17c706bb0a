//! Request paths as a bounded label (`spec.metrics.http.pathMatching`).

/// `spec.metrics.http.pathMatching`: request paths become a `path` label
/// only through these patterns (`{name}` matches one segment); a path no
/// pattern matches is labelled `_`.
#[derive(Debug, Default)]
pub struct PathMatching {
    patterns: Vec<(Vec<Segment>, String)>,
}

#[derive(Debug)]
enum Segment {
    Literal(String),
    Any,
}

impl PathMatching {
    pub fn new(patterns: &[String]) -> Self {
        let patterns = patterns
            .iter()
            .map(|p| {
                let segs = p
                    .trim_matches('/')
                    .split('/')
                    .map(|s| {
                        if s.starts_with('{') && s.ends_with('}') {
                            Segment::Any
                        } else {
                            Segment::Literal(s.to_owned())
                        }
                    })
                    .collect();
                (segs, p.clone())
            })
            .collect();
        Self { patterns }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// 0 for no match, else 1 + the first matching pattern.
    pub(super) fn index(&self, path: &str) -> u16 {
        if self.patterns.is_empty() {
            return 0;
        }
        let n = path.trim_matches('/').split('/').count();
        for (i, (segs, _)) in self.patterns.iter().enumerate() {
            if segs.len() != n {
                continue;
            }
            let hit = segs
                .iter()
                .zip(path.trim_matches('/').split('/'))
                .all(|(s, p)| match s {
                    Segment::Any => !p.is_empty(),
                    Segment::Literal(l) => l == p,
                });
            if hit {
                return u16::try_from(i + 1).unwrap_or(0);
            }
        }
        0
    }

    pub(super) fn label(&self, i: u16) -> &str {
        match i {
            0 => "_",
            i => self
                .patterns
                .get(usize::from(i) - 1)
                .map_or("_", |(_, p)| p.as_str()),
        }
    }
}
