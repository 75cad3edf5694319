//! Shared by the end-to-end tests: the real `imagegate` binary on a config written
//! for the test, its logs captured to a file so tests can read them.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The classifier files the setup fetches; their absence is a failure, not a skip.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("IMAGEGATE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models"));
    for f in ["open-nsfw.onnx", "libonnxruntime.so.1.31.1"] {
        assert!(
            dir.join(f).is_file(),
            "{} is missing: run scripts/fetch-models.sh (the README's test command does)",
            dir.join(f).display()
        );
    }
    dir
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The sections most test configurations share: the local store under `data`, its
/// files served at `public_base`, a SQLite ledger beside it, and the real classifier.
pub fn local_sections(data: &Path, public_base: &str) -> String {
    format!(
        r#"
[storage]
kind = "local"
root = "{data}/objects"
public_base_url = "{public_base}"

[ledger]
url = "sqlite://{data}/ledger.db"
{safety}"#,
        data = data.display(),
        safety = safety_section(None),
    )
}

/// The real classifier (`model`, or the one `scripts/fetch-models.sh` fetched), and
/// a word the prompt screen refuses.
pub fn safety_section(model: Option<&Path>) -> String {
    let models = models_dir();
    let model = model.map_or_else(|| models.join("open-nsfw.onnx"), Path::to_path_buf);
    format!(
        r#"
[safety]
classifier = true
model = "{model}"
runtime_library = "{models}/libonnxruntime.so.1.31.1"
deny_words = ["forbiddenword"]
"#,
        model = model.display(),
        models = models.display(),
    )
}

/// A small, fast configuration: local provider, local store, SQLite ledger, the real
/// classifier, one cheap profile. `extra` is appended (more sections).
pub fn small_config(dir: &Path, listen: &str, public_host: &str, extra: &str) -> String {
    format!(
        r#"
pricing = "{pricing}"

[server]
listen = "{listen}"

[concurrency]
cpu_workers = 2

[[providers]]
kind = "local"
latency_ms = 10
{local}
[profiles.default]
variants = [128, 256]
formats = ["avif", "jpeg"]
avif = {{ quality = 60, speed = 9 }}
safety = {{ blur_at = 0.2, block_at = 0.8 }}
{extra}
"#,
        pricing = repo_root().join("config/pricing.toml").display(),
        local = local_sections(&dir.join("data"), &format!("http://{public_host}/cdn")),
    )
}

/// A config file and data dir that outlive restarts of the process using them.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    pub fn new(config: impl FnOnce(&Path) -> String) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let text = config(dir.path());
        std::fs::write(dir.path().join("imagegate.toml"), text).unwrap();
        Site { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("imagegate.toml")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("imagegate.log")
    }

    pub fn ledger_url(&self) -> String {
        format!("sqlite://{}/data/ledger.db", self.dir.path().display())
    }

    /// Runs a CLI subcommand on this site's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_imagegate"))
            .arg("--config")
            .arg(self.config())
            .args(args)
            .output()
            .unwrap()
    }

    /// `imagegate serve` with JSON logs appended to [`Site::log`].
    pub fn serve(&self, env: &[(&str, &str)]) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_imagegate"));
        command
            .arg("--config")
            .arg(self.config())
            .arg("--log-json")
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (k, v) in env {
            command.env(k, v);
        }
        spawn_server(command, Some(&self.log()))
    }
}

/// `imagegate --config CONFIG serve` with `env` set, its logs on this process's stderr.
pub fn serve_config(config: &Path, env: &[(&str, &str)]) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_imagegate"));
    command
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        command.env(k, v);
    }
    spawn_server(command, None)
}

/// `imagegate serve ARGS` on the embedded defaults (`config/imagegate.toml`, run from
/// the repository root as `scripts/serve.sh` does), with its data under `data` and
/// logs in `data/imagegate.log`.
pub fn serve_embedded_defaults(data: &Path, args: &[&str]) -> Server {
    let log = std::fs::File::create(data.join("imagegate.log")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_imagegate"));
    command
        .current_dir(repo_root())
        .env_remove("IMAGEGATE_CONFIG")
        .env("IMAGEGATE_STORAGE__ROOT", data.join("objects"))
        .env(
            "IMAGEGATE_LEDGER__URL",
            format!("sqlite://{}/ledger.db", data.display()),
        )
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    spawn_server(command, Some(&data.join("imagegate.log")))
}

/// Starts the server `command` runs and waits for the line that says where it listens.
fn spawn_server(mut command: Command, log: Option<&Path>) -> Server {
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some(addr) = line.trim().strip_prefix("imagegate listening on http://") else {
        let _ = child.kill();
        let _ = child.wait();
        let log = log.map(std::fs::read_to_string);
        panic!(
            "server did not start: {line:?}; log:\n{}",
            log.and_then(Result::ok).unwrap_or_default()
        );
    };
    Server {
        base: format!("http://{addr}"),
        child: Some(child),
    }
}

pub struct Server {
    pub base: String,
    child: Option<Child>,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    pub fn port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// One line of the process's `/proc/PID/status`, value only (`VmRSS`, ...).
    pub fn proc_status(&self, field: &str) -> String {
        let pid = self.child.as_ref().expect("the server is running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("/proc/{pid}/status has no {field} line:\n{status}"))
            .trim()
            .to_string()
    }

    /// SIGTERM and wait: the graceful path an orchestrator takes.
    pub fn stop(self) {
        self.terminate();
        self.wait_exit(Duration::from_secs(20));
    }

    /// kill -9: no graceful anything, as a crashed node.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        let child = self.child.as_ref().expect("the server is running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit; panics (killing it) after `limit`.
    pub fn wait_exit(mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("server did not stop within {limit:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// `GET url`'s JSON body, whatever the status.
pub async fn get_json(url: impl reqwest::IntoUrl) -> serde_json::Value {
    json_answer(client().get(url)).await
}

/// `POST url` with a JSON body; the answer's JSON body, whatever the status.
pub async fn post_json(url: impl reqwest::IntoUrl, body: &serde_json::Value) -> serde_json::Value {
    json_answer(client().post(url).json(body)).await
}

async fn json_answer(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}
