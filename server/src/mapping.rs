//! Mapping rules: which certificate attribute finds the user by which user attribute, written `san.email -> mail`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use pivtap_protocol::certificate::CertificateFacts;

/// A certificate attribute a rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertificateAttribute {
    /// `san.email`: the SAN rfc822Name entries.
    SanEmail,
    /// `san.upn`: the SAN user principal names.
    SanUpn,
    /// `subject.cn`: the subject's common name.
    SubjectCn,
    /// `subject.serial`: the subject's serialNumber attribute.
    SubjectSerial,
}

impl CertificateAttribute {
    /// Every certificate attribute.
    pub const ALL: [CertificateAttribute; 4] = [
        CertificateAttribute::SanEmail,
        CertificateAttribute::SanUpn,
        CertificateAttribute::SubjectCn,
        CertificateAttribute::SubjectSerial,
    ];

    /// The name in a rule (`san.email`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            CertificateAttribute::SanEmail => "san.email",
            CertificateAttribute::SanUpn => "san.upn",
            CertificateAttribute::SubjectCn => "subject.cn",
            CertificateAttribute::SubjectSerial => "subject.serial",
        }
    }
}

/// A user attribute a rule looks users up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserAttribute {
    /// `mail`: the e-mail address.
    Mail,
    /// `upn`: the user principal name.
    Upn,
    /// `uid`: the user id itself.
    Uid,
    /// `employee_id`: the employee number.
    EmployeeId,
}

impl UserAttribute {
    /// Every user attribute.
    pub const ALL: [UserAttribute; 4] = [
        UserAttribute::Mail,
        UserAttribute::Upn,
        UserAttribute::Uid,
        UserAttribute::EmployeeId,
    ];

    /// The name in a rule (`employee_id`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            UserAttribute::Mail => "mail",
            UserAttribute::Upn => "upn",
            UserAttribute::Uid => "uid",
            UserAttribute::EmployeeId => "employee_id",
        }
    }
}

/// A mapping rule that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MappingError {
    /// Not `certificate attribute -> user attribute`.
    #[error(
        "a mapping rule reads `certificate attribute -> user attribute`, e.g. `san.email -> mail`; got {rule:?}"
    )]
    Syntax {
        /// The text given.
        rule: String,
    },
    /// The left side names no certificate attribute.
    #[error(
        "unknown certificate attribute {name:?}: use san.email, san.upn, subject.cn or subject.serial"
    )]
    UnknownCertificateAttribute {
        /// The name given.
        name: String,
    },
    /// The right side names no user attribute.
    #[error("unknown user attribute {name:?}: use mail, upn, uid or employee_id")]
    UnknownUserAttribute {
        /// The name given.
        name: String,
    },
}

impl FromStr for CertificateAttribute {
    type Err = MappingError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        CertificateAttribute::ALL
            .into_iter()
            .find(|attribute| attribute.name() == text)
            .ok_or_else(|| MappingError::UnknownCertificateAttribute {
                name: text.to_owned(),
            })
    }
}

impl FromStr for UserAttribute {
    type Err = MappingError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        UserAttribute::ALL
            .into_iter()
            .find(|attribute| attribute.name() == text)
            .ok_or_else(|| MappingError::UnknownUserAttribute {
                name: text.to_owned(),
            })
    }
}

impl fmt::Display for CertificateAttribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for UserAttribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// "Certificate attribute -> user attribute": how a card certificate finds
/// its user. Written and read as `san.email -> mail` (also in `server.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MappingRule {
    /// What is read from the certificate.
    pub certificate: CertificateAttribute,
    /// Which user attribute must equal it.
    pub user: UserAttribute,
}

impl MappingRule {
    /// The default rule: `san.email -> mail`.
    pub const DEFAULT: MappingRule = MappingRule {
        certificate: CertificateAttribute::SanEmail,
        user: UserAttribute::Mail,
    };

    /// The values the certificate offers for this rule, in certificate order,
    /// without repeats; empty when it has none.
    #[must_use]
    pub fn values(&self, facts: &CertificateFacts) -> Vec<String> {
        let candidates: Vec<&String> = match self.certificate {
            CertificateAttribute::SanEmail => facts.emails.iter().collect(),
            CertificateAttribute::SanUpn => facts.upns.iter().collect(),
            CertificateAttribute::SubjectCn => facts.common_name.iter().collect(),
            CertificateAttribute::SubjectSerial => facts.subject_serial_number.iter().collect(),
        };
        let mut values: Vec<String> = Vec::with_capacity(candidates.len());
        for candidate in candidates {
            if !candidate.is_empty() && !values.contains(candidate) {
                values.push(candidate.clone());
            }
        }
        values
    }
}

impl Default for MappingRule {
    fn default() -> Self {
        MappingRule::DEFAULT
    }
}

impl FromStr for MappingRule {
    type Err = MappingError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some((certificate, user)) = text.split_once("->") else {
            return Err(MappingError::Syntax {
                rule: text.to_owned(),
            });
        };
        let (certificate, user) = (certificate.trim(), user.trim());
        if certificate.is_empty() || user.is_empty() || user.contains("->") {
            return Err(MappingError::Syntax {
                rule: text.to_owned(),
            });
        }
        Ok(MappingRule {
            certificate: certificate.parse()?,
            user: user.parse()?,
        })
    }
}

impl fmt::Display for MappingRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.certificate, self.user)
    }
}

impl TryFrom<String> for MappingRule {
    type Error = MappingError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<MappingRule> for String {
    fn from(rule: MappingRule) -> Self {
        rule.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pivtap_testkit::pki::fixture_der;

    fn facts(card: &str) -> CertificateFacts {
        CertificateFacts::from_der(&fixture_der(&format!("certs/{card}.pem"))).unwrap()
    }

    fn rule(text: &str) -> MappingRule {
        text.parse().unwrap()
    }

    #[test]
    fn the_four_rules_of_the_issue_round_trip() {
        for (text, certificate, user) in [
            (
                "san.email -> mail",
                CertificateAttribute::SanEmail,
                UserAttribute::Mail,
            ),
            (
                "san.upn -> upn",
                CertificateAttribute::SanUpn,
                UserAttribute::Upn,
            ),
            (
                "subject.cn -> uid",
                CertificateAttribute::SubjectCn,
                UserAttribute::Uid,
            ),
            (
                "subject.serial -> employee_id",
                CertificateAttribute::SubjectSerial,
                UserAttribute::EmployeeId,
            ),
        ] {
            let parsed = rule(text);
            assert_eq!(parsed, MappingRule { certificate, user });
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn every_combination_round_trips() {
        for certificate in CertificateAttribute::ALL {
            for user in UserAttribute::ALL {
                let rule = MappingRule { certificate, user };
                assert_eq!(rule.to_string().parse::<MappingRule>(), Ok(rule));
            }
        }
    }

    #[test]
    fn spacing_around_the_arrow_is_free() {
        assert_eq!(rule("san.upn->upn"), rule("san.upn -> upn"));
        assert_eq!(rule("  san.upn  ->\tupn "), rule("san.upn -> upn"));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for text in [
            "san.email mail",
            "",
            "->",
            "san.email ->",
            "-> mail",
            "a -> b -> c",
        ] {
            assert_eq!(
                text.parse::<MappingRule>(),
                Err(MappingError::Syntax {
                    rule: text.to_owned()
                }),
                "{text:?}"
            );
        }
        let error = "san.mail -> mail".parse::<MappingRule>().unwrap_err();
        assert_eq!(
            error,
            MappingError::UnknownCertificateAttribute {
                name: "san.mail".to_owned()
            }
        );
        assert!(error.to_string().contains("san.email, san.upn"));
        let error = "san.email -> email".parse::<MappingRule>().unwrap_err();
        assert_eq!(
            error,
            MappingError::UnknownUserAttribute {
                name: "email".to_owned()
            }
        );
        assert!(error.to_string().contains("mail, upn, uid or employee_id"));
        assert!("SAN.EMAIL -> mail".parse::<MappingRule>().is_err());
    }

    #[test]
    fn values_come_from_alices_certificate() {
        let alice = facts("alice");
        assert_eq!(
            rule("san.email -> mail").values(&alice),
            ["alice@example.com"]
        );
        assert!(rule("san.upn -> upn").values(&alice).is_empty());
        assert_eq!(rule("subject.cn -> uid").values(&alice), ["Alice Example"]);
        assert_eq!(
            rule("subject.serial -> employee_id").values(&alice),
            ["E1001"]
        );
    }

    #[test]
    fn values_come_from_carols_certificate() {
        let carol = facts("carol");
        assert_eq!(
            rule("san.upn -> upn").values(&carol),
            ["carol@corp.example.com"]
        );
        assert_eq!(
            rule("san.email -> mail").values(&carol),
            ["carol@example.com"]
        );
        assert!(
            rule("subject.serial -> employee_id")
                .values(&carol)
                .is_empty()
        );
    }

    #[test]
    fn values_drop_repeats_and_empty_strings() {
        let mut facts = facts("alice");
        facts.emails = vec![
            "a@example.com".to_owned(),
            String::new(),
            "b@example.com".to_owned(),
            "a@example.com".to_owned(),
        ];
        assert_eq!(
            MappingRule::DEFAULT.values(&facts),
            ["a@example.com", "b@example.com"]
        );
    }

    #[test]
    fn rules_read_from_and_write_to_toml_as_text() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Config {
            mapping: MappingRule,
        }
        let config: Config = toml::from_str("mapping = \"san.upn -> upn\"").unwrap();
        assert_eq!(config.mapping, rule("san.upn -> upn"));
        assert_eq!(
            toml::to_string(&config).unwrap().trim(),
            "mapping = \"san.upn -> upn\""
        );
        let error = toml::from_str::<Config>("mapping = \"san.upn => upn\"").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("certificate attribute -> user attribute")
        );
        assert_eq!(MappingRule::default(), rule("san.email -> mail"));
    }
}
