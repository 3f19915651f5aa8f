//! An agent's limits, as `[agents.NAME]` states them and every replica enforces them through
//! the database (`db::limits`, `worker::limits`): how many executions may be in flight at once
//! across all replicas (`max_in_flight`), how many may start per second or minute (`rate`,
//! a token bucket with `burst`), and a circuit that opens after `circuit_failures`
//! consecutive failures for `circuit_cool_down`, then lets one probe through at a time.
//! A 429 or 503 with Retry-After pauses the agent on every replica whatever is configured.

use crate::model::ConfigError;
use std::time::Duration;

/// Starts per second, with the bucket's size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    /// Starts allowed at once after a quiet spell (at least 1).
    pub burst: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Circuit {
    /// Consecutive timeouts, 5xx and connection failures that open it.
    pub failures: u32,
    /// How long it stays open before one probe is let through.
    pub cool_down: Duration,
}

/// One agent's limits; the default limits nothing (but a Retry-After pause).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AgentLimit {
    pub max_in_flight: Option<u32>,
    pub rate: Option<Rate>,
    pub circuit: Option<Circuit>,
}

impl AgentLimit {
    /// Whether any limit needs the database at claim time.
    pub fn is_limited(&self) -> bool {
        self.max_in_flight.is_some() || self.rate.is_some() || self.circuit.is_some()
    }

    /// Checks the raw settings; errors name `{at}.KEY` (`agents.NAME`, or a template step).
    pub fn parse(
        at: &str,
        max_in_flight: Option<u32>,
        rate: Option<&str>,
        burst: Option<u32>,
        circuit_failures: Option<u32>,
        circuit_cool_down: Option<&str>,
    ) -> Result<AgentLimit, ConfigError> {
        let key = |k: &str| format!("{at}.{k}");
        if max_in_flight == Some(0) {
            return Err(ConfigError::invalid(key("max_in_flight"), "must be at least 1 (leave it out for no limit)"));
        }
        let rate = match rate {
            None => {
                if burst.is_some() {
                    return Err(ConfigError::invalid(key("burst"), "needs a rate"));
                }
                None
            }
            Some(text) => {
                let per_second = parse_rate(text).map_err(|why| ConfigError::invalid(key("rate"), why))?;
                let burst = match burst {
                    Some(0) => return Err(ConfigError::invalid(key("burst"), "must be at least 1")),
                    Some(b) => b as f64,
                    None => 1.0,
                };
                Some(Rate { per_second, burst })
            }
        };
        let circuit = match (circuit_failures, circuit_cool_down) {
            (None, None) => None,
            (Some(0), _) => return Err(ConfigError::invalid(key("circuit_failures"), "must be at least 1")),
            (failures, cool_down) => Some(Circuit {
                failures: failures.unwrap_or(5),
                cool_down: match cool_down {
                    Some(text) => crate::model::parse_duration(&key("circuit_cool_down"), text)?,
                    None => Duration::from_secs(30),
                },
            }),
        };
        Ok(AgentLimit { max_in_flight, rate, circuit })
    }
}

/// `"50/s"`, `"600/min"`, `"3/h"`: starts per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let (count, unit) = text.trim().split_once('/').ok_or_else(|| format!("{text:?} is not N/s, N/min or N/h"))?;
    let count: f64 = count.trim().parse().map_err(|_| format!("{text:?}: {count:?} is not a number"))?;
    if !(count.is_finite() && count > 0.0) {
        return Err(format!("{text:?}: the count must be above 0"));
    }
    let seconds = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        other => return Err(format!("{text:?}: unit {other:?} is not s, min or h")),
    };
    Ok(count / seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_read_and_checked() {
        assert_eq!(parse_rate("50/s"), Ok(50.0));
        assert_eq!(parse_rate("600/min"), Ok(10.0));
        for bad in ["50", "0/s", "x/s", "5/week", "-1/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        let limit = AgentLimit::parse("agents.llm", Some(5), Some("50/s"), Some(10), Some(3), None).unwrap();
        assert_eq!(limit.max_in_flight, Some(5));
        assert_eq!(limit.rate, Some(Rate { per_second: 50.0, burst: 10.0 }));
        assert_eq!(limit.circuit.unwrap().cool_down, Duration::from_secs(30));
        assert!(limit.is_limited());
        assert!(!AgentLimit::default().is_limited());
        assert!(AgentLimit::parse("agents.a", Some(0), None, None, None, None).is_err());
        assert!(AgentLimit::parse("agents.a", None, None, Some(3), None, None).is_err());
        let e = AgentLimit::parse("agents.a", None, Some("fast"), None, None, None).unwrap_err();
        assert!(e.to_string().contains("agents.a.rate"), "{e}");
    }
}
