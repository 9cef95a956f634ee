//! The builder's errors. A step's error names the Dockerfile, the line and the instruction:
//! `Dockerfile:7: COPY: source "x" not found in context`.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An instruction failed or is wrong.
    #[error("{file}:{line}: {message}")]
    Step {
        file: String,
        line: usize,
        message: String,
    },
    /// A RUN command exited with a non-zero code.
    #[error("{file}:{line}: RUN: command {command} exited with code {code}")]
    RunFailed {
        file: String,
        line: usize,
        command: String,
        code: i32,
    },
    /// SIGINT, SIGTERM or SIGHUP during a RUN step: the step was stopped.
    #[error("interrupted")]
    Interrupted,
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] tug_image::Error),
    #[error("{0}")]
    Other(String),
}

impl BuildError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> BuildError {
        BuildError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// `.at(path)` on io results: the error names the path.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T, BuildError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T, BuildError> {
        self.map_err(|e| BuildError::io(path, e))
    }
}
