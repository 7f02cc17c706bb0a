//! Console output of `skiff run`: each line of an app or a sidecar goes out
//! whole, behind its prefix (`== APP ==`, `== SKIFF ==`, with the app id
//! when several run), coloured when stdout is a terminal and `NO_COLOR` is
//! unset; and to its log file. The last lines are kept for error reports.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Lines kept per process for an error report.
pub const TAIL_LINES: usize = 15;

#[derive(Clone, Copy, Debug)]
pub enum Who {
    App,
    Sidecar,
}

#[derive(Clone)]
pub struct Console {
    color: bool,
}

impl Console {
    pub fn new() -> Self {
        Self {
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    pub fn prefix(&self, who: Who, app_id: Option<&str>) -> String {
        let (name, code) = match who {
            Who::App => ("APP", "32"),
            Who::Sidecar => ("SKIFF", "36"),
        };
        let text = match app_id {
            Some(id) => format!("== {name} - {id} =="),
            None => format!("== {name} =="),
        };
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m ")
        } else {
            format!("{text} ")
        }
    }

    /// A status line of the CLI itself.
    pub fn info(&self, s: &str) {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "ℹ️  {s}");
    }

    pub fn ok(&self, s: &str) {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "✅ {s}");
    }

    pub fn fail(&self, s: &str) {
        let mut o = std::io::stderr().lock();
        let _ = writeln!(o, "❌ {s}");
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

/// The last lines of one process.
#[derive(Clone, Default)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, line: String) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }

    pub fn text(&self) -> String {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_empty() {
            return "  (it printed nothing)".to_owned();
        }
        t.iter()
            .map(|l| format!("  | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Where one stream's lines go.
#[derive(Clone)]
pub struct Sink {
    pub prefix: Option<String>,
    pub file: Option<Arc<Mutex<File>>>,
    pub tail: Tail,
}

impl Sink {
    pub fn new(prefix: Option<String>, file: Option<&Path>, tail: Tail) -> std::io::Result<Self> {
        let file = match file {
            Some(p) => {
                if let Some(d) = p.parent() {
                    std::fs::create_dir_all(d)?;
                }
                Some(Arc::new(Mutex::new(File::create(p)?)))
            }
            None => None,
        };
        Ok(Self { prefix, file, tail })
    }

    fn line(&self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end_matches(['\n', '\r']);
        if let Some(f) = &self.file {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(f, "{text}");
        }
        if let Some(p) = &self.prefix {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{p}{text}");
        }
        self.tail.push(text.to_owned());
    }
}

/// Copies `r` line by line into `sink` until it ends.
pub fn pump(r: impl AsyncRead + Unpin + Send + 'static, sink: Sink) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut r = BufReader::new(r);
        let mut buf = Vec::with_capacity(256);
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => sink.line(&buf),
            }
        }
    })
}
