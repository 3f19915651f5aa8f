//! `orderly demo` (placeholder replaced below).
pub async fn run(
    _settings: crate::config::Settings,
    _args: crate::cli::DemoArgs,
) -> anyhow::Result<()> {
    anyhow::bail!("demo not built yet")
}
