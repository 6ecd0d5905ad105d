//! The JSON bodies of gateway-served endpoints: parsing and validation never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ares_gateway::api::fuzz_bodies(data);
});
