//! TLS to PostgreSQL: a cluster of the test's own with `ssl=on` and only `hostssl` entries,
//! a CA made here, and the real binary connecting with each `sslmode`.
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use jobcast::embedded::Cluster;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;

use crate::common::*;

/// Stops the cluster (SIGQUIT: immediate) should the test fail midway.
struct StopOnDrop(std::path::PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("postmaster.pid")) {
            if let Some(pid) = pid.lines().next() {
                let _ = Command::new("kill").args(["-QUIT", pid]).status();
            }
        }
    }
}

/// A CA's certificate (PEM) and an issuer to sign with.
fn certificate_authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, Issuer::new(params, key))
}

/// Writes a file the cluster's owner can read (and only it: PostgreSQL checks the key's mode).
fn write_for_cluster(data: &Path, name: &str, contents: &str) {
    let path = data.join(name);
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let owner = std::fs::metadata(data).unwrap().uid();
    std::os::unix::fs::chown(&path, Some(owner), None).unwrap();
}

/// `jobcast migrate` against `url`: (exit code, stdout, stderr).
fn migrate(url: &str) -> (i32, String, String) {
    let output = Command::new(BIN)
        .args(["migrate", "--database-url", url])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_refused(url: &str, expected: &[&str]) {
    let (code, _, stderr) = migrate(url);
    eprintln!("refused: {}", stderr.trim());
    assert_eq!(code, 2, "{url} should be refused; stderr: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    for part in expected {
        assert!(stderr.contains(part), "{part:?} missing from: {stderr}");
    }
}

#[tokio::test]
async fn connects_over_tls_with_each_sslmode_and_says_clearly_why_not() {
    let root = std::env::temp_dir().join(format!("jobcast-tls-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&root).unwrap();
    let mut cluster = Cluster::start_or_reuse(&root.join("pg"))
        .await
        .expect("own cluster");
    cluster.stop_now("fast").await.unwrap();
    let _stop = StopOnDrop(cluster.data_dir());

    let (ca_pem, ca) = certificate_authority("jobcast test CA");
    let (other_ca_pem, _) = certificate_authority("some other CA");
    // Issued for 127.0.0.1 only: `localhost` passes verify-ca but not verify-full.
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    server.distinguished_name.push(DnType::CommonName, "db");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &ca).unwrap();

    let data = cluster.data_dir();
    write_for_cluster(&data, "server.crt", &server_cert.pem());
    write_for_cluster(&data, "server.key", &server_key.serialize_pem());
    let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
    conf.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    write_for_cluster(&data, "postgresql.conf", &conf);
    write_for_cluster(
        &data,
        "pg_hba.conf",
        "hostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
    );
    cluster.start().await.expect("start with ssl=on");

    let ca_file = root.join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let other_ca_file = root.join("other-ca.pem");
    std::fs::write(&other_ca_file, &other_ca_pem).unwrap();
    let base = cluster.url();
    let port = base.rsplit(':').next().unwrap().split('/').next().unwrap();
    let with = |params: &str| format!("{base}?{params}");
    let verify_full = with(&format!(
        "sslmode=verify-full&sslrootcert={}",
        ca_file.display()
    ));

    // verify-full with the CA: migrate, then serve and work (pool and LISTEN) over TLS.
    let (code, stdout, stderr) = migrate(&verify_full);
    assert_eq!(code, 0, "verify-full with the CA: {stderr}");
    assert!(stdout.contains("migrations applied"));
    let serve = Proc::serve(&verify_full, &[]);
    let _work = Proc::work(&verify_full, &[]);
    eventually("readyz 200 over TLS", Duration::from_secs(20), || async {
        let ready = http()
            .get(format!("{}/readyz", serve.url()))
            .send()
            .await
            .ok()?;
        (ready.status() == 200).then_some(())
    })
    .await;
    let id = submit_ok(
        serve.url(),
        json!({"kind": "demo.steps", "args": {"steps": 2, "step_ms": 10}}),
    )
    .await;
    let events = Sse::open(serve.url(), &format!("/v1/jobs/{id}/events"), None)
        .await
        .collect(Duration::from_secs(20))
        .await;
    assert_eq!(types(&events).last(), Some(&"succeeded"));
    let client =
        tokio_postgres::connect(&format!("{base}?sslmode=disable"), tokio_postgres::NoTls).await;
    assert!(client.is_err(), "plain connections are refused by pg_hba");

    // require: encrypted, no CA needed.
    let (code, _, stderr) = migrate(&with("sslmode=require"));
    assert_eq!(code, 0, "require: {stderr}");

    // verify-ca checks the chain but not the name; verify-full checks both.
    let by_name = base.replace("127.0.0.1", "localhost");
    let (code, _, stderr) = migrate(&format!(
        "{by_name}?sslmode=verify-ca&sslrootcert={}",
        ca_file.display()
    ));
    assert_eq!(code, 0, "verify-ca ignores the host name: {stderr}");
    assert_refused(
        &format!(
            "{by_name}?sslmode=verify-full&sslrootcert={}",
            ca_file.display()
        ),
        &[
            &format!("cannot connect to localhost:{port}"),
            "certificate",
        ],
    );

    // Without the right CA: one clear line, naming the server.
    assert_refused(
        &with(&format!(
            "sslmode=verify-full&sslrootcert={}",
            other_ca_file.display()
        )),
        &[
            &format!("cannot connect to 127.0.0.1:{port}"),
            "certificate",
        ],
    );
    assert_refused(
        &with("sslmode=verify-full&sslrootcert=system"),
        &[
            &format!("cannot connect to 127.0.0.1:{port}"),
            "UnknownIssuer",
        ],
    );
    if !std::env::var("HOME")
        .is_ok_and(|home| Path::new(&home).join(".postgresql/root.crt").exists())
    {
        assert_refused(&with("sslmode=verify-full"), &["sslrootcert="]);
    }
    // A server that requires TLS refuses sslmode=disable, and says so.
    assert_refused(
        &with("sslmode=disable"),
        &[
            &format!("cannot connect to 127.0.0.1:{port}"),
            "no pg_hba.conf entry",
            "no encryption",
        ],
    );
    assert_refused(
        &with("sslmode=sometimes"),
        &["invalid sslmode \"sometimes\""],
    );

    drop(serve);
    cluster.stop_now("immediate").await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
}
