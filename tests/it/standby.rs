//! A real failover (issue 23): a primary and a streaming standby made with pg_basebackup,
//! jobcast on a multi-host URL (`target_session_attrs=read-write`), jobs and streams running;
//! the primary is stopped at once and the standby promoted.
//!
//! - Synchronous replication (`remote_apply`): nothing acknowledged is lost, every job
//!   finishes once, an open stream goes on where it was.
//! - Asynchronous replication with the standby behind (`recovery_min_apply_delay`): events
//!   a client saw are gone from the new primary; its stream must not go on silently with
//!   other content: it ends with `event: reset`.
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::common::*;
use crate::proxies::{free_port, running_as_root, Scratch};

const T: Duration = Duration::from_secs(60);

/// The PostgreSQL server binaries' directory (initdb, pg_ctl, pg_basebackup).
fn pg_bin() -> Option<std::path::PathBuf> {
    let mut candidates: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<_> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev());
    }
    candidates
        .into_iter()
        .find(|dir| dir.join("pg_basebackup").is_file() && dir.join("pg_ctl").is_file())
}

/// Runs a PostgreSQL program (as `nobody` when we are root: PostgreSQL refuses root).
fn pg(bin: &std::path::Path, program: &str, args: &[&str]) -> std::process::Output {
    let mut command = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"]).arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    };
    let output = command
        .args(args)
        .output()
        .expect("run a PostgreSQL program");
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

struct Pair {
    bin: std::path::PathBuf,
    dir: Scratch,
    primary_port: u16,
    standby_port: u16,
}

impl Pair {
    /// A primary, and a standby streaming from it (synchronous or `apply_delay` behind).
    fn start(synchronous: bool, apply_delay: &str) -> Option<Pair> {
        let Some(bin) = pg_bin() else {
            println!("SKIPPED: pg_basebackup not found");
            return None;
        };
        let dir = Scratch::new("standby");
        let (primary_port, standby_port) = (free_port(), free_port());
        let primary = dir.path("primary");
        let standby = dir.path("standby");
        let primary_s = primary.display().to_string();
        let standby_s = standby.display().to_string();
        pg(
            &bin,
            "initdb",
            &[
                "-D",
                &primary_s,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        let sync = if synchronous {
            "synchronous_standby_names = 'standby'\nsynchronous_commit = remote_apply\n"
        } else {
            ""
        };
        std::fs::write(
            primary.join("postgresql.auto.conf"),
            format!(
                "listen_addresses = '127.0.0.1'\nport = {primary_port}\n\
                 unix_socket_directories = ''\nmax_connections = 200\nfsync = off\n{sync}"
            ),
        )
        .unwrap();
        let hba = primary.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).unwrap();
        rules.push_str("\nhost replication all 127.0.0.1/32 trust\n");
        std::fs::write(&hba, rules).unwrap();
        pg(
            &bin,
            "pg_ctl",
            &[
                "-D",
                &primary_s,
                "-l",
                &dir.path("primary.log").display().to_string(),
                "-w",
                "start",
            ],
        );
        let port = primary_port.to_string();
        pg(
            &bin,
            "pg_basebackup",
            &[
                "-D",
                &standby_s,
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
            ],
        );
        let mut conf = std::fs::read_to_string(standby.join("postgresql.auto.conf")).unwrap();
        conf = conf.replace(&format!("port = {primary_port}\n"), "");
        conf = conf.replace("synchronous_standby_names = 'standby'\n", "");
        conf = conf.replace(
            "primary_conninfo = '",
            "primary_conninfo = 'application_name=standby ",
        );
        conf.push_str(&format!(
            "port = {standby_port}\nhot_standby = on\nrecovery_min_apply_delay = '{apply_delay}'\n"
        ));
        std::fs::write(standby.join("postgresql.auto.conf"), conf).unwrap();
        pg(
            &bin,
            "pg_ctl",
            &[
                "-D",
                &standby_s,
                "-l",
                &dir.path("standby.log").display().to_string(),
                "-w",
                "start",
            ],
        );
        Some(Pair {
            bin,
            dir,
            primary_port,
            standby_port,
        })
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
            self.primary_port, self.standby_port
        )
    }

    fn primary_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.primary_port
        )
    }

    /// Replication stops (the standby's link to the primary cut): what the primary commits
    /// from now on never reaches the standby, as with a lagging asynchronous standby.
    fn cut_replication(&self) {
        let standby = self.dir.path("standby");
        let file = standby.join("postgresql.auto.conf");
        let conf = std::fs::read_to_string(&file).unwrap();
        let conf = conf.replace(
            &format!("port={}", self.primary_port),
            &format!("port={}", free_port()),
        );
        std::fs::write(&file, conf).unwrap();
        pg(
            &self.bin,
            "pg_ctl",
            &["-D", &standby.display().to_string(), "reload"],
        );
    }

    /// The failover: the primary gone at once, the standby promoted.
    fn fail_over(&self) {
        let primary = self.dir.path("primary").display().to_string();
        pg(
            &self.bin,
            "pg_ctl",
            &["-D", &primary, "-m", "immediate", "-w", "stop"],
        );
        let standby = self.dir.path("standby").display().to_string();
        pg(&self.bin, "pg_ctl", &["-D", &standby, "-w", "promote"]);
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for node in ["primary", "standby"] {
            let data = self.dir.path(node).display().to_string();
            let mut command = if running_as_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "nobody", "--"]).arg(self.bin.join("pg_ctl"));
                c
            } else {
                Command::new(self.bin.join("pg_ctl"))
            };
            let _ = command
                .args(["-D", &data, "-m", "immediate", "stop"])
                .output();
        }
    }
}

async fn ready(server: &str) -> bool {
    matches!(http().get(format!("{server}/readyz")).send().await, Ok(r) if r.status() == 200)
}

#[tokio::test]
async fn synchronous_failover_loses_nothing_and_streams_go_on() {
    let Some(pair) = Pair::start(true, "0") else {
        return;
    };
    jobcast::db::migrate::run(&pair.primary_url())
        .await
        .unwrap();
    let url = pair.url();
    let serve = Proc::serve(&url, &[]);
    let _work = Proc::work(&url, &["--lease-secs", "3"]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 60, "step_ms": 100}}),
    )
    .await;
    let mut sse = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None).await;
    let mut events = Vec::new();
    while events.len() < 8 {
        events.push(sse.next(T).await.unwrap());
    }
    pair.fail_over();
    // The stream goes on (the job is retried after its lease on the new primary): every id
    // once, in order, to the end; no reset.
    loop {
        let Some(event) = sse.next(T).await else {
            break;
        };
        assert_ne!(event.event, "reset", "nothing was lost: {event:?}");
        events.push(event);
    }
    let last = events.last().unwrap().seq().to_string();
    let mut rest = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), Some(&last)).await;
    if rest.status == 200 {
        events.extend(rest.collect(T).await);
    }
    assert_contiguous(&events, 1);
    assert_eq!(
        events.last().unwrap().event,
        "succeeded",
        "{:?}",
        types(&events)
    );
    eventually("ready on the new primary", T, || async {
        ready(serve.url()).await.then_some(())
    })
    .await;
}

#[tokio::test]
async fn asynchronous_failover_that_lost_events_resets_the_streams_instead_of_diverging() {
    let Some(pair) = Pair::start(false, "0") else {
        return;
    };
    jobcast::db::migrate::run(&pair.primary_url())
        .await
        .unwrap();
    let url = pair.url();
    let serve = Proc::serve(&url, &[]);
    let _work = Proc::work(&url, &["--lease-secs", "3"]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 150, "step_ms": 100}}),
    )
    .await;
    let mut sse = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None).await;
    let mut events = Vec::new();
    while events.len() < 10 {
        events.push(sse.next(T).await.unwrap());
    }
    // The standby falls behind: what the client sees from now on never reaches it.
    pair.cut_replication();
    while events.len() < 30 {
        events.push(sse.next(T).await.unwrap());
    }
    pair.fail_over();
    let mut reset = None;
    while let Some(event) = sse.next(T).await {
        if event.event == "reset" {
            reset = Some(event);
            break;
        }
        events.push(event);
    }
    let reset = reset.unwrap_or_else(|| {
        panic!(
            "the stream went on without a reset after losing events: {:?}",
            events
                .iter()
                .map(|e| (e.seq(), e.data["message"].clone()))
                .collect::<Vec<_>>()
        )
    });
    assert_eq!(reset.id, "0");
    // From the start again: the new primary's history, whole and in order.
    let mut again = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), Some("0")).await;
    assert_eq!(again.status, 200);
    let first = again.next(T).await.unwrap();
    assert_eq!(first.seq(), 1);
}
