//! How the binaries report a fatal error: one line, the error and then each
//! cause once. Most messages here embed their source already, which
//! anyhow's `{:#}` would print a second time.

use std::error::Error;

/// `error: cause: cause`, skipping causes whose text is already there.
pub fn one_line(e: &(dyn Error + 'static)) -> String {
    let mut line = String::new();
    for cause in std::iter::successors(Some(e), |e| (*e).source()) {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on x: {0}")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("starting")]
    struct Wrap(#[source] Outer);

    #[test]
    fn each_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::AddrInUse, "in use");
        assert_eq!(one_line(&Outer(io())), "cannot listen on x: in use");
        assert_eq!(
            one_line(&Wrap(Outer(io()))),
            "starting: cannot listen on x: in use"
        );
    }
}
