//! A worker cut off from PostgreSQL stops its attempts once their leases may have run out
//! (issue 22): before, it only logged failed heartbeats, and another worker started
//! attempt 2 while attempt 1's command was still running.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

/// A TCP relay to PostgreSQL that can be made to hang: once `cut`, bytes stop flowing both
/// ways on every connection, old and new (a partition, not a refusal).
async fn relay(target: String, cut: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let (target, cut) = (target.clone(), cut.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&target).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let c2 = cut.clone();
                let up = tokio::spawn(async move { pump(&mut cr, &mut sw, &c2).await });
                let down = tokio::spawn(async move { pump(&mut sr, &mut cw, &cut).await });
                let _ = tokio::join!(up, down);
            });
        }
    });
    port
}

async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    cut: &AtomicBool,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = tokio::io::AsyncReadExt::read(from, &mut buffer).await else {
            return;
        };
        if n == 0 {
            return;
        }
        while cut.load(Ordering::Relaxed) {
            // Partitioned: hold the bytes (and the connection) forever.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_partitioned_worker_stops_its_attempt_when_its_lease_may_have_run_out() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let admin = admin_url();
    let (rest, _) = admin.rsplit_once('/').unwrap();
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h).to_owned();
    let cut = Arc::new(AtomicBool::new(false));
    let port = relay(host_port.clone(), cut.clone()).await;
    let relayed = db.url.replacen(&host_port, &format!("127.0.0.1:{port}"), 1);
    assert_ne!(relayed, db.url);

    let dir = std::env::temp_dir().join(format!("jobcast-lease-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let started = dir.join("started");
    let stopped = dir.join("stopped");
    let command = format!(
        "slow=trap 'echo term > {}; exit 1' TERM; echo go > {}; sleep 120 & wait",
        stopped.display(),
        started.display()
    );
    let _work = Proc::work(&relayed, &["--lease-secs", "2", "--exec", &command]);
    let id = submit_ok(serve.url(), json!({"kind": "slow"})).await;
    eventually("the command started", Duration::from_secs(15), || async {
        started.exists().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cut_at = Instant::now();
    cut.store(true, Ordering::Relaxed);
    eventually(
        "the partitioned worker's command got SIGTERM",
        Duration::from_secs(8),
        || async { stopped.exists().then_some(()) },
    )
    .await;
    let took = cut_at.elapsed();
    assert!(
        took <= Duration::from_millis(2_800),
        "stopped {took:?} after the cut: no later than its 2 s lease (one heartbeat period of slack)"
    );
    // Another worker takes the job up after the lease; the old attempt is gone by then.
    let _other = Proc::work(
        &db.url,
        &["--lease-secs", "2", "--exec", "slow=echo '{\"result\": 1}'"],
    );
    let job = wait_for_status(serve.url(), &id, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(job["attempt"], 2);
    let _ = std::fs::remove_dir_all(&dir);
}
