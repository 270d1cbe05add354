//! Conformance of sessions, refresh tokens, OpenID Connect clients, authorization codes and logout deliveries (issue 15).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use time::Duration as TimeSpan;
use time::OffsetDateTime;

use super::{TestResult, at, event, facts, id, session_for, user, user_event};
use crate::store::{
    AuditQuery, CardId, CardState, CodeRedemption, DeliveryOutcome, KIOSK_CLIENT_ID,
    NewAuthorizationCode, NewSession, OidcClient, RefreshUse, RevocationReason, Session,
    SessionEndReason, SessionQuery, SessionSelector, Store, StoreError, UserState,
};
use pivtap_protocol::audit::{AuditKind, AuditOutcome};

/// Signs `user` in with card `serial` on `device` at [`at`]`(seconds)`: the session stored.
async fn sign_in(
    store: &dyn Store,
    user_id: &str,
    serial: &str,
    device: &str,
    seconds: i64,
) -> Result<NewSession, StoreError> {
    let card = facts(serial, &format!("fp-{serial}"));
    let session = NewSession {
        device: device.to_owned(),
        ..session_for(&card, user_id, at(seconds))
    };
    finish(store, user_id, serial, seconds, &session).await?;
    Ok(session)
}

/// Finishes a sign-in of `user` with card `serial` at [`at`]`(seconds)` with `session`.
async fn finish(
    store: &dyn Store,
    user_id: &str,
    serial: &str,
    seconds: i64,
    session: &NewSession,
) -> Result<(), StoreError> {
    let card = facts(serial, &format!("fp-{serial}"));
    let event = event(seconds, AuditOutcome::Ok, &session.device, serial, user_id);
    store
        .finish_sign_in(&card, user_id, at(seconds), event, session)
        .await
        .map(drop)
}

/// Runs `count` calls of `call` at once, alternately on each node, and collects their answers.
async fn race<T, F, Fut>(
    [first, second]: &[Arc<dyn Store>; 2],
    count: usize,
    call: F,
) -> Result<Vec<T>, Box<dyn std::error::Error + Send + Sync>>
where
    T: Send + 'static,
    F: Fn(Arc<dyn Store>, usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(count));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..count {
        let node = Arc::clone(if task % 2 == 0 { first } else { second });
        let barrier = Arc::clone(&barrier);
        let call = call(node, task);
        tasks.spawn(async move {
            barrier.wait().await;
            call.await
        });
    }
    let mut answers = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        answers.push(joined??);
    }
    Ok(answers)
}

/// Alice and Bob, as users.
async fn users(store: &dyn Store) -> Result<(), StoreError> {
    store.add_user(&user("alice", "alice@example.org")).await?;
    store.add_user(&user("bob", "bob@example.org")).await
}

/// A client `id`, confidential, with a back-channel logout URI when `backchannel`.
fn client(id: &str, backchannel: bool) -> OidcClient {
    OidcClient {
        id: id.to_owned(),
        secret_hash: Some(crate::store::secret_hash(&format!("secret of {id}"))),
        redirect_uris: vec![
            format!("https://{id}.example/callback"),
            "http://127.0.0.1:8080/cb".to_owned(),
        ],
        backchannel_logout_uri: backchannel.then(|| format!("https://{id}.example/logout")),
        created_at: at(1),
    }
}

/// A code `hash` of `client_id` for the session, valid until [`at`]`(expires)`.
fn code(hash: &str, client_id: &str, session_id: &str, expires: i64) -> NewAuthorizationCode {
    NewAuthorizationCode {
        code_hash: hash.to_owned(),
        client_id: client_id.to_owned(),
        session_id: session_id.to_owned(),
        redirect_uri: format!("https://{client_id}.example/callback"),
        code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".to_owned(),
        scope: "openid profile".to_owned(),
        nonce: Some("n-0S6_WzA2Mj".to_owned()),
        created_at: at(expires - 60),
        expires_at: at(expires),
    }
}

fn ids(sessions: &[Session]) -> Vec<&str> {
    sessions.iter().map(|session| session.id.as_str()).collect()
}

fn admin_event(seconds: i64) -> crate::store::NewAuditEvent {
    crate::store::NewAuditEvent {
        kind: AuditKind::Session,
        detail: Some("ended by admin".to_owned()),
        ..event(seconds, AuditOutcome::Ok, "kiosk-1", "01", "alice")
    }
}

/// Conformance: a sign-in stores its session, read back, listed by filter and ended once.
pub async fn sessions_are_stored_at_sign_in_listed_and_ended_once(
    store: Arc<dyn Store>,
) -> TestResult {
    users(&*store).await?;
    let first = sign_in(&*store, "alice", "01", "kiosk-1", 10).await?;
    let second = sign_in(&*store, "alice", "02", "kiosk-2", 20).await?;
    let third = sign_in(&*store, "bob", "03", "kiosk-1", 30).await?;

    let stored = store.get_session(&first.id).await?.ok_or("first")?;
    assert_eq!(
        stored,
        Session {
            id: first.id.clone(),
            user_id: "alice".to_owned(),
            device: "kiosk-1".to_owned(),
            card: id("01"),
            amr: vec!["hwk".to_owned(), "sc".to_owned(), "pin".to_owned()],
            created_at: at(10),
            expires_at: at(10) + TimeSpan::hours(12),
            ended_at: None,
            ended_reason: None,
            clients: Vec::new(),
        }
    );
    assert!(stored.is_active(at(11)));
    assert_eq!(store.get_session("no-such-session").await?, None);

    let list = |query: SessionQuery| {
        let store = Arc::clone(&store);
        async move { store.list_sessions(&query).await }
    };
    let all = list(SessionQuery::default()).await?;
    assert_eq!(ids(&all), [&third.id, &second.id, &first.id]);
    let alices = list(SessionQuery {
        user_id: Some("alice".to_owned()),
        ..SessionQuery::default()
    })
    .await?;
    assert_eq!(ids(&alices), [&second.id, &first.id]);
    let on_two = list(SessionQuery {
        device: Some("kiosk-2".to_owned()),
        ..SessionQuery::default()
    })
    .await?;
    assert_eq!(ids(&on_two), [&second.id]);
    let of_card = list(SessionQuery {
        card_serial: Some("03".to_owned()),
        ..SessionQuery::default()
    })
    .await?;
    assert_eq!(ids(&of_card), [&third.id]);
    let newest = list(SessionQuery {
        limit: 1,
        ..SessionQuery::default()
    })
    .await?;
    assert_eq!(ids(&newest), [&third.id]);

    let audited = store.query_audit(&AuditQuery::default()).await?.len();
    let ended = store
        .end_sessions(
            &SessionSelector::Id(first.id.clone()),
            SessionEndReason::Admin,
            at(40),
            Some(admin_event(40)),
        )
        .await?;
    assert_eq!(ids(&ended), [&first.id]);
    assert_eq!(
        (ended[0].ended_at, ended[0].ended_reason),
        (Some(at(40)), Some(SessionEndReason::Admin))
    );
    assert!(!ended[0].is_active(at(41)));
    assert_eq!(store.get_session(&first.id).await?.as_ref(), ended.first());
    let events = store.query_audit(&AuditQuery::default()).await?;
    assert_eq!(events.len(), audited + 1);
    assert_eq!(events[0].kind, AuditKind::Session);
    // Ended once: again it ends nothing, and keeps the first end.
    let again = store
        .end_sessions(
            &SessionSelector::Id(first.id.clone()),
            SessionEndReason::SignedOut,
            at(50),
            None,
        )
        .await?;
    assert!(again.is_empty());
    let kept = store.get_session(&first.id).await?.ok_or("first")?;
    assert_eq!(kept.ended_reason, Some(SessionEndReason::Admin));
    let active = list(SessionQuery {
        active_only: true,
        ..SessionQuery::default()
    })
    .await?;
    assert_eq!(ids(&active), [&third.id, &second.id]);

    // A sign-in that fails stores no session; a session id taken fails the whole write.
    let card = facts("04", "fp-04");
    let nobody = session_for(&card, "nobody", at(60));
    let refused = finish(&*store, "nobody", "04", 60, &nobody).await;
    assert!(
        matches!(refused, Err(StoreError::NotFound { .. })),
        "{refused:?}"
    );
    assert_eq!(store.get_session(&nobody.id).await?, None);
    let audited = store.query_audit(&AuditQuery::default()).await?.len();
    let taken = NewSession {
        id: second.id.clone(),
        ..session_for(&card, "bob", at(61))
    };
    let clash = finish(&*store, "bob", "04", 61, &taken).await;
    assert!(
        matches!(clash, Err(StoreError::Conflict { .. })),
        "{clash:?}"
    );
    assert_eq!(store.get_card(&id("04")).await?, None);
    assert_eq!(
        store.query_audit(&AuditQuery::default()).await?.len(),
        audited
    );
    assert_eq!(
        store.get_session(&second.id).await?.map(|s| s.user_id),
        Some("alice".to_owned())
    );
    Ok(())
}

/// Conformance: sessions are ended by user, by card (issuer and serial) or past their
/// expiry, only those still active, and their refresh tokens with them.
pub async fn sessions_end_by_user_card_or_expiry_with_their_refresh_tokens(
    store: Arc<dyn Store>,
) -> TestResult {
    users(&*store).await?;
    let first = sign_in(&*store, "alice", "01", "kiosk-1", 10).await?;
    let second = sign_in(&*store, "alice", "02", "kiosk-1", 20).await?;
    let bobs = sign_in(&*store, "bob", "04", "kiosk-1", 30).await?;

    let mut by_user = store
        .end_sessions(
            &SessionSelector::User("alice".to_owned()),
            SessionEndReason::UserLocked,
            at(100),
            None,
        )
        .await?;
    by_user.sort_by(|a, b| a.id.cmp(&b.id));
    let mut expected = vec![first.id.clone(), second.id.clone()];
    expected.sort();
    assert_eq!(ids(&by_user), expected);
    assert!(
        by_user
            .iter()
            .all(|s| s.ended_reason == Some(SessionEndReason::UserLocked))
    );
    assert_eq!(
        store
            .use_refresh_token(&first.refresh_token_hash, KIOSK_CLIENT_ID, "next", at(101))
            .await?,
        RefreshUse::Ended
    );

    // Another CA's card with the same serial is another card.
    let other_ca = CardId {
        issuer: "CN=Other CA".to_owned(),
        serial: "04".to_owned(),
    };
    let none = store
        .end_sessions(
            &SessionSelector::Card(other_ca),
            SessionEndReason::CardLocked,
            at(110),
            None,
        )
        .await?;
    assert!(none.is_empty());
    let by_card = store
        .end_sessions(
            &SessionSelector::Card(id("04")),
            SessionEndReason::CardRevoked,
            at(110),
            None,
        )
        .await?;
    assert_eq!(ids(&by_card), [&bobs.id]);

    let late = sign_in(&*store, "bob", "04", "kiosk-2", 200).await?;
    let expiry = at(200) + TimeSpan::hours(12);
    let early = store
        .end_sessions(
            &SessionSelector::Expired,
            SessionEndReason::MaxAge,
            expiry - TimeSpan::seconds(1),
            None,
        )
        .await?;
    assert!(early.is_empty());
    let expired = store
        .end_sessions(
            &SessionSelector::Expired,
            SessionEndReason::MaxAge,
            expiry,
            None,
        )
        .await?;
    assert_eq!(ids(&expired), [&late.id]);
    assert_eq!(expired[0].ended_reason, Some(SessionEndReason::MaxAge));
    Ok(())
}

/// Conformance: a renamed user's sessions move with them, so ending the user's sessions by
/// the new id ends them.
pub async fn a_renamed_users_sessions_move_with_them(store: Arc<dyn Store>) -> TestResult {
    users(&*store).await?;
    let session = sign_in(&*store, "bob", "02", "kiosk-1", 10).await?;
    store
        .update_user(
            "bob",
            &user("robert", "bob@example.org"),
            user_event("robert"),
        )
        .await?;
    let moved = store.get_session(&session.id).await?.ok_or("session")?;
    assert_eq!(moved.user_id, "robert");
    let ended = store
        .end_sessions(
            &SessionSelector::User("robert".to_owned()),
            SessionEndReason::UserLocked,
            at(20),
            None,
        )
        .await?;
    assert_eq!(ids(&ended), [&session.id]);
    Ok(())
}

/// Conformance: locking or revoking a card, locking or deleting a user ends their sessions
/// in the same write (queuing their logouts); a sign-in finishing after such a lock stores
/// its session ended.
pub async fn locks_revocations_and_deletions_end_sessions_in_the_same_write(
    store: Arc<dyn Store>,
) -> TestResult {
    users(&*store).await?;
    store.add_client(&client("wiki", true)).await?;
    let locked_card = sign_in(&*store, "alice", "01", "kiosk-1", 10).await?;
    let revoked_card = sign_in(&*store, "alice", "02", "kiosk-1", 20).await?;
    let locked_user = sign_in(&*store, "bob", "03", "kiosk-2", 30).await?;
    store
        .record_session_client(&locked_card.id, "wiki", at(31))
        .await?;
    let reason = |id: String| {
        let store = Arc::clone(&store);
        async move {
            Ok::<_, StoreError>(
                store
                    .get_session(&id)
                    .await?
                    .and_then(|session| session.ended_reason),
            )
        }
    };

    store.set_card_state(&id("01"), CardState::Locked).await?;
    assert_eq!(
        reason(locked_card.id.clone()).await?,
        Some(SessionEndReason::CardLocked)
    );
    assert_eq!(reason(revoked_card.id.clone()).await?, None);
    let due = store
        .claim_logout_deliveries(
            OffsetDateTime::now_utc() + TimeSpan::minutes(1),
            Duration::from_secs(30),
            10,
        )
        .await?;
    assert_eq!(
        due.iter()
            .map(|d| (d.session_id.as_str(), d.client_id.as_str()))
            .collect::<Vec<_>>(),
        [(locked_card.id.as_str(), "wiki")]
    );
    // Unlocking does not bring a session back.
    store.set_card_state(&id("01"), CardState::Active).await?;
    assert_eq!(
        reason(locked_card.id.clone()).await?,
        Some(SessionEndReason::CardLocked)
    );
    store
        .revoke_card(&id("02"), RevocationReason::KeyCompromise)
        .await?;
    assert_eq!(
        reason(revoked_card.id.clone()).await?,
        Some(SessionEndReason::CardRevoked)
    );
    store.set_user_state("bob", UserState::Locked).await?;
    assert_eq!(
        reason(locked_user.id.clone()).await?,
        Some(SessionEndReason::UserLocked)
    );

    // A sign-in whose checks ran before the lock finishes after it: its session is ended.
    let late = sign_in(&*store, "bob", "03", "kiosk-2", 40).await?;
    let stored = store.get_session(&late.id).await?.ok_or("late")?;
    assert_eq!(
        (stored.ended_at, stored.ended_reason),
        (Some(at(40)), Some(SessionEndReason::UserLocked))
    );
    assert_eq!(
        store
            .use_refresh_token(&late.refresh_token_hash, KIOSK_CLIENT_ID, "n1", at(41))
            .await?,
        RefreshUse::Ended
    );
    store.set_card_state(&id("01"), CardState::Locked).await?;
    let on_locked_card = sign_in(&*store, "alice", "01", "kiosk-1", 50).await?;
    assert_eq!(
        reason(on_locked_card.id.clone()).await?,
        Some(SessionEndReason::CardLocked)
    );

    let deleted = sign_in(&*store, "alice", "04", "kiosk-1", 60).await?;
    store.delete_user("alice", user_event("alice")).await?;
    assert_eq!(
        reason(deleted.id.clone()).await?,
        Some(SessionEndReason::UserDeleted)
    );
    Ok(())
}

/// Conformance: a refresh token rotates once; a replaced one presented again ends the
/// session; revoked, foreign or unknown ones change nothing.
pub async fn refresh_tokens_rotate_once_and_a_replaced_one_ends_the_session(
    store: Arc<dyn Store>,
) -> TestResult {
    users(&*store).await?;
    let session = sign_in(&*store, "alice", "01", "kiosk-1", 10).await?;
    let first = session.refresh_token_hash.clone();
    let used = store
        .use_refresh_token(&first, KIOSK_CLIENT_ID, "second", at(20))
        .await?;
    let RefreshUse::Rotated {
        session: read,
        scope,
    } = used
    else {
        return Err(format!("not rotated: {used:?}").into());
    };
    assert_eq!(
        (read.id.as_str(), scope.as_str()),
        (session.id.as_str(), "")
    );
    assert_eq!(
        store
            .use_refresh_token("second", "another-client", "third", at(21))
            .await?,
        RefreshUse::Unknown
    );
    assert_eq!(
        store
            .use_refresh_token("no-such-token", KIOSK_CLIENT_ID, "third", at(21))
            .await?,
        RefreshUse::Unknown
    );
    assert!(matches!(
        store
            .use_refresh_token("second", KIOSK_CLIENT_ID, "third", at(22))
            .await?,
        RefreshUse::Rotated { .. }
    ));
    // The first token again: a stolen copy; the session ends.
    assert_eq!(
        store
            .use_refresh_token(&first, KIOSK_CLIENT_ID, "fourth", at(30))
            .await?,
        RefreshUse::Reused
    );
    let ended = store.get_session(&session.id).await?.ok_or("session")?;
    assert_eq!(
        (ended.ended_at, ended.ended_reason),
        (Some(at(30)), Some(SessionEndReason::RefreshReused))
    );
    assert_eq!(
        store
            .use_refresh_token("third", KIOSK_CLIENT_ID, "fifth", at(31))
            .await?,
        RefreshUse::Ended
    );

    // Past its expiry a session's token is refused, and the session is left to upkeep.
    let old = sign_in(&*store, "alice", "01", "kiosk-1", 100).await?;
    assert_eq!(
        store
            .use_refresh_token(
                &old.refresh_token_hash,
                KIOSK_CLIENT_ID,
                "sixth",
                at(100) + TimeSpan::hours(12)
            )
            .await?,
        RefreshUse::Ended
    );
    assert_eq!(
        store.get_session(&old.id).await?.and_then(|s| s.ended_at),
        None
    );

    // A revoked token is refused; only its own client revokes it, once.
    let revoked = sign_in(&*store, "bob", "02", "kiosk-1", 200).await?;
    let hash = &revoked.refresh_token_hash;
    assert!(
        !store
            .revoke_refresh_token(hash, "another-client", at(201))
            .await?
    );
    assert!(
        store
            .revoke_refresh_token(hash, KIOSK_CLIENT_ID, at(201))
            .await?
    );
    assert!(
        !store
            .revoke_refresh_token(hash, KIOSK_CLIENT_ID, at(202))
            .await?
    );
    assert_eq!(
        store
            .use_refresh_token(hash, KIOSK_CLIENT_ID, "seventh", at(203))
            .await?,
        RefreshUse::Ended
    );

    // A replacement whose hash exists fails the whole step: the token stays current.
    let clash = sign_in(&*store, "bob", "02", "kiosk-1", 300).await?;
    let refused = store
        .use_refresh_token(&clash.refresh_token_hash, KIOSK_CLIENT_ID, hash, at(301))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict { .. })),
        "{refused:?}"
    );
    assert!(matches!(
        store
            .use_refresh_token(
                &clash.refresh_token_hash,
                KIOSK_CLIENT_ID,
                "eighth",
                at(302)
            )
            .await?,
        RefreshUse::Rotated { .. }
    ));
    Ok(())
}

/// Conformance: clients are registered once, listed, read and removed, which voids their
/// refresh tokens and unredeemed codes.
pub async fn clients_are_registered_listed_and_removed_with_their_tokens(
    store: Arc<dyn Store>,
) -> TestResult {
    users(&*store).await?;
    let wiki = client("wiki", true);
    let public = OidcClient {
        secret_hash: None,
        backchannel_logout_uri: None,
        ..client("app", false)
    };
    store.add_client(&wiki).await?;
    store.add_client(&public).await?;
    let again = store.add_client(&client("wiki", false)).await;
    assert!(
        matches!(again, Err(StoreError::Conflict { .. })),
        "{again:?}"
    );
    assert_eq!(store.get_client("wiki").await?, Some(wiki.clone()));
    assert_eq!(store.get_client("nope").await?, None);
    assert_eq!(store.list_clients().await?, vec![public, wiki]);

    let session = sign_in(&*store, "alice", "01", "kiosk-1", 10).await?;
    store
        .add_refresh_token(
            &session.id,
            "wiki",
            "wiki-token",
            "openid offline_access",
            at(11),
        )
        .await?;
    store
        .add_authorization_code(&code("wiki-code", "wiki", &session.id, 70))
        .await?;
    store.remove_client("wiki").await?;
    assert_eq!(store.get_client("wiki").await?, None);
    let missing = store.remove_client("wiki").await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );
    assert_eq!(
        store
            .use_refresh_token("wiki-token", "wiki", "next", at(12))
            .await?,
        RefreshUse::Ended
    );
    assert_eq!(
        store.redeem_authorization_code("wiki-code", at(12)).await?,
        CodeRedemption::Unknown
    );
    // The kiosk's own token is untouched.
    assert!(matches!(
        store
            .use_refresh_token(&session.refresh_token_hash, KIOSK_CLIENT_ID, "k2", at(13))
            .await?,
        RefreshUse::Rotated { .. }
    ));
    Ok(())
}

/// Conformance: an authorization code is redeemed once, before it expires, with its session.
pub async fn authorization_codes_are_redeemed_once_before_they_expire(
    store: Arc<dyn Store>,
) -> TestResult {
    users(&*store).await?;
    store.add_client(&client("wiki", true)).await?;
    let session = sign_in(&*store, "alice", "01", "kiosk-1", 10).await?;
    let fresh = code("fresh", "wiki", &session.id, 70);
    store.add_authorization_code(&fresh).await?;
    let clash = store.add_authorization_code(&fresh).await;
    assert!(
        matches!(clash, Err(StoreError::Conflict { .. })),
        "{clash:?}"
    );
    let redeemed = store.redeem_authorization_code("fresh", at(69)).await?;
    let CodeRedemption::Redeemed {
        code: read,
        session: of,
    } = redeemed
    else {
        return Err(format!("not redeemed: {redeemed:?}").into());
    };
    assert_eq!(*read, fresh);
    assert_eq!(of.id, session.id);
    // What was issued from the code: the client's refresh token; another client has one too.
    store.add_client(&client("mail", true)).await?;
    for (client_id, token) in [("wiki", "wiki-refresh"), ("mail", "mail-refresh")] {
        store
            .add_refresh_token(&session.id, client_id, token, "openid", at(69))
            .await?;
    }
    assert_eq!(
        store.redeem_authorization_code("fresh", at(69)).await?,
        CodeRedemption::Used
    );
    // Presented again, the code's client's refresh tokens in the session are revoked;
    // another client's are not.
    let wiki = store
        .use_refresh_token("wiki-refresh", "wiki", "wiki-next", at(69))
        .await?;
    assert_eq!(wiki, RefreshUse::Ended);
    let mail = store
        .use_refresh_token("mail-refresh", "mail", "mail-next", at(69))
        .await?;
    assert!(matches!(mail, RefreshUse::Rotated { .. }), "{mail:?}");
    // Used wins over expired.
    assert_eq!(
        store.redeem_authorization_code("fresh", at(500)).await?,
        CodeRedemption::Used
    );
    store
        .add_authorization_code(&code("late", "wiki", &session.id, 80))
        .await?;
    for seconds in [80, 81] {
        assert_eq!(
            store.redeem_authorization_code("late", at(seconds)).await?,
            CodeRedemption::Expired
        );
    }
    assert_eq!(
        store
            .redeem_authorization_code("never-made", at(20))
            .await?,
        CodeRedemption::Unknown
    );
    // A code of an ended session redeems with the session as it is: the caller refuses it.
    store
        .add_authorization_code(&code("orphan", "wiki", &session.id, 90))
        .await?;
    store
        .end_sessions(
            &SessionSelector::Id(session.id.clone()),
            SessionEndReason::SignedOut,
            at(40),
            None,
        )
        .await?;
    let late = store.redeem_authorization_code("orphan", at(41)).await?;
    assert!(
        matches!(&late, CodeRedemption::Redeemed { session, .. } if !session.is_active(at(41))),
        "{late:?}"
    );
    Ok(())
}

/// Conformance: clients join only active sessions; ending a session queues one logout
/// delivery per participating client with a back-channel logout URI.
pub async fn ending_a_session_queues_logout_deliveries_for_its_clients_with_a_uri(
    store: Arc<dyn Store>,
) -> TestResult {
    users(&*store).await?;
    for (name, backchannel) in [
        ("wiki", true),
        ("app", false),
        ("mail", true),
        ("idle", true),
    ] {
        store.add_client(&client(name, backchannel)).await?;
    }
    let session = sign_in(&*store, "alice", "01", "kiosk-1", 10).await?;
    let other = sign_in(&*store, "bob", "02", "kiosk-2", 10).await?;
    store
        .add_refresh_token(&session.id, "wiki", "wiki-token", "openid", at(11))
        .await?;
    store
        .record_session_client(&session.id, "app", at(12))
        .await?;
    store
        .record_session_client(&session.id, "mail", at(13))
        .await?;
    store
        .record_session_client(&session.id, "mail", at(14))
        .await?;
    store
        .record_session_client(&other.id, "idle", at(14))
        .await?;
    let read = store.get_session(&session.id).await?.ok_or("session")?;
    assert_eq!(read.clients, ["app", "mail", "wiki"]);

    let ended = store
        .end_sessions(
            &SessionSelector::Id(session.id.clone()),
            SessionEndReason::SignedOut,
            at(100),
            None,
        )
        .await?;
    assert_eq!(ended.first().map(|s| s.clients.len()), Some(3));
    let mut due = store
        .claim_logout_deliveries(at(100), Duration::from_secs(30), 10)
        .await?;
    due.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    let told: Vec<(&str, &str, &str, &str, u32)> = due
        .iter()
        .map(|d| {
            (
                d.client_id.as_str(),
                d.session_id.as_str(),
                d.uri.as_str(),
                d.user_id.as_str(),
                d.attempts,
            )
        })
        .collect();
    assert_eq!(
        told,
        [
            (
                "mail",
                session.id.as_str(),
                "https://mail.example/logout",
                "alice",
                1
            ),
            (
                "wiki",
                session.id.as_str(),
                "https://wiki.example/logout",
                "alice",
                1
            ),
        ]
    );
    assert!(due.iter().all(|d| d.created_at == at(100)));

    // An ended, unknown or expired session takes no client and no token.
    for (session_id, now) in [
        (session.id.as_str(), at(101)),
        ("no-such-session", at(101)),
        (other.id.as_str(), at(10) + TimeSpan::hours(12)),
    ] {
        let joined = store.record_session_client(session_id, "wiki", now).await;
        assert!(
            matches!(joined, Err(StoreError::Conflict { .. })),
            "{joined:?}"
        );
        let token = store
            .add_refresh_token(session_id, "wiki", "late-token", "openid", now)
            .await;
        assert!(
            matches!(token, Err(StoreError::Conflict { .. })),
            "{token:?}"
        );
    }
    assert_eq!(
        store
            .use_refresh_token("late-token", "wiki", "x", at(102))
            .await?,
        RefreshUse::Unknown
    );
    Ok(())
}

/// Conformance: logout deliveries are claimed for a lease, then delivered, retried or given up.
pub async fn logout_deliveries_are_claimed_for_a_lease_then_delivered_retried_or_given_up(
    store: Arc<dyn Store>,
) -> TestResult {
    users(&*store).await?;
    store.add_client(&client("wiki", true)).await?;
    for seconds in [10, 20, 30] {
        let session = sign_in(&*store, "alice", "01", "kiosk-1", seconds).await?;
        store
            .record_session_client(&session.id, "wiki", at(seconds + 1))
            .await?;
    }
    let ended = store
        .end_sessions(
            &SessionSelector::User("alice".to_owned()),
            SessionEndReason::UserDeleted,
            at(100),
            None,
        )
        .await?;
    assert_eq!(ended.len(), 3);
    let lease = Duration::from_secs(30);
    assert!(
        store
            .claim_logout_deliveries(at(99), lease, 10)
            .await?
            .is_empty()
    );
    let two = store.claim_logout_deliveries(at(100), lease, 2).await?;
    let last = store.claim_logout_deliveries(at(100), lease, 10).await?;
    assert_eq!((two.len(), last.len()), (2, 1));
    assert!(two.iter().all(|d| last[0].id != d.id));
    // Within the lease no one else gets them.
    assert!(
        store
            .claim_logout_deliveries(at(129), lease, 10)
            .await?
            .is_empty()
    );
    let (delivered, retried, given_up) = (two[0].id, two[1].id, last[0].id);
    store
        .finish_logout_delivery(delivered, &DeliveryOutcome::Delivered, at(101))
        .await?;
    store
        .finish_logout_delivery(
            retried,
            &DeliveryOutcome::Retry {
                at: at(200),
                error: "HTTP 503".to_owned(),
            },
            at(101),
        )
        .await?;
    store
        .finish_logout_delivery(
            given_up,
            &DeliveryOutcome::GivenUp {
                error: "connection refused".to_owned(),
            },
            at(101),
        )
        .await?;
    assert!(
        store
            .claim_logout_deliveries(at(199), lease, 10)
            .await?
            .is_empty()
    );
    let again = store.claim_logout_deliveries(at(200), lease, 10).await?;
    assert_eq!(
        again.iter().map(|d| (d.id, d.attempts)).collect::<Vec<_>>(),
        [(retried, 2)]
    );
    let missing = store
        .finish_logout_delivery(
            retried + given_up + delivered,
            &DeliveryOutcome::Delivered,
            at(1),
        )
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );
    Ok(())
}

/// Conformance: revoked access tokens are remembered until they expire and are purged;
/// purging sessions removes only what ended (or was done) before the cut.
pub async fn revoked_access_tokens_and_ended_sessions_are_purged_after_the_cut(
    store: Arc<dyn Store>,
) -> TestResult {
    users(&*store).await?;
    store.add_client(&client("wiki", true)).await?;
    store.revoke_access_token("jti-1", at(100)).await?;
    store.revoke_access_token("jti-1", at(100)).await?;
    assert!(store.is_access_token_revoked("jti-1").await?);
    assert!(!store.is_access_token_revoked("jti-2").await?);

    let old = sign_in(&*store, "alice", "01", "kiosk-1", 10).await?;
    store
        .add_refresh_token(&old.id, "wiki", "wiki-token", "openid", at(11))
        .await?;
    store
        .add_authorization_code(&code("old-code", "wiki", &old.id, 140))
        .await?;
    let end = |id: &str, seconds: i64| {
        let (store, id) = (Arc::clone(&store), id.to_owned());
        async move {
            store
                .end_sessions(
                    &SessionSelector::Id(id),
                    SessionEndReason::SignedOut,
                    at(seconds),
                    None,
                )
                .await
        }
    };
    end(&old.id, 50).await?;
    let claimed = store
        .claim_logout_deliveries(at(50), Duration::from_secs(30), 10)
        .await?;
    assert_eq!(claimed.len(), 1);
    store
        .finish_logout_delivery(claimed[0].id, &DeliveryOutcome::Delivered, at(60))
        .await?;
    let later = sign_in(&*store, "alice", "02", "kiosk-1", 20).await?;
    store
        .record_session_client(&later.id, "wiki", at(21))
        .await?;
    end(&later.id, 150).await?;
    let active = sign_in(&*store, "bob", "03", "kiosk-1", 30).await?;

    // The old session: 2 refresh tokens, its code, its client row, itself, its delivery.
    assert_eq!(store.purge_sessions(at(100)).await?, 6);
    assert_eq!(store.get_session(&old.id).await?, None);
    assert!(store.get_session(&later.id).await?.is_some());
    assert!(store.get_session(&active.id).await?.is_some());
    assert!(store.is_access_token_revoked("jti-1").await?);
    assert_eq!(
        store.redeem_authorization_code("old-code", at(70)).await?,
        CodeRedemption::Unknown
    );
    // The later session's delivery is still due.
    assert_eq!(
        store
            .claim_logout_deliveries(at(150), Duration::from_secs(30), 10)
            .await?
            .len(),
        1
    );
    assert_eq!(store.purge_sessions(at(101)).await?, 1);
    assert!(!store.is_access_token_revoked("jti-1").await?);
    Ok(())
}

/// Racing conformance: of sixteen redemptions of one code on two nodes exactly one redeems.
pub async fn of_sixteen_racing_code_redemptions_exactly_one_redeems(
    nodes: [Arc<dyn Store>; 2],
) -> TestResult {
    let first = &nodes[0];
    users(&**first).await?;
    first.add_client(&client("wiki", true)).await?;
    let session = sign_in(&**first, "alice", "01", "kiosk-1", 10).await?;
    first
        .add_authorization_code(&code("raced", "wiki", &session.id, 70))
        .await?;
    let answers = race(&nodes, 16, |node, _| async move {
        node.redeem_authorization_code("raced", at(20)).await
    })
    .await?;
    let (mut redeemed, mut used) = (0, 0);
    for answer in answers {
        match answer {
            CodeRedemption::Redeemed { .. } => redeemed += 1,
            CodeRedemption::Used => used += 1,
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    assert_eq!((redeemed, used), (1, 15));
    Ok(())
}

/// Racing conformance: of sixteen uses of one refresh token on two nodes exactly one
/// rotates, one finds it replaced and ends the session, the rest find the session ended.
pub async fn of_sixteen_racing_refresh_uses_exactly_one_rotates(
    nodes: [Arc<dyn Store>; 2],
) -> TestResult {
    users(&*nodes[0]).await?;
    let session = sign_in(&*nodes[0], "alice", "01", "kiosk-1", 10).await?;
    let token = &session.refresh_token_hash;
    let answers = race(&nodes, 16, |node, task| {
        let token = token.clone();
        async move {
            let replacement = format!("replacement-{task}");
            node.use_refresh_token(&token, KIOSK_CLIENT_ID, &replacement, at(20))
                .await
        }
    })
    .await?;
    let (mut rotated, mut reused, mut ended) = (0, 0, 0);
    for answer in answers {
        match answer {
            RefreshUse::Rotated { .. } => rotated += 1,
            RefreshUse::Reused => reused += 1,
            RefreshUse::Ended => ended += 1,
            RefreshUse::Unknown => return Err("unknown token".into()),
        }
    }
    assert_eq!((rotated, reused, ended), (1, 1, 14));
    let read = nodes[1].get_session(&session.id).await?.ok_or("session")?;
    assert_eq!(read.ended_reason, Some(SessionEndReason::RefreshReused));
    Ok(())
}

/// Racing conformance: claimers on two nodes never get the same delivery, and together
/// get every due one.
pub async fn racing_claimers_never_get_the_same_logout_delivery(
    nodes: [Arc<dyn Store>; 2],
) -> TestResult {
    let first = &nodes[0];
    users(&**first).await?;
    for name in ["wiki", "mail", "chat", "docs"] {
        first.add_client(&client(name, true)).await?;
    }
    for seconds in 0..5 {
        let session = sign_in(&**first, "alice", "01", "kiosk-1", seconds).await?;
        for name in ["wiki", "mail", "chat", "docs"] {
            first
                .record_session_client(&session.id, name, at(10))
                .await?;
        }
    }
    let ended = first
        .end_sessions(
            &SessionSelector::User("alice".to_owned()),
            SessionEndReason::UserLocked,
            at(100),
            None,
        )
        .await?;
    assert_eq!(ended.len(), 5);
    let answers = race(&nodes, 8, |node, _| async move {
        node.claim_logout_deliveries(at(100), Duration::from_secs(30), 5)
            .await
    })
    .await?;
    let mut seen = BTreeSet::new();
    for delivery in answers.into_iter().flatten() {
        assert!(
            seen.insert(delivery.id),
            "delivery {} claimed twice",
            delivery.id
        );
    }
    assert_eq!(seen.len(), 20);
    assert!(
        first
            .claim_logout_deliveries(at(101), Duration::from_secs(30), 50)
            .await?
            .is_empty()
    );
    Ok(())
}

/// Racing conformance: a session ended at once on two nodes is ended once, with one
/// delivery per client.
pub async fn a_session_ended_on_two_nodes_at_once_is_ended_once(
    nodes: [Arc<dyn Store>; 2],
) -> TestResult {
    let first = &nodes[0];
    users(&**first).await?;
    first.add_client(&client("wiki", true)).await?;
    let session = sign_in(&**first, "alice", "01", "kiosk-1", 10).await?;
    first
        .record_session_client(&session.id, "wiki", at(11))
        .await?;
    let id = &session.id;
    let answers = race(&nodes, 16, |node, task| {
        let selector = if task % 4 < 2 {
            SessionSelector::Id(id.clone())
        } else {
            SessionSelector::User("alice".to_owned())
        };
        async move {
            node.end_sessions(&selector, SessionEndReason::Admin, at(20), None)
                .await
        }
    })
    .await?;
    assert_eq!(answers.iter().map(Vec::len).sum::<usize>(), 1);
    let due = first
        .claim_logout_deliveries(at(20), Duration::from_secs(30), 50)
        .await?;
    assert_eq!(due.len(), 1);
    Ok(())
}
