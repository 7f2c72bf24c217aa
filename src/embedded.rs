//! The private PostgreSQL of `jobcast dev` (and of the tests that restart their database):
//! a cluster under a directory of ours, from the PostgreSQL binaries on the machine. It is
//! created once, started when not running, and reused when it is, on the same port each
//! time. It listens on 127.0.0.1 only and asks for a password generated at creation (kept in
//! `password`, mode 0600): other users of a shared machine cannot use it. PostgreSQL refuses
//! to run as root, so as root the cluster belongs to `nobody`.
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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
    password: String,
    run_as: Option<&'static str>,
    /// Whether this process started the server (and so stops it).
    started_here: bool,
}

impl Cluster {
    /// Creates the cluster under `root` if needed and starts it unless it already runs.
    pub async fn start_or_reuse(root: &Path) -> Result<Cluster, EmbeddedError> {
        Cluster::start_or_reuse_on(root, None).await
    }

    /// [`start_or_reuse`](Self::start_or_reuse) on `port` when given (`jobcast dev
    /// --pg-port`): a port taken by something else is an error, not a silent other port.
    pub async fn start_or_reuse_on(
        root: &Path,
        port: Option<u16>,
    ) -> Result<Cluster, EmbeddedError> {
        let root = std::path::absolute(root)
            .map_err(|e| EmbeddedError::Io(format!("cannot resolve {}", root.display()), e))?;
        let run_as = is_root().then_some("nobody");
        let mut cluster = Cluster {
            root,
            port: 0,
            password: String::new(),
            run_as,
            started_here: false,
        };
        cluster.init().await?;
        cluster.password = cluster.read_or_create_password()?;
        if let Some(running) = cluster.running_port().await {
            if port.is_some_and(|wanted| wanted != running) {
                return Err(EmbeddedError::Io(
                    format!(
                        "the embedded PostgreSQL already runs on port {running}, not {}: stop \
                         the other `jobcast dev` first",
                        port.unwrap_or_default()
                    ),
                    std::io::Error::from(std::io::ErrorKind::AddrInUse),
                ));
            }
            tracing::info!(port = running, "reusing the running embedded PostgreSQL");
            cluster.port = running;
        } else {
            cluster.port = match port {
                Some(wanted) if is_free(wanted) => {
                    let file = cluster.root.join("port");
                    std::fs::write(&file, format!("{wanted}\n")).map_err(|e| {
                        EmbeddedError::Io(format!("cannot write {}", file.display()), e)
                    })?;
                    wanted
                }
                Some(wanted) => {
                    return Err(EmbeddedError::Io(
                        format!("--pg-port {wanted} is taken by another program"),
                        std::io::Error::from(std::io::ErrorKind::AddrInUse),
                    ))
                }
                None => cluster.stable_port()?,
            };
            cluster.start().await?;
        }
        cluster.require_password().await?;
        Ok(cluster)
    }

    /// The port this directory's cluster had last time, while it is free; else a new one
    /// (remembered in `port`), so that the database URL stays the same across restarts.
    fn stable_port(&self) -> Result<u16, EmbeddedError> {
        let file = self.root.join("port");
        let previous = std::fs::read_to_string(&file)
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok());
        if let Some(port) = previous.filter(|&p| is_free(p)) {
            return Ok(port);
        }
        let port = free_port()?;
        if let Some(previous) = previous {
            tracing::warn!(previous, port, "the cluster's port is taken; using another");
        }
        std::fs::write(&file, format!("{port}\n"))
            .map_err(|e| EmbeddedError::Io(format!("cannot write {}", file.display()), e))?;
        Ok(port)
    }

    fn password_file(&self) -> PathBuf {
        self.root.join("password")
    }

    /// The superuser's password, generated on first use; the file is readable by its owner only.
    fn read_or_create_password(&self) -> Result<String, EmbeddedError> {
        let file = self.password_file();
        if let Ok(password) = std::fs::read_to_string(&file) {
            if !password.trim().is_empty() {
                return Ok(password.trim().to_owned());
            }
        }
        let password = new_password();
        write_private(&file, &password)?;
        Ok(password)
    }

    /// A cluster made by an older jobcast trusts every local connection: give its superuser
    /// the password and ask for it from now on.
    async fn require_password(&self) -> Result<(), EmbeddedError> {
        let hba_file = self.data_dir().join("pg_hba.conf");
        let hba = std::fs::read_to_string(&hba_file)
            .map_err(|e| EmbeddedError::Io(format!("cannot read {}", hba_file.display()), e))?;
        let trusts = |line: &str| {
            !line.trim_start().starts_with('#') && line.split_whitespace().last() == Some("trust")
        };
        if !hba.lines().any(trusts) {
            return Ok(());
        }
        let (client, connection) = tokio_postgres::connect(
            &format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
            tokio_postgres::NoTls,
        )
        .await
        .map_err(|e| self.command_error("securing the cluster", &e))?;
        let driver = tokio::spawn(connection);
        // The password is generated alphanumeric: nothing in it needs quoting.
        client
            .batch_execute(&format!("alter user postgres password '{}'", self.password))
            .await
            .map_err(|e| self.command_error("securing the cluster", &e))?;
        drop(client);
        let _ = driver.await;
        let secured: String = hba
            .lines()
            .map(|line| {
                if trusts(line) {
                    format!(
                        "{} scram-sha-256",
                        line.trim_end().trim_end_matches("trust").trim_end()
                    )
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&hba_file, secured + "\n")
            .map_err(|e| EmbeddedError::Io(format!("cannot write {}", hba_file.display()), e))?;
        let mut reload = self.pg_command("pg_ctl")?;
        reload.arg("reload").arg("-D").arg(self.data_dir());
        run(&mut reload, "pg_ctl reload").await?;
        tracing::info!("the embedded PostgreSQL now asks for a password");
        Ok(())
    }

    fn command_error(&self, what: &str, error: &tokio_postgres::Error) -> EmbeddedError {
        EmbeddedError::Command {
            command: what.into(),
            detail: crate::db::one_line(error),
        }
    }

    /// A URL to connect to the cluster's `postgres` database.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// A URL to connect to `database` in the cluster (with the password).
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// The port the cluster listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
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
        // initdb reads the password from a file that the cluster's owner can read; it is
        // removed once the cluster exists (ours is `password`, which only we can read).
        let password = new_password();
        let initial = self.root.join("initdb-password");
        write_private(&initial, &password)?;
        if let Some(user) = self.run_as {
            run(Command::new("chown").arg(user).arg(&initial), "chown").await?;
        }
        let mut command = self.pg_command("initdb")?;
        command
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", initial.display()));
        let initialized = run(&mut command, "initdb").await;
        let _ = std::fs::remove_file(&initial);
        initialized.map_err(|e| self.explain_initdb(e))?;
        write_private(&self.password_file(), &password)?;
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

    /// The command that stops the server (`mode` as for [`Cluster::stop_now`]), to run
    /// without a runtime when the process must stop at once; None if another process
    /// started it.
    pub fn stop_command(&self, mode: &str) -> Option<std::process::Command> {
        if !self.started_here {
            return None;
        }
        let mut command = self.pg_std_command("pg_ctl").ok()?;
        command
            .arg("stop")
            .arg("-w")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Some(command)
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

    /// What to do about a failed initdb: as root the cluster runs as `nobody`, which must be
    /// able to reach the directory.
    fn explain_initdb(&self, error: EmbeddedError) -> EmbeddedError {
        let EmbeddedError::Command { command, detail } = error else {
            return error;
        };
        let advice = match self.run_as {
            Some(user) if detail.contains("Permission denied") => format!(
                " (the cluster runs as {user}, since PostgreSQL refuses root: run jobcast dev \
                 in a directory {user} can reach, e.g. under /tmp, or set DATABASE_URL to an existing PostgreSQL)"
            ),
            _ => " (or set DATABASE_URL to use an existing PostgreSQL)".to_owned(),
        };
        EmbeddedError::Command {
            command,
            detail: detail + &advice,
        }
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

    /// `program` of the server binaries, run as the cluster's owner.
    fn pg_std_command(&self, program: &str) -> Result<std::process::Command, EmbeddedError> {
        let path = find_program(program).ok_or_else(|| EmbeddedError::Missing(program.into()))?;
        Ok(match self.run_as {
            Some(user) => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => std::process::Command::new(path),
        })
    }

    fn pg_command(&self, program: &str) -> Result<Command, EmbeddedError> {
        let mut command = Command::from(self.pg_std_command(program)?);
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
    // The error line, not the last line: initdb ends with chatter on stdout (e.g. "Data
    // page checksums are disabled.") after the real error on stderr.
    let detail = stderr
        .lines()
        .find(|l| l.contains("error:") || l.contains("FATAL:"))
        .or_else(|| stderr.lines().rfind(|l| !l.trim().is_empty()))
        .or_else(|| stdout.lines().rfind(|l| !l.trim().is_empty()))
        .unwrap_or("no output")
        .trim()
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

/// 32 random letters and digits.
fn new_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// Writes a file only its owner can read, from its creation on.
fn write_private(path: &Path, contents: &str) -> Result<(), EmbeddedError> {
    let io_error = |e| EmbeddedError::Io(format!("cannot write {}", path.display()), e);
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error)?;
    file.write_all(contents.as_bytes()).map_err(io_error)
}

fn is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn free_port() -> Result<u16, EmbeddedError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| EmbeddedError::Io("cannot find a free port".into(), e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| EmbeddedError::Io("cannot find a free port".into(), e))
}
