//! Fuzz target: card image (`*.card.toml`) parsing and checking, opening the card it describes, and writing it back.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use pivtap_vcard::VirtualCard;
use pivtap_vcard::image::{CardImage, DataObject, KeyEntry};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let image = match CardImage::from_toml_str(text) {
        Ok(image) => image,
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    };
    let written = image.to_toml_string().expect("an image that loaded writes");
    assert_eq!(
        CardImage::from_toml_str(&written).expect("a written image loads"),
        image
    );
    if !image.is_protected() {
        let card = VirtualCard::from_image(&image).expect("a valid unprotected image opens");
        let saved = card.to_image().expect("the card saves");
        // Private keys are written back from their components, so an RSA key whose CRT
        // values (dP, dQ, qInv) were wrong in the file comes back corrected (they are
        // recomputed from p, q and d when the key is read; the key itself is unchanged).
        // Everything else comes back as it was (in the card's order: keys by slot, objects by
        // tag), and a second save changes nothing.
        assert_eq!(saved.card, image.card);
        assert_eq!(saved.pin, image.pin);
        assert_eq!(saved.puk, image.puk);
        assert_eq!(saved.management_key, image.management_key);
        let by_tag = |objects: &[DataObject]| {
            let mut objects = objects.to_vec();
            objects.sort_by_key(|object| object.tag.tag());
            objects
        };
        assert_eq!(saved.objects, by_tag(&image.objects));
        assert_eq!(saved.keys.len(), image.keys.len());
        let by_slot = |keys: &[KeyEntry]| {
            let mut keys: Vec<KeyEntry> = keys.to_vec();
            keys.sort_by_key(|entry| u8::from(entry.slot()));
            keys
        };
        for (saved, loaded) in by_slot(&saved.keys).iter().zip(&by_slot(&image.keys)) {
            assert_eq!(
                (saved.slot(), saved.algorithm()),
                (loaded.slot(), loaded.algorithm())
            );
            let public = |entry: &KeyEntry| {
                entry
                    .slot_key()
                    .expect("a key that loaded reads")
                    .public_key()
            };
            assert_eq!(public(saved), public(loaded));
        }
        let again = VirtualCard::from_image(&saved).expect("a saved image opens");
        assert_eq!(again.to_image().expect("the card saves again"), saved);
    }
});
