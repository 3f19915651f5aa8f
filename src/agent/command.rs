//! The `command` kind: run a configured program (argv, no shell) with the envelope as JSON
//! on stdin, in its own process group and a cleaned environment.
//!
//! Exit convention: 0 → success, stdout is the JSON output; 75 (EX_TEMPFAIL) → retryable;
//! killed by a signal → retryable; any other status → permanent. When the execution is
//! dropped (timeout, shutdown) or finishes, the whole process group is killed with SIGKILL,
//! so grandchildren do not survive it.

use super::{Agent, AgentError, AgentRequest, AgentSpec, BoxFuture, DEFAULT_TIMEOUT, Executor};
use crate::config::ConfigError;
use crate::model::ErrorCode;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Exit status meaning "try again later" (sysexits.h EX_TEMPFAIL).
pub const EXIT_RETRYABLE: i32 = 75;
const STDERR_KEEP: usize = 4096;

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

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // ESRCH (group already gone) is the normal case after a clean exit.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl CommandAgent {
    async fn run(&self, request: &AgentRequest) -> Result<Value, AgentError> {
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
        let mut child = command.spawn().map_err(|e| {
            AgentError::permanent(ErrorCode::CommandSpawnFailed, format!("cannot start {}: {e}", self.program))
        })?;
        let _group = GroupGuard(child.id().map(|pid| Pid::from_raw(pid as i32)));

        let mut stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let write = async move {
            // A program that does not read its input is not an error.
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        };
        let (_, out, err, status) = tokio::join!(
            write,
            read_limited(stdout, self.max_output_bytes),
            read_limited(stderr, STDERR_KEEP),
            child.wait()
        );
        let status =
            status.map_err(|e| AgentError::retryable(ErrorCode::CommandKilled, format!("waiting for child: {e}")))?;
        let stderr_text = String::from_utf8_lossy(&err.unwrap_or_default().0).trim().to_owned();
        let (out, out_truncated) = out.map_err(|e| {
            AgentError::retryable(ErrorCode::CommandKilled, format!("reading stdout of {}: {e}", self.program))
        })?;
        match (status.code(), status.signal()) {
            (Some(0), _) => {
                if out_truncated {
                    super::check_output_size(out.len() + 1, self.max_output_bytes)?;
                }
                super::parse_output(&out)
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

/// Reads up to `limit` bytes; the flag says whether more was available.
async fn read_limited(reader: impl AsyncRead + Unpin, limit: usize) -> std::io::Result<(Vec<u8>, bool)> {
    let mut buf = Vec::new();
    let mut limited = reader.take(limit as u64 + 1);
    limited.read_to_end(&mut buf).await?;
    let truncated = buf.len() > limit;
    buf.truncate(limit);
    // Drain the rest so the child is not blocked on a full pipe.
    let mut rest = limited.into_inner();
    let mut sink = [0u8; 8192];
    while truncated && rest.read(&mut sink).await? > 0 {}
    Ok((buf, truncated))
}
