//! Certificate containers (`5FC105`, `5FC10A`, `5FC10B`, `5FC101`, ...): `70` certificate, `71` CertInfo, `72` MSCUID, `FE` (SP 800-73-4 Part 1 Table 10 and the tables that share its layout).
//!
//! CertInfo `01` means the certificate is gzip-compressed. Decompression is
//! capped at [`MAX_CERTIFICATE_LEN`] so that a hostile card cannot make the
//! host inflate a "zip bomb".

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use crate::error::TlvError;
use crate::tlv;

/// `70`: the certificate (DER, or gzip bytes; read flat, not as nested TLV).
pub const TAG_CERTIFICATE: u32 = 0x70;
/// `71`: CertInfo.
pub const TAG_CERT_INFO: u32 = 0x71;
/// `72`: MSCUID (optional, ignored).
pub const TAG_MSCUID: u32 = 0x72;
/// `FE`: error detection code, always empty.
pub const TAG_ERROR_DETECTION_CODE: u32 = 0xFE;

/// CertInfo of an uncompressed certificate.
pub const CERT_INFO_UNCOMPRESSED: u8 = 0x00;
/// CertInfo of a gzip-compressed certificate.
pub const CERT_INFO_GZIP: u8 = 0x01;

/// The largest certificate a compressed container may expand to (64 KiB).
pub const MAX_CERTIFICATE_LEN: usize = 64 * 1024;

/// A certificate read from, or to be written to, a certificate container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateObject {
    /// The certificate in DER, decompressed if it was stored compressed.
    pub certificate_der: Vec<u8>,
    /// Whether the card stored it gzip-compressed (CertInfo `01`).
    pub compressed: bool,
}

impl CertificateObject {
    /// A certificate to be stored uncompressed.
    #[must_use]
    pub fn new(certificate_der: Vec<u8>) -> Self {
        CertificateObject {
            certificate_der,
            compressed: false,
        }
    }

    /// Parses the container content (without the `53` wrapper). A missing
    /// `71` reads as uncompressed; `72` and `FE` are ignored.
    ///
    /// # Errors
    /// [`TlvError`] for malformed TLV, a missing or empty certificate, a
    /// CertInfo other than `00` or `01`, gzip data that does not decompress,
    /// or that expands beyond [`MAX_CERTIFICATE_LEN`].
    pub fn parse(content: &[u8]) -> Result<Self, TlvError> {
        let elements = tlv::parse_all(content)?;
        let stored = tlv::require(&elements, TAG_CERTIFICATE)?;
        let compressed = match tlv::find(&elements, TAG_CERT_INFO) {
            None | Some([CERT_INFO_UNCOMPRESSED]) => false,
            Some([CERT_INFO_GZIP]) => true,
            Some(other) => {
                return Err(TlvError::InvalidValue {
                    what: "CertInfo",
                    reason: format!("unsupported value {}", hex::encode(other)),
                });
            }
        };
        let certificate_der = if compressed {
            gunzip_capped(stored)?
        } else {
            stored.to_vec()
        };
        if certificate_der.is_empty() {
            return Err(TlvError::InvalidValue {
                what: "certificate",
                reason: "empty".to_owned(),
            });
        }
        Ok(CertificateObject {
            certificate_der,
            compressed,
        })
    }

    /// Encodes the container content uncompressed: `70 der`, `71 00`, `FE 00`.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(&self.certificate_der, CERT_INFO_UNCOMPRESSED)
    }

    /// Encodes the container content with the certificate gzip-compressed:
    /// `70 gzip`, `71 01`, `FE 00`.
    #[must_use]
    pub fn encode_compressed(&self) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        let compressed = encoder
            .write_all(&self.certificate_der)
            .and_then(|()| encoder.finish())
            .expect("gzip into a Vec cannot fail");
        self.encode_with(&compressed, CERT_INFO_GZIP)
    }

    fn encode_with(&self, stored: &[u8], cert_info: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(stored.len() + 12);
        tlv::write(&mut out, TAG_CERTIFICATE, stored);
        tlv::write(&mut out, TAG_CERT_INFO, &[cert_info]);
        tlv::write(&mut out, TAG_ERROR_DETECTION_CODE, &[]);
        out
    }
}

/// Decompresses gzip data, refusing to produce more than [`MAX_CERTIFICATE_LEN`] bytes.
fn gunzip_capped(compressed: &[u8]) -> Result<Vec<u8>, TlvError> {
    let mut certificate = Vec::new();
    GzDecoder::new(compressed)
        .take(MAX_CERTIFICATE_LEN as u64 + 1)
        .read_to_end(&mut certificate)
        .map_err(|error| TlvError::InvalidValue {
            what: "compressed certificate",
            reason: format!("gzip data does not decompress: {error}"),
        })?;
    if certificate.len() > MAX_CERTIFICATE_LEN {
        return Err(TlvError::InvalidValue {
            what: "compressed certificate",
            reason: format!("expands beyond the {MAX_CERTIFICATE_LEN}-byte limit"),
        });
    }
    Ok(certificate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A stand-in for a DER certificate: a SEQUENCE with some content.
    fn der(len: usize) -> Vec<u8> {
        let mut der = vec![0x30, 0x82, (len >> 8) as u8, len as u8];
        der.extend((0..len).map(|i| (i % 251) as u8));
        der
    }

    #[test]
    fn encodes_the_uncompressed_layout() {
        let object = CertificateObject::new(vec![0x30, 0x03, 0x02, 0x01, 0x05]);
        let bytes = object.encode();
        assert_eq!(
            bytes,
            [
                0x70, 0x05, 0x30, 0x03, 0x02, 0x01, 0x05, 0x71, 0x01, 0x00, 0xFE, 0x00
            ]
        );
        assert_eq!(CertificateObject::parse(&bytes).unwrap(), object);
    }

    #[test]
    fn reads_long_certificates_and_ignores_mscuid() {
        let certificate = der(1500);
        // 70 82 05E0 <1504 bytes> | 71 01 00 | 72 03 010203 | FE 00
        let mut bytes = vec![0x70, 0x82, 0x05, 0xE0];
        bytes.extend(&certificate);
        bytes.extend([0x71, 0x01, 0x00, 0x72, 0x03, 1, 2, 3, 0xFE, 0x00]);
        let object = CertificateObject::parse(&bytes).unwrap();
        assert_eq!(object.certificate_der, certificate);
        assert!(!object.compressed);
    }

    #[test]
    fn gzip_round_trip() {
        let object = CertificateObject::new(der(3000));
        let bytes = object.encode_compressed();
        assert!(bytes.len() < 3000, "the repetitive test data should shrink");
        assert_eq!(&bytes[bytes.len() - 5..], [0x71, 0x01, 0x01, 0xFE, 0x00]);
        let stored = tlv::parse_all(&bytes).unwrap()[0].value;
        assert_eq!(&stored[..2], [0x1F, 0x8B], "gzip magic");
        let parsed = CertificateObject::parse(&bytes).unwrap();
        assert_eq!(parsed.certificate_der, object.certificate_der);
        assert!(parsed.compressed);
    }

    #[test]
    fn refuses_a_gzip_bomb() {
        let bomb = CertificateObject::new(vec![0; 10 * 1024 * 1024]).encode_compressed();
        assert!(bomb.len() < 20_000);
        let error = CertificateObject::parse(&bomb).unwrap_err();
        assert!(error.to_string().contains("65536-byte limit"), "{error}");
        // Exactly at the limit is still accepted.
        let largest = CertificateObject::new(vec![7; MAX_CERTIFICATE_LEN]).encode_compressed();
        assert_eq!(
            CertificateObject::parse(&largest)
                .unwrap()
                .certificate_der
                .len(),
            MAX_CERTIFICATE_LEN
        );
    }

    #[test]
    fn rejects_malformed_containers() {
        let with_info = |info: &[u8]| {
            let mut bytes = tlv::encode(0x70, &der(10));
            bytes.extend(tlv::encode(0x71, info));
            CertificateObject::parse(&bytes)
        };
        assert!(with_info(&[0x02]).is_err());
        assert!(with_info(&[]).is_err());
        assert!(with_info(&[0x00, 0x00]).is_err());
        assert!(
            with_info(&[0x01])
                .unwrap_err()
                .to_string()
                .contains("does not decompress")
        );
        assert!(matches!(
            CertificateObject::parse(&[0x71, 0x01, 0x00, 0xFE, 0x00]),
            Err(TlvError::Missing { .. })
        ));
        assert!(CertificateObject::parse(&[0x70, 0x00, 0x71, 0x01, 0x00]).is_err());
        let bytes = CertificateObject::new(der(200)).encode();
        assert!(matches!(
            CertificateObject::parse(&bytes[..100]),
            Err(TlvError::Truncated { .. })
        ));
        let compressed = CertificateObject::new(der(200)).encode_compressed();
        let mut cut = tlv::encode(0x70, &tlv::parse_all(&compressed).unwrap()[0].value[..20]);
        cut.extend([0x71, 0x01, 0x01]);
        assert!(CertificateObject::parse(&cut).is_err());
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(certificate in proptest::collection::vec(any::<u8>(), 1..3000)) {
            let object = CertificateObject::new(certificate);
            prop_assert_eq!(CertificateObject::parse(&object.encode()).unwrap(), object.clone());
            let compressed = CertificateObject::parse(&object.encode_compressed()).unwrap();
            prop_assert!(compressed.compressed);
            prop_assert_eq!(compressed.certificate_der, object.certificate_der);
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = CertificateObject::parse(&bytes);
            let mut gzip = tlv::encode(0x70, &bytes);
            gzip.extend([0x71, 0x01, 0x01]);
            let _ = CertificateObject::parse(&gzip);
        }
    }
}
