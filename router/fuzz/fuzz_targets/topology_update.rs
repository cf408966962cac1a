//! `TopologyUpdate::decode` on arbitrary bytes: never panics, and anything
//! it accepts round-trips through `encode`, also when re-chunked the way
//! full state is sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_router::core::wire::topology::TopologyUpdate;

fuzz_target!(|data: &[u8]| {
    if let Ok(update) = TopologyUpdate::decode(data) {
        let bytes = update.encode();
        assert!(bytes.len() <= data.len(), "re-encoding grew the update");
        assert_eq!(TopologyUpdate::decode(&bytes).as_ref(), Ok(&update));
        let mut peers = Vec::new();
        for chunk in TopologyUpdate::encode_chunked(update.peers.clone()) {
            peers.extend(TopologyUpdate::decode(&chunk).expect("chunk decodes").peers);
        }
        assert_eq!(peers, update.peers);
    }
});
