//! `Preamble::parse` on arbitrary bytes: never panics, answers "need more"
//! only for a matching prefix shorter than the preamble, and whatever parses
//! re-emits the exact bytes it was parsed from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_router::core::wire::preamble::{
    MAGIC, PREAMBLE_LEN, PROTOCOL_MAX, PROTOCOL_MIN, Preamble,
};

fuzz_target!(|data: &[u8]| {
    match Preamble::parse(data) {
        Ok(Some(p)) => {
            assert_eq!(p.emit()[..], data[..PREAMBLE_LEN]);
            assert!(p.min_version <= p.max_version);
            // A negotiated version lies in both ranges and is the highest such.
            let ours = Preamble::new(PROTOCOL_MIN..=PROTOCOL_MAX);
            if let Some(v) = ours.negotiate(&p) {
                assert!((p.min_version..=p.max_version).contains(&v));
                assert!((ours.min_version..=ours.max_version).contains(&v));
                assert!(v == p.max_version || v == ours.max_version);
            }
        }
        Ok(None) => {
            assert!(data.len() < PREAMBLE_LEN);
            let seen = data.len().min(MAGIC.len());
            assert_eq!(data[..seen], MAGIC[..seen]);
        }
        Err(_) => {
            // Rejection is final: more bytes never make it acceptable.
            let mut longer = data.to_vec();
            longer.push(0);
            assert!(Preamble::parse(&longer).is_err());
        }
    }
});
