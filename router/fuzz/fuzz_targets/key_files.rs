//! The key file and trusted-keys parsers on arbitrary text.
//!
//! Input: byte 0 picks the parser (even: key file, odd: trusted keys), the
//! rest is the text (invalid UTF-8 is skipped, as reading the file as a
//! string would refuse it). Never panics; whatever parses writes out to
//! text that parses to the same keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_router::core::crypto::{PublicKey, StaticKeypair, TrustedKeys};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if which % 2 == 0 {
        if let Ok(pair) = StaticKeypair::from_file_text(text) {
            let again = StaticKeypair::from_file_text(&pair.to_file_text())
                .expect("a written key file parses");
            assert_eq!(again.public(), pair.public());
        }
    } else if let Ok(keys) = TrustedKeys::parse(text) {
        for line in text.lines() {
            let key = line.split('#').next().unwrap_or("").trim();
            if let Ok(k) = key.parse::<PublicKey>() {
                assert!(keys.contains(&k));
                assert_eq!(k.to_string().parse::<PublicKey>(), Ok(k));
            }
        }
    }
});
