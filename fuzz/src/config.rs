//! Target `config`: havms-config's loader (`parse`, what `load` runs after reading the file).
//! Every error but an empty file's names a line, and that line is inside the file.

pub fn config(data: &[u8]) {
    // load() refuses non-UTF-8 files before parsing (with a line, checked in config's tests).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Err(e) = havms_config::parse(text, "fuzz.yaml") else {
        return;
    };
    // Lines as config's errors count them: ended by '\n' (an editor's and wc -l's count).
    let lines = text.lines().count().max(1);
    match e.line {
        Some(line) => assert!(
            (1..=lines).contains(&line),
            "error at line {line} of a {lines}-line file: {e}"
        ),
        None => assert!(
            text.trim().is_empty(),
            "error without a line for a non-empty file: {e}"
        ),
    }
}
