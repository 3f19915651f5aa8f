//! `orderly admin-token NAME [--scope read|operate]`: a new token for the admin API and web
//! page. Only its SHA-256 goes into the configuration; the token is printed once.

use crate::admin::auth::{generate_token, sha256_hex};
use crate::cli::AdminTokenArgs;
use crate::config::{AdminToken, TokenScope, validate_tokens};
use crate::model::ConfigError;

pub fn run(args: AdminTokenArgs) -> anyhow::Result<()> {
    let scope = if args.scope == "operate" { TokenScope::Operate } else { TokenScope::Read };
    let token = generate_token();
    let entry = AdminToken { name: args.name, sha256: sha256_hex(&token), scope };
    validate_tokens(std::slice::from_ref(&entry)).map_err(|e| match e {
        ConfigError::Invalid { message, .. } => anyhow::anyhow!("the name {message}"),
        other => other.into(),
    })?;
    println!("token (shown once, keep it secret): {token}");
    println!();
    println!("Add this to the configuration of every orderly run, then restart it:");
    println!();
    println!("[[admin.tokens]]");
    println!("name = {}", toml::Value::String(entry.name.clone()));
    println!("sha256 = \"{}\"", entry.sha256);
    println!("scope = \"{}\"", entry.scope.as_str());
    println!();
    println!("Use it as `Authorization: Bearer TOKEN` on /api/v1, or sign in with it at /.");
    Ok(())
}
