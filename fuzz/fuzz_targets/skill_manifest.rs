//! The `SKILL.md` parser: it never fails and never panics; a broken skill carries its
//! error (with a line inside the file) and no text, a usable one carries its text.

#![no_main]

use std::path::Path;

use aos_kernel::skills::manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The index reads files as UTF-8 text; invalid bytes never reach the parser.
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = manifest::parse(Path::new("/skills/fuzz-skill"), source);
    match (&parsed.text, &parsed.manifest.error) {
        (Some(text), None) => {
            assert_eq!(parsed.manifest.text_chars, text.chars().count() as u64);
        }
        (None, Some(error)) => {
            if let Some(line) = error.line {
                // YAML, whose line numbers the error carries, also breaks lines at a
                // lone `\r`; count lines as it does.
                let breaks = source.matches('\n').count() + source.matches('\r').count()
                    - source.matches("\r\n").count();
                let lines = breaks as u64 + 1;
                assert!(
                    (1..=lines + 1).contains(&line),
                    "error line {line} outside a {lines}-line file: {}",
                    error.message
                );
            }
        }
        (text, error) => panic!("text {text:?} with error {error:?}"),
    }
    // `skill.list` serializes every manifest, broken or not.
    serde_json::to_string(&parsed.manifest).expect("a manifest serializes");
});
