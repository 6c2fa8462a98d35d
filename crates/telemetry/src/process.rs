//! `process_*` metrics read from `/proc/self`, named like the Go and Python clients name them.
//!
//! Reading `/proc` needs no unsafe code; the kernel reports CPU time in
//! `USER_HZ` ticks, which is 100 on every Linux architecture's user ABI.

use std::fs;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

const USER_HZ: f64 = 100.0;

/// A snapshot of this process's resource use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub start_time_seconds: f64,
    /// Soft limit of the address space (u64::MAX when unlimited).
    pub virtual_max_bytes: u64,
}

impl ProcessStats {
    /// Reads the current values; fields that cannot be read stay 0.
    pub fn read() -> Self {
        let mut s = Self::default();
        if let Ok(stat) = fs::read_to_string("/proc/self/stat") {
            if let Some(fields) = parse_stat(&stat) {
                s.cpu_seconds = (fields.utime + fields.stime) as f64 / USER_HZ;
                s.virtual_bytes = fields.vsize;
                if let Some(btime) = boot_time() {
                    s.start_time_seconds = btime + fields.starttime as f64 / USER_HZ;
                }
            }
        }
        if let Ok(status) = fs::read_to_string("/proc/self/status") {
            s.resident_bytes = status_kib(&status, "VmRSS:").unwrap_or(0) * 1024;
        }
        if let Ok(dir) = fs::read_dir("/proc/self/fd") {
            // The read_dir handle itself is one of the entries.
            s.open_fds = dir.count().saturating_sub(1) as u64;
        }
        if let Ok(limits) = fs::read_to_string("/proc/self/limits") {
            s.max_fds = soft_limit(&limits, "Max open files").unwrap_or(0);
            s.virtual_max_bytes = soft_limit(&limits, "Max address space").unwrap_or(u64::MAX);
        }
        s
    }
}

struct StatFields {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
}

fn parse_stat(stat: &str) -> Option<StatFields> {
    // The command name is in parentheses and may contain spaces: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state) of proc(5).
    let get = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(StatFields {
        utime: get(14)?,
        stime: get(15)?,
        starttime: get(22)?,
        vsize: get(23)?,
    })
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn soft_limit(limits: &str, name: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with(name))?;
    let soft = line[name.len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

fn boot_time() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line[6..].trim().parse().ok()
}

/// Collector that reads [`ProcessStats`] on every scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = ProcessStats::read();
        let counter = ConstCounter::new(s.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?)?;
        let gauges: [(&str, &str, f64); 6] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_bytes as f64,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                s.max_fds as f64,
            ),
            (
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes",
                s.virtual_max_bytes as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                s.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

/// A registry that already carries the `process_*` collector.
pub fn registry_with_process_metrics() -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector));
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "42 (my (odd) prog) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1234 10485760 300 18446744073709551615";
        let f = parse_stat(stat).unwrap();
        assert_eq!(
            (f.utime, f.stime, f.starttime, f.vsize),
            (250, 50, 1234, 10485760)
        );
    }

    #[test]
    fn parses_limits_and_status() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(soft_limit(limits, "Max open files"), Some(1024));
        let limits = "Max address space         unlimited            unlimited            bytes\n";
        assert_eq!(soft_limit(limits, "Max address space"), Some(u64::MAX));
        assert_eq!(
            status_kib("Name:\tx\nVmRSS:\t    5120 kB\n", "VmRSS:"),
            Some(5120)
        );
    }

    #[test]
    fn reads_real_values_from_proc() {
        let s = ProcessStats::read();
        assert!(s.resident_bytes > 0);
        assert!(s.open_fds > 0);
        assert!(s.max_fds >= s.open_fds);
        assert!(s.start_time_seconds > 1.0e9);
    }

    #[test]
    fn collector_encodes_all_families() {
        let registry = registry_with_process_metrics();
        let text = crate::admin::encode_metrics(&registry);
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
            "process_virtual_memory_max_bytes ",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
    }
}
