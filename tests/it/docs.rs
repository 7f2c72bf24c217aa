//! The docs stay true: every route the server registers (read from the sources, so a new
//! route cannot be forgotten) is listed in docs/api.md with its method, and the README points
//! at the docs the repository carries.
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// (method, path) of every `.route("PATH", web::METHOD()…)` and `web::resource("PATH")`
/// (method `*`) under src/, whitespace and line breaks ignored.
fn registered_routes() -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut routes = Vec::new();
    for file in files {
        let text: String = std::fs::read_to_string(&file)
            .unwrap()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        for (at, _) in text.match_indices(".route(\"") {
            let rest = &text[at + ".route(\"".len()..];
            let Some(end) = rest.find('"') else { continue };
            let path = &rest[..end];
            let after = &rest[end..];
            let method = ["get", "post", "put", "patch", "delete", "head"]
                .into_iter()
                .find(|m| after.starts_with(&format!("\",web::{m}()")))
                // GET routes that answer HEAD too.
                .or_else(|| after.starts_with("\",get_or_head()").then_some("get"))
                .unwrap_or_else(|| {
                    panic!("{}: route {path} with an unknown method", file.display())
                });
            routes.push((method.to_uppercase(), path.to_owned()));
        }
        for (at, _) in text.match_indices("web::resource(\"") {
            let rest = &text[at + "web::resource(\"".len()..];
            if let Some(end) = rest.find('"') {
                routes.push(("*".to_owned(), rest[..end].to_owned()));
            }
        }
    }
    routes
}

/// `/v1/jobs/{id}/events` as the docs write it: `/v1/jobs/ID/events`.
fn as_documented(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => in_param = true,
            '}' => in_param = false,
            c if in_param => out.extend(c.to_uppercase()),
            c => out.push(c),
        }
    }
    out
}

fn documents(docs: &str, method: &str, path: &str) -> bool {
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || "/_.-{}".contains(c);
    let needles: Vec<String> = if method == "*" {
        vec![format!(" {path}")]
    } else {
        vec![format!("{method} {path}")]
    };
    needles.iter().any(|needle| {
        docs.match_indices(needle.as_str()).any(|(at, _)| {
            !docs[at + needle.len()..]
                .chars()
                .next()
                .is_some_and(is_path_char)
        })
    })
}

#[test]
fn every_registered_route_is_in_docs_api_md() {
    let routes = registered_routes();
    // The scan itself must work, or the test would pass on nothing.
    for known in [
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/{id}/events"),
        ("GET", "/readyz"),
    ] {
        assert!(
            routes.iter().any(|(m, p)| m == known.0 && p == known.1),
            "the route scan missed {known:?}; found {routes:?}"
        );
    }
    let docs = std::fs::read_to_string(root().join("docs/api.md")).unwrap();
    let missing: Vec<String> = routes
        .iter()
        .filter(|(method, path)| !documents(&docs, method, &as_documented(path)))
        .map(|(method, path)| format!("{method} {}", as_documented(path)))
        .collect();
    assert!(
        missing.is_empty(),
        "routes missing from docs/api.md: {missing:?}"
    );
}

#[test]
fn the_readme_points_at_the_docs_in_the_repository() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        !readme.contains("../shared"),
        "README points outside the repository"
    );
    for doc in ["docs/api.md", "docs/deploy.md"] {
        assert!(readme.contains(doc), "README does not link {doc}");
        assert!(root().join(doc).exists(), "{doc} is missing");
    }
}

/// `/openapi.json`, as a running `serve` answers it, describes every registered route with
/// its method.
#[tokio::test]
async fn every_registered_route_is_in_the_openapi_document() {
    let db = crate::common::TestDb::new().await;
    let serve = crate::common::Proc::serve(&db.url, &[]);
    let document: serde_json::Value = crate::common::http()
        .get(format!("{}/openapi.json", serve.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let missing: Vec<String> = registered_routes()
        .into_iter()
        .filter(|(method, _)| method != "*")
        .filter(|(method, path)| {
            // actix's {name} path parameters are OpenAPI's too.
            document["paths"][path.as_str()][method.to_lowercase()].is_null()
        })
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    assert!(
        missing.is_empty(),
        "routes missing from /openapi.json: {missing:?}"
    );
}
