//! A worker's name and session: who it is to the coordinator.

use std::path::Path;

use super::CentralError;

/// A number drawn at start: tells this run of the worker from an earlier or a concurrent one.
pub(super) fn new_session() -> u64 {
    // Never 0, which means "no session".
    meridian_proto::draw_run_id() | 1
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The worker's name: given, or kept in the data dir (made up and stored on first start).
pub(super) fn worker_name(
    data_dir: &Path,
    given: Option<String>,
    session: u64,
) -> Result<String, CentralError> {
    let path = data_dir.join("worker-name");
    let name = match given {
        Some(n) => n,
        None => match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let n = format!("central-{:06x}", session & 0xff_ffff);
                std::fs::write(&path, format!("{n}\n"))
                    .map_err(|e| CentralError::Io(path.display().to_string(), e))?;
                n
            }
            Err(e) => return Err(CentralError::Io(path.display().to_string(), e)),
        },
    };
    if !valid_name(&name) {
        return Err(CentralError::Name(name));
    }
    Ok(name)
}
