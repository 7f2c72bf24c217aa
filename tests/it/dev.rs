//! `jobcast dev` from a clean directory: its own PostgreSQL, the page, a demo job.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn dev_comes_up_from_a_clean_directory_serves_the_page_and_runs_a_demo_job() {
    let dir = std::env::temp_dir().join(format!("jobcast-dev-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(dir.join("dev.log")).unwrap();
    // Its PostgreSQL on a port of our choosing (`--pg-port`, issue 25).
    let pg_port = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap().port().to_string()
    };
    let child = Command::new(BIN)
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--grace-secs",
            "2",
            "--pg-port",
            &pg_port,
        ])
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    // Killed (with its cluster stopped by hand) should an assertion fail midway.
    let mut child = DevGuard {
        child,
        dir: dir.clone(),
    };
    let child = &mut child.child;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut database = None;
    let url = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            if let Some(db) = line.strip_prefix("database: ") {
                database = Some(db.to_owned());
            }
            line.strip_prefix("jobcast listening on ")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("dev never listened; see {}", dir.join("dev.log").display()));
    let database = database.expect("dev printed its database URL");
    assert!(
        database.contains(&format!(":{pg_port}/")),
        "{database} is on --pg-port {pg_port}"
    );
    std::thread::spawn(move || for _ in lines {});

    let page = http().get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("<script type=\"module\" src=\"/console.js\">"));

    eventually("readyz 200", Duration::from_secs(10), || async {
        let ready = http().get(format!("{url}/readyz")).send().await.unwrap();
        (ready.status() == 200).then_some(())
    })
    .await;

    let id = submit_ok(
        &url,
        json!({"kind": "demo.steps", "args": {"steps": 3, "step_ms": 50}}),
    )
    .await;
    let events = Sse::open(&url, &format!("/v1/jobs/{id}/events"), None)
        .await
        .collect(Duration::from_secs(15))
        .await;
    assert_eq!(types(&events).last(), Some(&"succeeded"));
    // The LLM-style demo streams its text.
    let id = submit_ok(
        &url,
        json!({"kind": "demo.tokens", "args": {"tokens": 20, "token_ms": 5}}),
    )
    .await;
    wait_for_status(&url, &id, "succeeded", Duration::from_secs(15)).await;
    let text = http()
        .get(format!("{url}/v1/jobs/{id}/output/output"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.starts_with("tok1 tok2 ") && text.ends_with("tok20 "),
        "{text}"
    );
    assert!(
        dir.join(".jobcast/pg/data/PG_VERSION").exists(),
        "a private cluster under ./.jobcast/pg"
    );

    // Ctrl-C stops everything it started, including its PostgreSQL; twice within a few ms
    // (GNU `timeout` signals the child, then its process group) is still one request (before:
    // exit 130 with the cluster left running).
    for _ in 0..2 {
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        std::thread::sleep(Duration::from_millis(5));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dev did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, Some(0));
    assert!(
        !dir.join(".jobcast/pg/data/postmaster.pid").exists(),
        "the embedded PostgreSQL was stopped"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

struct DevGuard {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for DevGuard {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let data = self.dir.join(".jobcast/pg/data");
            let mut stop = Command::new("pg_ctl");
            stop.args(["stop", "-m", "immediate", "-D"]).arg(&data);
            let is_root = std::fs::metadata("/proc/self")
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
                .unwrap_or(false);
            if is_root {
                stop = Command::new("runuser");
                stop.args([
                    "-u",
                    "nobody",
                    "--",
                    "pg_ctl",
                    "stop",
                    "-m",
                    "immediate",
                    "-D",
                ])
                .arg(&data);
            }
            let _ = stop.output();
        }
    }
}
