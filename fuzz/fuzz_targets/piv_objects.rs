//! Fuzz target: every PIV data object parser (APT, dynamic authentication template, certificate container, CHUID, FASC-N, Discovery, key metadata, public key), each parse idempotent through its encoder, plus the byte-level enums.
#![no_main]
#![forbid(unsafe_code)]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use pivtap_apdu::piv::objects::auth_template::AuthTemplate;
use pivtap_apdu::piv::objects::metadata::Metadata;
use pivtap_apdu::piv::objects::{
    ApplicationPropertyTemplate, CertificateObject, Chuid, Discovery, Fascn, PublicKey,
    unwrap_data_object, wrap_data_object,
};
use pivtap_apdu::piv::{Algorithm, Ins, KeyReference, ObjectTag};

fn objects(data: &[u8]) {
    if let Ok(apt) = ApplicationPropertyTemplate::parse(data) {
        assert_eq!(
            ApplicationPropertyTemplate::parse(&apt.encode()).as_ref(),
            Ok(&apt)
        );
    }
    if let Ok(template) = AuthTemplate::parse(data) {
        assert_eq!(
            AuthTemplate::parse(&template.encode()).as_ref(),
            Ok(&template)
        );
        let _ = format!("{template:?}");
    }
    if let Ok(certificate) = CertificateObject::parse(data) {
        assert!(certificate.certificate_der.len() <= 64 * 1024);
        for encoded in [certificate.encode(), certificate.encode_compressed()] {
            let again = CertificateObject::parse(&encoded).expect("an encoded container parses");
            assert_eq!(again.certificate_der, certificate.certificate_der);
        }
    }
    if let Ok(chuid) = Chuid::parse(data) {
        assert_eq!(Chuid::parse(&chuid.encode()).as_ref(), Ok(&chuid));
        let _ = (chuid.fascn(), chuid.guid_hex());
    }
    if let Ok(fascn) = Fascn::parse(data) {
        assert_eq!(Fascn::parse(&fascn.encode()).as_ref(), Ok(&fascn));
        let _ = (
            fascn.agency_code(),
            fascn.person_identifier(),
            fascn.credential_number(),
        );
    }
    if let Ok(discovery) = Discovery::parse(data) {
        assert_eq!(
            Discovery::parse(&discovery.encode()).as_ref(),
            Ok(&discovery)
        );
        let _ = (
            discovery.global_pin_is_primary(),
            discovery.occ_supported(),
            discovery.vci_supported(),
        );
    }
    if let Ok(metadata) = Metadata::parse(data) {
        assert_eq!(Metadata::parse(&metadata.encode()).as_ref(), Ok(&metadata));
        let _ = metadata.piv_algorithm();
    }
    if let Ok(key) = PublicKey::parse(data) {
        assert_eq!(PublicKey::parse(&key.encode()).as_ref(), Ok(&key));
        if let Some(algorithm) = key.algorithm() {
            assert_eq!(PublicKey::parse_for(algorithm, data).as_ref(), Ok(&key));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    objects(data);
    // GET DATA answers arrive wrapped in 53.
    if let Ok(content) = unwrap_data_object(data) {
        assert_eq!(unwrap_data_object(&wrap_data_object(content)), Ok(content));
        objects(content);
    }
    if let Some(first) = data.first() {
        let _ = Algorithm::try_from(*first).map(|a| (a.name(), a.key_len(), a.block_len()));
        let _ = KeyReference::try_from(*first).map(|k| (k.certificate_object(), k.description()));
        let _ = u8::from(Ins::from(*first));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Algorithm::from_str(text);
        let _ = KeyReference::from_str(text);
    }
    if data.len() >= 3 {
        let tag = u32::from_be_bytes([0, data[0], data[1], data[2]]);
        let object = ObjectTag::from_tag(tag);
        let _ = (
            object.name(),
            object.tag_bytes(),
            object.read_requires_pin(),
        );
    }
});
