//! One constructor per PIV command (SP 800-73-4 Part 2 §3), each building a [`CommandApdu`].
//!
//! Commands that carry secrets come back marked sensitive, so their data is
//! redacted wherever an APDU is printed.

use zeroize::Zeroizing;

use super::objects::auth_template::{AuthTemplate, Field};
use super::reference_data::{Pin, Puk};
use super::{Algorithm, Ins, KeyReference, ObjectTag, PIV_AID};
use crate::command::{CommandApdu, EXTENDED_MAX_NE, SHORT_MAX_NE};
use crate::tlv;

/// CLA of every PIV command without secure messaging.
pub const CLA: u8 = 0x00;
/// Tag list element of GET DATA / PUT DATA (`5C`).
pub const TAG_LIST: u32 = 0x5C;
/// Data object content wrapper of GET DATA / PUT DATA (`53`).
pub const TAG_DATA: u32 = 0x53;
/// Control reference template of GENERATE ASYMMETRIC KEY PAIR (`AC`).
pub const TAG_CONTROL_REFERENCE: u32 = 0xAC;
/// Cryptographic mechanism element inside `AC` (`80`).
pub const TAG_MECHANISM: u32 = 0x80;

fn command(ins: Ins, p1: u8, p2: u8) -> CommandApdu {
    CommandApdu::new(CLA, u8::from(ins), p1, p2)
}

/// SELECT the PIV card application by its AID (§3.1.1). The answer is the
/// application property template.
#[must_use]
pub fn select() -> CommandApdu {
    command(Ins::Select, 0x04, 0x00)
        .with_data(PIV_AID.to_vec())
        .with_ne(SHORT_MAX_NE)
}

/// GET DATA for one data object (§3.1.2): `5C` with the object's tag. The
/// answer is `53 { ... }`, possibly long; Ne asks for everything.
#[must_use]
pub fn get_data(object: ObjectTag) -> CommandApdu {
    command(Ins::GetData, 0x3F, 0xFF)
        .with_data(tlv::encode(TAG_LIST, &object.tag_bytes()))
        .with_ne(EXTENDED_MAX_NE)
}

/// PUT DATA (§3.3.1): writes `content` (the value of the `53` element) to
/// the object. Needs the management key. Long content is sent by chaining.
#[must_use]
pub fn put_data(object: ObjectTag, content: &[u8]) -> CommandApdu {
    let data = match object.wire_tag() {
        TAG_DATA => {
            let mut data = tlv::encode(TAG_LIST, &object.tag_bytes());
            tlv::write(&mut data, TAG_DATA, content);
            data
        }
        // Discovery and the BIT group are written whole, under their own tag.
        own_tag => tlv::encode(own_tag, content),
    };
    command(Ins::PutData, 0x3F, 0xFF).with_data(data)
}

/// VERIFY the PIN (§3.2.1). The card answers `9000`, `63Cx` (x tries left)
/// or `6983` (blocked).
#[must_use]
pub fn verify_pin(reference: KeyReference, pin: &Pin) -> CommandApdu {
    command(Ins::Verify, 0x00, u8::from(reference))
        .with_data(pin.padded().to_vec())
        .sensitive()
}

/// VERIFY with no data (§3.2.1): asks whether the PIN is verified (`9000`),
/// or how many tries are left (`63Cx`), without spending one.
#[must_use]
pub fn verify_status(reference: KeyReference) -> CommandApdu {
    command(Ins::Verify, 0x00, u8::from(reference))
}

/// VERIFY with P1 `FF` and no data (§3.2.1): resets the PIN's verified state.
#[must_use]
pub fn verify_reset(reference: KeyReference) -> CommandApdu {
    command(Ins::Verify, 0xFF, u8::from(reference))
}

/// CHANGE REFERENCE DATA for the PIN (§3.2.2): the current PIN, then the new one.
#[must_use]
pub fn change_pin(current: &Pin, new: &Pin) -> CommandApdu {
    change_reference_data(KeyReference::Pin, &current.padded(), &new.padded())
}

/// CHANGE REFERENCE DATA for the PUK (§3.2.2): the current PUK, then the new one.
#[must_use]
pub fn change_puk(current: &Puk, new: &Puk) -> CommandApdu {
    change_reference_data(KeyReference::Puk, &current.padded(), &new.padded())
}

fn change_reference_data(reference: KeyReference, current: &[u8; 8], new: &[u8; 8]) -> CommandApdu {
    let mut data = Zeroizing::new(Vec::with_capacity(16));
    data.extend_from_slice(current);
    data.extend_from_slice(new);
    command(Ins::ChangeReferenceData, 0x00, u8::from(reference))
        .with_data(data.to_vec())
        .sensitive()
}

/// RESET RETRY COUNTER (§3.2.3): unblocks the PIN with the PUK and sets a new PIN.
#[must_use]
pub fn reset_retry_counter(puk: &Puk, new_pin: &Pin) -> CommandApdu {
    let mut data = Zeroizing::new(Vec::with_capacity(16));
    data.extend_from_slice(&*puk.padded());
    data.extend_from_slice(&*new_pin.padded());
    command(Ins::ResetRetryCounter, 0x00, u8::from(KeyReference::Pin))
        .with_data(data.to_vec())
        .sensitive()
}

/// GENERAL AUTHENTICATE with an arbitrary template (§3.2.4).
#[must_use]
pub fn general_authenticate(
    algorithm: Algorithm,
    reference: KeyReference,
    template: &AuthTemplate,
) -> CommandApdu {
    let apdu = command(
        Ins::GeneralAuthenticate,
        u8::from(algorithm),
        u8::from(reference),
    )
    .with_data(template.encode().to_vec())
    .with_ne(EXTENDED_MAX_NE);
    if reference == KeyReference::ManagementKey {
        apdu.sensitive()
    } else {
        apdu
    }
}

/// GENERAL AUTHENTICATE for a signature (§3.2.4, Appendix A.4 of Part 3):
/// `7C { 82 00, 81 input }`. For RSA `input` is the padded block of the key's
/// size; for ECC it is the hash.
#[must_use]
pub fn sign(algorithm: Algorithm, slot: KeyReference, input: &[u8]) -> CommandApdu {
    general_authenticate(
        algorithm,
        slot,
        &AuthTemplate {
            response: Field::Requested,
            challenge: Field::value(input.to_vec()),
            ..AuthTemplate::default()
        },
    )
}

/// GENERAL AUTHENTICATE for ECDH key agreement (§3.2.4): `7C { 82 00, 85 point }`.
#[must_use]
pub fn key_agreement(algorithm: Algorithm, slot: KeyReference, peer_point: &[u8]) -> CommandApdu {
    general_authenticate(
        algorithm,
        slot,
        &AuthTemplate {
            response: Field::Requested,
            exponentiation: Field::value(peer_point.to_vec()),
            ..AuthTemplate::default()
        },
    )
}

/// Management key mutual authentication, step 1 (§3.2.4, Part 2 Appendix A.1):
/// `7C { 80 00 }` asks the card for a witness encrypted under the management key.
#[must_use]
pub fn management_witness_request(algorithm: Algorithm) -> CommandApdu {
    general_authenticate(
        algorithm,
        KeyReference::ManagementKey,
        &AuthTemplate {
            witness: Field::Requested,
            ..AuthTemplate::default()
        },
    )
}

/// Management key mutual authentication, step 2, as OpenSC and
/// yubico-piv-tool send it (and most cards expect): the decrypted witness and
/// a host challenge, `7C { 80 witness, 81 challenge }`; the card answers with
/// the challenge encrypted (`7C { 82 .. }`), which proves it holds the key too.
#[must_use]
pub fn management_witness_response(
    algorithm: Algorithm,
    decrypted_witness: &[u8],
    challenge: &[u8],
) -> CommandApdu {
    management_witness_answer(algorithm, decrypted_witness, challenge, Field::Absent)
}

/// Management key mutual authentication, step 2, with the response asked
/// for explicitly: `7C { 82 00, 80 witness, 81 challenge }`, the form of
/// SP 800-73-4 Part 2 Appendix A.1 that some cards require; strict cards
/// refuse the empty `82` with `6A80`.
#[must_use]
pub fn management_witness_response_requesting(
    algorithm: Algorithm,
    decrypted_witness: &[u8],
    challenge: &[u8],
) -> CommandApdu {
    management_witness_answer(algorithm, decrypted_witness, challenge, Field::Requested)
}

fn management_witness_answer(
    algorithm: Algorithm,
    decrypted_witness: &[u8],
    challenge: &[u8],
    response: Field,
) -> CommandApdu {
    general_authenticate(
        algorithm,
        KeyReference::ManagementKey,
        &AuthTemplate {
            witness: Field::value(decrypted_witness.to_vec()),
            challenge: Field::value(challenge.to_vec()),
            response,
            ..AuthTemplate::default()
        },
    )
}

/// Management key external (one-way) authentication, step 1 (SP 800-73-4
/// Part 2 Appendix A.2): `7C { 81 00 }` asks the card for a challenge.
#[must_use]
pub fn management_challenge_request(algorithm: Algorithm) -> CommandApdu {
    general_authenticate(
        algorithm,
        KeyReference::ManagementKey,
        &AuthTemplate {
            challenge: Field::Requested,
            ..AuthTemplate::default()
        },
    )
}

/// Management key external authentication, step 2: the card's challenge
/// encrypted with the key, `7C { 82 response }`; the card answers `9000`
/// with no data when it is right.
#[must_use]
pub fn management_challenge_response(algorithm: Algorithm, encrypted: &[u8]) -> CommandApdu {
    general_authenticate(
        algorithm,
        KeyReference::ManagementKey,
        &AuthTemplate {
            response: Field::value(encrypted.to_vec()),
            ..AuthTemplate::default()
        },
    )
}

/// GENERATE ASYMMETRIC KEY PAIR (§3.3.2): `AC { 80 algorithm }`. Needs the
/// management key. The answer is the public key, `7F49 { ... }`.
#[must_use]
pub fn generate_key_pair(slot: KeyReference, algorithm: Algorithm) -> CommandApdu {
    let template = tlv::encode(
        TAG_CONTROL_REFERENCE,
        &tlv::encode(TAG_MECHANISM, &[u8::from(algorithm)]),
    );
    command(Ins::GenerateAsymmetricKeyPair, 0x00, u8::from(slot))
        .with_data(template)
        .with_ne(EXTENDED_MAX_NE)
}

/// GET METADATA (YubiKey extension, INS `F7`): algorithm, retries and
/// default-value state of a PIN, PUK, management key or key slot. Cards
/// without it answer `6D00`.
#[must_use]
pub fn get_metadata(reference: KeyReference) -> CommandApdu {
    command(Ins::GetMetadata, 0x00, u8::from(reference)).with_ne(SHORT_MAX_NE)
}

/// GET SERIAL (YubiKey extension, INS `F8`): the card's serial number, 4 bytes.
#[must_use]
pub fn get_serial() -> CommandApdu {
    command(Ins::GetSerial, 0x00, 0x00).with_ne(4)
}

/// RESET (YubiKey extension, INS `FB`): returns the PIV application to
/// factory state (keys and objects erased; default PIN, PUK and management
/// key). Cards accept it only while both PIN and PUK are blocked (`6985`
/// otherwise); cards without it answer `6D00`.
#[must_use]
pub fn reset_application() -> CommandApdu {
    command(Ins::ResetApplication, 0x00, 0x00)
}

/// GET RESPONSE (ISO 7816-4 §7.6.1): fetches up to `ne` more bytes after `61xx`.
#[must_use]
pub fn get_response(ne: usize) -> CommandApdu {
    command(Ins::GetResponse, 0x00, 0x00).with_ne(ne.clamp(1, SHORT_MAX_NE))
}

/// Whether a raw command carries secrets, judged from its header alone: VERIFY,
/// CHANGE REFERENCE DATA, RESET RETRY COUNTER, and GENERAL AUTHENTICATE with
/// the management key. Used to redact APDUs that arrive as bytes (as from vpcd).
#[must_use]
pub fn is_sensitive(ins: u8, p2: u8) -> bool {
    let ins = Ins::from(ins);
    ins.carries_reference_data()
        || (ins == Ins::GeneralAuthenticate && p2 == u8::from(KeyReference::ManagementKey))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::LengthMode;

    fn hex(bytes: &[u8]) -> String {
        hex::encode_upper(bytes)
    }

    #[test]
    fn select_matches_the_spec() {
        assert_eq!(
            hex(&select().to_bytes(LengthMode::Short).unwrap()),
            "00A404000BA00000030800001000010000"
        );
    }

    #[test]
    fn get_data_chuid() {
        assert_eq!(
            hex(&get_data(ObjectTag::Chuid)
                .to_bytes(LengthMode::Short)
                .unwrap()),
            "00CB3FFF055C035FC10200"
        );
        assert_eq!(
            hex(&get_data(ObjectTag::Discovery)
                .to_bytes(LengthMode::Extended)
                .unwrap()),
            "00CB3FFF0000035C017E0000"
        );
    }

    #[test]
    fn verify_pads_the_pin_and_is_sensitive() {
        let apdu = verify_pin(KeyReference::Pin, &Pin::new("123456").unwrap());
        assert_eq!(
            hex(&apdu.to_bytes(LengthMode::Short).unwrap()),
            "0020008008313233343536FFFF"
        );
        assert!(apdu.is_sensitive());
        assert_eq!(
            hex(&verify_status(KeyReference::Pin)
                .to_bytes(LengthMode::Short)
                .unwrap()),
            "00200080"
        );
        assert_eq!(
            hex(&verify_reset(KeyReference::Pin)
                .to_bytes(LengthMode::Short)
                .unwrap()),
            "0020FF80"
        );
    }

    #[test]
    fn reference_data_changes_are_sensitive() {
        let pin = Pin::new("123456").unwrap();
        let puk = Puk::new("12345678").unwrap();
        for apdu in [
            change_pin(&pin, &pin),
            change_puk(&puk, &puk),
            reset_retry_counter(&puk, &pin),
        ] {
            assert!(apdu.is_sensitive());
            assert_eq!(apdu.data().len(), 16);
            assert!(is_sensitive(apdu.ins, apdu.p2));
        }
        assert_eq!(reset_retry_counter(&puk, &pin).data()[..8], *b"12345678");
    }

    #[test]
    fn general_authenticate_layouts() {
        let signature = sign(
            Algorithm::EccP256,
            KeyReference::PivAuthentication,
            &[0x11; 32],
        );
        assert_eq!(signature.p1, 0x11);
        assert_eq!(signature.p2, 0x9A);
        assert!(!signature.is_sensitive());
        assert_eq!(hex(&signature.data()[..6]), "7C2482008120");

        let witness = management_witness_request(Algorithm::TripleDes);
        assert_eq!(
            hex(&witness.to_bytes(LengthMode::Short).unwrap()),
            "0087039B047C02800000"
        );
        assert!(witness.is_sensitive());
        // The form OpenSC and yubico-piv-tool send: 7C 14 { 80 08 .., 81 08 .. }.
        let response = management_witness_response(Algorithm::TripleDes, &[1; 8], &[2; 8]);
        assert_eq!(
            hex(response.data()),
            "7C14800801010101010101018108".to_owned() + "0202020202020202"
        );
        assert!(response.is_sensitive());
        let requesting =
            management_witness_response_requesting(Algorithm::TripleDes, &[1; 8], &[2; 8]);
        assert_eq!(
            hex(requesting.data()),
            "7C16820080080101010101010101810802020202020202".to_owned() + "02"
        );
        let challenge = management_challenge_request(Algorithm::Aes128);
        assert_eq!(
            hex(&challenge.to_bytes(LengthMode::Short).unwrap()),
            "0087089B047C02810000"
        );
        let answer = management_challenge_response(Algorithm::Aes128, &[3; 16]);
        assert_eq!(
            hex(answer.data()),
            "7C1282100303030303030303".to_owned() + "0303030303030303"
        );
        assert!(answer.is_sensitive());
    }

    #[test]
    fn generate_key_pair_layout() {
        let apdu = generate_key_pair(KeyReference::PivAuthentication, Algorithm::Rsa2048);
        assert_eq!(
            hex(&apdu.to_bytes(LengthMode::Short).unwrap()),
            "0047009A05AC0380010700"
        );
    }

    #[test]
    fn put_data_wraps_in_53() {
        let apdu = put_data(ObjectTag::Chuid, &[0xAA, 0xBB]);
        assert_eq!(hex(apdu.data()), "5C035FC1025302AABB");
        let discovery = put_data(ObjectTag::Discovery, &[0x4F, 0x00]);
        assert_eq!(hex(discovery.data()), "7E024F00");
    }
}
