//! Path normalisation: never panics, is idempotent, and its output has no dot segments, no
//! empty segments and no encoded separators; classification never panics. Its other readings
//! (`route::readings`, the further-normalising upstreams) never panic and are resolved paths.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    if let Ok(n) = ares_gateway::route::normalize(path) {
        assert!(n.starts_with('/'));
        assert!(!n.contains("//"), "{n}");
        for seg in n.split('/') {
            assert!(seg != "." && seg != "..", "{n}");
        }
        let lower = n.to_ascii_lowercase();
        assert!(!lower.contains("%2f") && !lower.contains("%5c") && !n.contains('\\'), "{n}");
        assert_eq!(ares_gateway::route::normalize(&n).as_deref(), Ok(&*n), "not idempotent");
        if ares_gateway::route::readings::may_read_otherwise(&n) {
            for r in ares_gateway::route::readings::readings(&n) {
                assert!(r.starts_with('/') && !r.contains("//"), "{n} -> {r}");
                assert!(r.split('/').all(|s| s != "." && s != ".."), "{n} -> {r}");
            }
        } else {
            assert!(ares_gateway::route::readings::readings(&n).is_empty(), "{n}");
        }
    }
});
