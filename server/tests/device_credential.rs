//! The device credential end to end: a key made on the device, its certificate issued by the server's CA, saved private, read back, and its proofs checked.

use std::path::PathBuf;

use pivtap_client::device::{
    CERTIFICATE_FILE, DeviceCredential, DeviceCredentialError, KEY_FILE, NewDeviceKey,
};
use pivtap_protocol::certificate::CertificateFacts;
use pivtap_protocol::wire::DeviceProofClaims;
use pivtap_server::config::IssuanceConfig;
use pivtap_server::issuance::{Issuer, create_ca, verify_csr};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

fn issuer() -> Issuer {
    let (certificate_pem, key_pem) = create_ca(OffsetDateTime::now_utc()).unwrap();
    let der = CertificateDer::from_pem_slice(certificate_pem.as_bytes()).unwrap();
    Issuer::new(
        der.to_vec(),
        rcgen::KeyPair::from_pem(&key_pem).unwrap(),
        IssuanceConfig::new(PathBuf::from("ca.crt"), PathBuf::from("ca.key")),
    )
    .unwrap()
}

#[test]
fn a_credential_is_saved_private_read_back_and_signs_proofs_the_server_checks() {
    let issuer = issuer();
    let key = NewDeviceKey::generate().unwrap();
    let now = OffsetDateTime::now_utc();
    let der = issuer
        .issue_device(&verify_csr(&key.csr_der).unwrap(), "kiosk-07", now, 30)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key_path, certificate_path) =
        (dir.path().join(KEY_FILE), dir.path().join(CERTIFICATE_FILE));
    DeviceCredential::save(&key.key_pem, &der, &key_path, &certificate_path).unwrap();
    #[cfg(unix)]
    for path in [&key_path, &certificate_path] {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let credential = DeviceCredential::load_dir(dir.path()).unwrap();
    assert_eq!(credential.device(), "kiosk-07");
    assert!(!format!("{credential:?}").contains("PRIVATE"));

    let proof = credential.proof("https://auth.example.test", now);
    let jws = pivtap_protocol::jose::CompactJws::parse(&proof).unwrap();
    let (_, public_key) = CertificateFacts::with_public_key(&der).unwrap();
    assert!(pivtap_protocol::assertion::signature_verifies(
        pivtap_protocol::jose::JwsAlgorithm::Es256,
        &public_key,
        jws.signing_input.as_bytes(),
        &jws.signature
    ));
    let claims: DeviceProofClaims = serde_json::from_slice(&jws.payload).unwrap();
    assert_eq!(claims.device, "kiosk-07");
    assert_ne!(
        claims.jti,
        serde_json::from_slice::<DeviceProofClaims>(
            &pivtap_protocol::jose::CompactJws::parse(
                &credential.proof("https://auth.example.test", now)
            )
            .unwrap()
            .payload
        )
        .unwrap()
        .jti
    );

    // Another key than the certificate's, and a key file others can read, are refused.
    let other = NewDeviceKey::generate().unwrap();
    assert!(matches!(
        DeviceCredential::from_parts(&other.key_pem, &der),
        Err(DeviceCredentialError::Mismatch)
    ));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            DeviceCredential::load_dir(dir.path()),
            Err(DeviceCredentialError::KeyFileOpen { mode: 0o644, .. })
        ));
    }
}
