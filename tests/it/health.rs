//! `jobcast health`: the container health probe (exit 0 on a 200 from /readyz within 5 s).
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// `jobcast health ARGS` with `env`: (exit code, stderr, how long it took).
fn health(args: &[&str], env: &[(&str, &str)]) -> (i32, String, Duration) {
    let started = Instant::now();
    let output = Command::new(BIN)
        .arg("health")
        .args(args)
        .env_remove("JOBCAST_LISTEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn health_exits_0_only_when_readyz_answers_200() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    eventually("readyz 200", Duration::from_secs(10), || async {
        let ready = http()
            .get(format!("{}/readyz", serve.url()))
            .send()
            .await
            .ok()?;
        (ready.status() == 200).then_some(())
    })
    .await;
    let (code, stderr, _) = health(&["--url", serve.url()], &[]);
    assert_eq!(code, 0, "{stderr}");
    // Without --url: the --listen address, a wildcard one probed through loopback.
    let port = serve.url().rsplit(':').next().unwrap().to_owned();
    let (code, stderr, _) = health(&[], &[("JOBCAST_LISTEN", &format!("0.0.0.0:{port}"))]);
    assert_eq!(code, 0, "{stderr}");

    // Not ready (its database is unreachable): 1, saying why.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_db = format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        free.local_addr().unwrap().port()
    );
    drop(free);
    let not_ready = Proc::serve(&dead_db, &[]);
    let (code, stderr, _) = health(&["--url", not_ready.url()], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("503"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // Nothing listening: 1 at once.
    drop(serve);
    let (code, stderr, took) = health(&["--url", &format!("http://127.0.0.1:{port}")], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn health_gives_up_on_a_server_that_never_answers() {
    // Accepts connections (the kernel's backlog) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let (code, stderr, took) = health(&["--url", &url], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(8),
        "{took:?}"
    );
    drop(silent);
}
