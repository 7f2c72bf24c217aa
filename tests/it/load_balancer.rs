//! A real load balancer in front of three `serve` pods: nginx (started here with
//! deploy/nginx.conf, its upstreams pointed at the pods) passes SSE through unbuffered, and
//! when pods are killed mid-stream their clients resume through nginx on the others with
//! Last-Event-ID and end with exactly the job's events: no gap, no repeat.
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;
use crate::proxies::*;

const T: Duration = Duration::from_secs(30);
/// How soon a lone event must come through: far below the 15 s keep-alive, far above a
/// loaded machine's scheduling hiccups. A buffering proxy holds it until a buffer fills.
const PROMPT: Duration = Duration::from_secs(3);

/// deploy/nginx.conf as a whole nginx configuration: its upstream servers replaced by
/// `pods` (same parameters), listening on `port`, every path inside `dir`, and a response
/// header naming the pod that answered.
fn nginx_config(dir: &Scratch, port: u16, pods: &[String]) -> String {
    // The shipped file is complete (events, http): only its upstreams, port and paths
    // change here.
    let shipped = include_str!("../../deploy/nginx.conf");
    let scratch = dir.0.display().to_string();
    let (mut config, mut upstreams_written) = (String::new(), false);
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("server serve-") {
            if !upstreams_written {
                let parameters = rest.split_once(' ').map_or(";", |(_, p)| p);
                for pod in pods {
                    let address = pod.trim_start_matches("http://");
                    config.push_str(&format!("        server {address} {parameters}\n"));
                }
                upstreams_written = true;
            }
        } else if trimmed == "listen 80;" {
            config.push_str(&format!("        listen 127.0.0.1:{port};\n"));
        } else {
            config.push_str(
                &line
                    .replace("/var/run/nginx.pid", &format!("{scratch}/nginx.pid"))
                    .replace("/var/log/nginx/", &format!("{scratch}/"))
                    .replace("/var/cache/nginx/", &format!("{scratch}/")),
            );
            config.push('\n');
            if trimmed == "http {" {
                config.push_str("    add_header X-Upstream $upstream_addr always;\n");
            }
        }
    }
    assert!(
        upstreams_written,
        "deploy/nginx.conf has no `server serve-N` upstreams"
    );
    config
}

/// `-g` directives: in the foreground, and as nobody when running as root.
fn nginx_globals() -> String {
    if running_as_root() {
        // Debian's group of nobody is nogroup.
        let group = if std::fs::read_to_string("/etc/group")
            .unwrap_or_default()
            .contains("\nnogroup:")
        {
            "nogroup"
        } else {
            "nobody"
        };
        format!("daemon off; user nobody {group};")
    } else {
        "daemon off;".into()
    }
}

/// nginx in front of `pods`; None (saying so) when it is not installed.
fn start_nginx(pods: &[String]) -> Option<Daemon> {
    let Some(binary) = find_tool("nginx") else {
        println!("SKIPPED: nginx not installed (scripts/setup-proxies)");
        return None;
    };
    let dir = Scratch::new("nginx");
    let port = free_port();
    let config = dir.write("nginx.conf", &nginx_config(&dir, port, pods));
    let mut command = Command::new(binary);
    command
        .arg("-p")
        .arg(&dir.0)
        .arg("-c")
        .arg(&config)
        .arg("-e")
        .arg(dir.path("error.log"))
        .args(["-g", &nginx_globals()]);
    Some(Daemon::start(command, port, dir, "nginx.out"))
}

/// An SSE client of the balancer that, like EventSource, reconnects with Last-Event-ID
/// when its response ends before the job did.
struct Follower {
    balancer: String,
    path: String,
    sse: Sse,
    /// The pod that answered the current response (`host:port`).
    pod: String,
    events: Vec<Event>,
    reconnects: usize,
}

impl Follower {
    async fn open(balancer: &str, path: &str) -> Follower {
        let sse = Sse::open(balancer, path, None).await;
        assert_eq!(sse.status, 200, "{path} through nginx");
        Follower {
            balancer: balancer.to_owned(),
            path: path.to_owned(),
            pod: upstream(&sse),
            sse,
            events: Vec::new(),
            reconnects: 0,
        }
    }

    /// The next event, reconnecting as often as needed; None once the job's terminal
    /// event came and its response ended.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.sse.next(T).await {
                self.events.push(event.clone());
                return Some(event);
            }
            if self.finished() {
                return None;
            }
            let last = self.events.last().map(|e| e.id.clone());
            self.sse = Sse::open(&self.balancer, &self.path, last.as_deref()).await;
            assert_eq!(
                self.sse.status, 200,
                "{} resumed through nginx after {last:?}",
                self.path
            );
            self.pod = upstream(&self.sse);
            self.reconnects += 1;
        }
    }

    /// Reads until `n` more events came.
    /// Reads until `n` more events came, or the job's stream ended.
    async fn read(&mut self, n: usize) {
        for _ in 0..n {
            if self.next().await.is_none() {
                return;
            }
        }
    }

    /// Whether the job's terminal event came (never, for the firehose).
    fn finished(&self) -> bool {
        !self.path.starts_with("/v1/events")
            && self
                .events
                .last()
                .is_some_and(|e| ["succeeded", "failed", "cancelled"].contains(&e.event.as_str()))
    }
}

/// The pod that answered: the last of `$upstream_addr` (nginx lists each one it tried,
/// a dead pod first when it had not yet marked it failed).
/// The next event, which must come within [`PROMPT`].
async fn prompt(what: &str, next: impl std::future::Future<Output = Option<Event>>) -> Event {
    tokio::time::timeout(PROMPT, next)
        .await
        .unwrap_or_else(|_| panic!("{what}: no event within {PROMPT:?}"))
        .expect("an event")
}

fn upstream(sse: &Sse) -> String {
    let tried = sse
        .headers
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tried.rsplit(", ").next().unwrap_or_default().to_owned()
}

fn address(url: &str) -> &str {
    url.trim_start_matches("http://")
}

#[tokio::test]
async fn sse_through_nginx_is_unbuffered_and_resumes_on_other_pods_when_pods_are_killed() {
    let db = TestDb::new().await;
    let pods: Vec<Proc> = (0..3).map(|_| Proc::serve(&db.url, &[])).collect();
    let urls: Vec<String> = pods.iter().map(|p| p.url().to_owned()).collect();
    let Some(nginx) = start_nginx(&urls) else {
        return;
    };
    let balancer = format!("http://127.0.0.1:{}", nginx.port);
    let _workers = [
        Proc::work(&db.url, &["--concurrency", "4"]),
        Proc::work(&db.url, &["--concurrency", "4"]),
    ];
    let mut alive = [true; 3];
    // Ready pods only, as a balancer's health check would have it.
    for url in &urls {
        eventually("the pod ready", T, || async {
            let status = http()
                .get(format!("{url}/readyz"))
                .send()
                .await
                .ok()?
                .status();
            (status == 200).then_some(())
        })
        .await;
    }

    // Unbuffered: a job due in a minute has one event, `queued`, and nothing follows it
    // for long. That one small frame reaches the firehose (opened first) and the job's own
    // follower at once; a buffering proxy would hold it until more came.
    let mut firehose = Follower::open(&balancer, "/v1/events").await;
    let later = (chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc3339();
    let quiet = submit_ok(&balancer, json!({"kind": "demo.steps", "run_at": later})).await;
    let first = prompt("the firehose through nginx (buffered?)", firehose.next()).await;
    assert_eq!(first.event, "queued");
    assert_eq!(first.data["job_id"].as_str(), Some(quiet.as_str()));
    let mut quiet_follower = Follower::open(&balancer, &format!("/v1/jobs/{quiet}/events")).await;
    assert_eq!(
        prompt(
            "a job's stream through nginx (buffered?)",
            quiet_follower.next()
        )
        .await
        .event,
        "queued"
    );

    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            submit_ok(
                &balancer,
                json!({"kind": "demo.steps", "args": {"steps": 60, "step_ms": 100}}),
            )
            .await,
        );
    }

    // Two followers per job, spread by nginx over the pods; each gets its first event
    // promptly too.
    let mut followers = Vec::new();
    for id in ids.iter().chain(&ids) {
        let opened = Instant::now();
        let mut follower = Follower::open(&balancer, &format!("/v1/jobs/{id}/events")).await;
        follower.read(1).await;
        assert!(
            opened.elapsed() < PROMPT,
            "first event after {:?}",
            opened.elapsed()
        );
        followers.push(follower);
    }
    for follower in &mut followers {
        follower.read(2).await;
    }

    // Kill -9 the firehose's pod, then, once everyone streams again, the pod that holds
    // the most followers among the survivors.
    let mut interrupted = Vec::new();
    for round in 0..2 {
        let victim = if round == 0 {
            urls.iter()
                .position(|u| address(u) == firehose.pod)
                .expect("the firehose's pod is one of ours")
        } else {
            (0..3)
                .filter(|&i| alive[i])
                .max_by_key(|&i| {
                    followers
                        .iter()
                        .filter(|f| f.pod == address(&urls[i]))
                        .count()
                })
                .unwrap()
        };
        interrupted.push(
            followers
                .iter()
                .filter(|f| f.pod == address(&urls[victim]))
                .count(),
        );
        pods[victim].signal("KILL");
        alive[victim] = false;
        // Every client streams again, from a live pod (those of the dead one after their
        // response ended and they resumed through nginx).
        for follower in followers.iter_mut().chain([&mut firehose]) {
            if follower.pod == address(&urls[victim]) {
                // What the pod wrote before it died, then the end of the response.
                let reconnects = follower.reconnects;
                while follower.reconnects == reconnects && !follower.finished() {
                    follower.next().await;
                }
            }
            follower.read(2).await;
            if follower.finished() {
                continue;
            }
            let pod = urls.iter().position(|u| address(u) == follower.pod);
            assert!(
                pod.is_some_and(|i| alive[i]),
                "{} still on {} after the kill",
                follower.path,
                follower.pod
            );
        }
    }
    assert!(
        interrupted[1] >= 1,
        "the second kill interrupted no follower"
    );
    assert!(
        firehose.reconnects >= 1,
        "the firehose was never interrupted"
    );

    // Every follower ends with exactly the job's events as PostgreSQL holds them.
    let admin = db.client().await;
    for follower in &mut followers {
        while follower.next().await.is_some() {}
        let id: i64 = follower.path.split('/').nth(3).unwrap().parse().unwrap();
        let stored: Vec<(i64, String)> = admin
            .query(
                "select seq::int8, type from jobcast.events where job_id = $1 order by seq",
                &[&id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let received: Vec<(i64, String)> = follower
            .events
            .iter()
            .map(|e| (e.seq(), e.event.clone()))
            .collect();
        assert_eq!(
            received, stored,
            "{} (reconnects: {})",
            follower.path, follower.reconnects
        );
        assert_contiguous(&follower.events, 1);
        assert_eq!(received.last().unwrap().1, "succeeded");
        let job = get_job(&balancer, &id.to_string()).await;
        assert_eq!(job["status"], "succeeded");
    }
    let resumed = followers.iter().filter(|f| f.reconnects > 0).count();
    assert!(resumed >= interrupted[1], "{resumed} followers resumed");

    // The firehose, across its reconnects: every event of the three jobs once, each
    // job's in order.
    let numeric: Vec<i64> = ids.iter().map(|id| id.parse().unwrap()).collect();
    let stored: Vec<(i64, i64)> = admin
        .query(
            "select job_id, seq::int8 from jobcast.events where job_id = any($1)
              order by job_id, seq",
            &[&numeric],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let of_ours = |f: &Follower| -> Vec<(i64, i64)> {
        f.events
            .iter()
            .map(|e| {
                let job: i64 = e.data["job_id"].as_str().unwrap().parse().unwrap();
                (job, e.data["seq"].as_i64().unwrap())
            })
            .filter(|(job, _)| numeric.contains(job))
            .collect()
    };
    while of_ours(&firehose).len() < stored.len() {
        firehose.next().await;
    }
    let mut seen = of_ours(&firehose);
    for job in &numeric {
        let seqs: Vec<i64> = seen
            .iter()
            .filter(|(j, _)| j == job)
            .map(|(_, s)| *s)
            .collect();
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, expected, "job {job} on the firehose");
    }
    seen.sort();
    assert_eq!(seen, stored);
}

/// What the balancer test first caught, without a balancer: a firehose opened on one pod
/// while another commits a lone event gets it at once, not when some later event comes.
#[tokio::test]
async fn a_lone_event_reaches_a_firehose_on_another_pod_at_once() {
    let db = TestDb::new().await;
    let watching = Proc::serve(&db.url, &[]);
    let submitting = Proc::serve(&db.url, &[]);
    for pod in [&watching, &submitting] {
        eventually("the pod ready", T, || async {
            let status = http()
                .get(format!("{}/readyz", pod.url()))
                .send()
                .await
                .ok()?
                .status();
            (status == 200).then_some(())
        })
        .await;
    }
    for _ in 0..3 {
        // Each round: a firehose on a pod whose reader idles (nobody followed), one event.
        let mut firehose = Sse::open(watching.url(), "/v1/events", None).await;
        let later = (chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc3339();
        let id = submit_ok(
            submitting.url(),
            json!({"kind": "demo.steps", "run_at": later}),
        )
        .await;
        let first = prompt("the firehose", firehose.next(T)).await;
        assert_eq!(first.data["job_id"].as_str(), Some(id.as_str()));
        drop(firehose);
        // The reader goes idle again within two polls (250 ms) of its last follower leaving.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}
