//! What the load generator reads about the broker process from /proc: its
//! resident memory (`VmRSS` in /proc/PID/status) and its open descriptors
//! (entries of /proc/PID/fd). Both need the broker to run as the same user
//! (or root); a missing PID is an error, not a zero.

use anyhow::{bail, Context, Result};

/// Resident memory of `pid`, in kB.
pub fn vm_rss_kb(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    for line in s.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            return Ok(v.trim().trim_end_matches("kB").trim().parse()?);
        }
    }
    bail!("no VmRSS in /proc/{pid}/status")
}

/// Open file descriptors of `pid` (sockets, files, pipes, eventfds...).
pub fn open_fds(pid: u32) -> Result<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?;
    Ok(dir.count() as u64)
}
