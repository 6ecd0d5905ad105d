//! Config parsing never panics, whatever the file and the environment.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Half the input as the file, the rest as the value of every variable.
    let mut mid = text.len() / 2;
    while !text.is_char_boundary(mid) {
        mid -= 1;
    }
    let (file, env) = text.split_at(mid);
    let _ = ares_gateway::config::Config::from_yaml(file, &|_| Some(env.to_string()));
    let _ = ares_gateway::config::substitute(text, &|_| None);
});
