//! A small tracing subscriber that writes runc-style log lines: logrus text or JSON
//! (`{"level":"error","msg":"...","time":"..."}`), which containerd and podman parse from the
//! `--log` file when a runtime command fails.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

static STDERR: AtomicBool = AtomicBool::new(true);

struct Logger {
    file: Option<Mutex<File>>,
    json: bool,
    max: Level,
    next_id: AtomicU64,
}

/// True when log lines go to stderr (no `--log` file).
pub fn to_stderr() -> bool {
    STDERR.load(Ordering::Relaxed)
}

pub fn init(path: Option<&Path>, json: bool, debug: bool) {
    let file = path.and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| eprintln!("tug: --log {}: {e}; logging to stderr", p.display()))
            .ok()
    });
    STDERR.store(file.is_none(), Ordering::Relaxed);
    let logger = Logger {
        file: file.map(Mutex::new),
        json,
        max: if debug { Level::DEBUG } else { Level::WARN },
        next_id: AtomicU64::new(1),
    };
    let _ = tracing::subscriber::set_global_default(logger);
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

impl Subscriber for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }
    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_id.fetch_add(1, Ordering::Relaxed))
    }
    fn record(&self, _span: &Id, _values: &Record<'_>) {}
    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut m = Message(String::new());
        event.record(&mut m);
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        let time = tug_runtime::state::now_rfc3339();
        let line = match (&self.file, self.json) {
            (None, _) => format!("tug: {level}: {}\n", m.0),
            (Some(_), true) => {
                format!(
                    "{}\n",
                    serde_json::json!({"level": level, "msg": m.0, "time": time})
                )
            }
            (Some(_), false) => format!("time=\"{time}\" level={level} msg={:?}\n", m.0),
        };
        match &self.file {
            Some(f) => {
                if let Ok(mut f) = f.lock() {
                    let _ = f.write_all(line.as_bytes());
                }
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }
    fn enter(&self, _span: &Id) {}
    fn exit(&self, _span: &Id) {}
}
