//! The Discovery object (`7E`): the PIV AID and the PIN usage policy (SP 800-73-4 Part 1 §3.3.2, Table 18).
//!
//! Unlike the other objects, GET DATA returns it under its own tag `7E`, not
//! wrapped in `53`.

use crate::error::TlvError;
use crate::tlv;

/// `7E`: the Discovery object template.
pub const TAG_DISCOVERY: u32 = 0x7E;
/// `4F`: the PIV card application AID.
pub const TAG_AID: u32 = 0x4F;
/// `5F2F`: the PIN usage policy.
pub const TAG_PIN_USAGE_POLICY: u32 = 0x5F2F;

/// First policy byte: the PIV application PIN satisfies the access control rules.
pub const POLICY_APPLICATION_PIN: u8 = 0x40;
/// First policy byte: the global PIN satisfies the access control rules.
pub const POLICY_GLOBAL_PIN: u8 = 0x20;
/// First policy byte: on-card biometric comparison (OCC) satisfies them.
pub const POLICY_OCC: u8 = 0x10;
/// First policy byte: the virtual contact interface (VCI) is supported.
pub const POLICY_VCI: u8 = 0x08;
/// Second policy byte: the PIV application PIN is the primary PIN.
pub const POLICY_APPLICATION_PIN_PRIMARY: u8 = 0x10;
/// Second policy byte: the global PIN is the primary PIN.
pub const POLICY_GLOBAL_PIN_PRIMARY: u8 = 0x20;

/// The Discovery object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    /// `4F`: the PIV card application AID.
    pub aid: Vec<u8>,
    /// `5F2F`: the two PIN usage policy bytes.
    pub pin_usage_policy: [u8; 2],
}

impl Discovery {
    /// Parses `7E { 4F aid, 5F2F policy }`; other inner elements are ignored.
    ///
    /// # Errors
    /// [`TlvError`] for another outer tag, malformed TLV, a missing AID or
    /// policy, or a policy that is not two bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, TlvError> {
        let elements = tlv::parse_all(tlv::expect(bytes, TAG_DISCOVERY)?)?;
        let aid = tlv::require(&elements, TAG_AID)?.to_vec();
        let policy = tlv::require(&elements, TAG_PIN_USAGE_POLICY)?;
        let pin_usage_policy = policy.try_into().map_err(|_| TlvError::InvalidValue {
            what: "PIN usage policy",
            reason: format!("{} bytes, expected 2", policy.len()),
        })?;
        Ok(Discovery {
            aid,
            pin_usage_policy,
        })
    }

    /// Encodes as `7E { 4F aid, 5F2F policy }`.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut inner = tlv::encode(TAG_AID, &self.aid);
        tlv::write(&mut inner, TAG_PIN_USAGE_POLICY, &self.pin_usage_policy);
        tlv::encode(TAG_DISCOVERY, &inner)
    }

    /// Whether the PIV application PIN satisfies the PIV access control rules.
    #[must_use]
    pub fn application_pin_satisfies_policy(&self) -> bool {
        self.pin_usage_policy[0] & POLICY_APPLICATION_PIN != 0
    }

    /// Whether the card supports the global PIN.
    #[must_use]
    pub fn global_pin_supported(&self) -> bool {
        self.pin_usage_policy[0] & POLICY_GLOBAL_PIN != 0
    }

    /// Whether the card supports on-card biometric comparison.
    #[must_use]
    pub fn occ_supported(&self) -> bool {
        self.pin_usage_policy[0] & POLICY_OCC != 0
    }

    /// Whether the card supports the virtual contact interface.
    #[must_use]
    pub fn vci_supported(&self) -> bool {
        self.pin_usage_policy[0] & POLICY_VCI != 0
    }

    /// Whether the global PIN is the primary PIN (meaningful only when both
    /// PINs are supported).
    #[must_use]
    pub fn global_pin_is_primary(&self) -> bool {
        self.pin_usage_policy[1] & POLICY_GLOBAL_PIN_PRIMARY != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::piv::PIV_AID;
    use proptest::prelude::*;

    #[test]
    fn parses_a_hand_built_object() {
        // 7E 12 | 4F 0B <PIV AID> | 5F2F 02 40 00: the application PIN only.
        let mut bytes = vec![0x7E, 0x12, 0x4F, 0x0B];
        bytes.extend(PIV_AID);
        bytes.extend([0x5F, 0x2F, 0x02, 0x40, 0x00]);
        let discovery = Discovery::parse(&bytes).unwrap();
        assert_eq!(discovery.aid, PIV_AID);
        assert_eq!(discovery.pin_usage_policy, [0x40, 0x00]);
        assert!(discovery.application_pin_satisfies_policy());
        assert!(!discovery.global_pin_supported());
        assert!(!discovery.occ_supported());
        assert!(!discovery.vci_supported());
        assert_eq!(discovery.encode(), bytes);
    }

    #[test]
    fn decodes_every_policy_bit() {
        let discovery = Discovery {
            aid: PIV_AID.to_vec(),
            pin_usage_policy: [0x78, 0x20],
        };
        assert!(discovery.application_pin_satisfies_policy());
        assert!(discovery.global_pin_supported());
        assert!(discovery.occ_supported());
        assert!(discovery.vci_supported());
        assert!(discovery.global_pin_is_primary());
        let application_primary = Discovery {
            pin_usage_policy: [0x60, 0x10],
            ..discovery
        };
        assert!(!application_primary.global_pin_is_primary());
        assert!(!application_primary.occ_supported());
    }

    #[test]
    fn rejects_malformed_objects() {
        let policy = tlv::encode(0x5F2F, &[0x40, 0x00]);
        let aid = tlv::encode(0x4F, &PIV_AID);
        assert!(matches!(
            Discovery::parse(&tlv::encode(0x53, &[aid.clone(), policy.clone()].concat())),
            Err(TlvError::Unexpected { .. })
        ));
        assert!(matches!(
            Discovery::parse(&tlv::encode(0x7E, &policy)),
            Err(TlvError::Missing { .. })
        ));
        assert!(matches!(
            Discovery::parse(&tlv::encode(0x7E, &aid)),
            Err(TlvError::Missing { .. })
        ));
        let long_policy = tlv::encode(0x5F2F, &[0x40, 0x00, 0x00]);
        assert!(Discovery::parse(&tlv::encode(0x7E, &[aid, long_policy].concat())).is_err());
        assert!(matches!(
            Discovery::parse(&[0x7E, 0x12, 0x4F, 0x0B]),
            Err(TlvError::Truncated { .. })
        ));
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(
            aid in proptest::collection::vec(any::<u8>(), 0..20),
            pin_usage_policy in any::<[u8; 2]>(),
        ) {
            let discovery = Discovery { aid, pin_usage_policy };
            prop_assert_eq!(Discovery::parse(&discovery.encode()).unwrap(), discovery);
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Discovery::parse(&bytes);
            let _ = Discovery::parse(&tlv::encode(0x7E, &bytes));
        }
    }
}
