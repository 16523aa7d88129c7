//! Configuration files through the real binary: `meridian config check` names what is wrong,
//! and a role started with `--config` takes its settings from the file unless a flag or an
//! environment variable says otherwise.

use std::process::{Command, Stdio};
use std::time::Duration;

use meridian_tests::{free_port, meridian_bin, wait_for_port, Workdir};

fn meridian(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(meridian_bin())
        .args(args)
        .env_remove("MERIDIAN_CONFIG")
        .envs(env.iter().copied())
        .output()
        .expect("run meridian");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn config_files_are_checked_and_flags_and_environment_win_over_them() {
    let work = Workdir::new("config");
    let good = work.path.join("good.toml");
    let (file_port, env_port) = (free_port(), free_port());
    std::fs::write(
        &good,
        format!(
            "[coordinator]\nlisten = \"127.0.0.1:{file_port}\"\ndata_dir = \"{}\"\nlease_ms = 5000\n\n[region]\nraft_log_retain = 500\nquery-timeout-ms = 1000\n",
            work.path.join("coordinator").display()
        ),
    )
    .expect("write");
    let (ok, out) = meridian(
        &["config", "check", "--config", good.to_str().unwrap_or("")],
        &[],
    );
    assert!(
        ok && out.starts_with("ok:") && out.contains("5 settings"),
        "{out}"
    );

    let bad = work.path.join("bad.toml");
    std::fs::write(&bad, "[region]\nraft_log_retain = \"many\"\n").expect("write");
    let (ok, out) = meridian(
        &["config", "check", "--config", bad.to_str().unwrap_or("")],
        &[],
    );
    assert!(
        !ok && out.contains("raft-log-retain") && out.contains("many"),
        "{out}"
    );
    std::fs::write(&bad, "[region]\nraft_log_retian = 5\n").expect("write");
    let (ok, out) = meridian(
        &["config", "check"],
        &[("MERIDIAN_CONFIG", bad.to_str().unwrap_or(""))],
    );
    assert!(!ok && out.contains("no setting 'raft_log_retian'"), "{out}");

    // The file's listen address is used; an environment variable wins over it.
    let mut child = Command::new(meridian_bin())
        .args(["coordinator", "--config", good.to_str().unwrap_or("")])
        .env_remove("MERIDIAN_LISTEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the coordinator");
    let listened = wait_for_port(file_port, Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    listened.expect("the coordinator listens where the file says");
    let mut child = Command::new(meridian_bin())
        .args(["coordinator", "--config", good.to_str().unwrap_or("")])
        .env("MERIDIAN_LISTEN", format!("127.0.0.1:{env_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the coordinator");
    let listened = wait_for_port(env_port, Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    listened.expect("the environment wins over the file");
}
