//! API keys and tenants: every endpoint × {no key, wrong key, other tenant's key, right
//! key}; refusal to serve a public address without keys; SIGHUP rotation.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

#[tokio::test]
async fn every_v1_endpoint_needs_a_key_and_another_tenant_never_sees_the_job() {
    let db = TestDb::new().await;
    let keys = two_tenants();
    let serve = keyed_serve(&db, &keys, SECRET, &[]);
    let s = serve.url();

    let created = call(
        "POST",
        &format!("{s}/v1/jobs"),
        Some(ACME_KEY),
        Some(json!({"kind": "demo.echo", "queue": "q-acme"})),
    )
    .await;
    assert_eq!(created.status, 202, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let queued = json!({"kind": "demo.echo"});

    // (method, path, body) of every /v1 endpoint, and an unknown /v1 path.
    let endpoints: Vec<(&str, String, Option<serde_json::Value>)> = vec![
        ("POST", "/v1/jobs".into(), Some(queued.clone())),
        (
            "POST",
            "/v1/jobs/batch".into(),
            Some(json!({"jobs": [queued]})),
        ),
        ("GET", format!("/v1/jobs/{id}"), None),
        ("GET", "/v1/jobs".into(), None),
        ("POST", format!("/v1/jobs/{id}/cancel"), None),
        ("GET", format!("/v1/jobs/{id}/events"), None),
        ("GET", "/v1/events".into(), None),
        ("POST", "/v1/tokens".into(), Some(json!({"jobs": [id]}))),
        ("GET", "/v1/no-such-route".into(), None),
    ];
    let jobs_before = db.counts().await.0;
    for (method, path, body) in &endpoints {
        let url = format!("{s}{path}");
        let none = call(method, &url, None, body.clone()).await;
        assert_unauthorized(&none, &format!("{method} {path} without a key"));
        let wrong = call(method, &url, Some(WRONG_KEY), body.clone()).await;
        assert_unauthorized(&wrong, &format!("{method} {path} with a wrong key"));
        // A malformed Authorization header is a 401 too, never a 500.
        let basic = http()
            .request(method.parse().unwrap(), &url)
            .header("Authorization", "Basic YWNtZTp4")
            .send()
            .await
            .unwrap();
        assert_eq!(basic.status(), 401, "{method} {path} with Basic auth");
    }
    assert_eq!(
        db.counts().await.0,
        jobs_before,
        "refused requests change nothing"
    );

    // Another tenant: the job does not exist for it.
    for (method, path) in [
        ("GET", format!("/v1/jobs/{id}")),
        ("POST", format!("/v1/jobs/{id}/cancel")),
        ("POST", format!("/v1/jobs/{id}/retry")),
        ("GET", format!("/v1/jobs/{id}/events")),
    ] {
        // POSTs carry JSON (a POST without it is a 415 before anything else is looked at).
        let body = (method == "POST").then(|| json!({}));
        let reply = call(method, &format!("{s}{path}"), Some(GLOBEX_KEY), body).await;
        assert_eq!(
            reply.status, 404,
            "{method} {path} by globex: {}",
            reply.body
        );
        assert_eq!(reply.headers["content-type"], "application/problem+json");
    }
    let tokens = call(
        "POST",
        &format!("{s}/v1/tokens"),
        Some(GLOBEX_KEY),
        Some(json!({"jobs": [id]})),
    )
    .await;
    assert_eq!(tokens.status, 404, "{}", tokens.body);
    assert!(tokens.body["detail"].as_str().unwrap().contains(&id));
    let list = call("GET", &format!("{s}/v1/jobs"), Some(GLOBEX_KEY), None).await;
    assert_eq!(list.status, 200);
    assert_eq!(
        list.body["jobs"],
        json!([]),
        "globex lists none of acme's jobs"
    );

    // The right key.
    let list = call("GET", &format!("{s}/v1/jobs"), Some(ACME_KEY), None).await;
    assert_eq!(list.body["jobs"][0]["id"], id.as_str());
    let job = call("GET", &format!("{s}/v1/jobs/{id}"), Some(ACME_KEY), None).await;
    assert_eq!(job.status, 200);
    let (status, _) = open_stream(&format!("{s}/v1/jobs/{id}/events"), Some(ACME_KEY)).await;
    assert_eq!(status, 200);
    let batch = call(
        "POST",
        &format!("{s}/v1/jobs/batch"),
        Some(ACME_KEY),
        Some(json!({"jobs": [{"kind": "demo.echo"}]})),
    )
    .await;
    assert_eq!(batch.status, 202);

    // The firehose from the very beginning: each tenant sees only its own jobs' events.
    let globex_job = call(
        "POST",
        &format!("{s}/v1/jobs"),
        Some(GLOBEX_KEY),
        Some(json!({"kind": "demo.echo"})),
    )
    .await;
    let globex_id = globex_job.body["id"].as_str().unwrap().to_owned();
    let (status, stream) = open_stream(
        &format!("{s}/v1/events?last_event_id=0-0"),
        Some(GLOBEX_KEY),
    )
    .await;
    assert_eq!(status, 200);
    let (_, first) = stream.unwrap().next().await.unwrap();
    assert_eq!(
        first["job_id"],
        globex_id.as_str(),
        "globex's firehose skips acme"
    );
    let (_, stream) =
        open_stream(&format!("{s}/v1/events?last_event_id=0-0"), Some(ACME_KEY)).await;
    let mut stream = stream.unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(stream.next().await.unwrap().1["job_id"].clone());
    }
    assert_eq!(seen[0], id.as_str());
    assert!(
        !seen.contains(&json!(globex_id)),
        "acme's firehose skips globex"
    );

    let cancel = call(
        "POST",
        &format!("{s}/v1/jobs/{id}/cancel"),
        Some(ACME_KEY),
        Some(json!({})),
    )
    .await;
    assert_eq!(cancel.status, 202, "{}", cancel.body);

    // No key needed outside /v1.
    for path in ["/", "/healthz", "/readyz", "/metrics"] {
        let reply = call("GET", &format!("{s}{path}"), None, None).await;
        assert_eq!(reply.status, 200, "{path}");
    }
    assert_logs_free_of(&[&serve], &[ACME_KEY, GLOBEX_KEY, WRONG_KEY]);
}

#[tokio::test]
async fn idempotency_keys_are_per_tenant() {
    let db = TestDb::new().await;
    let keys = two_tenants();
    let serve = keyed_serve(&db, &keys, SECRET, &[]);
    let post = |key: &'static str| {
        http()
            .post(format!("{}/v1/jobs", serve.url()))
            .bearer_auth(key)
            .header("Idempotency-Key", "order-1")
            .json(&json!({"kind": "demo.echo"}))
            .send()
    };
    let acme = post(ACME_KEY).await.unwrap();
    assert_eq!(acme.status(), 202);
    let acme: serde_json::Value = acme.json().await.unwrap();
    let globex = post(GLOBEX_KEY).await.unwrap();
    assert_eq!(
        globex.status(),
        202,
        "the same key under another tenant is new"
    );
    let globex: serde_json::Value = globex.json().await.unwrap();
    assert_ne!(acme["id"], globex["id"]);
    let again = post(ACME_KEY).await.unwrap();
    assert_eq!(again.status(), 200);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["id"], acme["id"]);
}

fn spawn_serve(args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("JOBCAST_API_KEYS_FILE")
        .env_remove("JOBCAST_INSECURE_NO_AUTH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().unwrap()
}

/// Waits up to `within` for the child to exit; (code, stderr).
fn exit_within(mut child: std::process::Child, within: Duration) -> (Option<i32>, String) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return (status.code(), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return (None, String::new());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn refuses_to_serve_a_public_address_without_keys_unless_told_to() {
    let db = TestDb::new().await;
    for subcommand in ["serve", "dev"] {
        let child = spawn_serve(
            &[
                subcommand,
                "--listen",
                "0.0.0.0:0",
                "--database-url",
                &db.url,
            ],
            &[],
        );
        let (code, stderr) = exit_within(child, Duration::from_secs(1));
        assert_eq!(code, Some(2), "{subcommand} must exit 2 within a second");
        assert!(
            stderr.contains("--api-keys-file") && stderr.contains("--insecure-no-auth"),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    // --insecure-no-auth, by flag or environment, serves anyway (tenant `default`).
    for (args, env) in [
        (vec!["--insecure-no-auth"], vec![]),
        (vec![], vec![("JOBCAST_INSECURE_NO_AUTH", "1")]),
    ] {
        let mut all = vec!["serve", "--listen", "0.0.0.0:0", "--database-url", &db.url];
        all.extend(args);
        let mut child = spawn_serve(&all, &env);
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stdout).lines().next()
        })
        .await
        .unwrap();
        let line = line.expect("a listening line").unwrap();
        let port = line.rsplit(':').next().unwrap().to_owned();
        let reply = call(
            "GET",
            &format!("http://127.0.0.1:{port}/v1/jobs"),
            None,
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "{line}");
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[tokio::test]
async fn a_malformed_keys_file_stops_serve_with_the_line_and_without_the_key() {
    let db = TestDb::new().await;
    let cases = [
        (
            format!("acme {ACME_KEY}\nacme {ACME_KEY_2} extra\n"),
            ":2: ",
        ),
        (format!("# c\n\nbad/tenant {ACME_KEY}\n"), ":3: "),
        ("acme short-key\n".to_owned(), ":1: "),
        (format!("acme {ACME_KEY}\nglobex {ACME_KEY}\n"), ":2: "),
    ];
    for (text, line) in cases {
        let path = keys_file(&text);
        let child = spawn_serve(
            &[
                "serve",
                "--database-url",
                &db.url,
                "--api-keys-file",
                path.to_str().unwrap(),
            ],
            &[],
        );
        let (code, stderr) = exit_within(child, Duration::from_secs(5));
        assert_eq!(code, Some(2), "{text:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{}{line}", path.display())),
            "names PATH:N: {stderr}"
        );
        for secret in [ACME_KEY, ACME_KEY_2, "short-key"] {
            assert!(!stderr.contains(secret), "prints no key: {stderr}");
        }
    }
    // A token secret list without a secret is refused.
    let keys = two_tenants();
    let child = spawn_serve(
        &[
            "serve",
            "--database-url",
            &db.url,
            "--api-keys-file",
            keys.to_str().unwrap(),
        ],
        &[("JOBCAST_TOKEN_SECRET", " , ")],
    );
    let (code, stderr) = exit_within(child, Duration::from_secs(5));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--token-secret"), "{stderr}");
    // A short one serves (API.md sets no length; before: exit 2), with a warning that does
    // not echo it, and its tokens open streams.
    let serve = crate::auth::keyed_serve(&db, &keys, "short-secret-15", &[]);
    let job = call(
        "POST",
        &format!("{}/v1/jobs", serve.url()),
        Some(ACME_KEY),
        Some(serde_json::json!({"kind": "demo.echo"})),
    )
    .await
    .body;
    let link = job["links"]["events"].as_str().expect("a token link");
    let (status, _) = open_stream(&format!("{}{link}", serve.url()), None).await;
    assert_eq!(status, 200);
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert!(log.contains("shorter than 16"), "{log}");
    assert!(!log.contains("short-secret-15"), "{log}");
}

#[tokio::test]
async fn sighup_rotates_keys_while_open_streams_stay_open() {
    let db = TestDb::new().await;
    let keys = keys_file(&format!("acme {ACME_KEY}\n"));
    let serve = keyed_serve(&db, &keys, SECRET, &[]);
    let _work = Proc::work(&db.url, &[]);
    let s = serve.url();
    let job = call(
        "POST",
        &format!("{s}/v1/jobs"),
        Some(ACME_KEY),
        Some(json!({"kind": "demo.steps", "args": {"steps": 6, "step_ms": 300}})),
    )
    .await;
    let id = job.body["id"].as_str().unwrap().to_owned();
    let (status, stream) = open_stream(&format!("{s}/v1/jobs/{id}/events"), Some(ACME_KEY)).await;
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();
    assert_eq!(stream.next().await.unwrap().0, "queued");

    // Rotate: the old key out, a new one in.
    std::fs::write(&keys, format!("acme {ACME_KEY_2}\n")).unwrap();
    serve.signal("HUP");
    eventually("the new key to work", Duration::from_secs(5), || async {
        let reply = call("GET", &format!("{s}/v1/jobs/{id}"), Some(ACME_KEY_2), None).await;
        (reply.status == 200).then_some(())
    })
    .await;
    let old = call("GET", &format!("{s}/v1/jobs/{id}"), Some(ACME_KEY), None).await;
    assert_unauthorized(&old, "the rotated-out key");

    // A malformed file on SIGHUP is refused; the keys in force stay.
    std::fs::write(&keys, "acme\n").unwrap();
    serve.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = call("GET", &format!("{s}/v1/jobs/{id}"), Some(ACME_KEY_2), None).await;
    assert_eq!(still.status, 200);

    // The stream opened with the old key runs on to the end.
    let mut last = String::new();
    while let Some((event, _)) = stream.next().await {
        last = event;
    }
    assert_eq!(last, "succeeded");
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert!(
        log.contains("API keys file refused"),
        "the refusal is logged"
    );
    assert_logs_free_of(&[&serve], &[ACME_KEY, ACME_KEY_2]);
}

#[tokio::test]
async fn submit_sends_the_key_of_jobcast_api_key() {
    let db = TestDb::new().await;
    let keys = two_tenants();
    let serve = keyed_serve(&db, &keys, SECRET, &[]);
    let _work = Proc::work(&db.url, &[]);
    let server = serve.url().to_owned();
    let submit = move |key: Option<&'static str>| {
        let server = server.clone();
        tokio::task::spawn_blocking(move || {
            let mut command = Command::new(BIN);
            command
                .args(["submit", "demo.echo", "--args", r#"{"a":1}"#, "--follow"])
                .args(["--server", &server])
                .env_remove("JOBCAST_API_KEY");
            if let Some(key) = key {
                command.env("JOBCAST_API_KEY", key);
            }
            command.output().unwrap()
        })
    };
    let refused = submit(None).await.unwrap();
    assert_ne!(refused.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    let ok = submit(Some(ACME_KEY)).await.unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), r#"{"a":1}"#);
}

/// Queues and workers are shared by every tenant: with several tenants, only operator
/// tenants may list them or pause a queue (a tenant must not stop another's work).
#[tokio::test]
async fn only_operator_tenants_see_and_pause_the_shared_queues() {
    let db = TestDb::new().await;
    let both = keyed_serve(&db, &two_tenants(), SECRET, &[]);
    let s = both.url();
    for (method, path, body) in [
        ("GET", "/v1/queues", None),
        ("GET", "/v1/workers", None),
        ("POST", "/v1/queues/default/pause", Some(json!({}))),
    ] {
        let reply = call(method, &format!("{s}{path}"), Some(ACME_KEY), body).await;
        assert_eq!(
            reply.status, 403,
            "{method} {path} with two tenants and no operator"
        );
    }
    drop(both);

    let operated = keyed_serve(&db, &two_tenants(), SECRET, &["--operator-tenants", "acme"]);
    let s = operated.url();
    let pause = format!("{s}/v1/queues/default/pause");
    let refused = call("POST", &pause, Some(GLOBEX_KEY), Some(json!({}))).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let paused = call("POST", &pause, Some(ACME_KEY), Some(json!({}))).await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.body["paused"], true);
    let listed = call("GET", &format!("{s}/v1/queues"), Some(ACME_KEY), None).await;
    assert_eq!(listed.status, 200);
    drop(operated);

    // One tenant: it is the operator.
    let single = keyed_serve(&db, &keys_file(&format!("acme {ACME_KEY}\n")), SECRET, &[]);
    let reply = call(
        "GET",
        &format!("{}/v1/queues", single.url()),
        Some(ACME_KEY),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}
