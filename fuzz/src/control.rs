//! Target `control_line`: havmsd's control socket (supervisor daemon::control), lines served
//! by the real `serve_lines` with a handler that answers every request: one answer line per
//! request line, each one JSON object on one line.

use std::io::Cursor;

use havms_supervisor::daemon::control::serve_lines;
use havms_supervisor::protocol::{self, Request, Response, MAX_LINE};

fn answer(req: Request) -> Response {
    // Requests survive encode/parse, as the CLI sends them.
    let text = protocol::to_line(&req);
    assert_eq!(protocol::parse_request(&text), Ok(req.clone()));
    Response::Done {
        message: format!("{req:?}"),
    }
}

pub fn control_line(data: &[u8]) {
    let mut out = Vec::new();
    serve_lines(Cursor::new(data), &mut out, &answer).expect("serving from memory cannot fail");
    let text = String::from_utf8(out).expect("answers are UTF-8");
    let requests = data.split(|&b| b == b'\n').count() - usize::from(data.ends_with(b"\n"));
    let answers = text.lines().count();
    if data.is_empty() {
        assert_eq!(answers, 0);
    } else if data.len() <= MAX_LINE {
        assert_eq!(
            answers, requests,
            "{requests} request lines got {answers} answers"
        );
    } else {
        assert!(answers <= requests);
    }
    for line in text.lines() {
        let r: Response = serde_json::from_str(line).expect("every answer is a Response");
        if let Response::Error(e) = r {
            assert!(e.len() < 1024, "a {}-byte error answer", e.len());
        }
    }
}
