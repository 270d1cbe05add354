//! Several `pivtap server run` nodes behind HAProxy (scripts/haproxy) serving as one service.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::nodes::{Nodes, haproxy};
use common::{KIOSK, free_port, path_str, unlimited_budgets};
use pivtap_apdu::piv::KeyReference;
use pivtap_apdu::piv::reference_data::Pin;
use pivtap_card::PivSession;
use pivtap_client::enrollment::sign_in_with_pin;
use pivtap_client::{Client, ClientError, DeviceCredential, ServerTrust};
use pivtap_protocol::wire::{ChallengeResponse, ErrorCode};
use pivtap_vcard::image::CardImage;
use pivtap_vcard::{VirtualCard, VirtualCardBackend};
use serde_json::Value;

const ALICE_PIN: &str = "123456";
const BOB_PIN: &str = "24681357";

fn loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

#[test]
fn the_haproxy_configuration_passes_haproxys_own_check() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // haproxy -c reads the CA file: any PEM certificate does.
    let ca = pivtap_testkit::test_ca();
    let (listen, node_a, node_b) = (
        loopback(free_port()),
        loopback(free_port()),
        loopback(free_port()),
    );
    for extra in [
        vec![],
        vec!["--ca-file", path_str(&ca)],
        vec!["--no-proxy-protocol"],
        vec!["--source", "127.0.0.2"],
    ] {
        let mut args = vec![
            "config",
            path_str(dir.path()),
            "--listen",
            &listen,
            "--node",
            &node_a,
            "--node",
            &node_b,
        ];
        args.extend(extra.iter().copied());
        let run = haproxy(&args).success("scripts/haproxy config");
        let config = run.stdout;
        for line in [
            "mode tcp",
            "option httpchk",
            "uri /readyz",
            "option redispatch",
            "inter 500ms fall 2 rise 2",
            "timeout connect 1s",
        ] {
            assert!(config.contains(line), "{line:?} missing from:\n{config}");
        }
        assert_eq!(
            config.contains("send-proxy-v2"),
            !extra.contains(&"--no-proxy-protocol"),
            "{extra:?}:\n{config}"
        );
        assert_eq!(
            config.contains("verify required ca-file"),
            extra.contains(&"--ca-file"),
            "{extra:?}:\n{config}"
        );
        assert_eq!(
            config.contains("source 127.0.0.2\n"),
            extra.contains(&"--source"),
            "{extra:?}:\n{config}"
        );
        assert!(config.contains(&format!("server node1 {node_a} check")));
        assert!(config.contains(&format!("server node2 {node_b} check")));
        let file = dir.path().join("checked.cfg");
        std::fs::write(&file, &config).expect("the configuration is written");
        let check = Command::new("haproxy")
            .args(["-c", "-f", path_str(&file)])
            .output()
            .expect("haproxy runs (apt-get install haproxy, or scripts/setup-debian)");
        assert!(
            check.status.success(),
            "haproxy -c refused:\n{config}\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
}

#[test]
fn scripts_haproxy_refuses_bad_arguments() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let dir = path_str(dir.path());
    let node = loopback(free_port());
    for (args, needle) in [
        (vec!["start", dir, "--node", &node], "needs --listen"),
        (
            vec!["start", dir, "--listen", "127.0.0.1:8443"],
            "at least one --node",
        ),
        (
            vec!["start", dir, "--listen", "localhost:8443", "--node", &node],
            "is not an IPv4 ADDR:PORT",
        ),
        (
            vec!["start", dir, "--listen", "127.0.0.1:70000", "--node", &node],
            "is not an IPv4 ADDR:PORT",
        ),
        (
            vec![
                "start",
                dir,
                "--listen",
                "127.0.0.1:8443",
                "--node",
                &node,
                "--node",
                &node,
            ],
            "given twice",
        ),
        (vec!["stop", dir, "--json"], "--json goes with status"),
        (vec!["restart", dir], "unknown command"),
    ] {
        haproxy(&args).expect_code(2, &format!("{args:?}"));
        let run = haproxy(&args);
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
    }
    // Nothing was started or written by a refused start.
    haproxy(&["status", dir]).expect_code(3, "status after refused starts");
    assert!(!Path::new(dir).join("haproxy.cfg").exists());
}

#[test]
fn scripts_haproxy_starts_reports_nodes_down_and_stops() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let dir = path_str(dir.path());
    let (listen, node) = (loopback(free_port()), loopback(free_port()));
    let started = haproxy(&["start", dir, "--listen", &listen, "--node", &node])
        .success("scripts/haproxy start");
    assert_eq!(started.stdout.trim(), listen);
    // Started again with the same settings: fine; with others: refused.
    haproxy(&["start", dir, "--listen", &listen, "--node", &node]).success("start again");
    let other = loopback(free_port());
    haproxy(&["start", dir, "--listen", &other, "--node", &node])
        .failure("start with other settings", "stop it first");
    // Nothing listens at the node: HAProxy's health check takes it down.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        let run = haproxy(&["status", dir, "--json"]).success("status");
        let status: Value = serde_json::from_str(&run.stdout).expect("status --json is JSON");
        if status["nodes"][0]["state"] == "DOWN" || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["nodes"][0]["node"], node.as_str(), "{status}");
    assert_eq!(status["nodes"][0]["state"], "DOWN", "{status}");
    haproxy(&["stop", dir]).success("stop");
    haproxy(&["status", dir]).expect_code(3, "status after stop");
    haproxy(&["stop", dir]).success("stop when stopped");
}

/// A client of `url` trusting the nodes' certificate, with the usual kiosk's device credential.
fn client(nodes: &Nodes, url: &str) -> Client {
    let certificate = pivtap_testkit::forge::pem_der(&nodes.ca);
    let credential = DeviceCredential::load_dir(&nodes.device_credential(KIOSK))
        .expect("the kiosk's credential loads");
    Client::new(
        url,
        ServerTrust::Certificates(vec![certificate]),
        Duration::from_secs(30),
    )
    .expect("the client builds")
    // One service: device proofs name the balancer's origin, whichever node gets them.
    .with_origin(&nodes.balancer)
    .with_device_credential(Arc::new(credential))
}

/// A whole sign-in with `card`: the challenge from `challenger`, the assertion to `answerer`.
fn sign_in(
    runtime: &tokio::runtime::Runtime,
    challenger: &Client,
    answerer: &Client,
    card: &Path,
    pin: &str,
) -> Result<pivtap_protocol::wire::AssertionResponse, ClientError> {
    let challenge = runtime.block_on(challenger.challenge(KIOSK))?;
    let assertion = card_signs(card, pin, &challenge);
    runtime.block_on(answerer.sign_in(&assertion))
}

/// The assertion the fixture card `card` (PIN `pin`) signs for `challenge`, for the usual kiosk.
fn card_signs(card: &Path, pin: &str, challenge: &ChallengeResponse) -> String {
    let image = CardImage::load(card).expect("the card image loads");
    let mut backend =
        VirtualCardBackend::new(VirtualCard::from_image(&image).expect("a card"), "test");
    let mut session = PivSession::open(&mut backend).expect("the card opens");
    let certificate = session
        .certificate(KeyReference::PivAuthentication)
        .expect("the 9A certificate");
    sign_in_with_pin(
        &mut session,
        KeyReference::PivAuthentication,
        &certificate,
        &Pin::new(pin).expect("a PIN"),
        challenge,
        KIOSK,
    )
    .expect("the card signs")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Two nodes on one fresh database, alice a user.
fn two_nodes(edit: impl Fn(String) -> String) -> Nodes {
    let nodes = Nodes::start(2, edit);
    nodes
        .admin(
            &nodes.balancer,
            &[
                "users",
                "add",
                "--id",
                "alice",
                "--name",
                "Alice Example",
                "--mail",
                "alice@example.com",
            ],
        )
        .success("users add");
    nodes
}

/// The successful sign-ins the audit holds, per device.
fn audited_sign_ins(nodes: &Nodes) -> Vec<Value> {
    let events = nodes
        .admin(
            &nodes.balancer,
            &["audit", "--outcome", "ok", "--limit", "10000", "--json"],
        )
        .success("audit")
        .json();
    events
        .as_array()
        .expect("a JSON array of events")
        .iter()
        .filter(|event| event["kind"] == "assertion")
        .cloned()
        .collect()
}

#[test]
fn a_challenge_from_one_node_is_answered_at_the_other() {
    let nodes = two_nodes(|config| config);
    let alice = nodes.card_copy("alice");
    let (node_a, node_b) = (
        client(&nodes, &nodes.nodes[0].url),
        client(&nodes, &nodes.nodes[1].url),
    );
    let runtime = runtime();
    let challenge = runtime
        .block_on(node_a.challenge(KIOSK))
        .expect("a challenge from node A");
    assert_eq!(
        challenge.aud, nodes.balancer,
        "the origin is the balancer's"
    );
    let assertion = card_signs(&alice, ALICE_PIN, &challenge);
    let signed_in = runtime
        .block_on(node_b.sign_in(&assertion))
        .expect("node B accepts node A's challenge");
    assert_eq!(signed_in.user.id, "alice");
    // And the other way round.
    let signed_in = sign_in(&runtime, &node_b, &node_a, &alice, ALICE_PIN).expect("B to A");
    assert_eq!(signed_in.user.id, "alice");
    // Through the balancer with the command line.
    let run = nodes.auth_kiosk(&nodes.balancer, &alice, ALICE_PIN);
    assert_eq!(
        run.success("auth through HAProxy").json()["user"]["id"],
        "alice"
    );
    assert_eq!(audited_sign_ins(&nodes).len(), 3);
}

#[test]
fn one_assertion_posted_sixteen_times_at_both_nodes_signs_in_once() {
    let nodes = two_nodes(unlimited_budgets);
    let alice = nodes.card_copy("alice");
    let clients = [
        client(&nodes, &nodes.nodes[0].url),
        client(&nodes, &nodes.nodes[1].url),
    ];
    let runtime = runtime();
    let challenge = runtime
        .block_on(clients[0].challenge(KIOSK))
        .expect("a challenge");
    let assertion = card_signs(&alice, ALICE_PIN, &challenge);
    let outcomes = runtime.block_on(async {
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|index| {
                let client = clients[index % 2].clone();
                let assertion = assertion.clone();
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    client.sign_in(&assertion).await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.expect("the task ends"));
        }
        outcomes
    });
    let accepted = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(accepted, 1, "{outcomes:?}");
    // Each replay is a failure of the card, counted in the store for both nodes: the
    // first few are refused as replays, the rest as rate-limited once the card's shared
    // failure count passes the limit.
    let mut reused = 0;
    for outcome in &outcomes {
        if let Err(error) = outcome {
            match error {
                ClientError::Refused {
                    code: ErrorCode::ChallengeReused,
                    ..
                } => reused += 1,
                ClientError::Refused {
                    code: ErrorCode::RateLimited,
                    ..
                } => {}
                other => panic!("a replay is refused as challenge_reused or rate_limited: {other}"),
            }
        }
    }
    assert!(reused >= 1, "{outcomes:?}");
    assert_eq!(audited_sign_ins(&nodes).len(), 1);
}

#[test]
fn a_card_locked_through_one_node_is_refused_at_the_other() {
    let nodes = two_nodes(|config| config);
    let alice = nodes.card_copy("alice");
    let (url_a, url_b) = (&nodes.nodes[0].url, &nodes.nodes[1].url);
    let (node_a, node_b) = (client(&nodes, url_a), client(&nodes, url_b));
    let runtime = runtime();
    sign_in(&runtime, &node_b, &node_b, &alice, ALICE_PIN).expect("a sign-in at node B");
    let cards = nodes
        .admin(url_a, &["cards", "list", "--json"])
        .success("cards list")
        .json();
    let serial = cards[0]["serial"]
        .as_str()
        .expect("alice's card")
        .to_owned();
    nodes
        .admin(url_a, &["cards", "lock", &serial])
        .success("cards lock at node A");
    let refused = sign_in(&runtime, &node_b, &node_b, &alice, ALICE_PIN);
    assert!(
        matches!(
            refused,
            Err(ClientError::Refused {
                code: ErrorCode::CardLocked,
                ..
            })
        ),
        "node B's next sign-in with the card node A locked: {refused:?}"
    );
    nodes
        .admin(url_b, &["cards", "unlock", &serial])
        .success("cards unlock at node B");
    sign_in(&runtime, &node_a, &node_a, &alice, ALICE_PIN).expect("node A once node B unlocked it");
}

#[test]
fn the_rate_limit_counts_failures_at_both_nodes() {
    // Four refusals in a burst per address, one more a minute: shared by the nodes,
    // the fifth refusal is rate limited wherever it lands.
    let nodes = two_nodes(|config| {
        config
            .lines()
            .map(|line| {
                if line.starts_with("refusal_burst =") {
                    "refusal_burst = 4".to_owned()
                } else if line.starts_with("refusals_per_minute =") {
                    "refusals_per_minute = 1".to_owned()
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    // bob's card is trusted, but no user has his address: each sign-in is refused.
    let bob = nodes.card_copy("bob");
    let clients = [
        client(&nodes, &nodes.nodes[0].url),
        client(&nodes, &nodes.nodes[1].url),
    ];
    let runtime = runtime();
    let mut codes = Vec::new();
    for attempt in 0..6 {
        let client = &clients[attempt % 2];
        match sign_in(&runtime, client, client, &bob, BOB_PIN) {
            Err(ClientError::Refused { code, .. }) => codes.push(code),
            other => panic!("attempt {attempt}: {other:?}"),
        }
    }
    assert_eq!(
        codes,
        [
            ErrorCode::UserUnknown,
            ErrorCode::UserUnknown,
            ErrorCode::UserUnknown,
            ErrorCode::UserUnknown,
            ErrorCode::RateLimited,
            ErrorCode::RateLimited
        ],
        "the nodes count one budget"
    );
}

/// Kiosks signing in through the balancer in a loop; one node SIGKILLed half-way.
#[test]
fn a_node_killed_under_load_leaves_the_kiosks_signing_in_through_the_other() {
    const KIOSKS: usize = 3;
    let mut nodes = two_nodes(unlimited_budgets);
    let devices: Vec<String> = (1..=KIOSKS).map(|n| format!("kiosk-{n:02}")).collect();
    let cards: Vec<_> = devices
        .iter()
        .map(|device| {
            let copy = nodes.dir.path().join(format!("alice-{device}.toml"));
            std::fs::copy(nodes.card_copy("alice"), &copy).expect("a card per kiosk");
            nodes.device_credential(device);
            copy
        })
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Per kiosk: the tokens it saw, before and after the kill, and its failures.
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = devices
            .iter()
            .zip(&cards)
            .map(|(device, card)| {
                let (nodes, stop, killed) = (&nodes, Arc::clone(&stop), Arc::clone(&killed));
                scope.spawn(move || {
                    let (mut before, mut after, mut failures) =
                        (Vec::new(), Vec::new(), Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let was_killed = killed.load(std::sync::atomic::Ordering::SeqCst);
                        let run = nodes.auth(&nodes.balancer, device, card, ALICE_PIN);
                        if run.code == 0 {
                            let json = run.json();
                            let token = json["token"].as_str().expect("a token").to_owned();
                            let nonce = json["audit_nonce"].as_str().expect("a nonce");
                            let token = (token, format!("nonce {nonce}…"));
                            if was_killed {
                                after.push(token)
                            } else {
                                before.push(token)
                            }
                        } else {
                            failures.push(run.stderr);
                        }
                    }
                    (before, after, failures)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(4));
        // The scope borrows `nodes` shared; the kill goes through the pid.
        let pid = nodes.nodes[0].child.id().to_string();
        let status = Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -KILL {pid}");
        killed.store(true, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(6));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a kiosk thread"))
            .collect::<Vec<_>>()
    });
    nodes.kill(0);
    nodes.wait_for_balancer(1);
    let audited = audited_sign_ins(&nodes);
    let mut every_token = Vec::new();
    for (device, (before, after, failures)) in devices.iter().zip(&results) {
        assert!(
            !before.is_empty(),
            "{device} signed in before the kill: {failures:?}"
        );
        assert!(
            after.len() >= 3,
            "{device} carried on through the other node: {} after, failures {failures:?}",
            after.len()
        );
        let seen = before.len() + after.len();
        let audited_here = audited
            .iter()
            .filter(|event| event["device"] == device.as_str())
            .count();
        // Every sign-in seen is audited exactly once (found by its nonce); a sign-in cut
        // off by the kill may be audited without the kiosk seeing it, never more than its
        // failed attempts.
        for (_, nonce) in before.iter().chain(after) {
            let events = audited
                .iter()
                .filter(|event| event["device"] == device.as_str() && event["detail"] == *nonce)
                .count();
            assert_eq!(
                events, 1,
                "{device}: the sign-in of {nonce} is audited once"
            );
        }
        assert!(
            audited_here >= seen && audited_here <= seen + failures.len(),
            "{device}: saw {seen}, audited {audited_here}, failed {}",
            failures.len()
        );
        every_token.extend(before.iter().chain(after).cloned());
    }
    let total = every_token.len();
    every_token.sort();
    every_token.dedup();
    assert_eq!(every_token.len(), total, "no token was handed out twice");
    // No nonce accepted twice: each successful sign-in used its own challenge.
    let used = nodes
        .database
        .query("SELECT count(*) FROM challenges WHERE used_at IS NOT NULL");
    let used: usize = used.trim().parse().expect("a count");
    assert!(
        used >= audited.len(),
        "{used} challenges used for {} sign-ins",
        audited.len()
    );
    let mut nonces: Vec<&str> = audited
        .iter()
        .map(|event| {
            event["detail"]
                .as_str()
                .expect("a sign-in's audit names its nonce")
        })
        .collect();
    let count = nonces.len();
    nonces.sort_unstable();
    nonces.dedup();
    assert_eq!(nonces.len(), count, "no nonce was accepted twice");
    for (device, (before, after, failures)) in devices.iter().zip(&results) {
        eprintln!(
            "{device}: {} sign-ins before the kill, {} after, {} failed",
            before.len(),
            after.len(),
            failures.len()
        );
    }
}

/// The `kid` in a compact JWS's protected header.
fn kid_of(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().expect("a compact JWS");
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("base64url");
    let header: Value = serde_json::from_slice(&header).expect("a JSON header");
    header["kid"].as_str().expect("a kid").to_owned()
}

#[test]
fn a_key_rotation_reaches_both_nodes_and_each_jwks_verifies_every_token() {
    let nodes = two_nodes(unlimited_budgets);
    let alice = nodes.card_copy("alice");
    let clients = [
        client(&nodes, &nodes.nodes[0].url),
        client(&nodes, &nodes.nodes[1].url),
    ];
    let runtime = runtime();
    let mut tokens: Vec<String> = clients
        .iter()
        .map(|client| {
            sign_in(&runtime, client, client, &alice, ALICE_PIN)
                .expect("a sign-in")
                .token
        })
        .collect();
    let old_kid = kid_of(&tokens[0]);
    assert_eq!(kid_of(&tokens[1]), old_kid, "both nodes sign with one key");
    // Rotated once for the deployment; no node is restarted.
    common::run(common::pivtap_command(&[
        "server",
        "rotate-keys",
        "--config",
        path_str(&nodes.config),
    ]))
    .success("server rotate-keys");
    for (index, client) in clients.iter().enumerate() {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let token = sign_in(&runtime, client, client, &alice, ALICE_PIN)
                .expect("a sign-in")
                .token;
            let rotated = kid_of(&token) != old_kid;
            tokens.push(token);
            if rotated {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {index} still signs with the old key 5 s after the rotation"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let now = time::OffsetDateTime::now_utc();
    for (index, client) in clients.iter().enumerate() {
        let jwks = runtime.block_on(client.jwks()).expect("the node's JWKS");
        let verifier = pivtap_server::token::TokenVerifier::from_jwks(&jwks).expect("a JWKS");
        for token in &tokens {
            verifier
                .verify(token, now)
                .unwrap_or_else(|error| panic!("node {index}'s JWKS: {error}"));
        }
    }
}
