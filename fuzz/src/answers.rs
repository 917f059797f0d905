//! Target `answer_file`: the installer's answer file (`havms_installer::answers::parse`, what
//! the installer runs on `answers.yaml` from the stick or `havms.answers=`). Every error names a
//! line inside the file; answers that parse are written out as the installer writes them
//! (`install-answers.yaml`) and read back the same.

pub fn answer_file(data: &[u8]) {
    // The installer refuses a file that is not UTF-8 before parsing (with a line).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match havms_installer::answers::parse(text, "answers.yaml") {
        Ok(a) => {
            let written = a.to_yaml();
            let again = havms_installer::answers::parse(&written, "install-answers.yaml");
            assert_eq!(
                again.as_ref().ok(),
                Some(&a),
                "the answers written out do not read back the same:\n{written}\n{again:?}"
            );
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without a reason");
            // Lines as an editor counts them: ended by '\n'.
            let lines = text.lines().count().max(1);
            for e in errors {
                assert!(
                    (1..=lines).contains(&e.line),
                    "error at line {} of a {lines}-line file: {e}",
                    e.line
                );
            }
        }
    }
}
