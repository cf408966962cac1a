//! `ControlMessage::decode` on arbitrary bytes: never panics, and anything
//! it accepts survives `decode(encode(msg)) == msg`. (Not `encode(msg) ==
//! input`: postcard accepts non-minimal varints, see docs/protocol.md.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_router::core::wire::control::ControlMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ControlMessage::decode(data) {
        let bytes = msg.encode();
        assert!(bytes.len() <= data.len(), "re-encoding grew the message");
        assert_eq!(ControlMessage::decode(&bytes), Ok(msg));
    }
});
