//! Processes of a test: free ports, the binaries, a work dir kept on failure, a process
//! killed when dropped, and the tansu broker.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;

/// A free port on loopback, never one this test process handed out before: the kernel may
/// give a just-released port again, and two nodes of one cluster must not get the same one.
/// Another process could still take it before we bind it; the window is short.
pub fn free_port() -> u16 {
    /// Ports tried before giving up: the ephemeral range is large.
    const ATTEMPTS_MAX: usize = 1_000;
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..ATTEMPTS_MAX {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no loopback port that was not handed out already")
}

/// The `meridian` binary built next to this test (`cargo build --bin meridian`), or
/// `$MERIDIAN_BIN`.
pub fn meridian_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MERIDIAN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = dir.join("meridian");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bin meridian` first (the README's test command does)",
        bin.display()
    );
    bin
}

fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cargo_bin = home.join(".cargo/bin/tansu");
    if cargo_bin.exists() {
        return cargo_bin;
    }
    PathBuf::from("tansu")
}

/// A scratch directory for one test's processes; kept (and named) when the test fails.
pub struct Workdir {
    pub path: PathBuf,
}

impl Workdir {
    pub fn new(name: &str) -> Workdir {
        let path = std::env::temp_dir().join(format!("meridian-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(path.join("logs")).expect("create the work dir");
        Workdir { path }
    }

    /// What process `name` has logged so far.
    pub fn log_text(&self, name: &str) -> String {
        std::fs::read_to_string(self.path.join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    pub fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join("logs").join(format!("{name}.log")))
            .expect("open a log file")
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("MERIDIAN_KEEP_WORKDIR").is_some() {
            eprintln!("logs and data kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A process a test started; killed when dropped.
pub struct Proc {
    pub(crate) name: String,
    pub(crate) child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`).
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        let ok = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {pid} ({})", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` with its output in the work dir's log `name`.
pub fn spawn(work: &Workdir, name: &str, cmd: &mut Command) -> Proc {
    let log = work.log(name);
    let err = log.try_clone().expect("clone log handle");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .env(
            "RUST_LOG",
            std::env::var("MERIDIAN_TEST_LOG").unwrap_or_else(|_| "info,raft=warn".into()),
        )
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
    Proc {
        name: name.to_string(),
        child,
    }
}

/// A tansu broker with in-memory storage.
pub struct Broker {
    _proc: Proc,
    pub addr: String,
}

impl Broker {
    pub fn start(work: &Workdir) -> Broker {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let bin = tansu_bin();
        let proc = spawn(
            work,
            "tansu",
            Command::new(&bin)
                .arg("broker")
                .arg("--storage-engine")
                .arg("memory://tansu/")
                .arg("--listener-url")
                .arg(format!("tcp://{addr}"))
                .arg("--advertised-listener-url")
                .arg(format!("tcp://{addr}")),
        );
        wait_for_port(port, Duration::from_secs(20)).unwrap_or_else(|e| {
            panic!(
                "tansu ({}) did not start: {e}; see {}/logs/tansu.log",
                bin.display(),
                work.path.display()
            )
        });
        Broker { _proc: proc, addr }
    }
}

pub fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    wait_for_addr("127.0.0.1", port, timeout)
}

/// Waits until something listens on `host:port`.
pub fn wait_for_addr(host: &str, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::net::TcpStream::connect((host, port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {host}:{port} after {timeout:?}")
}

/// xorshift64: a seeded schedule for chaos tests, replayable from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The seed of a chaos schedule: `MERIDIAN_CHAOS_SEED`, or drawn from the clock; printed so
/// that a failure can be replayed.
pub fn chaos_seed(what: &str) -> u64 {
    let seed = std::env::var("MERIDIAN_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1;
    eprintln!("{what} seed: {seed} (replay with MERIDIAN_CHAOS_SEED={seed})");
    seed
}
