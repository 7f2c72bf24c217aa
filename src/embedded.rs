//! The private PostgreSQL of `jobcast dev` (and of the tests that restart their database):
//! a cluster under a directory of ours, from the PostgreSQL binaries on the machine. It is
//! created once, started when not running, and reused when it is. PostgreSQL refuses to run
//! as root, so as root the cluster belongs to `nobody`.
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use tokio::process::Command;

/// Failures of the embedded cluster.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// A PostgreSQL program is not installed.
    #[error("{0} not found: install the PostgreSQL server binaries or set DATABASE_URL")]
    Missing(String),
    /// A file-system step failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// A PostgreSQL program failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// What ran.
        command: String,
        /// What it said.
        detail: String,
    },
}

/// A PostgreSQL cluster in a directory of ours.
#[derive(Debug)]
pub struct Cluster {
    root: PathBuf,
    port: u16,
    run_as: Option<&'static str>,
    /// Whether this process started the server (and so stops it).
    started_here: bool,
}

impl Cluster {
    /// Creates the cluster under `root` if needed and starts it unless it already runs.
    pub async fn start_or_reuse(root: &Path) -> Result<Cluster, EmbeddedError> {
        let root = std::path::absolute(root)
            .map_err(|e| EmbeddedError::Io(format!("cannot resolve {}", root.display()), e))?;
        let run_as = is_root().then_some("nobody");
        let mut cluster = Cluster {
            root,
            port: 0,
            run_as,
            started_here: false,
        };
        cluster.init().await?;
        if let Some(port) = cluster.running_port().await {
            tracing::info!(port, "reusing the running embedded PostgreSQL");
            cluster.port = port;
            return Ok(cluster);
        }
        cluster.port = free_port()?;
        cluster.start().await?;
        Ok(cluster)
    }

    /// A URL to connect to the cluster's `postgres` database.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// A URL to connect to `database` in the cluster.
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    async fn init(&self) -> Result<(), EmbeddedError> {
        if self.data_dir().join("PG_VERSION").exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.root)
            .map_err(|e| EmbeddedError::Io(format!("cannot create {}", self.root.display()), e))?;
        if let Some(user) = self.run_as {
            run(
                Command::new("chown").arg("-R").arg(user).arg(&self.root),
                "chown",
            )
            .await?;
        }
        let data = self.data_dir();
        let mut command = self.pg_command("initdb")?;
        command.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(&mut command, "initdb").await?;
        tracing::info!(data = %data.display(), "created the embedded PostgreSQL cluster");
        Ok(())
    }

    /// Starts the server (on the port it had, for a restart).
    pub async fn start(&mut self) -> Result<(), EmbeddedError> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=300",
            self.port
        );
        let mut command = self.pg_command("pg_ctl")?;
        command
            .arg("start")
            .arg("-w")
            .args(["-t", "60"])
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.root.join("postgres.log"))
            .args(["-o", &options]);
        run(&mut command, "pg_ctl start").await?;
        self.started_here = true;
        tracing::info!(port = self.port, "started the embedded PostgreSQL");
        Ok(())
    }

    /// Stops the server if this process started it.
    pub async fn stop(&mut self) -> Result<(), EmbeddedError> {
        if !self.started_here {
            return Ok(());
        }
        self.stop_now("fast").await
    }

    /// Stops the server whoever started it (`mode`: smart, fast or immediate).
    pub async fn stop_now(&mut self, mode: &str) -> Result<(), EmbeddedError> {
        let mut command = self.pg_command("pg_ctl")?;
        command
            .arg("stop")
            .arg("-w")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode]);
        run(&mut command, "pg_ctl stop").await?;
        self.started_here = false;
        Ok(())
    }

    /// The port of a server already running on this data directory.
    async fn running_port(&self) -> Option<u16> {
        let mut command = self.pg_command("pg_ctl").ok()?;
        command.arg("status").arg("-D").arg(self.data_dir());
        let output = command.output().await.ok()?;
        if !output.status.success() {
            return None;
        }
        // postmaster.pid: pid, data dir, start time, port, ...
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        pid_file.lines().nth(3)?.trim().parse().ok()
    }

    fn pg_command(&self, program: &str) -> Result<Command, EmbeddedError> {
        let path = find_program(program).ok_or_else(|| EmbeddedError::Missing(program.into()))?;
        let mut command = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        // The server must not die with a Ctrl-C meant for us: we stop it ourselves.
        command.process_group(0).kill_on_drop(false);
        Ok(command)
    }
}

async fn run(command: &mut Command, what: &str) -> Result<Output, EmbeddedError> {
    let output = command
        .output()
        .await
        .map_err(|e| EmbeddedError::Io(format!("cannot run {what}"), e))?;
    if output.status.success() {
        return Ok(output);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let detail = stderr
        .lines()
        .chain(stdout.lines())
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .to_owned();
    Err(EmbeddedError::Command {
        command: what.into(),
        detail,
    })
}

fn is_root() -> bool {
    // The owner of /proc/self is this process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Finds a PostgreSQL program on PATH, else in Debian's versioned directories (newest first).
fn find_program(program: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| entry.ok().map(|e| e.path().join("bin").join(program)))
            .filter(|candidate| candidate.is_file())
            .collect();
        versions.sort();
        versions.pop()
    })
}

fn free_port() -> Result<u16, EmbeddedError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| EmbeddedError::Io("cannot find a free port".into(), e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| EmbeddedError::Io("cannot find a free port".into(), e))
}
