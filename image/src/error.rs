//! The one error type of the image builder: every variant names the file, command or entry it is about.

use std::path::PathBuf;

/// Everything that can stop an image build.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` failed ({status}){stderr}")]
    CommandFailed {
        command: String,
        status: String,
        /// The command's stderr, already prefixed with ": " when not empty.
        stderr: String,
    },

    #[error("{file}:{line}: {reason}")]
    ModulesList {
        file: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("{path}: bad kernel module: {reason}")]
    Module { path: PathBuf, reason: String },

    #[error("module {module} depends on {dependency}, which is neither in {dir} nor built in")]
    MissingDependency {
        module: String,
        dependency: String,
        dir: PathBuf,
    },

    #[error("module dependency cycle: {0}")]
    DependencyCycle(String),

    #[error("{path}: {reason}")]
    Binary { path: PathBuf, reason: String },

    #[error("Debian package {package}: {reason}")]
    Package { package: String, reason: String },

    #[error("initramfs entry /{path}: {reason}")]
    Tree { path: String, reason: String },

    #[error("SOURCE_DATE_EPOCH={value:?} is not a number of seconds that fits 32 bits")]
    SourceDateEpoch { value: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
