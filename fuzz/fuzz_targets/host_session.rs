//! Fuzz target: the host against a card that answers anything. A scripted card answers every command APDU with the next frame of the input; every PivSession operation (and the CSR the enrollment builds from a generated key) runs against it in turn. Nothing may panic, loop or grow without bound; errors are fine.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use pivtap_card::{LinkCapabilities, PivSession};
use pivtap_fuzz::{OPERATIONS, ScriptedCard, host_operation};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, answers)) = data.split_first() else {
        return;
    };
    let capabilities = LinkCapabilities {
        extended_length: flags & 0x01 != 0,
        contactless: flags & 0x02 != 0,
    };
    let mut card = ScriptedCard::new(answers, capabilities);
    {
        let Ok(mut session) = PivSession::without_select(&mut card) else {
            return;
        };
        // The upper bits choose where in the list of operations the host starts.
        let start = usize::from(flags >> 2) % OPERATIONS;
        for index in (0..OPERATIONS).map(|step| (start + step) % OPERATIONS) {
            if !host_operation(&mut session, index) {
                break;
            }
        }
        let stats = session.stats();
        assert!(stats.apdus as usize >= 1);
    }
    // Each answer costs at least the two length bytes of its frame: a host that keeps sending
    // without reading answers would show up as more commands than answers plus one per operation.
    assert!(card.commands <= answers.len() / 2 + OPERATIONS + 1);
});
