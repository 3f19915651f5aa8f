//! What the command kind reads about its child beside stdout: the lines of its stderr (kept
//! as the attempt's log) and of its progress descriptor (`ORDERLY_PROGRESS_FD`), split and
//! bounded here, and the compute it used, from `/proc` (CPU time from the exited child's
//! `stat` before it is reaped; peak memory as its `VmHWM`, sampled while it runs).

/// Splits a byte stream into lines of at most `max` bytes (the rest of a longer line is
/// dropped), lossily decoded.
pub struct Lines {
    partial: Vec<u8>,
    max: usize,
}

impl Lines {
    pub fn new(max: usize) -> Lines {
        Lines { partial: Vec::new(), max }
    }

    pub fn feed(&mut self, chunk: &[u8], mut each: impl FnMut(&str)) {
        for &byte in chunk {
            if byte == b'\n' {
                self.emit(&mut each);
            } else if self.partial.len() < self.max {
                self.partial.push(byte);
            }
        }
    }

    /// The last line, when the stream ended without a newline.
    pub fn finish(&mut self, mut each: impl FnMut(&str)) {
        if !self.partial.is_empty() {
            self.emit(&mut each);
        }
    }

    fn emit(&mut self, each: &mut impl FnMut(&str)) {
        let line = String::from_utf8_lossy(&self.partial);
        let line = line.trim_end_matches('\r');
        if !line.trim().is_empty() {
            each(line);
        }
        self.partial.clear();
    }
}

/// A stderr line's level, from a leading word (`ERROR: …`, `warning …`, `[debug] …`);
/// INFO otherwise.
pub fn level_of_line(line: &str) -> &'static str {
    let word: String = line
        .trim_start_matches(['[', ' '])
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase();
    match word.as_str() {
        "ERROR" | "FATAL" | "CRITICAL" => "ERROR",
        "WARN" | "WARNING" => "WARN",
        "DEBUG" => "DEBUG",
        "TRACE" => "TRACE",
        _ => "INFO",
    }
}

/// Clock ticks per second in `/proc/PID/stat` (USER_HZ, fixed at 100 on Linux).
const TICKS: f64 = 100.0;

/// User and system CPU seconds of a process and of the children it waited for, from
/// `/proc/PID/stat` (readable until the process is reaped).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let tick = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    Some((tick(14)? + tick(15)? + tick(16)? + tick(17)?) / TICKS)
}

/// The peak resident memory of a running process so far (`VmHWM`), in KiB.
pub fn peak_memory_kib(pid: u32) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_bounded_and_finished() {
        let mut lines = Lines::new(5);
        let mut seen = Vec::new();
        lines.feed(b"one\ntwo and more\n\nthr", |l| seen.push(l.to_owned()));
        lines.feed(b"ee\r\nfour", |l| seen.push(l.to_owned()));
        lines.finish(|l| seen.push(l.to_owned()));
        assert_eq!(seen, ["one", "two a", "three", "four"]);
    }

    #[test]
    fn levels_are_read_from_a_leading_word() {
        assert_eq!(level_of_line("ERROR: disk full"), "ERROR");
        assert_eq!(level_of_line("[warning] slow"), "WARN");
        assert_eq!(level_of_line("debug x"), "DEBUG");
        assert_eq!(level_of_line("errors are fine"), "INFO");
        assert_eq!(level_of_line("reading 3 files"), "INFO");
    }

    #[test]
    fn this_process_has_cpu_time_and_a_peak() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        assert!(peak_memory_kib(me).is_some_and(|k| k > 0));
    }
}
