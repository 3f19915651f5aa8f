//! The `command` kind: run a configured program (argv, no shell) with the envelope as JSON
//! on stdin, in its own process group and a cleaned environment.
//!
//! Exit convention: 0 → success, stdout is the JSON output (more than
//! `limits.max_output_bytes` is `OUTPUT_TOO_LARGE`); 75 (EX_TEMPFAIL) → retryable
//! (`COMMAND_RETRYABLE`); killed by a signal → retryable (`COMMAND_KILLED`); any other status
//! → permanent (`COMMAND_FAILED`). Error messages carry the last 4 KiB of stderr (`…` marks
//! a cut), with NUL bytes replaced by U+FFFD since PostgreSQL text refuses them.
//!
//! While it runs, the child may write progress lines, `{"percent": N, "message": "…"}`, to
//! the descriptor named by `ORDERLY_PROGRESS_FD`; its stderr lines are kept as the
//! attempt's log (`child::Lines`), and its CPU time and peak memory as compute entries.
//!
//! End of a run: the run ends when the direct child exits, not when its pipes reach EOF. The
//! whole process group is then killed with SIGKILL, and the pipes are read for at most
//! 200 ms more (what the child wrote before exiting is already in them), so a background
//! process, even one that left the group with `setsid`, cannot hold the run open. When the
//! execution is dropped (timeout, shutdown) the group is killed the same way, so
//! grandchildren do not survive it.

use super::Compute;
use super::child::{self, Lines};
use super::{Agent, AgentError, AgentRequest, AgentSpec, BoxFuture, DEFAULT_TIMEOUT, Executor};
use crate::model::ConfigError;
use crate::model::ErrorCode;
use crate::policy::progress::Progress;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Exit status meaning "try again later" (sysexits.h EX_TEMPFAIL).
pub const EXIT_RETRYABLE: i32 = 75;
/// How much of stderr goes into an error message: its last 4 KiB.
const STDERR_KEEP: usize = 4096;
/// How long the pipes are still read once the child has exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);
/// Longest stderr or progress line kept; the rest of a longer one is dropped.
const MAX_LINE: usize = 4096;
/// How often the child's peak memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Held while a child is spawned: the progress pipe's write end is inheritable only then,
/// so no other child spawned by this process inherits it.
static SPAWNING: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandOptions {
    program: String,
    #[serde(default)]
    args: Vec<String>,
    timeout: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

pub struct CommandAgent {
    program: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    max_output_bytes: usize,
}

pub fn factory(spec: &AgentSpec<'_>) -> Result<Agent, ConfigError> {
    let options: CommandOptions = spec.options()?;
    if options.program.trim().is_empty() {
        return Err(ConfigError::invalid(format!("agents.{}.program", spec.name), "must not be empty"));
    }
    Ok(Agent {
        timeout: spec.duration("timeout", options.timeout.as_deref(), DEFAULT_TIMEOUT)?,
        executor: Arc::new(CommandAgent {
            program: options.program,
            args: options.args,
            env: options.env,
            max_output_bytes: spec.limits.max_output_bytes,
        }),
    })
}

impl Executor for CommandAgent {
    fn execute<'a>(&'a self, request: &'a AgentRequest) -> BoxFuture<'a, Result<Value, AgentError>> {
        Box::pin(self.run(request))
    }
}

/// Kills the child's whole process group when dropped: on completion, timeout or cancel.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // ESRCH (group already gone) is the normal case after a clean exit.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

impl CommandAgent {
    async fn run(&self, request: &AgentRequest) -> Result<Value, AgentError> {
        self.run_child(request).await.map_err(without_nul)
    }

    async fn run_child(&self, request: &AgentRequest) -> Result<Value, AgentError> {
        let input = serde_json::to_vec(request)
            .map_err(|e| AgentError::permanent(ErrorCode::AgentError, format!("cannot encode envelope: {e}")))?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            .envs(&self.env)
            .env("ORDERLY_WORK_ITEM_ID", request.work_item.id.to_string())
            .env("ORDERLY_ATTEMPT", request.attempt.number.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // Out of file handles, memory or processes is this host's trouble, not the item's.
        let spawn_failed = |e: std::io::Error| {
            AgentError::unless_host_exhausted(
                &e,
                AgentError::permanent(ErrorCode::CommandSpawnFailed, format!("cannot start {}: {e}", self.program)),
            )
        };
        let (progress_read, progress_write) = std::io::pipe().map_err(spawn_failed)?;
        command.env("ORDERLY_PROGRESS_FD", progress_write.as_raw_fd().to_string());
        let spawned = {
            let _only_this_child = SPAWNING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let inheritable = fcntl(&progress_write, FcntlArg::F_SETFD(FdFlag::empty()));
            let spawned = inheritable.map_err(std::io::Error::from).and_then(|_| command.spawn());
            drop(progress_write); // this process's copy: EOF once the child's copies close
            spawned
        };
        let mut child = spawned.map_err(spawn_failed)?;
        let pid = child.id();
        let mut group = GroupGuard(pid.map(|pid| Pid::from_raw(pid as i32)));
        let progress = tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(progress_read))
            .map_err(spawn_failed)?;
        // Exited (not yet reaped, so its /proc entry still says what it used).
        let exited = async move {
            let pid = pid?;
            let id = Id::Pid(Pid::from_raw(pid as i32));
            tokio::task::spawn_blocking(move || waitid(id, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT))
                .await
                .ok()?
                .ok()
        };
        let mut peak_kib = 0i64;
        let mut sample = tokio::time::interval(SAMPLE_EVERY);
        let report = &request.report;

        let mut stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut out = Capture::new(Keep::Head, self.max_output_bytes);
        let mut err = Capture::new(Keep::Tail, STDERR_KEEP);
        let (status, read) = {
            let write = async move {
                // A program that does not read its input is not an error.
                let _ = stdin.write_all(&input).await;
            };
            let mut err_lines = Lines::new(MAX_LINE);
            let mut progress_lines = Lines::new(MAX_LINE);
            let mut progress_seen = Capture::new(Keep::Head, 0);
            let log = |line: &str| report.log(child::level_of_line(line), line);
            let read = async {
                tokio::join!(
                    pump(stdout, &mut out, |_| {}),
                    async {
                        let read = pump(stderr, &mut err, |chunk| err_lines.feed(chunk, log)).await;
                        err_lines.finish(log);
                        read
                    },
                    pump(progress, &mut progress_seen, |chunk| progress_lines.feed(chunk, |line| {
                        match serde_json::from_str::<Value>(line).ok().as_ref().and_then(Progress::from_json) {
                            Some(p) => report.progress(p.percent, p.message.as_deref()),
                            None => report
                                .log("WARN", &format!("progress line ignored (expected {{\"percent\": N}}): {line}")),
                        }
                    })),
                )
            };
            tokio::pin!(write, read, exited);
            let (mut written, mut read_result) = (false, None);
            // The run ends when the direct child exits, not at EOF: a background process may
            // hold the pipes open for as long as it likes.
            loop {
                tokio::select! {
                    _ = &mut write, if !written => written = true,
                    r = &mut read, if read_result.is_none() => read_result = Some(r),
                    _ = sample.tick() => peak_kib = peak_kib.max(pid.and_then(child::peak_memory_kib).unwrap_or(0)),
                    _ = &mut exited => break,
                }
            }
            if let Some(cpu_seconds) = pid.and_then(child::cpu_seconds) {
                report.compute(Compute { cpu_seconds, peak_memory_kib: peak_kib });
            }
            let status = child.wait().await;
            // The rest of the group goes now; what the child wrote before exiting is already
            // in the pipes. A process that escaped the group (setsid) may still hold them:
            // read for a bounded time only.
            group.kill();
            if read_result.is_none() {
                read_result = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut read).await.ok();
                if read_result.is_none() {
                    tracing::warn!(program = %self.program, "the command exited but its output pipes are still \
                        held open by a process outside its group; stopped reading");
                }
            }
            (status, read_result.map(|(out, err, _)| (out, err)))
        };
        let status =
            status.map_err(|e| AgentError::retryable(ErrorCode::CommandKilled, format!("waiting for child: {e}")))?;
        if let Some((Err(e), _)) = read {
            return Err(AgentError::retryable(
                ErrorCode::CommandKilled,
                format!("reading stdout of {}: {e}", self.program),
            ));
        }
        let stderr_text = err.text();
        match (status.code(), status.signal()) {
            (Some(0), _) => {
                if out.truncated {
                    super::check_output_size(out.bytes.len() + 1, self.max_output_bytes)?;
                }
                super::parse_output(&out.bytes)
            }
            (Some(EXIT_RETRYABLE), _) => Err(AgentError::retryable(
                ErrorCode::CommandRetryable,
                format!("{} exited with {EXIT_RETRYABLE} (retryable): {stderr_text}", self.program),
            )),
            (Some(code), _) => Err(AgentError::permanent(
                ErrorCode::CommandFailed,
                format!("{} exited with {code}: {stderr_text}", self.program),
            )),
            (None, signal) => Err(AgentError::retryable(
                ErrorCode::CommandKilled,
                format!("{} was killed by signal {}: {stderr_text}", self.program, signal.unwrap_or_default()),
            )),
        }
    }
}

/// Which end of a stream a [`Capture`] keeps once it is over its limit.
#[derive(Clone, Copy)]
enum Keep {
    /// The first bytes (stdout: the output is refused when it does not fit anyway).
    Head,
    /// The last bytes (stderr: the error is usually at the end).
    Tail,
}

/// What was read from one of the child's pipes, at most `limit` bytes of it.
struct Capture {
    bytes: Vec<u8>,
    keep: Keep,
    limit: usize,
    /// More than `limit` bytes arrived.
    truncated: bool,
}

impl Capture {
    fn new(keep: Keep, limit: usize) -> Self {
        Capture { bytes: Vec::new(), keep, limit, truncated: false }
    }

    fn push(&mut self, chunk: &[u8]) {
        match self.keep {
            Keep::Head => {
                let room = self.limit - self.bytes.len();
                self.truncated |= chunk.len() > room;
                self.bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Keep::Tail => {
                self.bytes.extend_from_slice(chunk);
                if self.bytes.len() > self.limit {
                    self.truncated = true;
                    let excess = self.bytes.len() - self.limit;
                    self.bytes.drain(..excess);
                }
            }
        }
    }

    /// The capture as trimmed text for an error message; a cut tail starts with `…`.
    fn text(&self) -> String {
        let mut bytes = &self.bytes[..];
        if self.truncated && matches!(self.keep, Keep::Tail) {
            // Do not start in the middle of a UTF-8 sequence.
            while let [first, rest @ ..] = bytes
                && first & 0b1100_0000 == 0b1000_0000
            {
                bytes = rest;
            }
        }
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim();
        if self.truncated && matches!(self.keep, Keep::Tail) { format!("…{text}") } else { text.to_owned() }
    }
}

/// Reads a pipe to its end into `capture`, reading on past the limit so the writer is never
/// blocked on a full pipe. Cancel-safe: a dropped pump loses no byte already captured.
async fn pump(
    mut reader: impl AsyncRead + Unpin,
    capture: &mut Capture,
    mut also: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk).await? {
            0 => return Ok(()),
            n => {
                capture.push(&chunk[..n]);
                also(&chunk[..n]);
            }
        }
    }
}

/// PostgreSQL text refuses NUL: messages built from a child's output must not carry one.
fn without_nul(error: AgentError) -> AgentError {
    fn clean(message: String) -> String {
        if message.contains('\0') { message.replace('\0', "\u{FFFD}") } else { message }
    }
    match error {
        AgentError::Retryable { code, message, retry_after } => {
            AgentError::Retryable { code, message: clean(message), retry_after }
        }
        AgentError::Permanent { code, message } => AgentError::Permanent { code, message: clean(message) },
        AgentError::HostExhausted { message } => AgentError::HostExhausted { message: clean(message) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_capture_keeps_the_last_bytes_and_marks_the_cut() {
        let mut capture = Capture::new(Keep::Tail, 8);
        capture.push(b"0123456789");
        capture.push(b"ab");
        assert_eq!(capture.bytes, b"456789ab");
        assert_eq!(capture.text(), "…456789ab");
        let mut short = Capture::new(Keep::Tail, 8);
        short.push(b" ok \n");
        assert_eq!(short.text(), "ok");
    }

    #[test]
    fn a_tail_capture_does_not_start_inside_a_character() {
        let mut capture = Capture::new(Keep::Tail, 4);
        capture.push("xé€".as_bytes()); // x, 2 bytes, 3 bytes: the cut falls inside é
        assert_eq!(capture.text(), "…€");
    }

    #[test]
    fn a_head_capture_keeps_the_first_bytes() {
        let mut capture = Capture::new(Keep::Head, 4);
        capture.push(b"01");
        assert!(!capture.truncated);
        capture.push(b"2345");
        assert_eq!(capture.bytes, b"0123");
        assert!(capture.truncated);
    }

    #[test]
    fn messages_lose_their_nul_bytes() {
        let error = without_nul(AgentError::permanent(ErrorCode::CommandFailed, "a\0b"));
        assert_eq!(error.message(), "a\u{FFFD}b");
    }
}
