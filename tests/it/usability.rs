//! What a new user meets past the demo, through the real binary: errors that say what to do
//! (once), `dev`'s database URL, stable port and password, Ctrl-C that says what it waits
//! for, and `submit --follow` output that scripts and terminals can both read.
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("jobcast-{tag}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `jobcast ARGS` in `dir` to its end: (exit code, stdout, stderr).
fn run_in(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn interrupt(pid: u32) {
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_taken_address_is_named_and_dev_starts_nothing_before_binding() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = temp_dir("taken");
    let (code, _, stderr) = run_in(&dir, &["dev", "--listen", &address]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {address}"))
            && stderr.contains("Address already in use"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        !dir.join(".jobcast").exists(),
        "no cluster was created before binding"
    );

    let db = TestDb::new().await;
    let (code, _, stderr) = run_in(
        &dir,
        &["serve", "--listen", &address, "--database-url", &db.url],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {address}")),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn initdb_failures_show_initdbs_own_error_and_what_to_do() {
    if !is_root() {
        eprintln!("skipped: the cluster runs as nobody only when jobcast runs as root");
        return;
    }
    // A project directory that `nobody` cannot reach (like a checkout under /root).
    let private = temp_dir("private");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let project = private.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let (code, _, stderr) = run_in(&project, &["dev", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(2), "{stderr}");
    let line = stderr.trim();
    assert_eq!(line.lines().count(), 1, "{stderr}");
    assert!(line.contains("Permission denied"), "{line}");
    assert!(!line.contains("checksums"), "{line}");
    assert!(
        line.contains("nobody") && line.contains("DATABASE_URL"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&private);
}

/// `jobcast dev` in `dir`, killed (and its cluster stopped) if the test fails midway.
struct Dev {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    /// (database URL, export line, listening URL) as printed.
    printed: (String, String, String),
}

impl Dev {
    fn start(dir: &Path) -> Dev {
        let log = dir.join(format!("dev-{}.log", rand::random::<u32>()));
        let mut child = Command::new(BIN)
            .args(["dev", "--listen", "127.0.0.1:0", "--grace-secs", "1"])
            .current_dir(dir)
            .env_remove("DATABASE_URL")
            .env_remove("JOBCAST_LISTEN")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut database, mut export) = (String::new(), String::new());
        let mut listening = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(url) = line.strip_prefix("database: ") {
                database = url.to_owned();
            } else if line.starts_with("export JOBCAST_SERVER=") {
                export = line;
            } else if let Some(url) = line.strip_prefix("jobcast listening on ") {
                listening = url.to_owned();
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let dev = Dev {
            child,
            dir: dir.to_owned(),
            log,
            printed: (database, export, listening),
        };
        assert!(
            !dev.printed.2.is_empty(),
            "dev never listened; see {}",
            dev.log.display()
        );
        dev
    }

    fn stop(&mut self) {
        interrupt(self.child.id());
        assert_eq!(wait_exit(&mut self.child, Duration::from_secs(30)), Some(0));
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Ok(pid) = std::fs::read_to_string(self.dir.join(".jobcast/pg/data/postmaster.pid")) {
            if let Some(pid) = pid.lines().next() {
                let _ = Command::new("kill").args(["-QUIT", pid]).status();
            }
        }
    }
}

#[tokio::test]
async fn dev_prints_its_urls_keeps_its_port_and_asks_for_a_password() {
    let dir = temp_dir("devurls");
    let mut dev = Dev::start(&dir);
    let (database, export, listening) = dev.printed.clone();
    assert_eq!(export, format!("export JOBCAST_SERVER={listening}"));
    assert!(database.starts_with("postgres://postgres:"), "{database}");

    // The password is required, and kept where only its owner can read it.
    let password_file = dir.join(".jobcast/pg/password");
    let mode = std::fs::metadata(&password_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let password = std::fs::read_to_string(&password_file).unwrap();
    assert!(database.contains(&format!(":{}@", password.trim())));
    let port = database
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let without = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let refused = tokio_postgres::connect(&without, tokio_postgres::NoTls).await;
    let error = jobcast::db::one_line(&refused.err().expect("no password, no connection"));
    assert!(
        error.contains("password") || error.contains("authentication"),
        "{error}"
    );
    let wrong = format!("postgres://postgres:guess@127.0.0.1:{port}/postgres");
    assert!(tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
        .await
        .is_err());
    let (client, connection) = tokio_postgres::connect(&database, tokio_postgres::NoTls)
        .await
        .expect("the printed URL works");
    tokio::spawn(connection);
    client.simple_query("select 1").await.unwrap();
    drop(client);

    // The export line is what submit needs.
    let url = listening.clone();
    let id = submit_ok(&url, json!({"kind": "demo.echo", "args": {"x": 1}})).await;
    wait_for_status(&url, &id, "succeeded", Duration::from_secs(15)).await;

    // Restarted in the same directory: the same database URL (same port).
    dev.stop();
    drop(dev);
    let again = Dev::start(&dir);
    assert_eq!(again.printed.0, database, "the same port across restarts");
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn ctrl_c_says_what_it_waits_for_and_a_second_one_stops_at_once() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let mut worker = Proc::work(&db.url, &["--lease-secs", "2", "--grace-secs", "30"]);
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 20, "step_ms": 100}}),
    )
    .await;
    wait_for_status(serve.url(), &id, "running", Duration::from_secs(15)).await;

    worker.signal("INT");
    let log = eventually("the drain message", Duration::from_secs(5), || {
        let log = std::fs::read_to_string(&worker.log).unwrap();
        async move { log.contains("waiting up to").then_some(log) }
    })
    .await;
    let line = log.lines().find(|l| l.contains("waiting up to")).unwrap();
    assert!(
        line.contains(&id) && line.contains("Ctrl-C again"),
        "{line}"
    );

    // A second press, as a person makes one (a signal within 100 ms of the first is the
    // same request: GNU timeout sends two).
    std::thread::sleep(Duration::from_millis(150));
    let second = Instant::now();
    worker.signal("INT");
    let code = worker.wait_exit(Duration::from_secs(3));
    assert_eq!(code, Some(130), "a second Ctrl-C stops at once");
    assert!(second.elapsed() < Duration::from_secs(2));
    let stderr = std::fs::read_to_string(&worker.log).unwrap();
    assert!(stderr.contains("stopping now"), "{stderr}");

    // Handed back as after a crash: another worker finishes it on attempt 2.
    let _other = Proc::work(&db.url, &[]);
    let job = wait_for_status(serve.url(), &id, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(job["attempt"], 2);
}

#[tokio::test]
async fn errors_are_one_line_with_each_cause_once_and_no_colours_in_files() {
    let dir = temp_dir("errors");
    let admin = admin_url();
    let (server, _) = admin.rsplit_once('/').unwrap();
    let missing = format!("{server}/no_such_database_here");
    let (code, _, stderr) = run_in(&dir, &["migrate", "--database-url", &missing]);
    assert_eq!(code, Some(2), "{stderr}");
    let line = stderr.trim();
    assert_eq!(line.lines().count(), 1, "{stderr}");
    assert_eq!(
        line.matches("does not exist").count(),
        1,
        "each cause once: {line}"
    );
    assert!(!line.contains("db error: db error"), "{line}");
    assert!(line.contains("cannot connect to"), "{line}");

    // Logs written to a file (not a terminal) carry no ANSI colour codes.
    let db = TestDb::new().await;
    let (code, _, stderr) = run_in(&dir, &["migrate", "--database-url", &db.url]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("INFO"), "logs were written: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "no escape codes: {stderr:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn submit_follow_prints_the_result_on_its_own_line() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(&db.url, &[]);
    let dir = temp_dir("follow");

    // Off a terminal: the job id on stderr, the result alone on stdout.
    let (code, stdout, stderr) = run_in(
        &dir,
        &[
            "submit",
            "demo.steps",
            "--args",
            r#"{"steps": 2, "step_ms": 10}"#,
            "--follow",
            "--server",
            serve.url(),
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), r#"{"steps":2}"#);
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("job ") && first.len() > 4,
        "the job id: {stderr}"
    );

    // On a terminal (script(1) gives it one): the result on a line of its own.
    let command = format!(
        "{BIN} submit demo.steps --args '{{\"steps\": 2, \"step_ms\": 10}}' --follow --server {}",
        serve.url()
    );
    let output = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(&dir)
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output();
    let Ok(output) = output else {
        eprintln!("skipped the terminal half: script(1) is not installed");
        return;
    };
    let screen = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    let last = screen.trim_end().lines().last().unwrap_or_default();
    assert_eq!(last, r#"{"steps":2}"#, "{screen:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A PostgreSQL program, from PATH or Debian's versioned directories.
fn pg_program(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.pop()
    })
}

#[tokio::test]
async fn a_cluster_made_by_an_older_jobcast_stops_trusting_everyone() {
    let Some(initdb) = pg_program("initdb") else {
        eprintln!("skipped: no initdb");
        return;
    };
    // What older versions made: --auth=trust, no password file.
    let dir = temp_dir("legacy");
    let pg = dir.join(".jobcast/pg");
    std::fs::create_dir_all(&pg).unwrap();
    let mut command = if is_root() {
        Command::new("chown")
            .args(["-R", "nobody"])
            .arg(&pg)
            .status()
            .unwrap();
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"]).arg(&initdb);
        c
    } else {
        Command::new(&initdb)
    };
    let made = command
        .arg("-D")
        .arg(pg.join("data"))
        .args(["-U", "postgres", "--auth=trust", "--no-sync"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");

    let dev = Dev::start(&dir);
    let database = dev.printed.0.clone();
    let port = database
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let without = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    assert!(
        tokio_postgres::connect(&without, tokio_postgres::NoTls)
            .await
            .is_err(),
        "no longer trusts a connection without the password"
    );
    let (client, connection) = tokio_postgres::connect(&database, tokio_postgres::NoTls)
        .await
        .expect("the printed URL works");
    tokio::spawn(connection);
    client.simple_query("select 1").await.unwrap();
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `HEAD` answers like `GET` on the pages and the client (issue 25: 404 before).
#[tokio::test]
async fn head_answers_on_the_console_and_the_client() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    for path in ["/", "/client.js", "/healthz"] {
        let response = http()
            .head(format!("{}{path}", serve.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "HEAD {path}");
    }
}

/// `work --no-demo-handlers` (what deploy/compose.yaml runs) claims no demo job.
#[tokio::test]
async fn a_worker_without_demo_handlers_leaves_demo_jobs_alone() {
    let db = TestDb::new().await;
    let serve = Proc::serve(&db.url, &[]);
    let _work = Proc::work(
        &db.url,
        &[
            "--no-demo-handlers",
            "--exec",
            "mine=echo '{\"result\": 7}'",
        ],
    );
    let demo = submit_ok(serve.url(), serde_json::json!({"kind": "demo.echo"})).await;
    let mine = submit_ok(serve.url(), serde_json::json!({"kind": "mine"})).await;
    let job = wait_for_status(serve.url(), &mine, "succeeded", Duration::from_secs(15)).await;
    assert_eq!(job["result"], 7);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get_job(serve.url(), &demo).await["status"], "queued");
}
