//! Replays the APDU transcripts in `fixtures/transcripts/` against the virtual card, byte for byte.
//!
//! The format is described in `fixtures/transcripts/README.md`: `>` lines are
//! raw commands, `<` lines the expected response (hex, `..` for any one
//! byte, `*` for any run of bytes), `@` lines set the card up and `!` lines
//! run host-side steps that cannot be written as fixed bytes (such as
//! management-key authentication, whose witness is random).

use std::path::{Path, PathBuf};

use pivtap_card::{ManagementKey, PivSession};
use pivtap_vcard::image::CardImage;
use pivtap_vcard::{CardOptions, Interface, NewCard, VirtualCard, VirtualCardBackend};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("card/ sits in the repository")
        .to_owned()
}

/// One byte of an expected response.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expected {
    Byte(u8),
    AnyByte,
    AnyRun,
}

fn parse_hex(line: &str, location: &str) -> Vec<u8> {
    let digits: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(&digits).unwrap_or_else(|e| panic!("{location}: bad hex {digits:?}: {e}"))
}

fn parse_pattern(line: &str, location: &str) -> Vec<Expected> {
    let mut pattern = Vec::new();
    for token in line.split_whitespace() {
        match token {
            "*" => pattern.push(Expected::AnyRun),
            ".." => pattern.push(Expected::AnyByte),
            hex_digits => pattern.extend(
                parse_hex(hex_digits, location)
                    .into_iter()
                    .map(Expected::Byte),
            ),
        }
    }
    assert!(
        pattern.iter().filter(|e| **e == Expected::AnyRun).count() <= 1,
        "{location}: at most one * per line"
    );
    pattern
}

fn matches(pattern: &[Expected], actual: &[u8]) -> bool {
    let fits = |pattern: &[Expected], bytes: &[u8]| {
        pattern.len() == bytes.len()
            && pattern.iter().zip(bytes).all(|(p, b)| match p {
                Expected::Byte(expected) => expected == b,
                Expected::AnyByte => true,
                Expected::AnyRun => unreachable!("split off before"),
            })
    };
    match pattern.iter().position(|e| *e == Expected::AnyRun) {
        None => fits(pattern, actual),
        Some(star) => {
            let (head, tail) = (&pattern[..star], &pattern[star + 1..]);
            actual.len() >= head.len() + tail.len()
                && fits(head, &actual[..head.len()])
                && fits(tail, &actual[actual.len() - tail.len()..])
        }
    }
}

fn card_for(spec: &str, location: &str) -> VirtualCard {
    if spec == "blank" {
        return VirtualCard::blank(NewCard::factory(CardOptions::default()));
    }
    let path = repo_root().join(spec);
    // Loaded, not opened: the fixture file is never written.
    let image = CardImage::load(&path).unwrap_or_else(|e| panic!("{location}: {e}"));
    VirtualCard::from_image(&image).unwrap_or_else(|e| panic!("{location}: {e}"))
}

/// Replays one transcript; returns how many exchanges it checked.
fn replay(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut backend: Option<VirtualCardBackend> = None;
    let mut pending_command: Option<(Vec<u8>, String)> = None;
    let mut exchanges = 0;
    for (number, raw_line) in text.lines().enumerate() {
        let location = format!("{name}:{}", number + 1);
        let line = raw_line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (kind, rest) = line.split_at(1);
        let rest = rest.trim();
        if kind != "<" {
            assert!(
                pending_command.is_none(),
                "{location}: a '>' line needs its '<' line first"
            );
        }
        match kind {
            "@" => {
                let mut words = rest.split_whitespace();
                match words.next() {
                    Some("card") => {
                        let spec = words
                            .next()
                            .unwrap_or_else(|| panic!("{location}: @card needs a value"));
                        backend = Some(VirtualCardBackend::new(
                            card_for(spec, &location),
                            name.clone(),
                        ));
                    }
                    Some("options") => {
                        let mut options = CardOptions::default();
                        for word in words {
                            match word {
                                "no-extended" => options.extended_length = false,
                                "contactless" => options.interface = Interface::Contactless,
                                other => panic!("{location}: unknown option {other}"),
                            }
                        }
                        backend
                            .as_ref()
                            .unwrap_or_else(|| panic!("{location}: @card first"))
                            .card()
                            .set_options(options);
                    }
                    other => panic!("{location}: unknown directive {other:?}"),
                }
            }
            "!" => {
                let backend = backend
                    .as_mut()
                    .unwrap_or_else(|| panic!("{location}: @card first"));
                match rest {
                    "management-key" => {
                        let mut session =
                            PivSession::open(backend).unwrap_or_else(|e| panic!("{location}: {e}"));
                        session
                            .authenticate_management_key(&ManagementKey::default_key())
                            .unwrap_or_else(|e| panic!("{location}: {e}"));
                    }
                    "reset" => backend.card().reset(),
                    other => panic!("{location}: unknown step {other:?}"),
                }
            }
            ">" => pending_command = Some((parse_hex(rest, &location), location)),
            "<" => {
                let (command, command_location) = pending_command
                    .take()
                    .unwrap_or_else(|| panic!("{location}: '<' without '>'"));
                let pattern = parse_pattern(rest, &location);
                let backend = backend
                    .as_ref()
                    .unwrap_or_else(|| panic!("{location}: @card first"));
                let response = backend.card().transmit(&command);
                assert!(
                    matches(&pattern, &response),
                    "{command_location}: command {}\n  expected {rest}\n  got      {}",
                    hex::encode_upper(&command),
                    hex::encode_upper(&response)
                );
                exchanges += 1;
            }
            other => panic!("{location}: unknown line kind {other:?}"),
        }
    }
    assert!(
        pending_command.is_none(),
        "{name}: ends with a command and no response"
    );
    exchanges
}

#[test]
fn every_transcript_replays() {
    let directory = repo_root().join("fixtures/transcripts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&directory)
        .unwrap_or_else(|e| panic!("{}: {e}", directory.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "apdu"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "transcripts missing from {}",
        directory.display()
    );
    for file in files {
        let exchanges = replay(&file);
        assert!(exchanges > 0, "{} checks nothing", file.display());
    }
}

#[test]
fn patterns_match_as_documented() {
    let pattern = parse_pattern("7C .. 82 * 90 00", "test");
    assert!(matches(
        &pattern,
        &[0x7C, 0x05, 0x82, 0x01, 0x02, 0x90, 0x00]
    ));
    assert!(matches(&pattern, &[0x7C, 0x05, 0x82, 0x90, 0x00]));
    assert!(!matches(&pattern, &[0x7C, 0x05, 0x83, 0x90, 0x00]));
    assert!(!matches(&pattern, &[0x7C, 0x05, 0x82, 0x90]));
    assert!(!matches(
        &parse_pattern("90 00", "test"),
        &[0x01, 0x90, 0x00]
    ));
}
