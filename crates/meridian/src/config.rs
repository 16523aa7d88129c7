//! Configuration files. `--config FILE` (or `MERIDIAN_CONFIG`) names a TOML file with one table
//! per role, `[coordinator]`, `[central]`, `[region]`, `[dev]`, whose keys are that role's
//! flags (`data_dir` or `data-dir`). Every flag also has an environment variable, `MERIDIAN_`
//! and its name in capitals (`MERIDIAN_DATA_DIR`). Precedence: the command line, then the
//! environment, then the file, then the built-in default.
//!
//! The file is applied by adding its settings to the command line before clap reads it, so
//! one parser checks every value alike, wherever it came from.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::CommandFactory;

use crate::cli::Cli;

/// The roles a file may configure.
pub const ROLES: [&str; 4] = ["coordinator", "central", "region", "dev"];
/// A configuration file larger than this is refused.
const FILE_BYTES_MAX: u64 = 1 << 20;

/// The command line with the file's settings added (unchanged without a file).
pub fn with_file(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let Some(path) = config_path(&args) else {
        return Ok(args);
    };
    // Only the roles read the file: an admin command (status, query...) works whatever it
    // holds.
    let Some((role, _)) = role_of(&args).filter(|(r, _)| ROLES.contains(&r.as_str())) else {
        return Ok(args);
    };
    let text = read(&path)?;
    let settings = settings(&text, &path)?;
    let Some((_, pairs)) = settings.into_iter().find(|(r, _)| r == role.as_str()) else {
        return Ok(args);
    };
    merge(args, &role, &pairs, &|name| {
        std::env::var_os(name).is_some()
    })
}

fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("MERIDIAN_CONFIG").map(PathBuf::from)
}

/// The subcommand and its position: the first argument that is not an option (or the value
/// of `--config`).
fn role_of(args: &[OsString]) -> Option<(String, usize)> {
    let mut i = 1;
    while let Some(a) = args.get(i) {
        let a = a.to_string_lossy();
        if a == "--config" {
            i += 1;
        } else if !a.starts_with('-') {
            return Some((a.to_string(), i));
        }
        i += 1;
    }
    None
}

fn read(path: &Path) -> anyhow::Result<String> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("config file {}", path.display()))?
        .len();
    if size > FILE_BYTES_MAX {
        bail!(
            "config file {} is {size} bytes, more than {FILE_BYTES_MAX}",
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("config file {}", path.display()))
}

/// Each role's settings in `text`, as (flag name, value) with the value as the command line
/// would take it; unknown roles, unknown flags and values that are not a string, number or
/// boolean are refused, naming the file and the key.
/// A role's settings: (flag name, value as the command line takes it).
pub type RoleSettings = (String, Vec<(String, String)>);

pub fn settings(text: &str, path: &Path) -> anyhow::Result<Vec<RoleSettings>> {
    let doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
    let cli = Cli::command();
    let mut out = Vec::new();
    for (role, item) in doc.iter() {
        let Some(table) = item.as_table() else {
            bail!(
                "{}: '{role}' must be a table ([{role}]); the roles are {}",
                path.display(),
                ROLES.join(", ")
            );
        };
        let Some(cmd) = cli.find_subcommand(role).filter(|_| ROLES.contains(&role)) else {
            bail!(
                "{}: unknown role [{role}]; the roles are {}",
                path.display(),
                ROLES.join(", ")
            );
        };
        let flags: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .filter(|l| l != "help" && l != "config")
            .collect();
        let mut pairs = Vec::new();
        for (key, value) in table.iter() {
            let flag = key.replace('_', "-");
            if !flags.contains(&flag) {
                bail!(
                    "{}: [{role}] has no setting '{key}'; it has {}",
                    path.display(),
                    flags.join(", ")
                );
            }
            let text = match value.as_value() {
                Some(toml_edit::Value::String(s)) => s.value().clone(),
                Some(toml_edit::Value::Integer(i)) => i.value().to_string(),
                Some(toml_edit::Value::Float(f)) => f.value().to_string(),
                Some(toml_edit::Value::Boolean(b)) => b.value().to_string(),
                _ => bail!(
                    "{}: [{role}] {key} must be a string, a number or true/false",
                    path.display()
                ),
            };
            pairs.push((flag, text));
        }
        out.push((role.to_string(), pairs));
    }
    Ok(out)
}

/// Adds `pairs` (the running role's settings) after the role's name on the command line,
/// except those given on the command line or in the environment (`env_set`).
fn merge(
    args: Vec<OsString>,
    role: &str,
    pairs: &[(String, String)],
    env_set: &dyn Fn(&str) -> bool,
) -> anyhow::Result<Vec<OsString>> {
    let given = |flag: &str| {
        let long = format!("--{flag}");
        args.iter().any(|a| {
            let a = a.to_string_lossy();
            a == long || a.starts_with(&format!("{long}="))
        })
    };
    let cli = Cli::command();
    let cmd = cli
        .find_subcommand(role)
        .with_context(|| format!("unknown role '{role}'"))?;
    let mut extra: Vec<OsString> = Vec::new();
    for (flag, value) in pairs {
        let env = format!("MERIDIAN_{}", flag.to_uppercase().replace('-', "_"));
        if given(flag) || env_set(&env) {
            continue;
        }
        let takes_value = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()))
            .is_some_and(|a| a.get_action().takes_values());
        if takes_value {
            // One token, so that a value starting with '-' is not read as a flag.
            extra.push(format!("--{flag}={value}").into());
        } else if value == "true" {
            extra.push(format!("--{flag}").into());
        } else if value != "false" {
            bail!("config: [{role}] {flag} is a switch: true or false, not '{value}'");
        }
    }
    let Some((_, at)) = role_of(&args).filter(|(r, _)| r == role) else {
        bail!("config: the command line does not run '{role}'");
    };
    // A nested command (`central drain NAME`) takes none of the role's settings.
    if args[at + 1..].iter().any(|a| {
        let a = a.to_string_lossy();
        cmd.get_subcommands().any(|s| s.get_name() == a)
    }) {
        return Ok(args);
    }
    let at = at + 1;
    let mut out = args;
    out.splice(at..at, extra);
    Ok(out)
}

/// `meridian config check`: reads the file and checks every role's settings as that role's
/// command line would (values, not the flags a role requires that the file leaves out).
pub fn check(path: Option<PathBuf>) -> anyhow::Result<()> {
    let path = path
        .or_else(|| std::env::var_os("MERIDIAN_CONFIG").map(PathBuf::from))
        .context("name the file: meridian config check --config FILE (or MERIDIAN_CONFIG)")?;
    let text = read(&path)?;
    let all = settings(&text, &path)?;
    let mut problems = Vec::new();
    let mut count = 0;
    for (role, pairs) in &all {
        count += pairs.len();
        let args = merge(vec!["meridian".into(), role.into()], role, pairs, &|_| {
            false
        })?;
        if let Err(e) = Cli::command().try_get_matches_from(args) {
            if e.kind() != clap::error::ErrorKind::MissingRequiredArgument {
                problems.push(format!("[{role}]: {}", e.render().to_string().trim()));
            }
        }
    }
    if !problems.is_empty() {
        bail!("{}: {}", path.display(), problems.join("\n"));
    }
    println!(
        "ok: {} ({count} settings for {})",
        path.display(),
        all.iter()
            .map(|(r, _)| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_command_line_then_the_environment_then_the_file() {
        let text = "[region]\nregion = \"eu\"\ndata_dir = \"/var/m\"\nraft-log-retain = 500\n\n[coordinator]\nlease_ms = 9000\n";
        let all = settings(text, Path::new("m.toml")).expect("valid");
        let region = &all.iter().find(|(r, _)| r == "region").expect("region").1;
        let merged = merge(
            args(&["meridian", "region", "--data-dir", "/cli"]),
            "region",
            region,
            &|env| env == "MERIDIAN_RAFT_LOG_RETAIN",
        )
        .expect("merge");
        assert_eq!(
            merged,
            args(&["meridian", "region", "--region=eu", "--data-dir", "/cli"]),
            "the flag wins over the file, the environment too"
        );
        assert_eq!(
            role_of(&args(&["meridian", "--config", "region", "region"])),
            Some(("region".into(), 3))
        );
        // A nested command takes none of them: `central drain` has its own flags.
        let central = [("data-dir".to_string(), "/d".to_string())];
        let drain = args(&["meridian", "central", "drain", "w1"]);
        assert_eq!(
            merge(drain.clone(), "central", &central, &|_| false).expect("merge"),
            drain
        );
        // A value starting with '-' stays a value.
        let named = [("name".to_string(), "-blue".to_string())];
        assert_eq!(
            merge(args(&["meridian", "central"]), "central", &named, &|_| {
                false
            })
            .expect("merge"),
            args(&["meridian", "central", "--name=-blue"])
        );
    }

    #[test]
    fn unknown_roles_keys_and_bad_values_are_named() {
        let path = Path::new("m.toml");
        let e = settings("[regoin]\nx = 1\n", path).expect_err("unknown role");
        assert!(e.to_string().contains("unknown role [regoin]"), "{e}");
        let e = settings("[region]\nraft_log_retian = 1\n", path).expect_err("unknown key");
        assert!(
            e.to_string().contains("no setting 'raft_log_retian'"),
            "{e}"
        );
        let e = settings("[region]\npeers = [1, 2]\n", path).expect_err("an array");
        assert!(e.to_string().contains("peers must be a string"), "{e}");
        assert!(
            settings("[region\n", path).is_err_and(|e| e.to_string().contains("not valid TOML"))
        );
        let e = merge(
            args(&["meridian", "dev"]),
            "dev",
            &[("exit-after-demo".into(), "maybe".into())],
            &|_| false,
        )
        .expect_err("a switch");
        assert!(e.to_string().contains("is a switch"), "{e}");
    }
}
