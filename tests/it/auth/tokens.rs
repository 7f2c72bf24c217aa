//! Stream tokens: what opens a stream and what does not.
use serde_json::json;

use super::*;

fn hs256() -> Value {
    json!({"alg": "HS256", "typ": "JWT"})
}

#[tokio::test]
async fn stream_tokens_open_their_own_streams_and_nothing_else() {
    let db = TestDb::new().await;
    let keys = two_tenants();
    let serve = keyed_serve(&db, &keys, SECRET, &[]);
    let _work = Proc::work(&db.url, &[]);
    let s = serve.url();
    let submit = |kind: &'static str, key: &'static str| {
        let url = format!("{s}/v1/jobs");
        async move {
            let body = json!({"kind": kind, "args": {"steps": 2, "step_ms": 50}});
            call("POST", &url, Some(key), Some(body)).await
        }
    };
    let job = submit("demo.steps", ACME_KEY).await.body;
    let id = job["id"].as_str().unwrap().to_owned();
    let other = submit("demo.echo", ACME_KEY).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // links.events carries a token for that job: a browser opens it without a key.
    let link = job["links"]["events"].as_str().unwrap();
    assert!(
        link.starts_with(&format!("/v1/jobs/{id}/events?token=")),
        "{link}"
    );
    let token = link.split("token=").nth(1).unwrap().to_owned();
    let (status, stream) = open_stream(&format!("{s}{link}"), None).await;
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();
    let mut types = Vec::new();
    while let Some((event, _)) = stream.next().await {
        types.push(event);
    }
    assert_eq!(types.last().map(String::as_str), Some("succeeded"));

    // A token is read-only: ignored (so 401 without a key) on every other endpoint.
    for (method, path) in [
        ("GET", format!("/v1/jobs/{id}")),
        ("GET", "/v1/jobs".to_owned()),
        ("POST", format!("/v1/jobs/{id}/cancel")),
        ("POST", "/v1/tokens".to_owned()),
    ] {
        let reply = call(method, &format!("{s}{path}?token={token}"), None, None).await;
        assert_unauthorized(&reply, &format!("token on {method} {path}"));
    }
    // ... and ignored with a key: served as without it (before: 422 unknown query parameter).
    for (path, status) in [
        (format!("/v1/jobs/{id}"), 200),
        ("/v1/jobs".to_owned(), 200),
        (format!("/v1/jobs/{id}?wait=1"), 200),
        // demo.steps writes no output: the endpoint's own 404, not a refused parameter.
        (format!("/v1/jobs/{id}/output/output"), 404),
    ] {
        let sep = if path.contains('?') { '&' } else { '?' };
        let reply = call(
            "GET",
            &format!("{s}{path}{sep}token={token}"),
            Some(ACME_KEY),
            None,
        )
        .await;
        assert_eq!(
            reply.status, status,
            "token beside a key on GET {path}: {}",
            reply.body
        );
    }
    // A token's tags of the wrong type are a 400, as in a job spec; a broken rule a 422.
    for (tags, status) in [
        (json!("x"), 400),
        (json!([]), 400),
        (json!({"user": 1}), 400),
        (json!({"User": "1"}), 422),
    ] {
        let reply = call(
            "POST",
            &format!("{s}/v1/tokens"),
            Some(ACME_KEY),
            Some(json!({"tags": tags})),
        )
        .await;
        assert_eq!(reply.status, status, "tags {tags}: {}", reply.body);
    }

    let claims =
        |tenant: &str, jobs: Value, exp: i64| json!({"tenant": tenant, "jobs": jobs, "exp": exp});
    let refused = [
        (
            "expired",
            mint(&hs256(), &claims("acme", json!([id]), now() - 120), SECRET),
        ),
        (
            "forged",
            mint(
                &hs256(),
                &claims("acme", json!([id]), now() + 60),
                "not-the-secret-at-all",
            ),
        ),
        (
            "alg none",
            mint(
                &json!({"alg": "none", "typ": "JWT"}),
                &claims("acme", json!([id]), now() + 60),
                "",
            ),
        ),
        ("HS512", {
            // A valid signature under another algorithm name is still refused.
            mint(
                &json!({"alg": "HS512", "typ": "JWT"}),
                &claims("acme", json!([id]), now() + 60),
                SECRET,
            )
        }),
        (
            "no exp",
            mint(&hs256(), &json!({"tenant": "acme", "jobs": [id]}), SECRET),
        ),
        (
            "other job",
            mint(
                &hs256(),
                &claims("acme", json!([other]), now() + 60),
                SECRET,
            ),
        ),
        (
            "other tenant",
            mint(&hs256(), &claims("globex", json!([id]), now() + 60), SECRET),
        ),
        ("not a JWT", "garbage".to_owned()),
    ];
    for (what, token) in &refused {
        let (status, _) =
            open_stream(&format!("{s}/v1/jobs/{id}/events?token={token}"), None).await;
        assert_eq!(status, 401, "{what} token");
    }
    // Expired less than the leeway ago: still accepted.
    let recent = mint(&hs256(), &claims("acme", json!([id]), now() - 5), SECRET);
    let (status, _) = open_stream(&format!("{s}/v1/jobs/{id}/events?token={recent}"), None).await;
    assert_eq!(status, 200);

    // A jobs token does not open the firehose; a firehose token does, with its filters.
    let reply = call("GET", &format!("{s}/v1/events?token={token}"), None, None).await;
    assert_unauthorized(&reply, "jobs token on the firehose");
    let minted = call(
        "POST",
        &format!("{s}/v1/tokens"),
        Some(ACME_KEY),
        Some(json!({"firehose": true, "kind": "demo.echo", "ttl_secs": 60})),
    )
    .await;
    assert_eq!(minted.status, 201, "{}", minted.body);
    let expires_at = minted.body["expires_at"].as_str().unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(expires_at)
        .unwrap()
        .timestamp();
    assert!((expires - now() - 60).abs() <= 2, "{expires_at}");
    let firehose = minted.body["token"].as_str().unwrap();
    let (status, stream) = open_stream(
        &format!("{s}/v1/events?last_event_id=0-0&token={firehose}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, data) = stream.unwrap().next().await.unwrap();
    assert_eq!(
        data["job_id"],
        other.as_str(),
        "the token's kind filter applies"
    );
    let (status, _) = open_stream(
        &format!("{s}/v1/events?kind=demo.steps&token={firehose}"),
        None,
    )
    .await;
    assert_eq!(status, 401, "a kind the token does not cover");
    let (status, _) = open_stream(&format!("{s}/v1/jobs/{id}/events?token={firehose}"), None).await;
    assert_eq!(status, 401, "a firehose token on a job stream");

    // POST /v1/tokens for several jobs, and its refusals.
    let minted = call(
        "POST",
        &format!("{s}/v1/tokens"),
        Some(ACME_KEY),
        Some(json!({"jobs": [id, other]})),
    )
    .await;
    assert_eq!(minted.status, 201);
    let both = minted.body["token"].as_str().unwrap();
    for job in [&id, &other] {
        let (status, _) =
            open_stream(&format!("{s}/v1/jobs/{job}/events?token={both}"), None).await;
        assert!(status == 200 || status == 204, "{status}");
    }
    for (body, status) in [
        (json!({"jobs": [id, "999999"]}), 404),
        (json!({"jobs": []}), 422),
        (json!({"jobs": [id], "ttl_secs": 0}), 422),
        (json!({"jobs": [1]}), 400),
        (json!({}), 422),
    ] {
        let reply = call(
            "POST",
            &format!("{s}/v1/tokens"),
            Some(ACME_KEY),
            Some(body.clone()),
        )
        .await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        if status == 404 {
            assert!(reply.body["detail"].as_str().unwrap().contains("999999"));
        }
    }

    let mut secrets: Vec<&str> = vec![ACME_KEY, GLOBEX_KEY, &token, firehose, both];
    secrets.extend(
        refused
            .iter()
            .map(|(_, t)| t.as_str())
            .filter(|t| t.len() > 20),
    );
    // The signature part alone must not be logged either.
    let signature = token.rsplit('.').next().unwrap().to_owned();
    secrets.push(&signature);
    assert_logs_free_of(&[&serve], &secrets);
}

#[tokio::test]
async fn a_token_minted_outside_opens_the_stream_on_another_serve_and_secrets_rotate() {
    let db = TestDb::new().await;
    let keys = two_tenants();
    let old = keyed_serve(&db, &keys, SECRET, &[]);
    // Rotation: the new secret signs, the old one still verifies.
    let both = format!("{NEW_SECRET},{SECRET}");
    let rotated = keyed_serve(&db, &keys, &both, &[]);
    let job = call(
        "POST",
        &format!("{}/v1/jobs", old.url()),
        Some(ACME_KEY),
        Some(json!({"kind": "demo.echo"})),
    )
    .await;
    let id = job.body["id"].as_str().unwrap().to_owned();

    // Minted by an app with Python's standard library and the shared secret.
    let outside = mint(
        &hs256(),
        &json!({"tenant": "acme", "jobs": [id], "exp": now() + 300}),
        SECRET,
    );
    let (status, stream) = open_stream(
        &format!("{}/v1/jobs/{id}/events?token={outside}", rotated.url()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (event, data) = stream.unwrap().next().await.unwrap();
    assert_eq!((event.as_str(), &data["job_id"]), ("queued", &json!(id)));

    // Tokens of the old process verify on the rotated one; the rotated one's do not verify
    // where the new secret is unknown.
    let old_link = job.body["links"]["events"].as_str().unwrap();
    let (status, _) = open_stream(&format!("{}{old_link}", rotated.url()), None).await;
    assert_eq!(status, 200, "the old secret still verifies");
    let new_link = call(
        "GET",
        &format!("{}/v1/jobs/{id}", rotated.url()),
        Some(ACME_KEY),
        None,
    )
    .await
    .body["links"]["events"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = open_stream(&format!("{}{new_link}", rotated.url()), None).await;
    assert_eq!(status, 200);
    let (status, _) = open_stream(&format!("{}{new_link}", old.url()), None).await;
    assert_eq!(status, 401, "the new secret signs");
    let new_token = new_link.split("token=").nth(1).unwrap();
    assert_logs_free_of(&[&old, &rotated], &[&outside, new_token, ACME_KEY]);
}

#[tokio::test]
async fn a_page_on_an_allowed_origin_opens_a_token_stream_and_reads_refusals() {
    let db = TestDb::new().await;
    let keys = two_tenants();
    let origin = "http://app.example.test";
    let serve = keyed_serve(&db, &keys, SECRET, &["--cors-origins", origin]);
    let s = serve.url();
    let job = call(
        "POST",
        &format!("{s}/v1/jobs"),
        Some(ACME_KEY),
        Some(json!({"kind": "demo.echo"})),
    )
    .await;
    let link = job.body["links"]["events"].as_str().unwrap().to_owned();
    let from_page = |path: String| {
        http()
            .get(format!("{s}{path}"))
            .header("Origin", origin)
            .header("Accept", "text/event-stream")
            .send()
    };
    let open = from_page(link.clone()).await.unwrap();
    assert_eq!(open.status(), 200);
    assert_eq!(open.headers()["access-control-allow-origin"], origin);
    drop(open);
    // A refusal is readable by the page too (status, WWW-Authenticate).
    let refused = from_page(format!("{link}x")).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["access-control-allow-origin"], origin);
    let exposed = refused.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("www-authenticate"), "{exposed}");
    // A backend on that origin may send its key: Authorization passes the preflight.
    let preflight = http()
        .request(reqwest::Method::OPTIONS, format!("{s}/v1/jobs"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 200);
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
}
