//! Several `pivtap server run` nodes behind HAProxy (scripts/haproxy) serving as one service.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Run, free_port, path_str};
use serde_json::Value;

/// scripts/haproxy from the workspace.
fn haproxy_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/haproxy")
}

/// Runs scripts/haproxy with `args` to the end.
fn haproxy(args: &[&str]) -> Run {
    let output = Command::new(haproxy_script())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("scripts/haproxy runs");
    Run::from_output(output)
}

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
