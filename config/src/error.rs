//! The one error type of the config crate: every problem names the file, the line when known, and why.

use std::fmt;

/// A configuration problem, printed as `FILE:LINE: REASON` (or `FILE: REASON` when no line applies, e.g.
/// the file cannot be read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file the configuration came from, as given to [`crate::load`] or [`crate::parse`].
    pub file: String,
    /// 1-based line of the offending text, when it can be located.
    pub line: Option<usize>,
    /// What is wrong, in words an operator can act on.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(file: &str, line: Option<usize>, reason: impl Into<String>) -> Self {
        Self {
            file: file.to_string(),
            line,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.reason),
            None => write!(f, "{}: {}", self.file, self.reason),
        }
    }
}
