//! PIV data object tags (SP 800-73-4 Part 1 Table 3) and their access rules.

use std::fmt;

/// A PIV data object, named by the tag used in GET DATA and PUT DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectTag {
    /// `5FC107` Card Capability Container.
    CardCapabilityContainer,
    /// `5FC102` Card Holder Unique Identifier (CHUID).
    Chuid,
    /// `5FC105` X.509 certificate for PIV authentication (key 9A).
    PivAuthenticationCertificate,
    /// `5FC103` cardholder fingerprints (PIN to read).
    CardholderFingerprints,
    /// `5FC106` security object.
    SecurityObject,
    /// `5FC108` cardholder facial image (PIN to read).
    CardholderFacialImage,
    /// `5FC109` printed information (PIN to read).
    PrintedInformation,
    /// `5FC10A` X.509 certificate for digital signature (key 9C).
    DigitalSignatureCertificate,
    /// `5FC10B` X.509 certificate for key management (key 9D).
    KeyManagementCertificate,
    /// `5FC101` X.509 certificate for card authentication (key 9E).
    CardAuthenticationCertificate,
    /// `7E` Discovery object.
    Discovery,
    /// `5FC10C` key history object.
    KeyHistory,
    /// `5FC10D`-`5FC120` retired X.509 certificates for key management, 1 to 20.
    RetiredCertificate(u8),
    /// `5FC121` cardholder iris images (PIN to read).
    CardholderIrisImages,
    /// `7F61` biometric information templates group template.
    BiometricInformationTemplates,
    /// `5FC122` secure messaging certificate signer.
    SecureMessagingCertificateSigner,
    /// `5FC123` pairing code reference data container.
    PairingCodeReferenceData,
    /// Any other tag (vendors keep their own objects, e.g. YubiKey's `5FFF00`-`5FFF15`).
    Other(u32),
}

impl ObjectTag {
    /// The tag as a number (`0x5FC102`).
    #[must_use]
    pub fn tag(self) -> u32 {
        match self {
            ObjectTag::CardCapabilityContainer => 0x5FC107,
            ObjectTag::Chuid => 0x5FC102,
            ObjectTag::PivAuthenticationCertificate => 0x5FC105,
            ObjectTag::CardholderFingerprints => 0x5FC103,
            ObjectTag::SecurityObject => 0x5FC106,
            ObjectTag::CardholderFacialImage => 0x5FC108,
            ObjectTag::PrintedInformation => 0x5FC109,
            ObjectTag::DigitalSignatureCertificate => 0x5FC10A,
            ObjectTag::KeyManagementCertificate => 0x5FC10B,
            ObjectTag::CardAuthenticationCertificate => 0x5FC101,
            ObjectTag::Discovery => 0x7E,
            ObjectTag::KeyHistory => 0x5FC10C,
            ObjectTag::RetiredCertificate(n) => 0x5FC10C + u32::from(n.clamp(1, 20)),
            ObjectTag::CardholderIrisImages => 0x5FC121,
            ObjectTag::BiometricInformationTemplates => 0x7F61,
            ObjectTag::SecureMessagingCertificateSigner => 0x5FC122,
            ObjectTag::PairingCodeReferenceData => 0x5FC123,
            ObjectTag::Other(tag) => tag,
        }
    }

    /// The object for a tag number.
    #[must_use]
    pub fn from_tag(tag: u32) -> Self {
        match tag {
            0x5FC107 => ObjectTag::CardCapabilityContainer,
            0x5FC102 => ObjectTag::Chuid,
            0x5FC105 => ObjectTag::PivAuthenticationCertificate,
            0x5FC103 => ObjectTag::CardholderFingerprints,
            0x5FC106 => ObjectTag::SecurityObject,
            0x5FC108 => ObjectTag::CardholderFacialImage,
            0x5FC109 => ObjectTag::PrintedInformation,
            0x5FC10A => ObjectTag::DigitalSignatureCertificate,
            0x5FC10B => ObjectTag::KeyManagementCertificate,
            0x5FC101 => ObjectTag::CardAuthenticationCertificate,
            0x7E => ObjectTag::Discovery,
            0x5FC10C => ObjectTag::KeyHistory,
            0x5FC10D..=0x5FC120 => ObjectTag::RetiredCertificate((tag - 0x5FC10C) as u8),
            0x5FC121 => ObjectTag::CardholderIrisImages,
            0x7F61 => ObjectTag::BiometricInformationTemplates,
            0x5FC122 => ObjectTag::SecureMessagingCertificateSigner,
            0x5FC123 => ObjectTag::PairingCodeReferenceData,
            other => ObjectTag::Other(other),
        }
    }

    /// The tag bytes as they appear after `5C` in GET DATA / PUT DATA.
    #[must_use]
    pub fn tag_bytes(self) -> Vec<u8> {
        let tag = self.tag();
        let bytes = tag.to_be_bytes();
        let skip = bytes.iter().take(3).take_while(|b| **b == 0).count();
        bytes[skip..].to_vec()
    }

    /// The tag that wraps the object's content in GET DATA and PUT DATA:
    /// `53` for most objects, but the Discovery object (`7E`) and the BIT
    /// group template (`7F61`) travel under their own tags.
    #[must_use]
    pub fn wire_tag(self) -> u32 {
        match self {
            ObjectTag::Discovery | ObjectTag::BiometricInformationTemplates => self.tag(),
            _ => 0x53,
        }
    }

    /// Whether reading the object needs the PIN (SP 800-73-4 Part 1 Table 3, access rule "PIN").
    #[must_use]
    pub fn read_requires_pin(self) -> bool {
        matches!(
            self,
            ObjectTag::CardholderFingerprints
                | ObjectTag::CardholderFacialImage
                | ObjectTag::PrintedInformation
                | ObjectTag::CardholderIrisImages
        )
    }

    /// Whether the object may be read over the contactless interface without
    /// secure messaging (SP 800-73-4 Part 1 Table 3, "contact or contactless").
    #[must_use]
    pub fn contactless_readable(self) -> bool {
        matches!(
            self,
            ObjectTag::Chuid
                | ObjectTag::CardAuthenticationCertificate
                | ObjectTag::Discovery
                | ObjectTag::BiometricInformationTemplates
                | ObjectTag::SecureMessagingCertificateSigner
        )
    }

    /// The object's name in the spec.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ObjectTag::CardCapabilityContainer => "Card Capability Container",
            ObjectTag::Chuid => "CHUID",
            ObjectTag::PivAuthenticationCertificate => "PIV Authentication certificate",
            ObjectTag::CardholderFingerprints => "Cardholder Fingerprints",
            ObjectTag::SecurityObject => "Security Object",
            ObjectTag::CardholderFacialImage => "Cardholder Facial Image",
            ObjectTag::PrintedInformation => "Printed Information",
            ObjectTag::DigitalSignatureCertificate => "Digital Signature certificate",
            ObjectTag::KeyManagementCertificate => "Key Management certificate",
            ObjectTag::CardAuthenticationCertificate => "Card Authentication certificate",
            ObjectTag::Discovery => "Discovery Object",
            ObjectTag::KeyHistory => "Key History Object",
            ObjectTag::RetiredCertificate(_) => "Retired Key Management certificate",
            ObjectTag::CardholderIrisImages => "Cardholder Iris Images",
            ObjectTag::BiometricInformationTemplates => "Biometric Information Templates",
            ObjectTag::SecureMessagingCertificateSigner => "Secure Messaging Certificate Signer",
            ObjectTag::PairingCodeReferenceData => "Pairing Code Reference Data",
            ObjectTag::Other(_) => "vendor object",
        }
    }
}

impl fmt::Display for ObjectTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", crate::tlv::tag_hex(self.tag()), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        for tag in (0x5FC100..=0x5FC125).chain([0x7E, 0x7F61, 0x5FFF00]) {
            assert_eq!(ObjectTag::from_tag(tag).tag(), tag);
        }
        assert_eq!(
            ObjectTag::from_tag(0x5FC10D),
            ObjectTag::RetiredCertificate(1)
        );
        assert_eq!(
            ObjectTag::from_tag(0x5FC120),
            ObjectTag::RetiredCertificate(20)
        );
        assert_eq!(ObjectTag::Discovery.tag_bytes(), [0x7E]);
        assert_eq!(ObjectTag::Chuid.tag_bytes(), [0x5F, 0xC1, 0x02]);
        assert_eq!(
            ObjectTag::BiometricInformationTemplates.tag_bytes(),
            [0x7F, 0x61]
        );
    }
}
