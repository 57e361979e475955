//! Readings of the process and the machine it runs on (Linux): memory against the
//! cgroup limit when there is one, open file descriptors against their limit, and
//! disk use of a filesystem. Each reading is a few small file reads or one syscall.

use std::path::Path;

use serde::Serialize;

/// Memory in use against the limit that matters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryReading {
    /// Resident memory of this process.
    pub rss_bytes: u64,
    /// Memory in use where the limit applies (the cgroup's, or the whole machine's).
    pub used_bytes: u64,
    /// The limit (cgroup limit, or total memory).
    pub limit_bytes: u64,
    /// `cgroup` or `system`.
    pub source: &'static str,
}

impl MemoryReading {
    /// Used over limit, 0 to 1.
    pub fn usage_ratio(&self) -> f64 {
        if self.limit_bytes == 0 {
            0.0
        } else {
            (self.used_bytes as f64 / self.limit_bytes as f64).clamp(0.0, 1.0)
        }
    }
}

/// Open file descriptors against the soft limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FdReading {
    /// Open now.
    pub open: u64,
    /// The soft limit (`ulimit -n`).
    pub max: u64,
}

/// Space on one filesystem.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskReading {
    /// The path measured.
    pub path: String,
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// Space unprivileged processes can still use.
    pub available_bytes: u64,
    /// Used share, 0 to 1, as `df` counts it.
    pub usage_ratio: f64,
}

/// Where resource readings come from: the real process and filesystem in service,
/// chosen values in tests of alerts that cannot be provoked for real (a full disk).
pub trait ResourceProbe: Send + Sync {
    /// Memory in use against its limit.
    fn memory(&self) -> Option<MemoryReading>;
    /// Space on the filesystem holding `path`.
    fn disk(&self, path: &Path) -> Option<DiskReading>;
    /// Open file descriptors against their limit.
    fn file_descriptors(&self) -> Option<FdReading>;
}

/// Reads this process and its filesystems.
pub struct SystemProbe;

impl ResourceProbe for SystemProbe {
    fn memory(&self) -> Option<MemoryReading> {
        memory()
    }
    fn disk(&self, path: &Path) -> Option<DiskReading> {
        disk(path)
    }
    fn file_descriptors(&self) -> Option<FdReading> {
        file_descriptors()
    }
}

fn read_u64(path: impl AsRef<Path>) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions and only reads a constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// Resident memory of this process.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// The cgroup v2 directory of this process, if memory is accounted there.
fn cgroup_dir() -> Option<std::path::PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let relative = cgroups.lines().find_map(|line| line.strip_prefix("0::"))?;
    Some(Path::new("/sys/fs/cgroup").join(relative.trim_start_matches('/')))
}

/// Memory in use against the cgroup limit, or against the machine's memory when the
/// process has no limit.
pub fn memory() -> Option<MemoryReading> {
    let rss_bytes = resident_bytes().unwrap_or(0);
    if let Some(dir) = cgroup_dir()
        && let Ok(max) = std::fs::read_to_string(dir.join("memory.max"))
        && let Ok(limit) = max.trim().parse::<u64>()
        && let Some(used) = read_u64(dir.join("memory.current"))
    {
        return Some(MemoryReading {
            rss_bytes,
            used_bytes: used,
            limit_bytes: limit,
            source: "cgroup",
        });
    }
    // cgroup v1 reports "no limit" as a huge number.
    if let (Some(limit), Some(used)) = (
        read_u64("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        read_u64("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ) && limit < (1 << 60)
    {
        return Some(MemoryReading {
            rss_bytes,
            used_bytes: used,
            limit_bytes: limit,
            source: "cgroup",
        });
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    Some(MemoryReading {
        rss_bytes,
        used_bytes: total.saturating_sub(available),
        limit_bytes: total,
        source: "system",
    })
}

/// Open descriptors and their soft limit. Counting them takes a descriptor of
/// its own: when none is left to take, every one is in use.
pub fn file_descriptors() -> Option<FdReading> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    let status = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if status != 0 {
        return None;
    }
    let open = match std::fs::read_dir("/proc/self/fd") {
        Ok(entries) => entries.count() as u64,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => limit.rlim_cur,
        Err(_) => return None,
    };
    Some(FdReading {
        open,
        max: limit.rlim_cur,
    })
}

/// Space on the filesystem holding `path`.
pub fn disk(path: &Path) -> Option<DiskReading> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value for it.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out-pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as u64;
    let total = stat.f_blocks as u64 * block;
    let free = stat.f_bfree as u64 * block;
    let available = stat.f_bavail as u64 * block;
    let used = total.saturating_sub(free);
    // As df does: used over what an unprivileged user could have.
    let usable = used + available;
    let usage_ratio = if usable == 0 { 0.0 } else { used as f64 / usable as f64 };
    Some(DiskReading {
        path: path.display().to_string(),
        total_bytes: total,
        available_bytes: available,
        usage_ratio,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_of_this_process_are_plausible() {
        let memory = memory().expect("memory reading on Linux");
        assert!(memory.rss_bytes > 1024 * 1024, "{memory:?}");
        assert!(memory.used_bytes <= memory.limit_bytes, "{memory:?}");
        assert!((0.0..=1.0).contains(&memory.usage_ratio()));

        let before = file_descriptors().expect("fd reading on Linux");
        let files: Vec<_> = (0..5)
            .map(|_| std::fs::File::open("/proc/self/stat").expect("open"))
            .collect();
        let after = file_descriptors().expect("fd reading on Linux");
        assert!(after.open >= before.open + 5, "{before:?} {after:?}");
        assert!(after.max >= after.open);
        drop(files);

        let disk = disk(Path::new(".")).expect("disk reading");
        assert!(
            disk.total_bytes > 0 && (0.0..=1.0).contains(&disk.usage_ratio),
            "{disk:?}"
        );
    }
}
