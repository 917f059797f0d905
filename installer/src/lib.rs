//! The installer's answer file, as a library: its parser and the line finder its errors use.
//! The `havms-installer` binary is the rest; the fuzz target `answer_file` (fuzz/) links this.

pub mod answers;
pub mod locate;
