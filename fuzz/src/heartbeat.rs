//! Target `heartbeat`: the peer heartbeat datagram (supervisor peer::heartbeat, port 7400).
//! Decoding never panics, and what decodes re-encodes to the same datagram.

use havms_supervisor::peer::heartbeat::Heartbeat;

pub fn heartbeat(data: &[u8]) {
    if let Ok(hb) = Heartbeat::decode(data) {
        let again = hb.encode().expect("a decoded heartbeat must encode");
        assert_eq!(again, data, "heartbeat re-encodes differently");
    }
}
