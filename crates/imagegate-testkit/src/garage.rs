//! A real single-node Garage S3 server for one test: its own temp directory, its own
//! free loopback ports, a bucket with a read/write key, and that bucket served by
//! Garage's web endpoint as the "CDN".
//!
//! ```no_run
//! let garage = imagegate_testkit::garage::Garage::start();
//! let s3 = garage.settings();
//! // point an S3 client at s3.endpoint with s3.access_key_id / s3.secret_access_key,
//! // and fetch what it wrote from format!("{}/{key}", s3.web_base_url).
//! ```
//!
//! The web endpoint picks the bucket from the Host header (port stripped); the
//! bucket gets the global alias `localhost`, so a plain GET of
//! `http://localhost:<web port>/<key>` serves it with no custom Host header.
//!
//! A missing or wrong Garage binary panics with the command that installs it: it is
//! a test failure, never a skip.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The Garage release the harness drives (its CLI syntax changed across majors).
pub const GARAGE_VERSION: &str = "2.5.0";
pub const REGION: &str = "garage";
const SETUP_HINT: &str = "run scripts/setup/test.sh (it runs `cargo install garage --version 2.5.0 --locked --no-default-features --features bundled-libs,sqlite`), or point IMAGEGATE_GARAGE_BIN at a garage 2.5.0 binary";
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Garage binds its ports within milliseconds of starting; longer means one was taken.
const PORTS_TIMEOUT: Duration = Duration::from_secs(10);
/// Host the web endpoint is reached by; also the bucket's global alias.
const WEB_HOST: &str = "localhost";

/// Everything an S3 client (and a CDN URL mapper) needs, as plain values so the
/// testkit does not depend on the storage crate.
#[derive(Clone)]
pub struct S3Settings {
    /// `http://127.0.0.1:<port>`; Garage needs path-style addressing.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `http://localhost:<port>`: GET `{web_base_url}/{object key}` serves the object.
    pub web_base_url: String,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .field("web_base_url", &self.web_base_url)
            .finish()
    }
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    rpc: u16,
    s3: u16,
    web: u16,
    admin: u16,
}

pub struct Garage {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    ports: Ports,
    settings: S3Settings,
    child: Option<Child>,
    /// Last: removed after the process is gone.
    dir: tempfile::TempDir,
}

impl Garage {
    /// Starts a fresh server and sets up its layout, key, bucket and website.
    /// Blocking; fine from `#[tokio::test]` as well as plain tests.
    pub fn start() -> Garage {
        let bin = find_binary();
        // Ports are probed free, then bound by Garage a moment later; another process
        // may take one in between, and Garage does not fail when a bind does (it
        // logs "listening" all the same). Such a start is retried on fresh ports.
        let mut attempts_left = 3;
        let mut garage = loop {
            attempts_left -= 1;
            let mut garage = Garage::launch(bin.clone());
            match garage.try_wait_until(PORTS_TIMEOUT, "garage listens on its 4 ports", |g| {
                g.owns_its_ports()
            }) {
                Ok(()) => break garage,
                Err(_) if attempts_left > 0 => continue,
                Err(e) => garage.fail(&e),
            }
        };
        garage.wait_until(START_TIMEOUT, "the RPC port answers `garage status`", |g| {
            g.cli_ok(&["status"])
        });
        let access_key_id = garage.settings.access_key_id.clone();
        let bucket = garage.settings.bucket.clone();

        let node = garage.cli(&["node", "id", "-q"]);
        let node_id = node
            .trim()
            .split('@')
            .next()
            .filter(|id| id.len() >= 16)
            .unwrap_or_else(|| garage.fail(&format!("unexpected `garage node id` output {node:?}")))
            .to_string();
        garage.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node_id]);
        garage.cli(&["layout", "apply", "--version", "1"]);
        garage.wait_healthy();

        let secret = garage.settings.secret_access_key.clone();
        garage.cli(&[
            "key",
            "import",
            "--yes",
            "-n",
            "imagegate-test",
            &access_key_id,
            &secret,
        ]);
        garage.cli(&["bucket", "create", &bucket]);
        garage.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &bucket,
            "--key",
            &access_key_id,
        ]);
        garage.cli(&["bucket", "website", "--allow", &bucket]);
        garage.cli(&["bucket", "alias", &bucket, WEB_HOST]);
        garage
    }

    /// A fresh directory, config and ports, and the server process started on them.
    fn launch(bin: PathBuf) -> Garage {
        let dir = tempfile::Builder::new()
            .prefix("imagegate-garage-")
            .tempdir()
            .expect("create a temp dir for garage");
        let ports = free_ports();
        let config = dir.path().join("garage.toml");
        std::fs::write(&config, config_toml(dir.path(), ports)).expect("write garage.toml");
        let mut garage = Garage {
            bin,
            log: dir.path().join("garage.log"),
            config,
            ports,
            settings: S3Settings {
                endpoint: format!("http://127.0.0.1:{}", ports.s3),
                region: REGION.to_string(),
                bucket: format!("imagegate-{}", random_hex(4)),
                access_key_id: format!("GK{}", random_hex(12)),
                secret_access_key: random_hex(32),
                web_base_url: format!("http://{WEB_HOST}:{}", ports.web),
            },
            child: None,
            dir,
        };
        garage.spawn();
        garage
    }

    pub fn settings(&self) -> S3Settings {
        self.settings.clone()
    }

    pub fn s3_endpoint(&self) -> &str {
        &self.settings.endpoint
    }

    pub fn region(&self) -> &str {
        &self.settings.region
    }

    pub fn bucket(&self) -> &str {
        &self.settings.bucket
    }

    pub fn access_key_id(&self) -> &str {
        &self.settings.access_key_id
    }

    pub fn secret_access_key(&self) -> &str {
        &self.settings.secret_access_key
    }

    pub fn web_base_url(&self) -> &str {
        &self.settings.web_base_url
    }

    /// Puts the key id and secret into two environment variables with names unique
    /// to this server (tests run in parallel) and returns the names
    /// `(access_key_id_var, secret_access_key_var)`.
    pub fn export_credentials(&self) -> (String, String) {
        let tag = self.settings.access_key_id.to_ascii_uppercase();
        let id_var = format!("IMAGEGATE_TEST_S3_KEY_ID_{tag}");
        let secret_var = format!("IMAGEGATE_TEST_S3_SECRET_{tag}");
        std::env::set_var(&id_var, &self.settings.access_key_id);
        std::env::set_var(&secret_var, &self.settings.secret_access_key);
        (id_var, secret_var)
    }

    /// Runs a `garage` CLI command against this server and returns its stdout;
    /// panics (with the server log) when it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self
            .command()
            .args(args)
            .output()
            .unwrap_or_else(|e| self.fail(&format!("cannot run garage {args:?}: {e}")));
        if !out.status.success() {
            self.fail(&format!(
                "`garage {}` failed ({}):\n{}{}",
                redact_args(args, &self.settings.secret_access_key),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown); data and ports are kept
    /// for [`Garage::start_again`]. Connections to it are refused from now on.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts on the same ports and data and waits until it serves again.
    pub fn start_again(&mut self) {
        self.stop();
        self.spawn();
        self.wait_until(
            PORTS_TIMEOUT,
            "garage listens on its 4 ports again (another process may hold one now)",
            |g| g.owns_its_ports(),
        );
        self.wait_healthy();
    }

    /// Whether our own process holds a listening socket on each of its ports.
    fn owns_its_ports(&self) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        let p = self.ports;
        let ours = listening_ports(child.id());
        [p.rpc, p.s3, p.web, p.admin]
            .iter()
            .all(|port| ours.contains(port))
    }

    /// Freezes the server (SIGSTOP): connections are still accepted by the kernel
    /// but never answered, the "S3 hangs" outage that only timeouts end.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
    }

    /// Undoes [`Garage::pause`] (SIGCONT).
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&mut self, signal: libc::c_int) {
        let pid = match &self.child {
            Some(child) => child.id(),
            None => self.fail("signal sent while the server is stopped"),
        };
        let pid = libc::pid_t::try_from(pid).expect("pids fit in pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own
        // child, not yet reaped (we hold its Child), so it cannot name another process.
        if unsafe { libc::kill(pid, signal) } != 0 {
            self.fail(&format!(
                "kill({pid}, {signal}) failed: {}",
                std::io::Error::last_os_error()
            ));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The last lines of the server's log (start-up failures, request errors).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c").arg(&self.config);
        cmd.env_remove("GARAGE_RPC_HOST")
            .env_remove("GARAGE_RPC_SECRET");
        cmd
    }

    fn cli_ok(&self, args: &[&str]) -> bool {
        self.command()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open garage.log");
        let child = self
            .command()
            .arg("server")
            .env("RUST_LOG", "garage=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| self.fail(&format!("cannot start {}: {e}", self.bin.display())));
        self.child = Some(child);
    }

    fn wait_healthy(&mut self) {
        let admin = self.ports.admin;
        self.wait_until(
            START_TIMEOUT,
            "GET /health on the admin port says 200",
            |_| http_status(admin, "/health") == Some(200),
        );
    }

    fn wait_until(&mut self, limit: Duration, what: &str, ready: impl FnMut(&Self) -> bool) {
        if let Err(e) = self.try_wait_until(limit, what, ready) {
            self.fail(&e)
        }
    }

    fn try_wait_until(
        &mut self,
        limit: Duration,
        what: &str,
        mut ready: impl FnMut(&Self) -> bool,
    ) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if ready(self) {
                return Ok(());
            }
            if !self.is_running() {
                return Err(format!("garage exited while waiting until {what}"));
            }
            if start.elapsed() > limit {
                return Err(format!("timed out after {limit:?} waiting until {what}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn fail(&self, msg: &str) -> ! {
        panic!(
            "garage test server ({}): {msg}\n--- tail of {} ---\n{}",
            self.dir.path().display(),
            self.log.display(),
            self.log_tail()
        )
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config_toml(dir: &Path, p: Ports) -> String {
    format!(
        r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"

[s3_web]
bind_addr = "127.0.0.1:{web}"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
        meta = dir.join("meta").display(),
        data = dir.join("data").display(),
        rpc = p.rpc,
        s3 = p.s3,
        web = p.web,
        admin = p.admin,
        secret = random_hex(32),
    )
}

/// `IMAGEGATE_GARAGE_BIN`, then `garage` on PATH, then `~/.cargo/bin/garage`; must
/// report [`GARAGE_VERSION`].
fn find_binary() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(bin) = std::env::var_os("IMAGEGATE_GARAGE_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "IMAGEGATE_GARAGE_BIN={} is not a file; {SETUP_HINT}",
            bin.display()
        );
        candidates.push(bin);
    } else {
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(
                std::env::split_paths(&path)
                    .map(|d| d.join("garage"))
                    .filter(|p| p.is_file()),
            );
        }
        if let Some(home) = std::env::var_os("HOME") {
            let bin = PathBuf::from(home).join(".cargo/bin/garage");
            if bin.is_file() {
                candidates.push(bin);
            }
        }
    }
    let mut seen = Vec::new();
    for bin in candidates {
        match Command::new(&bin).arg("--version").output() {
            Ok(out) if out.status.success() => {
                let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if reports_version(&version, GARAGE_VERSION) {
                    return bin;
                }
                seen.push(format!("{} reports {version:?}", bin.display()));
            }
            Ok(out) => seen.push(format!(
                "{} --version failed: {}",
                bin.display(),
                out.status
            )),
            Err(e) => seen.push(format!("{} cannot run: {e}", bin.display())),
        }
    }
    panic!(
        "garage {GARAGE_VERSION} not found ({}); {SETUP_HINT}",
        if seen.is_empty() {
            "no garage binary in IMAGEGATE_GARAGE_BIN, PATH or ~/.cargo/bin".to_string()
        } else {
            seen.join("; ")
        }
    )
}

/// `garage cargo:2.5.0 [features: ...]` or `garage v2.5.0 ...` reports 2.5.0.
fn reports_version(output: &str, version: &str) -> bool {
    output
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .any(|token| token == version)
}

/// Four distinct free loopback ports, never handed out twice in this process (tests
/// run in parallel; the kernel may reuse a port once its probe socket is closed).
fn free_ports() -> Ports {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    let mut probes = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < 4 {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind a probe socket on 127.0.0.1");
        let port = probe.local_addr().expect("probe address").port();
        // Held open until all four are chosen so the kernel cannot give one twice.
        probes.push(probe);
        if handed_out.insert(port) {
            ports.push(port);
        }
    }
    Ports {
        rpc: ports[0],
        s3: ports[1],
        web: ports[2],
        admin: ports[3],
    }
}

/// TCP ports process `pid` listens on, from /proc (Linux): the inodes of its socket
/// fds matched against the LISTEN rows of /proc/net/tcp{,6}.
fn listening_ports(pid: u32) -> HashSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_string())
        })
        .collect();
    let mut ports = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for row in text.lines().skip(1) {
            let cols: Vec<&str> = row.split_whitespace().collect();
            // cols: sl, local_address (HEXIP:HEXPORT), rem_address, st, ..., inode (9)
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            if *state != "0A" || !inodes.contains(*inode) {
                continue;
            }
            if let Some(port) = local
                .rsplit_once(':')
                .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok())
            {
                ports.insert(port);
            }
        }
    }
    ports
}

/// Status of a plain HTTP/1.0 GET on 127.0.0.1, or None if it cannot connect.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn redact_args(args: &[&str], secret: &str) -> String {
    args.iter()
        .map(|a| if *a == secret { "[secret]" } else { a })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_read_from_the_cargo_and_git_forms() {
        assert!(reports_version(
            "garage cargo:2.5.0 [features: sqlite]",
            "2.5.0"
        ));
        assert!(reports_version("garage v2.5.0 [features: sqlite]", "2.5.0"));
        assert!(!reports_version("garage v2.5.01", "2.5.0"));
        assert!(!reports_version("garage v12.5.0", "2.5.0"));
    }

    #[test]
    fn listening_ports_are_read_from_proc() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listening_ports(std::process::id()).contains(&port));
        drop(listener);
        assert!(!listening_ports(std::process::id()).contains(&port));
    }

    #[test]
    fn ports_are_distinct() {
        let a = free_ports();
        let b = free_ports();
        let all: HashSet<u16> = [a.rpc, a.s3, a.web, a.admin, b.rpc, b.s3, b.web, b.admin]
            .into_iter()
            .collect();
        assert_eq!(all.len(), 8);
    }
}
