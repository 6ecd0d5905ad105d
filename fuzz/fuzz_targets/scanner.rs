//! The connection byte scanner: any bytes, split anywhere, never panic, and agree with themselves
//! whether fed whole or in pieces.
#![no_main]
use ares_gateway::net::framing::{ConnFlags, Scanner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else { return };
    let whole = ConnFlags::default();
    let mut s = Scanner::default();
    s.feed(bytes, &whole);
    let pieces = ConnFlags::default();
    let mut s = Scanner::default();
    for chunk in bytes.chunks(usize::from(split).max(1)) {
        s.feed(chunk, &pieces);
    }
    for _ in 0..8 {
        assert_eq!(whole.next_request_refusal(), pieces.next_request_refusal());
    }
});
