//! A private PostgreSQL for `regulator serve` when none is given or running: a cluster of its
//! own under `.regulator/pg/`, made and started with the server binaries installed on the
//! machine (`initdb`, `pg_ctl`), listening on a free loopback port, stopped when `serve` ends.
//!
//! So the README's run command works on a machine that has PostgreSQL installed but not
//! running. PostgreSQL refuses to run as root: when `serve` runs as root, the cluster is made
//! and run as the `postgres` user (`runuser -u postgres`), which then owns `.regulator/pg/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A private cluster, running; stopped on drop.
pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    pub url: String,
    stopped: bool,
}

/// Where the server binaries are looked for, newest version first, then `PATH`.
const INSTALL_ROOT: &str = "/usr/lib/postgresql";

impl PrivatePostgres {
    /// Makes the cluster in `dir` if it is new, and starts it on a free loopback port.
    pub fn start(dir: &Path) -> Result<Self, String> {
        let bin = server_binaries().ok_or_else(|| {
            format!(
                "no database is reachable and no PostgreSQL server binaries (initdb, pg_ctl) \
                 are installed under {INSTALL_ROOT}/*/bin or on PATH: install the `postgresql` \
                 package (Debian, Ubuntu: `apt-get install postgresql`), or give --database-url"
            )
        })?;
        let dir = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let data = dir.join("data");
        let as_postgres = running_as_root();
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir))?;
        }
        let mut cluster = PrivatePostgres {
            bin,
            data,
            as_postgres,
            url: String::new(),
            stopped: true,
        };
        if !cluster.data.join("PG_VERSION").exists() {
            tracing::info!(data = %cluster.data.display(), "creating a private PostgreSQL cluster");
            run(cluster
                .command("initdb")
                .arg("-D")
                .arg(&cluster.data)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ]))?;
        } else if cluster
            .command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&cluster.data)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            // Left running by a `serve` that was killed: its port is unknown, so restart it.
            run(cluster
                .command("pg_ctl")
                .args(["stop", "-m", "fast", "-w", "-D"])
                .arg(&cluster.data))?;
        }
        let port = free_port().map_err(|e| format!("cannot find a free port: {e}"))?;
        let log = dir.join("postgres.log");
        run(cluster
            .command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(&cluster.data)
            .arg("-l")
            .arg(&log)
            // TCP on loopback only; no unix socket (its path could exceed the 107-byte limit).
            .args([
                "-o",
                &format!("-p {port} -c listen_addresses=127.0.0.1 -k ''"),
            ]))?;
        tracing::info!(
            port,
            data = %cluster.data.display(),
            log = %log.display(),
            "started a private PostgreSQL (nothing was listening on the default database URL); it stops when serve does"
        );
        cluster.url = format!("postgres://postgres@127.0.0.1:{port}/regulator");
        cluster.stopped = false;
        Ok(cluster)
    }

    /// Stops the cluster (fast shutdown: open sessions are ended, nothing committed is lost).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let stopped = run(self
            .command("pg_ctl")
            .args(["stop", "-m", "fast", "-w", "-D"])
            .arg(&self.data));
        match stopped {
            Ok(()) => tracing::info!(data = %self.data.display(), "stopped the private PostgreSQL"),
            Err(error) => tracing::warn!(%error, "cannot stop the private PostgreSQL"),
        }
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a database server answers at `url`'s host and port (a TCP connect within 1 s).
pub fn listening(url: &str) -> bool {
    let Ok(options) = url.parse::<sqlx::postgres::PgConnectOptions>() else {
        return true;
    };
    let address = format!("{}:{}", options.get_host(), options.get_port());
    let Ok(addrs) = std::net::ToSocketAddrs::to_socket_addrs(&address) else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

fn server_binaries() -> Option<PathBuf> {
    // The tests point it elsewhere to see what a machine without PostgreSQL gets.
    let root = std::env::var_os("REGULATOR_POSTGRES_INSTALL_ROOT")
        .map_or_else(|| PathBuf::from(INSTALL_ROOT), PathBuf::from);
    let mut installed: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    installed.sort();
    if let Some((_, bin)) = installed.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
    })
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let out = command
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{shown} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    ))
}
