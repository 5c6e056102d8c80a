//! Reading /proc (plain `std::fs`): CPU time of a process, its resident memory, and which process
//! listens on a loopback port.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Clock ticks per second of /proc/PID/stat's utime and stime (`getconf CLK_TCK`, else 100).
pub fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|v| *v > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime + stime of `pid` ("self" for this process) in seconds.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck())
}

/// (VmRSS, VmHWM) of `pid` in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Number of online CPUs.
pub fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The CPU model from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Hard limit on open files the bench asks for when it may raise it (as root): enough for
/// 100,000 connections on each side plus the brokers' own files.
const WANTED_OPEN_FILES: u64 = 262_144;

/// Raises this process's RLIMIT_NOFILE soft limit to its hard limit, after raising the hard limit
/// to [`WANTED_OPEN_FILES`] (capped by `fs.nr_open`) where that is permitted (root). Brokers
/// spawned later inherit the limits. Returns the soft limit now in force.
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    if let Some(hard) = now.maximum {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(hard);
        let want = WANTED_OPEN_FILES.min(nr_open);
        if want > hard {
            // Permitted only with CAP_SYS_RESOURCE; otherwise the hard limit stays.
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(want),
                    maximum: Some(want),
                },
            );
        }
    }
    let now = getrlimit(Resource::Nofile);
    if now.current != now.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: now.maximum,
                maximum: now.maximum,
            },
        );
    }
    open_files_limit()
}

/// The soft limit on open files of this process.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The PID of the process with a listening TCP socket on `port` (looked up through
/// /proc/net/tcp{,6} inodes and /proc/*/fd links). Bounded: one pass over /proc.
pub fn find_listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// One reading of the sampler.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    /// Broker utime+stime, seconds.
    pub broker_cpu: Option<f64>,
    /// This process's utime+stime, seconds.
    pub self_cpu: Option<f64>,
    /// utime+stime per thread of this process, seconds.
    pub threads: Vec<(u32, f64)>,
}

/// Samples, every 50 ms on a thread: the broker's VmRSS (keeping the peak) and CPU time, this
/// process's CPU time and that of each of its threads, so that CPU % can be computed over the
/// window that matters (see [`Sampler::cpu`]).
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Vec<Sample>>>,
}

/// CPU % figures over a window.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuFigures {
    pub broker: Option<f64>,
    pub generator: Option<f64>,
    pub busiest_thread: Option<f64>,
}

fn threads_cpu() -> Vec<(u32, f64)> {
    let mut v = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let (Ok(tid), Some(cpu)) = (
                name.parse::<u32>(),
                cpu_seconds(&format!("self/task/{name}")),
            ) {
                v.push((tid, cpu));
            }
        }
    }
    v
}

impl Sampler {
    /// Starts sampling `pid` (the broker, if known) and this process.
    pub fn start(pid: Option<u32>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let pid_s = pid.map(|p| p.to_string());
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            // Bounded by the stop flag, and by 6 hours of samples at most.
            for _ in 0..(6 * 3600 * 20) {
                if let Some((rss, _)) = pid.and_then(memory_kib) {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                samples.push(Sample {
                    at: Instant::now(),
                    broker_cpu: pid_s.as_deref().and_then(cpu_seconds),
                    self_cpu: cpu_seconds("self"),
                    threads: threads_cpu(),
                });
                if s.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        });
        Sampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns the peak broker VmRSS (KiB) and the samples.
    pub fn finish(mut self) -> (Option<u64>, Vec<Sample>) {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let peak = Some(self.peak.load(Ordering::Relaxed)).filter(|v| *v > 0);
        (peak, samples)
    }

    /// CPU % (100 = one core) between the samples nearest to `from` and `to` (inside them).
    pub fn cpu(samples: &[Sample], from: Instant, to: Instant) -> CpuFigures {
        let first = samples
            .iter()
            .find(|s| s.at >= from)
            .or_else(|| samples.first());
        let last = samples.iter().rev().find(|s| s.at <= to).or(samples.last());
        let (Some(a), Some(b)) = (first, last) else {
            return CpuFigures::default();
        };
        let wall = b.at.saturating_duration_since(a.at).as_secs_f64();
        if wall < 0.05 {
            return CpuFigures::default();
        }
        let pct = |x: Option<f64>, y: Option<f64>| Some((y? - x?) / wall * 100.0);
        let busiest = b
            .threads
            .iter()
            .map(|(tid, cpu)| {
                let before = a.threads.iter().find(|t| t.0 == *tid).map_or(0.0, |t| t.1);
                (cpu - before) / wall * 100.0
            })
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        CpuFigures {
            broker: pct(a.broker_cpu, b.broker_cpu),
            generator: pct(a.self_cpu, b.self_cpu),
            busiest_thread: busiest,
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
