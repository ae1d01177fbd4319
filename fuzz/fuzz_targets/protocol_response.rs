//! What every client parses from rilld: `rill_protocol::decode_response`
//! on arbitrary bytes (a client must survive a broken or hostile daemon,
//! or anything else listening on the socket path). Must never panic or
//! read out of bounds; a response that decodes must survive an
//! encode/decode round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rill_protocol::{decode_response, encode_response};

fuzz_target!(|data: &[u8]| {
    let Ok(resp) = decode_response(data) else { return };
    let _ = format!("{resp:?}");
    if let Ok(again) = encode_response(&resp) {
        assert_eq!(decode_response(&again).expect("a re-encoded response decodes"), resp);
    }
});
