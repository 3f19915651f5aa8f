//! `orderly check-config`: validate the layered configuration, build every agent, print the
//! effective configuration with secrets redacted.

use crate::agent::Registry;
use crate::config::Settings;

pub fn run(settings: &Settings, registry: &Registry) -> anyhow::Result<()> {
    registry.build(&settings.agents, settings.agent_limits())?;
    print!("{}", settings.redacted_toml());
    Ok(())
}
