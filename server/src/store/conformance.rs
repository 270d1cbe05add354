//! The behaviour every [`Store`] shares, as a suite any implementation runs with one macro line.
//!
//! Each `pub async fn` here checks one behaviour of a store: the single-store ones take a
//! fresh, empty store; the multi-node ones take two handles on one empty database (two server
//! nodes) and race them. [`store_conformance_suite!`](crate::store_conformance_suite) turns the
//! whole list into `#[tokio::test]`s for one implementation:
//!
//! ```ignore
//! mod conformance {
//!     pivtap_server::store_conformance_suite! {
//!         fresh: my_fresh_store(),      // Result<(guard, Arc<dyn Store>), E>
//!         nodes: my_two_node_handles(), // Result<(guard, [Arc<dyn Store>; 2]), E>
//!     }
//! }
//! ```
//!
//! The guard is kept alive for the test (a temporary directory, a scratch schema). What is
//! specific to one engine (migrations from old versions, file modes, WAL, pragmas) is tested
//! by that engine alone. The module is built for this crate's tests and with the
//! `conformance` feature.

use std::error::Error;
use std::sync::Arc;

use time::Duration as TimeSpan;
use time::OffsetDateTime;

use super::{
    AuditEvent, AuditKind, AuditKindFilter, AuditOutcome, AuditQuery, BudgetUse, Card, CardId,
    CardState, ChallengeUse, DeviceCodeUse, DeviceCredentialRecord, DeviceState, EnrollmentCodeUse,
    FailureCount, IssuedCertificate, NewAuditEvent, NewDevice, NewEnrollmentCode, NewSession,
    RevocationReason, SignInLookup, SignInRecords, Store, StoreError, User, UserState, UserWritten,
};
use crate::mapping::UserAttribute;
use pivtap_protocol::certificate::{CertificateFacts, KeyKind};
use pivtap_protocol::nonce::Nonce;
use pivtap_protocol::wire::ErrorCode;
use sha2::Digest as _;

mod sessions;
pub use sessions::*;

/// A new session of `user` signed in with the card of `facts` on `kiosk-1` at `now`, for 12
/// hours, with a fresh id and refresh token hash.
pub fn session_for(facts: &CertificateFacts, user: &str, now: OffsetDateTime) -> NewSession {
    NewSession {
        id: pivtap_protocol::nonce::random_base64url::<16>(),
        user_id: user.to_owned(),
        device: "kiosk-1".to_owned(),
        card: CardId::of(facts),
        amr: vec!["hwk".to_owned(), "sc".to_owned(), "pin".to_owned()],
        created_at: now,
        expires_at: now + TimeSpan::hours(12),
        refresh_token_hash: super::secret_hash(&pivtap_protocol::nonce::random_base64url::<32>()),
    }
}

/// What a conformance check returns: `Err` (or a panic) is a failure.
pub type TestResult = Result<(), Box<dyn Error + Send + Sync>>;

/// Runs the whole suite against one [`Store`] implementation as `#[tokio::test]`s.
///
/// `fresh` is an expression evaluating to a future of `Result<(guard, Arc<dyn Store>), E>`
/// (a new, empty store); `nodes` to a future of `Result<(guard, [Arc<dyn Store>; 2]), E>`
/// (two handles on one new, empty database). Both are evaluated once per test.
#[macro_export]
macro_rules! store_conformance_suite {
    (fresh: $fresh:expr, nodes: $nodes:expr $(,)?) => {
        $crate::store_conformance_suite!(@one $fresh;
            users_are_added_listed_and_locked,
            users_are_found_by_each_attribute,
            recording_a_card_again_updates_it_and_keeps_its_state,
            an_enrollment_code_is_redeemed_once_before_it_expires,
            a_renewal_is_pending_until_the_new_certificate_is_confirmed_or_used,
            two_issuers_of_one_serial_are_two_cards,
            deleted_revoked_cards_stay_on_the_revocation_list,
            revocation_is_final,
            a_sign_in_takes_its_challenge_and_reads_card_revocation_and_users,
            a_sign_in_is_finished_with_its_card_and_its_audit_event_or_not_at_all,
            a_challenge_that_exists_already_writes_no_audit_event,
            a_challenge_is_used_once_by_its_device_before_it_expires,
            purging_removes_only_challenges_expired_before_the_cut,
            audit_queries_filter_order_and_limit,
            stats_count_users_cards_recent_sign_ins_and_expiring_certificates,
            audit_pages_follow_on_from_the_last_event_of_the_page_before,
            old_audit_events_are_purged_oldest_first_at_most_a_batch,
            the_audit_limit_is_capped,
            users_are_imported_updated_renamed_and_deleted,
            admin_credentials_are_added_found_and_revoked_but_never_the_last,
            failures_count_up_within_the_window_and_are_cleared,
            budgets_allow_a_burst_refill_and_spend_from_several_keys_all_or_none,
            a_proof_id_is_accepted_once_until_it_is_forgotten,
            purging_flow_control_removes_only_what_ran_out,
            token_keys_are_stored_once_and_replaced_only_from_the_version_read,
            sessions_are_stored_at_sign_in_listed_and_ended_once,
            sessions_end_by_user_card_or_expiry_with_their_refresh_tokens,
            a_renamed_users_sessions_move_with_them,
            locks_revocations_and_deletions_end_sessions_in_the_same_write,
            refresh_tokens_rotate_once_and_a_replaced_one_ends_the_session,
            clients_are_registered_listed_and_removed_with_their_tokens,
            authorization_codes_are_redeemed_once_before_they_expire,
            ending_a_session_queues_logout_deliveries_for_its_clients_with_a_uri,
            logout_deliveries_are_claimed_for_a_lease_then_delivered_retried_or_given_up,
            revoked_access_tokens_and_ended_sessions_are_purged_after_the_cut,
        );
        $crate::store_conformance_suite!(@two $nodes;
            of_sixteen_racing_redemptions_exactly_one_is_accepted,
            a_device_enrolls_once_and_disabling_or_removing_it_voids_its_unused_challenges,
            of_sixteen_racing_uses_on_two_nodes_exactly_one_is_accepted,
            of_sixteen_racing_first_uses_of_a_renewed_certificate_one_completes_it,
            of_two_nodes_revoking_the_last_two_admin_credentials_one_is_refused,
            of_sixteen_racing_users_sharing_a_mail_one_is_added,
            failures_recorded_at_one_node_are_counted_at_the_other,
            a_budget_is_spent_across_both_nodes,
            a_proof_id_used_at_one_node_is_refused_at_the_other,
            token_keys_rotated_at_one_node_are_read_at_the_other,
            of_sixteen_racing_code_redemptions_exactly_one_redeems,
            of_sixteen_racing_refresh_uses_exactly_one_rotates,
            racing_claimers_never_get_the_same_logout_delivery,
            a_session_ended_on_two_nodes_at_once_is_ended_once,
        );
    };
    (@one $fresh:expr; $($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() -> $crate::store::conformance::TestResult {
            let (_guard, store) = $fresh.await?;
            $crate::store::conformance::$name(store).await
        }
    )*};
    (@two $nodes:expr; $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() -> $crate::store::conformance::TestResult {
            let (_guard, nodes) = $nodes.await?;
            $crate::store::conformance::$name(nodes).await
        }
    )*};
}

/// A time `seconds` after a fixed instant in November 2023.
pub fn at(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + TimeSpan::seconds(1_700_000_000 + seconds)
}

/// The nonce of a challenge named `name` in a test: the same for the same name.
pub fn nonce(name: &str) -> Nonce {
    Nonce::from_bytes(sha2::Sha256::digest(name.as_bytes()).into())
}

/// A user `id` with `mail` and a UPN and employee id made from the id.
pub fn user(id: &str, mail: &str) -> User {
    User {
        id: id.to_owned(),
        display_name: format!("{id} display"),
        mail: Some(mail.to_owned()),
        upn: Some(format!("{id}@corp.example")),
        employee_id: Some(format!("E-{id}")),
        state: UserState::Active,
    }
}

/// The facts of a certificate with `serial` and `fingerprint`, issued by `CN=Test CA`.
pub fn facts(serial: &str, fingerprint: &str) -> CertificateFacts {
    CertificateFacts {
        der: Vec::new(),
        serial: serial.to_owned(),
        fingerprint: fingerprint.to_owned(),
        subject: format!("CN=card {serial}"),
        issuer: "CN=Test CA".to_owned(),
        common_name: Some(format!("card {serial}")),
        subject_serial_number: None,
        emails: Vec::new(),
        upns: Vec::new(),
        device: None,
        not_before: at(-86_400),
        not_after: at(86_400),
        key: KeyKind::EcP256,
    }
}

/// The card of a certificate [`facts`] makes.
pub fn id(serial: &str) -> CardId {
    CardId {
        issuer: "CN=Test CA".to_owned(),
        serial: serial.to_owned(),
    }
}

/// The audit event that goes with an enrollment.
pub fn enrolled() -> NewAuditEvent {
    NewAuditEvent {
        time: at(1),
        kind: AuditKind::Enrollment,
        outcome: AuditOutcome::Ok,
        device: None,
        card_serial: None,
        user_id: Some("alice".to_owned()),
        detail: None,
    }
}

/// The audit event that goes with a challenge for `device`.
pub fn challenge_event(device: &str) -> NewAuditEvent {
    NewAuditEvent {
        time: at(0),
        kind: AuditKind::Challenge,
        outcome: AuditOutcome::Ok,
        device: Some(device.to_owned()),
        card_serial: None,
        user_id: None,
        detail: None,
    }
}

/// An assertion audit event at [`at`]`(seconds)`.
pub fn event(
    seconds: i64,
    outcome: AuditOutcome,
    device: &str,
    card: &str,
    user: &str,
) -> NewAuditEvent {
    NewAuditEvent {
        time: at(seconds),
        kind: AuditKind::Assertion,
        outcome,
        device: Some(device.to_owned()),
        card_serial: Some(card.to_owned()),
        user_id: Some(user.to_owned()),
        detail: None,
    }
}

/// A certificate the server issued to `user`, with [`facts`] for `serial`.
pub fn issued(serial: &str, user: &str) -> IssuedCertificate {
    IssuedCertificate {
        facts: facts(serial, &format!("fp-{serial}")),
        user_id: user.to_owned(),
        card_serial_number: Some(12_345_678),
        chuid_guid: Some("00112233445566778899aabbccddeeff".to_owned()),
    }
}

/// An enrollment code `hash` for `user` that expires at [`at`]`(expires)`.
pub fn code(hash: &str, user: &str, expires: i64) -> NewEnrollmentCode {
    NewEnrollmentCode {
        code_hash: hash.to_owned(),
        user_id: user.to_owned(),
        created_at: at(0),
        expires_at: at(expires),
    }
}

/// The audit event of a renewal at [`at`]`(seconds)`.
pub fn renewal_event(seconds: i64) -> NewAuditEvent {
    NewAuditEvent {
        kind: AuditKind::Renewal,
        ..event(seconds, AuditOutcome::Ok, "kiosk-1", "01", "alice")
    }
}

/// The renewal events in the audit log, oldest first, as (card serial, detail).
pub async fn renewal_events(store: &dyn Store) -> Result<Vec<(String, String)>, StoreError> {
    let mut events: Vec<_> = store
        .query_audit(&AuditQuery::default())
        .await?
        .into_iter()
        .filter(|event| event.kind == AuditKind::Renewal)
        .map(|event| {
            (
                event.card_serial.unwrap_or_default(),
                event.detail.unwrap_or_default(),
            )
        })
        .collect();
    events.reverse();
    Ok(events)
}

/// What a sign-in looks up: the [`nonce`] named `name`, card `card`, users by `values`.
pub fn lookup(name: &str, card: &str, values: &[&str]) -> SignInLookup {
    SignInLookup {
        nonce: nonce(name).into_string(),
        device: "kiosk-1".to_owned(),
        now: at(1),
        card: id(card),
        user_attribute: UserAttribute::Mail,
        user_values: values.iter().map(|value| (*value).to_owned()).collect(),
    }
}

/// Conformance: users are added listed and locked.
pub async fn users_are_added_listed_and_locked(store: Arc<dyn Store>) -> TestResult {
    let bob = user("bob", "bob@example.org");
    let alice = user("alice", "alice@example.org");
    store.add_user(&bob).await?;
    store.add_user(&alice).await?;
    assert_eq!(store.get_user("alice").await?, Some(alice.clone()));
    assert_eq!(store.get_user("carol").await?, None);
    assert_eq!(store.list_users().await?, vec![alice.clone(), bob.clone()]);

    let duplicate = store.add_user(&user("alice", "other@example.org")).await;
    assert!(
        matches!(&duplicate, Err(StoreError::Conflict { what }) if what.contains("alice")),
        "{duplicate:?}"
    );

    store.set_user_state("alice", UserState::Locked).await?;
    assert_eq!(
        store.get_user("alice").await?.map(|user| user.state),
        Some(UserState::Locked)
    );
    store.set_user_state("alice", UserState::Active).await?;
    assert_eq!(store.get_user("alice").await?, Some(alice));
    assert!(matches!(
        store.set_user_state("carol", UserState::Locked).await,
        Err(StoreError::NotFound { .. })
    ));
    Ok(())
}

/// Users are found by mail and UPN (ASCII case folded), by uid and employee id
/// (exactly); a second user with a taken mail is refused.
pub async fn users_are_found_by_each_attribute(store: Arc<dyn Store>) -> TestResult {
    store.add_user(&user("alice", "Alice@Example.org")).await?;
    store.add_user(&user("bob", "bob@example.org")).await?;
    // A second user with bob's mail is refused (issue 11, item 9); a database from
    // before may hold one, and lookups find both (an engine's own test: SQLite's
    // `users_sharing_a_mail_from_before_the_checks_are_both_found`).
    let robert = User {
        id: "robert".to_owned(),
        upn: None,
        employee_id: None,
        ..user("robert", "BOB@example.org")
    };
    assert!(matches!(
        store.add_user(&robert).await,
        Err(StoreError::AttributeTaken { .. })
    ));
    let ids = |users: Vec<User>| users.into_iter().map(|user| user.id).collect::<Vec<_>>();

    assert_eq!(
        ids(store
            .find_users(UserAttribute::Mail, "alice@EXAMPLE.ORG")
            .await?),
        ["alice"]
    );
    assert_eq!(
        ids(store
            .find_users(UserAttribute::Mail, "bob@example.org")
            .await?),
        ["bob"]
    );
    assert_eq!(
        ids(store
            .find_users(UserAttribute::Upn, "BOB@corp.EXAMPLE")
            .await?),
        ["bob"]
    );
    assert_eq!(
        ids(store.find_users(UserAttribute::Uid, "alice").await?),
        ["alice"]
    );
    assert!(
        store
            .find_users(UserAttribute::Uid, "Alice")
            .await?
            .is_empty()
    );
    assert_eq!(
        ids(store.find_users(UserAttribute::EmployeeId, "E-bob").await?),
        ["bob"]
    );
    assert!(
        store
            .find_users(UserAttribute::EmployeeId, "e-bob")
            .await?
            .is_empty()
    );
    assert!(
        store
            .find_users(UserAttribute::Mail, "carol@example.org")
            .await?
            .is_empty()
    );
    Ok(())
}

/// Conformance: recording a card again updates it and keeps its state.
pub async fn recording_a_card_again_updates_it_and_keeps_its_state(
    store: Arc<dyn Store>,
) -> TestResult {
    store.add_user(&user("alice", "alice@example.org")).await?;
    store.add_user(&user("bob", "bob@example.org")).await?;

    let first = store.record_card(&facts("0a1b", "f1"), None, at(0)).await?;
    assert_eq!(
        first,
        Card {
            serial: "0a1b".to_owned(),
            fingerprint: "f1".to_owned(),
            issuer: "CN=Test CA".to_owned(),
            subject: "CN=card 0a1b".to_owned(),
            user_id: None,
            state: CardState::Active,
            first_seen: at(0),
            last_seen: at(0),
        }
    );
    store.set_card_state(&id("0a1b"), CardState::Locked).await?;

    let second = store
        .record_card(&facts("0a1b", "f2"), Some("alice"), at(10))
        .await?;
    assert_eq!(second.fingerprint, "f2");
    assert_eq!(second.user_id.as_deref(), Some("alice"));
    assert_eq!(second.state, CardState::Locked);
    assert_eq!((second.first_seen, second.last_seen), (at(0), at(10)));

    let third = store
        .record_card(&facts("0a1b", "f2"), None, at(20))
        .await?;
    assert_eq!(third.user_id.as_deref(), Some("alice"));
    let fourth = store
        .record_card(&facts("0a1b", "f2"), Some("bob"), at(30))
        .await?;
    assert_eq!(fourth.user_id.as_deref(), Some("bob"));
    assert_eq!(store.get_card(&id("0a1b")).await?, Some(fourth.clone()));

    let unknown_user = store
        .record_card(&facts("0c0d", "f3"), Some("carol"), at(40))
        .await;
    assert!(
        matches!(&unknown_user, Err(StoreError::NotFound { what }) if what.contains("carol")),
        "{unknown_user:?}"
    );
    assert_eq!(store.get_card(&id("0c0d")).await?, None);

    let other = store
        .record_card(&facts("0001", "f4"), None, at(50))
        .await?;
    assert_eq!(store.list_cards().await?, vec![other, fourth]);
    Ok(())
}

/// Conformance: an enrollment code is redeemed once before it expires.
pub async fn an_enrollment_code_is_redeemed_once_before_it_expires(
    store: Arc<dyn Store>,
) -> TestResult {
    store.add_user(&user("alice", "alice@example.com")).await?;
    assert!(matches!(
        store.add_enrollment_code(&code("h0", "nobody", 900)).await,
        Err(StoreError::NotFound { .. })
    ));
    store.add_enrollment_code(&code("h1", "alice", 900)).await?;
    store.add_enrollment_code(&code("h2", "alice", 900)).await?;
    assert!(matches!(
        store.add_enrollment_code(&code("h1", "alice", 900)).await,
        Err(StoreError::Conflict { .. })
    ));
    let stored = store.get_enrollment_code("h1").await?.ok_or("stored")?;
    assert_eq!((stored.user_id.as_str(), stored.used_at), ("alice", None));

    assert_eq!(
        store
            .redeem_enrollment_code("nope", &issued("01", "alice"), at(1), enrolled())
            .await?,
        EnrollmentCodeUse::Unknown
    );
    assert_eq!(
        store
            .redeem_enrollment_code("h1", &issued("01", "alice"), at(1), enrolled())
            .await?,
        EnrollmentCodeUse::Accepted
    );
    let card = store.get_card(&id("01")).await?.ok_or("registered")?;
    assert_eq!(
        (card.state, card.user_id.as_deref()),
        (CardState::Active, Some("alice"))
    );
    let used = store.get_enrollment_code("h1").await?.ok_or("stored")?;
    assert_eq!(
        (used.used_at, used.used_by.as_deref()),
        (Some(at(1)), Some("01"))
    );
    // Used beats expired; a refused redemption registers nothing.
    for now in [2, 10_000] {
        assert_eq!(
            store
                .redeem_enrollment_code("h1", &issued("02", "alice"), at(now), enrolled())
                .await?,
            EnrollmentCodeUse::Used
        );
    }
    assert_eq!(
        store
            .redeem_enrollment_code("h2", &issued("03", "alice"), at(900), enrolled())
            .await?,
        EnrollmentCodeUse::Expired
    );
    assert!(store.get_card(&id("02")).await?.is_none());
    assert!(store.get_card(&id("03")).await?.is_none());
    // A serial that exists already: the code stays unused.
    assert!(matches!(
        store
            .redeem_enrollment_code("h2", &issued("01", "alice"), at(5), enrolled())
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        store.get_enrollment_code("h2").await?.ok_or("h2")?.used_at,
        None
    );
    Ok(())
}

/// Conformance: a renewal is pending until the new certificate is confirmed or used.
pub async fn a_renewal_is_pending_until_the_new_certificate_is_confirmed_or_used(
    store: Arc<dyn Store>,
) -> TestResult {
    store.add_user(&user("alice", "alice@example.com")).await?;
    store.add_enrollment_code(&code("h1", "alice", 900)).await?;
    store
        .redeem_enrollment_code("h1", &issued("01", "alice"), at(1), enrolled())
        .await?;
    let enrollment_events = store.query_audit(&AuditQuery::default()).await?;
    assert_eq!(
        enrollment_events.len(),
        1,
        "the enrollment's event, in its write"
    );

    // Step one: the new certificate is pending; the old card stays active.
    let old = facts("01", "fp-01");
    store
        .begin_renewal(
            &old,
            "alice",
            &issued("02", "alice"),
            at(2),
            renewal_event(2),
        )
        .await?;
    assert_eq!(
        store.get_card(&id("01")).await?.ok_or("old")?.state,
        CardState::Active
    );
    assert_eq!(
        store.get_card(&id("02")).await?,
        None,
        "no record until used"
    );
    assert!(store.revocation(&id("01")).await?.is_none());
    let pending = store.pending_renewals(&id("01")).await?;
    assert_eq!(pending, [issued("02", "alice").facts.der]);
    assert_eq!(renewal_events(&*store).await?.len(), 1, "in the same write");
    // The new certificate signs in with the old card's state.
    let records = store.begin_sign_in(&lookup("none", "02", &[])).await?;
    assert_eq!(records.card, None);
    assert_eq!(
        records.renews.map(|card| card.serial).as_deref(),
        Some("01")
    );

    // Renewing again (the old key signed it, so 02 never reached the card): 02 is revoked.
    store
        .begin_renewal(
            &old,
            "alice",
            &issued("03", "alice"),
            at(3),
            renewal_event(3),
        )
        .await?;
    assert_eq!(
        store
            .revocation(&id("02"))
            .await?
            .ok_or("02 listed")?
            .reason,
        RevocationReason::Superseded
    );
    assert_eq!(store.pending_renewals(&id("01")).await?.len(), 1);

    // Step two: the card confirms 03; 01 is superseded, once.
    assert!(
        store
            .confirm_renewal(
                &issued("03", "alice").facts,
                "alice",
                at(4),
                renewal_event(4)
            )
            .await?
    );
    assert_eq!(
        store.get_card(&id("01")).await?.ok_or("old")?.state,
        CardState::Revoked
    );
    assert_eq!(
        store.get_card(&id("03")).await?.ok_or("new")?.state,
        CardState::Active
    );
    let revoked = store.revocation(&id("01")).await?.ok_or("listed")?;
    assert_eq!(
        (revoked.reason, revoked.revoked_at),
        (RevocationReason::Superseded, at(4))
    );
    assert!(store.pending_renewals(&id("01")).await?.is_empty());
    assert!(
        !store
            .confirm_renewal(
                &issued("03", "alice").facts,
                "alice",
                at(5),
                renewal_event(5)
            )
            .await?,
        "confirming again completes nothing"
    );
    let events = renewal_events(&*store).await?;
    assert_eq!(events.len(), 5, "{events:?}");
    assert!(events[2].1.contains("01@"), "{events:?}");

    // A renewal that fails part-way (its new serial exists) changes nothing and leaves
    // no event: the effects and the event are one write.
    let events_before = store.query_audit(&AuditQuery::default()).await?.len();
    let other = facts("0f", "fp-0f");
    store.record_card(&other, Some("alice"), at(5)).await?;
    assert!(matches!(
        store
            .begin_renewal(
                &other,
                "alice",
                &issued("03", "alice"),
                at(5),
                renewal_event(5)
            )
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(store.pending_renewals(&id("0f")).await?.is_empty());
    assert_eq!(
        store.query_audit(&AuditQuery::default()).await?.len(),
        events_before
    );

    // The old card cannot be renewed again.
    assert!(matches!(
        store
            .begin_renewal(
                &old,
                "alice",
                &issued("04", "alice"),
                at(6),
                renewal_event(6)
            )
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(store.pending_renewals(&id("01")).await?.is_empty());

    // A first sign-in with the new certificate completes a renewal too.
    let new = facts("03", "fp-03");
    store
        .begin_renewal(
            &new,
            "alice",
            &issued("05", "alice"),
            at(7),
            renewal_event(7),
        )
        .await?;
    let renewed_session = session_for(&issued("05", "alice").facts, "alice", at(8));
    store
        .finish_sign_in(
            &issued("05", "alice").facts,
            "alice",
            at(8),
            event(8, AuditOutcome::Ok, "kiosk-1", "05", "alice"),
            &renewed_session,
        )
        .await?;
    // The session of that sign-in is stored too.
    assert_eq!(
        store
            .get_session(&renewed_session.id)
            .await?
            .map(|session| session.card),
        Some(id("05"))
    );
    assert_eq!(
        store.get_card(&id("03")).await?.ok_or("03")?.state,
        CardState::Revoked
    );
    // An admin revoking a card revokes its pending renewals.
    store
        .begin_renewal(
            &issued("05", "alice").facts,
            "alice",
            &issued("06", "alice"),
            at(9),
            renewal_event(9),
        )
        .await?;
    store.set_card_state(&id("05"), CardState::Revoked).await?;
    assert!(store.revocation(&id("06")).await?.is_some());
    assert!(store.pending_renewals(&id("05")).await?.is_empty());
    Ok(())
}

/// Conformance: two issuers of one serial are two cards.
pub async fn two_issuers_of_one_serial_are_two_cards(store: Arc<dyn Store>) -> TestResult {
    store.add_user(&user("alice", "alice@example.com")).await?;
    store.add_user(&user("bob", "bob@example.com")).await?;
    let from = |issuer: &str| CertificateFacts {
        issuer: issuer.to_owned(),
        ..facts("1001", &format!("fp-{issuer}"))
    };
    let (a, b) = (from("CN=Org A"), from("CN=Org B"));
    store.record_card(&a, Some("alice"), at(0)).await?;
    store.record_card(&b, Some("bob"), at(0)).await?;
    let found = store.find_cards("1001").await?;
    let owners: Vec<_> = found.iter().map(|card| card.user_id.as_deref()).collect();
    assert_eq!(owners, [Some("alice"), Some("bob")]);
    store
        .set_card_state(&CardId::of(&b), CardState::Revoked)
        .await?;
    assert_eq!(
        store.get_card(&CardId::of(&a)).await?.ok_or("a")?.state,
        CardState::Active
    );
    assert!(store.revocation(&CardId::of(&a)).await?.is_none());
    assert!(store.revocation(&CardId::of(&b)).await?.is_some());
    assert_eq!(
        CardId::of(&a).qualified(),
        format!("1001@{}", super::issuer_id("CN=Org A"))
    );
    Ok(())
}

/// Conformance: deleted revoked cards stay on the revocation list.
pub async fn deleted_revoked_cards_stay_on_the_revocation_list(
    store: Arc<dyn Store>,
) -> TestResult {
    store.add_user(&user("alice", "alice@example.com")).await?;
    store.add_enrollment_code(&code("h1", "alice", 900)).await?;
    store
        .redeem_enrollment_code("h1", &issued("01", "alice"), at(1), enrolled())
        .await?;
    // A card this server did not issue.
    store.record_card(&facts("0e", "f"), None, at(0)).await?;

    assert!(
        matches!(store.delete_card(&id("01")).await, Err(StoreError::Conflict { what }) if what.contains("revoke it first"))
    );
    assert!(matches!(
        store.delete_card(&id("ff")).await,
        Err(StoreError::NotFound { .. })
    ));
    store.set_card_state(&id("01"), CardState::Revoked).await?;
    store.set_card_state(&id("0e"), CardState::Revoked).await?;
    assert_eq!(
        store.revocation(&id("01")).await?.ok_or("listed")?.reason,
        RevocationReason::Unspecified
    );
    store.delete_card(&id("01")).await?;
    store.delete_card(&id("0e")).await?;
    assert!(store.get_card(&id("01")).await?.is_none());
    assert!(store.revocation(&id("01")).await?.is_some());
    assert!(store.revocation(&id("0e")).await?.is_some());
    // The CRL lists only what this server issued.
    let listed: Vec<String> = store
        .revoked_issued_certificates("CN=Test CA")
        .await?
        .into_iter()
        .map(|revoked| revoked.serial)
        .collect();
    assert_eq!(listed, ["01"]);
    Ok(())
}

/// Conformance: revocation is final.
pub async fn revocation_is_final(store: Arc<dyn Store>) -> TestResult {
    store.record_card(&facts("0a1b", "f1"), None, at(0)).await?;
    let state = async || -> Result<Option<CardState>, StoreError> {
        Ok(store.get_card(&id("0a1b")).await?.map(|card| card.state))
    };

    store.set_card_state(&id("0a1b"), CardState::Locked).await?;
    assert_eq!(state().await?, Some(CardState::Locked));
    store.set_card_state(&id("0a1b"), CardState::Active).await?;
    assert_eq!(state().await?, Some(CardState::Active));
    store
        .set_card_state(&id("0a1b"), CardState::Revoked)
        .await?;
    assert_eq!(state().await?, Some(CardState::Revoked));

    for state in [CardState::Active, CardState::Locked] {
        let result = store.set_card_state(&id("0a1b"), state).await;
        assert!(
            matches!(&result, Err(StoreError::Conflict { what }) if what.contains("revoked")),
            "{result:?}"
        );
    }
    store
        .set_card_state(&id("0a1b"), CardState::Revoked)
        .await?;
    assert_eq!(state().await?, Some(CardState::Revoked));
    assert!(matches!(
        store.set_card_state(&id("ffff"), CardState::Locked).await,
        Err(StoreError::NotFound { .. })
    ));
    Ok(())
}

/// Conformance: a sign in takes its challenge and reads card revocation and users.
pub async fn a_sign_in_takes_its_challenge_and_reads_card_revocation_and_users(
    store: Arc<dyn Store>,
) -> TestResult {
    let alice = user("alice", "alice@example.org");
    let bob = user("bob", "bob@example.org");
    store.add_user(&bob).await?;
    store.add_user(&alice).await?;
    let card = store
        .record_card(&facts("0a1b", "f1"), Some("alice"), at(0))
        .await?;
    for name in ["n1", "n2", "n3"] {
        store
            .add_challenge(&nonce(name), "kiosk-1", at(60), challenge_event("kiosk-1"))
            .await?;
    }

    let records = store
        .begin_sign_in(&lookup(
            "n1",
            "0a1b",
            &["ALICE@example.org", "alice@example.org"],
        ))
        .await?;
    assert_eq!(
        records,
        SignInRecords {
            challenge: ChallengeUse::Accepted,
            card: Some(card.clone()),
            revocation: None,
            renews: None,
            users: vec![alice.clone()],
        },
        "one user, however many values match her"
    );
    let replay = store.begin_sign_in(&lookup("n1", "0a1b", &[])).await?;
    assert_eq!(replay.challenge, ChallengeUse::Reused);

    let both = store
        .begin_sign_in(&lookup(
            "n2",
            "0a1b",
            &["bob@example.org", "alice@example.org"],
        ))
        .await?;
    assert_eq!(both.users, vec![alice, bob], "ordered by id");

    // A card whose record was deleted after revocation is still found revoked.
    store
        .set_card_state(&id("0a1b"), CardState::Revoked)
        .await?;
    store.delete_card(&id("0a1b")).await?;
    let deleted = store.begin_sign_in(&lookup("n3", "0a1b", &[])).await?;
    assert_eq!(deleted.card, None);
    assert_eq!(
        deleted.revocation.map(|revoked| revoked.serial).as_deref(),
        Some("0a1b")
    );
    Ok(())
}

/// Conformance: a sign in is finished with its card and its audit event or not at all.
pub async fn a_sign_in_is_finished_with_its_card_and_its_audit_event_or_not_at_all(
    store: Arc<dyn Store>,
) -> TestResult {
    store.add_user(&user("alice", "alice@example.org")).await?;
    let unknown_user = store
        .finish_sign_in(
            &facts("0a1b", "f1"),
            "nobody",
            at(5),
            event(5, AuditOutcome::Ok, "kiosk-1", "0a1b", "nobody"),
            &session_for(&facts("0a1b", "f1"), "nobody", at(5)),
        )
        .await;
    assert!(
        matches!(&unknown_user, Err(StoreError::NotFound { what }) if what.contains("nobody")),
        "{unknown_user:?}"
    );
    assert_eq!(store.get_card(&id("0a1b")).await?, None);
    assert!(store.query_audit(&AuditQuery::default()).await?.is_empty());

    let card = store
        .finish_sign_in(
            &facts("0a1b", "f1"),
            "alice",
            at(5),
            event(5, AuditOutcome::Ok, "kiosk-1", "0a1b", "alice"),
            &session_for(&facts("0a1b", "f1"), "alice", at(5)),
        )
        .await?;
    assert_eq!(
        (card.user_id.as_deref(), card.last_seen),
        (Some("alice"), at(5))
    );
    let events = store.query_audit(&AuditQuery::default()).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].user_id.as_deref(), Some("alice"));
    Ok(())
}

/// Conformance: a challenge that exists already writes no audit event.
pub async fn a_challenge_that_exists_already_writes_no_audit_event(
    store: Arc<dyn Store>,
) -> TestResult {
    store
        .add_challenge(&nonce("n1"), "kiosk-1", at(60), challenge_event("kiosk-1"))
        .await?;
    let duplicate = store
        .add_challenge(&nonce("n1"), "kiosk-2", at(60), challenge_event("kiosk-2"))
        .await;
    assert!(matches!(duplicate, Err(StoreError::Conflict { .. })));
    let events = store.query_audit(&AuditQuery::default()).await?;
    let devices: Vec<_> = events.iter().map(|event| event.device.as_deref()).collect();
    assert_eq!(devices, [Some("kiosk-1")]);
    Ok(())
}

/// Conformance: a challenge is used once by its device before it expires.
pub async fn a_challenge_is_used_once_by_its_device_before_it_expires(
    store: Arc<dyn Store>,
) -> TestResult {
    store
        .add_challenge(
            &nonce("fresh"),
            "kiosk-1",
            at(60),
            challenge_event("kiosk-1"),
        )
        .await?;
    assert_eq!(
        store
            .use_challenge(nonce("fresh").as_str(), "kiosk-2", at(1))
            .await?,
        ChallengeUse::OtherDevice
    );
    assert_eq!(
        store
            .use_challenge(nonce("fresh").as_str(), "kiosk-1", at(1))
            .await?,
        ChallengeUse::Accepted
    );
    assert_eq!(
        store
            .use_challenge(nonce("fresh").as_str(), "kiosk-1", at(2))
            .await?,
        ChallengeUse::Reused
    );
    assert_eq!(
        store
            .use_challenge(nonce("fresh").as_str(), "kiosk-1", at(120))
            .await?,
        ChallengeUse::Reused,
        "a used challenge stays a replay after it expires"
    );
    assert_eq!(
        store
            .use_challenge(nonce("fresh").as_str(), "kiosk-2", at(2))
            .await?,
        ChallengeUse::OtherDevice
    );

    store
        .add_challenge(
            &nonce("stale"),
            "kiosk-1",
            at(60),
            challenge_event("kiosk-1"),
        )
        .await?;
    assert_eq!(
        store
            .use_challenge(nonce("stale").as_str(), "kiosk-1", at(60))
            .await?,
        ChallengeUse::Expired,
        "the expiry instant is already too late"
    );
    assert_eq!(
        store
            .use_challenge(
                nonce("stale").as_str(),
                "kiosk-1",
                at(60) - TimeSpan::microseconds(1)
            )
            .await?,
        ChallengeUse::Accepted
    );
    assert_eq!(
        store
            .use_challenge(nonce("never").as_str(), "kiosk-1", at(1))
            .await?,
        ChallengeUse::Unknown
    );

    let duplicate = store
        .add_challenge(
            &nonce("stale"),
            "kiosk-1",
            at(90),
            challenge_event("kiosk-1"),
        )
        .await;
    assert!(
        matches!(&duplicate, Err(StoreError::Conflict { what }) if !what.contains(nonce("stale").as_str())),
        "{duplicate:?}"
    );
    Ok(())
}

/// Conformance: purging removes only challenges expired before the cut.
pub async fn purging_removes_only_challenges_expired_before_the_cut(
    store: Arc<dyn Store>,
) -> TestResult {
    store
        .add_challenge(
            &nonce("early"),
            "kiosk-1",
            at(10),
            challenge_event("kiosk-1"),
        )
        .await?;
    store
        .add_challenge(
            &nonce("used"),
            "kiosk-1",
            at(20),
            challenge_event("kiosk-1"),
        )
        .await?;
    store
        .add_challenge(
            &nonce("late"),
            "kiosk-1",
            at(30),
            challenge_event("kiosk-1"),
        )
        .await?;
    assert_eq!(
        store
            .use_challenge(nonce("used").as_str(), "kiosk-1", at(5))
            .await?,
        ChallengeUse::Accepted
    );
    assert_eq!(store.purge_challenges(at(20)).await?, 1);
    assert_eq!(store.purge_challenges(at(21)).await?, 1);
    assert_eq!(
        store
            .use_challenge(nonce("early").as_str(), "kiosk-1", at(5))
            .await?,
        ChallengeUse::Unknown
    );
    assert_eq!(
        store
            .use_challenge(nonce("late").as_str(), "kiosk-1", at(25))
            .await?,
        ChallengeUse::Accepted
    );
    Ok(())
}

/// Conformance: audit queries filter order and limit.
pub async fn audit_queries_filter_order_and_limit(store: Arc<dyn Store>) -> TestResult {
    let recorded = [
        event(0, AuditOutcome::Ok, "kiosk-1", "0a", "alice"),
        event(
            10,
            ErrorCode::ChallengeReused.into(),
            "kiosk-2",
            "0a",
            "alice",
        ),
        event(20, AuditOutcome::Ok, "kiosk-2", "0b", "bob"),
        event(30, ErrorCode::UserLocked.into(), "kiosk-1", "0b", "bob"),
        event(30, AuditOutcome::Ok, "kiosk-1", "0a", "alice"),
    ];
    for new_event in recorded.clone() {
        store.audit(new_event).await?;
    }
    store
        .audit(NewAuditEvent {
            time: at(40),
            kind: AuditKind::Admin,
            outcome: AuditOutcome::Ok,
            device: None,
            card_serial: None,
            user_id: None,
            detail: Some("users lock carol".to_owned()),
        })
        .await?;
    let query = |change: fn(&mut AuditQuery)| {
        let mut query = AuditQuery::default();
        change(&mut query);
        query
    };
    let times = async |query: AuditQuery| -> Result<Vec<(i64, i64)>, StoreError> {
        Ok(store
            .query_audit(&query)
            .await?
            .iter()
            .map(|event| ((event.time - at(0)).whole_seconds(), event.id))
            .collect())
    };

    let everything = store.query_audit(&AuditQuery::default()).await?;
    assert_eq!(everything.len(), 6);
    assert_eq!(
        everything.last(),
        Some(&AuditEvent {
            id: 1,
            time: at(0),
            kind: AuditKind::Assertion,
            outcome: AuditOutcome::Ok,
            device: Some("kiosk-1".to_owned()),
            card_serial: Some("0a".to_owned()),
            user_id: Some("alice".to_owned()),
            detail: None,
        })
    );
    assert_eq!(
        everything.first().and_then(|event| event.detail.as_deref()),
        Some("users lock carol")
    );
    assert_eq!(
        times(AuditQuery::default()).await?,
        [(40, 6), (30, 5), (30, 4), (20, 3), (10, 2), (0, 1)],
        "newest first; the later insert first among equal times"
    );
    assert_eq!(
        times(query(|q| q.user_id = Some("alice".to_owned()))).await?,
        [(30, 5), (10, 2), (0, 1)]
    );
    assert_eq!(
        times(query(|q| q.card_serial = Some("0b".to_owned()))).await?,
        [(30, 4), (20, 3)]
    );
    assert_eq!(
        times(query(|q| q.device = Some("kiosk-2".to_owned()))).await?,
        [(20, 3), (10, 2)]
    );
    assert_eq!(
        times(query(|q| q.outcome = Some(ErrorCode::UserLocked.into()))).await?,
        [(30, 4)]
    );
    assert_eq!(
        times(query(|q| {
            q.since = Some(at(10));
            q.until = Some(at(30));
        }))
        .await?,
        [(20, 3), (10, 2)],
        "since is inclusive, until exclusive"
    );
    assert_eq!(
        times(query(|q| {
            q.user_id = Some("alice".to_owned());
            q.outcome = Some(AuditOutcome::Ok);
            q.since = Some(at(1));
        }))
        .await?,
        [(30, 5)]
    );
    assert_eq!(times(query(|q| q.limit = 2)).await?, [(40, 6), (30, 5)]);
    assert!(
        times(query(|q| q.device = Some("kiosk-9".to_owned())))
            .await?
            .is_empty()
    );
    assert_eq!(
        times(query(
            |q| q.kind = Some(AuditKindFilter::Kind(AuditKind::Admin))
        ))
        .await?,
        [(40, 6)]
    );
    assert_eq!(
        times(query(|q| q.kind = Some(AuditKindFilter::SignInRefused))).await?,
        [(30, 4), (10, 2)]
    );
    assert_eq!(
        times(query(|q| q.kind = Some(AuditKindFilter::SignIn))).await?,
        [(30, 5), (20, 3), (0, 1)]
    );
    Ok(())
}

/// Issue 12: the metrics' counts: users and cards by state, sign-ins of the last hour
/// only, issued certificates expiring within 30 days unless revoked.
pub async fn stats_count_users_cards_recent_sign_ins_and_expiring_certificates(
    store: Arc<dyn Store>,
) -> TestResult {
    store.add_user(&user("alice", "alice@example.com")).await?;
    store.add_user(&user("bob", "bob@example.com")).await?;
    store.set_user_state("bob", UserState::Locked).await?;
    let now = at(100_000);
    for seconds in [100_000 - 7200, 100_000 - 60] {
        store
            .audit(event(seconds, AuditOutcome::Ok, "kiosk-1", "0a", "alice"))
            .await?;
    }
    store
        .audit(event(
            100_000 - 30,
            ErrorCode::CardLocked.into(),
            "kiosk-1",
            "0a",
            "alice",
        ))
        .await?;
    let mut expiring = issued("0c", "alice");
    expiring.facts.not_after = now + time::Duration::days(10);
    let mut later = issued("0d", "alice");
    later.facts.not_after = now + time::Duration::days(90);
    for (certificate, hash) in [(&expiring, "c"), (&later, "d")] {
        store
            .add_enrollment_code(&code(hash, "alice", 100_060))
            .await?;
        store
            .redeem_enrollment_code(hash, certificate, now, enrolled())
            .await?;
    }
    let stats = store.stats(now).await?;
    assert_eq!(
        stats.users,
        [(UserState::Active, 1), (UserState::Locked, 1)]
    );
    assert_eq!(
        stats.cards,
        [
            (CardState::Active, 2),
            (CardState::Locked, 0),
            (CardState::Revoked, 0)
        ]
    );
    assert_eq!(stats.sign_ins_last_hour, 1, "one ok assertion in the hour");
    assert_eq!(stats.certificates_expiring, 1);
    store
        .revoke_card(&id("0c"), RevocationReason::CessationOfOperation)
        .await?;
    let stats = store.stats(now).await?;
    assert_eq!(
        stats.certificates_expiring, 0,
        "a revoked card's does not count"
    );
    assert_eq!(
        store.revocation(&id("0c")).await?.map(|r| r.reason),
        Some(RevocationReason::CessationOfOperation)
    );
    Ok(())
}

/// Issue 12: the audit pages with a cursor, the id of the last event of a page; the
/// pages cover every event once, in order, even where times tie or run against ids.
pub async fn audit_pages_follow_on_from_the_last_event_of_the_page_before(
    store: Arc<dyn Store>,
) -> TestResult {
    // Ids 1..=6; the times tie (30) and run against the ids (id 6 is older than 5).
    for seconds in [0, 10, 30, 30, 40, 5] {
        store
            .audit(event(seconds, AuditOutcome::Ok, "kiosk-1", "0a", "alice"))
            .await?;
    }
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .query_audit(&AuditQuery {
                limit: 2,
                before,
                ..AuditQuery::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        seen.extend(page.iter().map(|event| event.id));
    }
    assert_eq!(seen, [5, 4, 3, 2, 6, 1], "every event once, newest first");
    store.purge_audit(at(6), 10).await?;
    let after_purge = store
        .query_audit(&AuditQuery {
            before: Some(1),
            ..AuditQuery::default()
        })
        .await?;
    assert!(after_purge.is_empty(), "an unknown cursor pages by id");
    let by_id = store
        .query_audit(&AuditQuery {
            before: Some(4),
            ..AuditQuery::default()
        })
        .await?;
    assert_eq!(
        by_id.iter().map(|event| event.id).collect::<Vec<_>>(),
        [3, 2]
    );
    Ok(())
}

/// Conformance: old audit events are purged oldest first at most a batch.
pub async fn old_audit_events_are_purged_oldest_first_at_most_a_batch(
    store: Arc<dyn Store>,
) -> TestResult {
    for second in 0..10 {
        store
            .audit(event(second, AuditOutcome::Ok, "kiosk-1", "0a", "alice"))
            .await?;
    }
    let cutoff = at(7);
    assert_eq!(store.purge_audit(cutoff, 4).await?, 4);
    assert_eq!(store.purge_audit(cutoff, 4).await?, 3);
    assert_eq!(store.purge_audit(cutoff, 4).await?, 0);
    let left = store.query_audit(&AuditQuery::default()).await?;
    assert_eq!(left.len(), 3);
    assert!(left.iter().all(|event| event.time >= cutoff));
    assert_eq!(store.size_bytes(), None, "in memory: no files");
    Ok(())
}

/// Conformance: the audit limit is capped.
pub async fn the_audit_limit_is_capped(store: Arc<dyn Store>) -> TestResult {
    for second in 0..1005 {
        store
            .audit(event(second, AuditOutcome::Ok, "kiosk-1", "0a", "alice"))
            .await?;
    }
    let all = AuditQuery {
        limit: u32::MAX,
        ..AuditQuery::default()
    };
    assert_eq!(store.query_audit(&all).await?.len(), 1000);
    let unset = AuditQuery {
        limit: 0,
        ..AuditQuery::default()
    };
    assert_eq!(store.query_audit(&unset).await?.len(), 100);
    Ok(())
}

/// Conformance: of sixteen racing redemptions exactly one is accepted.
pub async fn of_sixteen_racing_redemptions_exactly_one_is_accepted(
    [first, second]: [Arc<dyn Store>; 2],
) -> TestResult {
    first.add_user(&user("alice", "alice@example.com")).await?;
    first
        .add_enrollment_code(&code("race", "alice", 900))
        .await?;
    let mut tasks = Vec::new();
    for index in 0..16 {
        let store = if index % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(async move {
            store
                .redeem_enrollment_code(
                    "race",
                    &issued(&format!("{index:02x}"), "alice"),
                    at(1),
                    enrolled(),
                )
                .await
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        if task.await?? == EnrollmentCodeUse::Accepted {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(first.list_cards().await?.len(), 1);
    Ok(())
}

/// Conformance: a device enrolls once and disabling or removing it voids its unused challenges.
pub async fn a_device_enrolls_once_and_disabling_or_removing_it_voids_its_unused_challenges(
    [first, second]: [Arc<dyn Store>; 2],
) -> TestResult {
    let new = NewDevice {
        id: "kiosk-1".to_owned(),
        code_hash: "hash-1".to_owned(),
        created_at: at(0),
        code_expires_at: at(100),
    };
    first.add_device(&new, challenge_event("kiosk-1")).await?;
    let again = NewDevice {
        code_hash: "hash-9".to_owned(),
        ..new.clone()
    };
    assert!(matches!(
        first.add_device(&again, challenge_event("kiosk-1")).await,
        Err(StoreError::Conflict { .. })
    ));
    let credential = |index: u8| DeviceCredentialRecord {
        certificate: vec![index],
        serial: format!("{index:02x}"),
        fingerprint: "f".to_owned(),
        not_after: at(1000),
    };
    let mut tasks = Vec::new();
    for index in 0..16u8 {
        let store = if index % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let record = credential(index);
        tasks.push(tokio::spawn(async move {
            store
                .redeem_device_code("hash-1", &record, at(1), challenge_event("x"))
                .await
        }));
    }
    let mut accepted = Vec::new();
    for task in tasks {
        if let DeviceCodeUse::Accepted { device } = task.await?? {
            accepted.push(device);
        }
    }
    assert_eq!(accepted, ["kiosk-1"]);
    let device = first.get_device("kiosk-1").await?.ok_or("kiosk-1")?;
    assert!(device.credential.is_some() && device.code_used_at.is_some());
    assert_eq!(
        first
            .redeem_device_code("hash-1", &credential(99), at(2), challenge_event("x"))
            .await?,
        DeviceCodeUse::Used
    );
    assert_eq!(
        first
            .redeem_device_code("nope", &credential(99), at(2), challenge_event("x"))
            .await?,
        DeviceCodeUse::Unknown
    );
    let late = NewDevice {
        id: "kiosk-2".to_owned(),
        code_hash: "hash-2".to_owned(),
        created_at: at(0),
        code_expires_at: at(1),
    };
    first.add_device(&late, challenge_event("kiosk-2")).await?;
    assert_eq!(
        first
            .redeem_device_code("hash-2", &credential(98), at(1), challenge_event("x"))
            .await?,
        DeviceCodeUse::Expired
    );

    for (name, device) in [
        ("used", "kiosk-1"),
        ("held", "kiosk-1"),
        ("other", "kiosk-2"),
    ] {
        first
            .add_challenge(&nonce(name), device, at(60), challenge_event(device))
            .await?;
    }
    assert_eq!(
        first
            .use_challenge(nonce("used").as_str(), "kiosk-1", at(1))
            .await?,
        ChallengeUse::Accepted
    );
    first
        .set_device_state("kiosk-1", DeviceState::Disabled, challenge_event("kiosk-1"))
        .await?;
    assert_eq!(
        first.get_device("kiosk-1").await?.ok_or("kiosk-1")?.state,
        DeviceState::Disabled
    );
    assert_eq!(
        first
            .use_challenge(nonce("held").as_str(), "kiosk-1", at(1))
            .await?,
        ChallengeUse::Unknown,
        "the challenge it held is void"
    );
    assert_eq!(
        first
            .use_challenge(nonce("used").as_str(), "kiosk-1", at(1))
            .await?,
        ChallengeUse::Reused,
        "a used one stays, so a replay is still told apart"
    );
    assert!(matches!(
        first
            .set_device_state("nope", DeviceState::Enabled, challenge_event("nope"))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    first
        .add_challenge(
            &nonce("held-2"),
            "kiosk-2",
            at(60),
            challenge_event("kiosk-2"),
        )
        .await?;
    first
        .remove_device("kiosk-2", challenge_event("kiosk-2"))
        .await?;
    assert_eq!(
        first
            .use_challenge(nonce("held-2").as_str(), "kiosk-2", at(1))
            .await?,
        ChallengeUse::Unknown
    );
    assert_eq!(
        first
            .use_challenge(nonce("other").as_str(), "kiosk-2", at(1))
            .await?,
        ChallengeUse::Unknown
    );
    assert!(matches!(
        first
            .remove_device("kiosk-2", challenge_event("kiosk-2"))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let listed: Vec<String> = first
        .list_devices()
        .await?
        .into_iter()
        .map(|device| device.id)
        .collect();
    assert_eq!(listed, ["kiosk-1"]);
    Ok(())
}

/// Conformance: of sixteen racing uses on two nodes exactly one is accepted.
pub async fn of_sixteen_racing_uses_on_two_nodes_exactly_one_is_accepted(
    nodes: [Arc<dyn Store>; 2],
) -> TestResult {
    nodes[0]
        .add_challenge(
            &nonce("contested"),
            "kiosk-1",
            at(60),
            challenge_event("kiosk-1"),
        )
        .await?;

    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let node = Arc::clone(&nodes[task % 2]);
        let barrier = Arc::clone(&barrier);
        tasks.spawn(async move {
            barrier.wait().await;
            node.use_challenge(nonce("contested").as_str(), "kiosk-1", at(1))
                .await
        });
    }
    let mut uses = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        uses.push(joined??);
    }
    let accepted = uses
        .iter()
        .filter(|used| **used == ChallengeUse::Accepted)
        .count();
    let reused = uses
        .iter()
        .filter(|used| **used == ChallengeUse::Reused)
        .count();
    assert_eq!((accepted, reused), (1, 15), "{uses:?}");
    Ok(())
}

/// An admin audit event about user `id` (an import, an update, a deletion).
pub fn user_event(id: &str) -> NewAuditEvent {
    NewAuditEvent {
        time: at(1),
        kind: AuditKind::Admin,
        outcome: AuditOutcome::Ok,
        device: None,
        card_serial: None,
        user_id: Some(id.to_owned()),
        detail: Some(format!("user {id}")),
    }
}

/// The number of audit events of user `id`.
pub async fn events_of(store: &dyn Store, id: &str) -> Result<usize, StoreError> {
    let query = AuditQuery {
        user_id: Some(id.to_owned()),
        ..AuditQuery::default()
    };
    Ok(store.query_audit(&query).await?.len())
}

/// Conformance: users are imported, updated, renamed and deleted.
pub async fn users_are_imported_updated_renamed_and_deleted(store: Arc<dyn Store>) -> TestResult {
    let entry = |id: &str, mail: &str| (user(id, mail), user_event(id));
    let dry = store
        .import_users(
            vec![
                entry("alice", "alice@example.com"),
                entry("bob", "bob@example.com"),
            ],
            false,
            true,
        )
        .await?;
    assert!(matches!(
        dry[..],
        [Ok(UserWritten::Added), Ok(UserWritten::Added)]
    ));
    assert!(
        store.list_users().await?.is_empty(),
        "a dry run keeps nothing"
    );
    assert!(store.query_audit(&AuditQuery::default()).await?.is_empty());

    let written = store
        .import_users(
            vec![
                entry("alice", "alice@example.com"),
                entry("bob", "bob@example.com"),
                entry("carol", "ALICE@example.com"),
            ],
            false,
            false,
        )
        .await?;
    assert!(
        matches!(
            &written[..],
            [Ok(UserWritten::Added), Ok(UserWritten::Added), Err(StoreError::AttributeTaken {
                attribute: UserAttribute::Mail,
                holder,
            })] if holder == "alice"
        ),
        "{written:?}"
    );
    let robert = User {
        display_name: "Robert".to_owned(),
        ..user("bob", "bob@example.com")
    };
    let again = vec![
        entry("alice", "alice@example.com"),
        (robert.clone(), user_event("bob")),
    ];
    let refused = store.import_users(again.clone(), false, false).await?;
    assert!(matches!(
        refused[..],
        [
            Err(StoreError::Conflict { .. }),
            Err(StoreError::Conflict { .. })
        ]
    ));
    let updated = store.import_users(again, true, false).await?;
    assert!(
        matches!(
            &updated[..],
            [Ok(UserWritten::Unchanged), Ok(UserWritten::Updated(fields))]
                if fields == &["display_name"]
        ),
        "{updated:?}"
    );
    assert_eq!(store.get_user("bob").await?, Some(robert));
    let events = store.query_audit(&AuditQuery::default()).await?;
    assert_eq!(events.len(), 3, "two added, one updated, none unchanged");
    assert_eq!(
        events[0].detail.as_deref(),
        Some("user bob: updated display_name")
    );

    // An update keeps the state; every refusal leaves the user as it was.
    store.set_user_state("bob", UserState::Locked).await?;
    store
        .update_user("bob", &user("bob", "bob@new.example"), user_event("bob"))
        .await?;
    let bob = store.get_user("bob").await?.ok_or("bob")?;
    assert_eq!(
        (bob.state, bob.mail.as_deref()),
        (UserState::Locked, Some("bob@new.example"))
    );
    assert!(matches!(
        store
            .update_user("nobody", &user("nobody", "n@example.com"), user_event("x"))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store
            .update_user("bob", &user("alice", "b2@example.com"), user_event("bob"))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store
            .update_user("bob", &user("bob", "Alice@Example.com"), user_event("bob"))
            .await,
        Err(StoreError::AttributeTaken { attribute: UserAttribute::Mail, ref holder })
            if holder == "alice"
    ));
    assert_eq!(store.get_user("bob").await?, Some(bob));

    // A rename moves the cards, enrollment codes and audit events to the new id.
    store
        .record_card(&facts("01", "fp-01"), Some("bob"), at(1))
        .await?;
    store.add_enrollment_code(&code("h1", "bob", 900)).await?;
    let bob_events = events_of(&*store, "bob").await?;
    store
        .update_user(
            "bob",
            &user("robert", "bob@new.example"),
            user_event("robert"),
        )
        .await?;
    assert_eq!(store.get_user("bob").await?, None);
    assert_eq!(
        store.get_user("robert").await?.map(|user| user.state),
        Some(UserState::Locked)
    );
    assert_eq!(
        store
            .get_card(&id("01"))
            .await?
            .ok_or("01")?
            .user_id
            .as_deref(),
        Some("robert")
    );
    assert_eq!(
        store
            .get_enrollment_code("h1")
            .await?
            .map(|code| code.user_id),
        Some("robert".to_owned())
    );
    assert_eq!(events_of(&*store, "bob").await?, 0);
    assert_eq!(events_of(&*store, "robert").await?, bob_events + 1);

    // Deleting revokes the live cards, keeps every card's record without the user and
    // drops the enrollment codes; the audit keeps the events.
    store
        .record_card(&facts("02", "fp-02"), Some("robert"), at(2))
        .await?;
    store
        .revoke_card(&id("02"), RevocationReason::KeyCompromise)
        .await?;
    let revoked = store.delete_user("robert", user_event("robert")).await?;
    assert_eq!(revoked, [id("01")]);
    for (serial, reason) in [
        ("01", RevocationReason::AffiliationChanged),
        ("02", RevocationReason::KeyCompromise),
    ] {
        let card = store.get_card(&id(serial)).await?.ok_or("card kept")?;
        assert_eq!((card.state, card.user_id), (CardState::Revoked, None));
        assert_eq!(
            store.revocation(&id(serial)).await?.map(|r| r.reason),
            Some(reason)
        );
    }
    assert_eq!(store.get_enrollment_code("h1").await?, None);
    assert_eq!(store.get_user("robert").await?, None);
    assert_eq!(events_of(&*store, "robert").await?, bob_events + 2);
    assert!(matches!(
        store.delete_user("robert", user_event("robert")).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(events_of(&*store, "robert").await?, bob_events + 2);
    Ok(())
}

/// An admin audit event of credential `name`.
pub fn credential_event(name: &str) -> NewAuditEvent {
    NewAuditEvent {
        detail: Some(format!("credential {name}")),
        user_id: None,
        ..user_event("")
    }
}

/// Conformance: admin credentials are added, found and revoked, but never the last.
pub async fn admin_credentials_are_added_found_and_revoked_but_never_the_last(
    store: Arc<dyn Store>,
) -> TestResult {
    store
        .add_admin_credential("ops", "hash-ops", at(1), credential_event("ops"))
        .await?;
    for (name, hash) in [("ops", "hash-other"), ("other", "hash-ops")] {
        assert!(matches!(
            store
                .add_admin_credential(name, hash, at(1), credential_event(name))
                .await,
            Err(StoreError::Conflict { .. })
        ));
    }
    let ops = store
        .find_admin_credential("hash-ops")
        .await?
        .ok_or("ops")?;
    assert_eq!(
        (ops.name.as_str(), ops.created_at, ops.revoked_at),
        ("ops", at(1), None)
    );
    assert_eq!(store.find_admin_credential("hash-nope").await?, None);
    assert!(matches!(
        store
            .revoke_admin_credential("nobody", "hash-initial", at(2), credential_event("x"))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    // The token file's credential gets a record to revoke.
    store
        .revoke_admin_credential(
            super::INITIAL_ADMIN_CREDENTIAL,
            "hash-initial",
            at(2),
            credential_event("initial"),
        )
        .await?;
    let listed: Vec<(String, Option<OffsetDateTime>)> = store
        .admin_credentials()
        .await?
        .into_iter()
        .map(|credential| (credential.name, credential.revoked_at))
        .collect();
    assert_eq!(
        listed,
        [
            ("initial".to_owned(), Some(at(2))),
            ("ops".to_owned(), None)
        ]
    );
    assert!(matches!(
        store
            .revoke_admin_credential("initial", "hash-initial", at(3), credential_event("x"))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(
        matches!(
            store
                .revoke_admin_credential("ops", "hash-initial", at(3), credential_event("x"))
                .await,
            Err(StoreError::Conflict { .. })
        ),
        "the last active credential stays"
    );
    assert_eq!(
        store
            .find_admin_credential("hash-ops")
            .await?
            .ok_or("ops")?
            .revoked_at,
        None
    );
    assert_eq!(
        store.query_audit(&AuditQuery::default()).await?.len(),
        2,
        "refusals write no event"
    );
    Ok(())
}

/// Conformance: of sixteen racing first uses of a renewal's new certificate on two nodes
/// (sign-ins and confirmations), one completes the renewal.
pub async fn of_sixteen_racing_first_uses_of_a_renewed_certificate_one_completes_it(
    [first, second]: [Arc<dyn Store>; 2],
) -> TestResult {
    first.add_user(&user("alice", "alice@example.com")).await?;
    first.add_enrollment_code(&code("h1", "alice", 900)).await?;
    first
        .redeem_enrollment_code("h1", &issued("01", "alice"), at(1), enrolled())
        .await?;
    first
        .begin_renewal(
            &facts("01", "fp-01"),
            "alice",
            &issued("02", "alice"),
            at(2),
            renewal_event(2),
        )
        .await?;
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let node = Arc::clone(if task % 2 == 0 { &first } else { &second });
        let barrier = Arc::clone(&barrier);
        tasks.spawn(async move {
            let new = issued("02", "alice").facts;
            let used = event(5, AuditOutcome::Ok, "kiosk-1", "02", "alice");
            barrier.wait().await;
            if task % 4 < 2 {
                let session = session_for(&new, "alice", at(5));
                node.finish_sign_in(&new, "alice", at(5), used, &session)
                    .await
                    .map(|_| false)
            } else {
                node.confirm_renewal(&new, "alice", at(5), used).await
            }
        });
    }
    let mut confirmed = 0;
    while let Some(joined) = tasks.join_next().await {
        confirmed += usize::from(joined??);
    }
    assert!(confirmed <= 1, "{confirmed} confirmations completed it");
    let events = first.query_audit(&AuditQuery::default()).await?;
    let completions = events
        .iter()
        .filter(|e| e.kind == AuditKind::Renewal && e.card_serial.as_deref() == Some("02"))
        .count();
    assert_eq!(completions, 1, "{events:?}");
    let uses = events
        .iter()
        .filter(|e| e.kind == AuditKind::Assertion)
        .count();
    assert_eq!(uses, 16);
    assert_eq!(
        first.get_card(&id("01")).await?.ok_or("01")?.state,
        CardState::Revoked
    );
    assert_eq!(
        second.get_card(&id("02")).await?.ok_or("02")?.state,
        CardState::Active
    );
    assert!(first.pending_renewals(&id("01")).await?.is_empty());
    Ok(())
}

/// Conformance: of two nodes revoking the last two active admin credentials at once,
/// one is refused (eight rounds).
pub async fn of_two_nodes_revoking_the_last_two_admin_credentials_one_is_refused(
    nodes: [Arc<dyn Store>; 2],
) -> TestResult {
    let mut survivor = super::INITIAL_ADMIN_CREDENTIAL.to_owned();
    for round in 0..8 {
        let added = format!("admin-{round}");
        nodes[0]
            .add_admin_credential(
                &added,
                &format!("hash-{round}"),
                at(1),
                credential_event(&added),
            )
            .await?;
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let mut tasks = tokio::task::JoinSet::new();
        for (node, name) in nodes.iter().zip([survivor.clone(), added.clone()]) {
            let (node, barrier) = (Arc::clone(node), Arc::clone(&barrier));
            tasks.spawn(async move {
                barrier.wait().await;
                let result = node
                    .revoke_admin_credential(&name, "hash-initial", at(2), credential_event(&name))
                    .await;
                (name, result)
            });
        }
        let mut revoked = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined? {
                (name, Ok(())) => revoked.push(name),
                (_, Err(StoreError::Conflict { .. })) => {}
                (_, Err(other)) => return Err(other.into()),
            }
        }
        assert_eq!(revoked.len(), 1, "round {round}: {revoked:?} revoked");
        // The token file's credential is active until it has a (revoked) record.
        let stored = nodes[1].admin_credentials().await?;
        let mut active: Vec<String> = stored
            .iter()
            .filter(|credential| credential.revoked_at.is_none())
            .map(|credential| credential.name.clone())
            .collect();
        if !stored
            .iter()
            .any(|credential| credential.name == super::INITIAL_ADMIN_CREDENTIAL)
        {
            active.push(super::INITIAL_ADMIN_CREDENTIAL.to_owned());
        }
        let expected = if revoked[0] == added {
            &survivor
        } else {
            &added
        };
        assert_eq!(active, std::slice::from_ref(expected), "round {round}");
        survivor = expected.clone();
    }
    Ok(())
}

/// Conformance: of sixteen users sharing a mail added at once on two nodes, one is added.
pub async fn of_sixteen_racing_users_sharing_a_mail_one_is_added(
    nodes: [Arc<dyn Store>; 2],
) -> TestResult {
    // Every task's connection open before the race, so that the calls meet.
    let mut warm = tokio::task::JoinSet::new();
    for task in 0..16 {
        let node = Arc::clone(&nodes[task % 2]);
        warm.spawn(async move { node.list_users().await });
    }
    while let Some(joined) = warm.join_next().await {
        joined??;
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let node = Arc::clone(&nodes[task % 2]);
        let barrier = Arc::clone(&barrier);
        tasks.spawn(async move {
            let shared = if task % 2 == 0 {
                "same@example.com"
            } else {
                "SAME@example.com"
            };
            let added = user(&format!("user-{task:02}"), shared);
            barrier.wait().await;
            node.add_user(&added).await
        });
    }
    let (mut added, mut taken) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok(()) => added += 1,
            Err(StoreError::AttributeTaken { .. }) => taken += 1,
            Err(other) => return Err(other.into()),
        }
    }
    assert_eq!((added, taken), (1, 15));
    assert_eq!(nodes[1].list_users().await?.len(), 1);
    Ok(())
}

/// The failure count of `key` among `counts`, if it has one.
fn count_of(counts: &[FailureCount], key: &str) -> Option<u32> {
    counts
        .iter()
        .find(|count| count.key == key)
        .map(|count| count.count)
}

/// Keys as the flow control names them.
fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

/// A failure counter counts up while its failures come within the window, starts again
/// after a gap, and a success clears it; other keys are untouched.
pub async fn failures_count_up_within_the_window_and_are_cleared(
    store: Arc<dyn Store>,
) -> TestResult {
    let both = keys(&["card:ab", "device:k1@192.0.2.1"]);
    assert!(store.failures(&both).await?.is_empty(), "none yet");
    store.record_failures(&both, at(10), at(0)).await?;
    store.record_failures(&both[..1], at(20), at(0)).await?;
    let counts = store.failures(&both).await?;
    assert_eq!(count_of(&counts, "card:ab"), Some(2));
    assert_eq!(count_of(&counts, "device:k1@192.0.2.1"), Some(1));
    let card = counts.iter().find(|count| count.key == "card:ab");
    assert_eq!(card.map(|count| count.last), Some(at(20)));
    // The last failure (at 20) is before the window's start (25): counting starts again.
    store.record_failures(&both[..1], at(100), at(25)).await?;
    let counts = store.failures(&both[..1]).await?;
    assert_eq!(counts.len(), 1, "only the keys asked for: {counts:?}");
    assert_eq!(count_of(&counts, "card:ab"), Some(1));
    assert_eq!(counts[0].last, at(100));
    store.clear_failures(&both[..1]).await?;
    let counts = store.failures(&both).await?;
    assert_eq!(count_of(&counts, "card:ab"), None, "cleared");
    assert_eq!(count_of(&counts, "device:k1@192.0.2.1"), Some(1), "kept");
    Ok(())
}

/// A budget of 3 refilled one a second: a burst of 3, then one a second; each kind and key
/// has its own; several keys are spent all or none.
pub async fn budgets_allow_a_burst_refill_and_spend_from_several_keys_all_or_none(
    store: Arc<dyn Store>,
) -> TestResult {
    let step = std::time::Duration::from_secs(1);
    let tolerance = std::time::Duration::from_secs(3);
    let a = keys(&["source:192.0.2.1"]);
    let b = keys(&["source:192.0.2.2"]);
    for _ in 0..3 {
        assert_eq!(
            store
                .spend_budget("refusal", &a, at(0), step, tolerance)
                .await?,
            BudgetUse::Spent
        );
    }
    // Three spent at 0: the horizon is at 3, so the next has room at 1.
    assert_eq!(
        store
            .spend_budget("refusal", &a, at(0), step, tolerance)
            .await?,
        BudgetUse::Empty { horizon: at(3) }
    );
    assert_eq!(
        store
            .spend_budget("refusal", &b, at(0), step, tolerance)
            .await?,
        BudgetUse::Spent,
        "b has its own"
    );
    assert_eq!(
        store
            .spend_budget("challenge", &a, at(0), step, tolerance)
            .await?,
        BudgetUse::Spent,
        "each kind has its own"
    );
    for _ in 0..2 {
        assert_eq!(
            store
                .spend_budget("refusal", &a, at(2), step, tolerance)
                .await?,
            BudgetUse::Spent,
            "refilled two in two seconds"
        );
    }
    assert_eq!(
        store
            .spend_budget("refusal", &a, at(2), step, tolerance)
            .await?,
        BudgetUse::Empty { horizon: at(5) }
    );
    let both = [a[0].clone(), b[0].clone()];
    assert!(matches!(
        store
            .spend_budget("refusal", &both, at(2), step, tolerance)
            .await?,
        BudgetUse::Empty { .. }
    ));
    // b spent one at 0 (horizon 1), refilled by 2; the refused pair spent none of it.
    for _ in 0..3 {
        assert_eq!(
            store
                .spend_budget("refusal", &b, at(2), step, tolerance)
                .await?,
            BudgetUse::Spent
        );
    }
    assert!(matches!(
        store
            .spend_budget("refusal", &b, at(2), step, tolerance)
            .await?,
        BudgetUse::Empty { .. }
    ));
    let c = keys(&["source:192.0.2.3", "device:k1"]);
    assert_eq!(
        store
            .spend_budget("challenge", &c, at(0), step, tolerance)
            .await?,
        BudgetUse::Spent
    );
    for _ in 0..2 {
        assert_eq!(
            store
                .spend_budget("challenge", &c[1..], at(0), step, tolerance)
                .await?,
            BudgetUse::Spent,
            "the pair spent one of each: two are left"
        );
    }
    assert_eq!(
        store
            .spend_budget("challenge", &c[1..], at(0), step, tolerance)
            .await?,
        BudgetUse::Empty { horizon: at(3) }
    );
    Ok(())
}

/// A device proof id is accepted once; once its memory ran out it counts as new again.
pub async fn a_proof_id_is_accepted_once_until_it_is_forgotten(
    store: Arc<dyn Store>,
) -> TestResult {
    assert!(store.use_proof_id("k1/abc", at(0), at(120)).await?);
    assert!(!store.use_proof_id("k1/abc", at(100), at(220)).await?);
    assert!(
        !store.use_proof_id("k1/abc", at(120), at(240)).await?,
        "still remembered at 120"
    );
    assert!(store.use_proof_id("k1/other", at(100), at(220)).await?);
    assert!(
        store.use_proof_id("k1/abc", at(121), at(241)).await?,
        "forgotten after 120"
    );
    assert!(
        !store.use_proof_id("k1/abc", at(200), at(320)).await?,
        "remembered anew"
    );
    Ok(())
}

/// Purging the flow control removes budgets whose horizon passed, proof ids past their
/// memory and old failure counters, and nothing else.
pub async fn purging_flow_control_removes_only_what_ran_out(store: Arc<dyn Store>) -> TestResult {
    let step = std::time::Duration::from_secs(1);
    let tolerance = std::time::Duration::from_secs(2);
    let spent_early = keys(&["source:early"]);
    let spent_late = keys(&["source:late"]);
    store
        .spend_budget("challenge", &spent_early, at(0), step, tolerance)
        .await?; // horizon 1
    store
        .spend_budget("challenge", &spent_late, at(9), step, tolerance)
        .await?; // horizon 10
    store
        .spend_budget("challenge", &spent_late, at(9), step, tolerance)
        .await?; // horizon 11
    store.use_proof_id("k1/old", at(0), at(5)).await?;
    store.use_proof_id("k1/new", at(0), at(50)).await?;
    store
        .record_failures(&keys(&["card:old"]), at(1), at(0))
        .await?;
    store
        .record_failures(&keys(&["card:new"]), at(8), at(0))
        .await?;
    assert_eq!(store.purge_flow_control(at(10), at(5)).await?, 3);
    assert_eq!(
        store.purge_flow_control(at(10), at(5)).await?,
        0,
        "done once"
    );
    // The late budget kept its horizon (11): it has room for one, not two.
    assert_eq!(
        store
            .spend_budget("challenge", &spent_late, at(10), step, tolerance)
            .await?,
        BudgetUse::Spent
    );
    assert!(matches!(
        store
            .spend_budget("challenge", &spent_late, at(10), step, tolerance)
            .await?,
        BudgetUse::Empty { .. }
    ));
    assert!(
        store.use_proof_id("k1/old", at(10), at(60)).await?,
        "purged"
    );
    assert!(!store.use_proof_id("k1/new", at(10), at(60)).await?, "kept");
    let counts = store.failures(&keys(&["card:old", "card:new"])).await?;
    assert_eq!(count_of(&counts, "card:old"), None);
    assert_eq!(count_of(&counts, "card:new"), Some(1));
    Ok(())
}

/// The token key set is stored once, then replaced only by whoever read the version stored.
pub async fn token_keys_are_stored_once_and_replaced_only_from_the_version_read(
    store: Arc<dyn Store>,
) -> TestResult {
    assert!(store.token_keys().await?.is_none());
    assert_eq!(store.replace_token_keys("first", None, at(0)).await?, 1);
    assert!(matches!(
        store.replace_token_keys("other", None, at(1)).await,
        Err(StoreError::Conflict { .. })
    ));
    let stored = store.token_keys().await?.ok_or("no keys")?;
    assert_eq!((stored.version, stored.keys.as_str()), (1, "first"));
    assert!(
        !format!("{stored:?}").contains("first"),
        "Debug hides the keys"
    );
    assert_eq!(store.replace_token_keys("second", Some(1), at(2)).await?, 2);
    assert!(matches!(
        store.replace_token_keys("stale", Some(1), at(3)).await,
        Err(StoreError::Conflict { .. })
    ));
    let stored = store.token_keys().await?.ok_or("no keys")?;
    assert_eq!((stored.version, stored.keys.as_str()), (2, "second"));
    Ok(())
}

/// Failures recorded at either node count together, and a success at one clears them for both.
pub async fn failures_recorded_at_one_node_are_counted_at_the_other(
    nodes: [Arc<dyn Store>; 2],
) -> TestResult {
    let card = keys(&["card:shared"]);
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let node = Arc::clone(&nodes[task % 2]);
        let card = card.clone();
        tasks.spawn(async move { node.record_failures(&card, at(10), at(0)).await });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    for node in &nodes {
        assert_eq!(
            count_of(&node.failures(&card).await?, "card:shared"),
            Some(16)
        );
    }
    nodes[1].clear_failures(&card).await?;
    assert!(nodes[0].failures(&card).await?.is_empty());
    Ok(())
}

/// Of 16 racing spends on two nodes from a budget of 5, exactly 5 are spent.
pub async fn a_budget_is_spent_across_both_nodes(nodes: [Arc<dyn Store>; 2]) -> TestResult {
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let node = Arc::clone(&nodes[task % 2]);
        let barrier = Arc::clone(&barrier);
        tasks.spawn(async move {
            barrier.wait().await;
            let source = keys(&["source:198.51.100.7"]);
            node.spend_budget(
                "challenge",
                &source,
                at(0),
                std::time::Duration::from_secs(12),
                std::time::Duration::from_secs(60),
            )
            .await
        });
    }
    let mut spent = 0;
    while let Some(joined) = tasks.join_next().await {
        if joined?? == BudgetUse::Spent {
            spent += 1;
        }
    }
    assert_eq!(spent, 5);
    Ok(())
}

/// Of 16 racing uses of one proof id on two nodes exactly one is accepted.
pub async fn a_proof_id_used_at_one_node_is_refused_at_the_other(
    nodes: [Arc<dyn Store>; 2],
) -> TestResult {
    assert!(nodes[0].use_proof_id("k1/first", at(0), at(120)).await?);
    assert!(!nodes[1].use_proof_id("k1/first", at(1), at(121)).await?);
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let node = Arc::clone(&nodes[task % 2]);
        let barrier = Arc::clone(&barrier);
        tasks.spawn(async move {
            barrier.wait().await;
            node.use_proof_id("k1/contested", at(0), at(120)).await
        });
    }
    let mut accepted = 0;
    while let Some(joined) = tasks.join_next().await {
        if joined?? {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 1);
    Ok(())
}

/// A key set stored at one node is read at the other; of two nodes replacing the same
/// version at once exactly one succeeds.
pub async fn token_keys_rotated_at_one_node_are_read_at_the_other(
    nodes: [Arc<dyn Store>; 2],
) -> TestResult {
    nodes[0].replace_token_keys("first", None, at(0)).await?;
    let read = nodes[1].token_keys().await?.ok_or("no keys at node 2")?;
    assert_eq!((read.version, read.keys.as_str()), (1, "first"));
    let (a, b) = tokio::join!(
        nodes[0].replace_token_keys("from a", Some(1), at(1)),
        nodes[1].replace_token_keys("from b", Some(1), at(1)),
    );
    let winner = match (a, b) {
        (Ok(2), Err(StoreError::Conflict { .. })) => "from a",
        (Err(StoreError::Conflict { .. }), Ok(2)) => "from b",
        other => return Err(format!("not exactly one replacement: {other:?}").into()),
    };
    for node in &nodes {
        let read = node.token_keys().await?.ok_or("no keys")?;
        assert_eq!((read.version, read.keys.as_str()), (2, winner));
    }
    Ok(())
}
