//! Target `wire_frame`: the replication wire format (vmm replication::wire). Whatever parses
//! re-encodes to the same bytes: the parser accepts exactly what the encoder writes, so no two
//! encodings of one frame exist for a peer to play with.

use std::io::Cursor;

use havms_vmm::replication::wire::{self, FrameReader, Kind, HEADER_LEN};

pub fn wire_frame(data: &[u8]) {
    // Whole frames back to back, as on the link: parse_frame and FrameReader agree, and
    // every frame re-encodes to its bytes.
    let mut rest = data;
    let mut reader = FrameReader::new(Cursor::new(data));
    loop {
        let parsed = wire::parse_frame(rest);
        let read = reader.next_frame();
        match (parsed, read) {
            (Ok((header, frame, used)), Ok(Some((h2, f2)))) => {
                assert_eq!(
                    header, h2,
                    "parse_frame and FrameReader disagree on a header"
                );
                assert_eq!(frame, f2, "parse_frame and FrameReader disagree on a frame");
                let again = wire::encode(&frame, header.vm_id, header.epoch)
                    .expect("a frame the parser accepts must encode");
                assert_eq!(
                    again,
                    rest[..used],
                    "{} frame re-encodes differently",
                    header.kind
                );
                rest = &rest[used..];
            }
            (Err(_), Ok(None)) if rest.is_empty() => break,
            (Err(_), Err(_)) => break,
            (p, r) => panic!(
                "parse_frame ({:?}) and FrameReader ({:?}) disagree",
                p.map(|(h, _, n)| (h, n)),
                r.map(|o| o.map(|(h, _)| h))
            ),
        }
    }
    // The payload parser behind the sha256 check (which random bytes never pass): first byte
    // the kind, the rest the payload.
    let Some((&kind, payload)) = data.split_first() else {
        return;
    };
    let Some(kind) = Kind::from_u8(kind) else {
        return;
    };
    if let Ok(frame) = wire::parse_payload(kind, payload) {
        if let wire::Frame::PagesLz4(p) = &frame {
            // A hostile block: decompressed exactly as the replica does, or refused.
            if let Ok(data) = p.decompress() {
                assert_eq!(data.len(), p.pages.len() * wire::PAGE_SIZE);
            }
        }
        let again = wire::encode(&frame, 0, 0).expect("a payload the parser accepts must encode");
        assert_eq!(
            again[HEADER_LEN..],
            *payload,
            "{kind} payload re-encodes differently"
        );
    }
}
