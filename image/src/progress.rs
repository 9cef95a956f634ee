//! Pull progress: a bar per layer on a terminal, plain lines otherwise, or nothing.

use std::io::IsTerminal;

/// How a pull reports progress (on stderr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Progress {
    /// Bars on a terminal, lines otherwise.
    #[default]
    Auto,
    Bars,
    Lines,
    Quiet,
}

pub(crate) enum Sink {
    Bars(indicatif::MultiProgress),
    Lines,
    Quiet,
}

impl Sink {
    pub fn new(p: Progress) -> Sink {
        match p {
            Progress::Auto if std::io::stderr().is_terminal() => {
                Sink::Bars(indicatif::MultiProgress::new())
            }
            Progress::Auto | Progress::Lines => Sink::Lines,
            Progress::Bars => Sink::Bars(indicatif::MultiProgress::new()),
            Progress::Quiet => Sink::Quiet,
        }
    }

    pub fn line(&self, msg: &str) {
        match self {
            Sink::Bars(m) => {
                let _ = m.println(msg);
            }
            Sink::Lines => eprintln!("{msg}"),
            Sink::Quiet => {}
        }
    }

    /// A tracker for one layer of `size` bytes.
    pub fn layer(&self, name: &str, size: u64) -> LayerProgress {
        match self {
            Sink::Bars(m) => {
                let bar = m.add(indicatif::ProgressBar::new(size));
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(name.to_string());
                LayerProgress::Bar(bar)
            }
            Sink::Lines => LayerProgress::Line {
                name: name.to_string(),
                size,
                done: 0,
                next_mark: 25,
            },
            Sink::Quiet => LayerProgress::Quiet,
        }
    }
}

pub(crate) enum LayerProgress {
    Bar(indicatif::ProgressBar),
    Line {
        name: String,
        size: u64,
        done: u64,
        next_mark: u64,
    },
    Quiet,
}

impl LayerProgress {
    pub fn start(&mut self) {
        if let LayerProgress::Line { name, size, .. } = self {
            eprintln!("{name}: downloading {size} bytes");
        }
    }

    pub fn add(&mut self, n: u64) {
        match self {
            LayerProgress::Bar(b) => b.inc(n),
            LayerProgress::Line {
                name,
                size,
                done,
                next_mark,
            } => {
                *done += n;
                if *size > 0 && *next_mark < 100 && *done * 100 / *size >= *next_mark {
                    eprintln!("{name}: {next_mark}%");
                    *next_mark += 25;
                }
            }
            LayerProgress::Quiet => {}
        }
    }

    /// Something worth saying mid-download (a resume).
    pub fn note(&mut self, msg: &str) {
        match self {
            LayerProgress::Bar(b) => b.set_message(msg.to_string()),
            LayerProgress::Line { name, .. } => eprintln!("{name}: {msg}"),
            LayerProgress::Quiet => {}
        }
    }

    pub fn finish(&mut self, msg: &str) {
        match self {
            LayerProgress::Bar(b) => b.finish_with_message(msg.to_string()),
            LayerProgress::Line { name, .. } => eprintln!("{name}: {msg}"),
            LayerProgress::Quiet => {}
        }
    }
}
