//! What rilld parses from every client: `rill_protocol::decode_request`
//! (header, lengths, then bytecheck validation of the rkyv body) on
//! arbitrary bytes. Must never panic or read out of bounds; a request
//! that decodes must survive an encode/decode round trip unchanged, and
//! the names in it go through `check_stream_name` as rilld does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rill_protocol::{check_stream_name, decode_request, encode_request, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = decode_request(data) else { return };
    let names: Vec<&str> = match &req {
        Request::CreateStream { stream, .. }
        | Request::OpenPublisher { stream, .. }
        | Request::OpenSubscriber { stream, .. }
        | Request::StreamInfo { stream }
        | Request::LogSegments { stream, .. } => vec![stream.as_str()],
        Request::Resume { handles } => handles.iter().map(|h| h.stream.as_str()).collect(),
        Request::ListStreamsPage { after: Some(a) } => vec![a.as_str()],
        Request::Hello { client_name } => vec![client_name.as_str()],
        _ => Vec::new(),
    };
    for n in names {
        let _ = check_stream_name(n);
    }
    // What decoded re-encodes (unless rkyv's layout of it is longer than
    // a message may be) and decodes to the same request.
    if let Ok(again) = encode_request(&req) {
        assert_eq!(decode_request(&again).expect("a re-encoded request decodes"), req);
    }
});
