//! systemd's notify protocol (`sd_notify(3)`), without a crate: one datagram per state
//! change to the socket named by `NOTIFY_SOCKET`, a filesystem path or, when it starts with
//! `@`, a name in the abstract namespace. `orderly run` sends `READY=1` once the engine runs,
//! `WATCHDOG=1` every `WATCHDOG_USEC / 2` while the engine is healthy, and `STOPPING=1` when
//! the drain starts (docs/operations.md, "systemd").
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op. Sending never blocks: the
//! socket is non-blocking, and a notification the manager cannot take is dropped and logged.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct SystemdSocket {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl SystemdSocket {
    /// The notifier `NOTIFY_SOCKET` names, or `None` when it is unset or empty (not started by
    /// systemd with `Type=notify`, or not allowed to notify). A value that is not a usable
    /// address is an error.
    pub fn from_env() -> io::Result<Option<SystemdSocket>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(None),
            Some(path) if path.is_empty() => Ok(None),
            Some(path) => SystemdSocket::connect(&path.to_string_lossy()).map(Some),
        }
    }

    /// A notifier for the socket at `path` (`@name` for the abstract namespace).
    pub fn connect(path: &str) -> io::Result<SystemdSocket> {
        let addr = parse_address(path)?;
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(SystemdSocket { socket, addr })
    }

    /// Sends one notification: newline-separated `KEY=VALUE` assignments (`READY=1`).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let sent = self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        if sent != state.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "notification truncated"));
        }
        Ok(())
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as `sd_watchdog_enabled(3)`
/// advises. `None` when the watchdog is off, or when `WATCHDOG_PID` names another process
/// (the variables were inherited, not meant for us).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec) / 2)
}

/// `/run/x.sock` is a path, `@name` a name in the abstract namespace (Linux).
fn parse_address(path: &str) -> io::Result<SocketAddr> {
    if let Some(name) = path.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            return SocketAddr::from_abstract_name(name.as_bytes());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(io::Error::new(io::ErrorKind::Unsupported, "abstract socket names need Linux"));
        }
    }
    if !path.starts_with('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET must be an absolute path or start with '@', not {path:?}"),
        ));
    }
    SocketAddr::from_pathname(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = std::env::temp_dir().join(format!("orderly-sdnotify-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        SystemdSocket::connect(path.to_str().unwrap()).unwrap().notify("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();

        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("orderly-sdnotify-{}", uuid::Uuid::new_v4().simple());
            let receiver = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
            SystemdSocket::connect(&format!("@{name}")).unwrap().notify("WATCHDOG=1").unwrap();
            let n = receiver.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"WATCHDOG=1");
        }
    }

    #[test]
    fn a_relative_path_is_refused() {
        assert!(SystemdSocket::connect("run/notify").is_err());
    }
}
