//! The documentation's SQL examples run: every ```sql block of README.md and docs/*.md, each
//! through `psql` (as a reader would paste it) on a fresh migrated database, must succeed, so
//! no example can rot as the schema moves. A block that needs a row from an earlier block
//! makes it itself (psql's `\gset` keeps a returned id).

use crate::common::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// Every ```sql block of the README and docs/, with where it starts.
fn sql_examples() -> Vec<(String, String)> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files = vec![format!("{root}/README.md")];
    let mut docs: Vec<String> = std::fs::read_dir(format!("{root}/docs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().to_string_lossy().into_owned())
        .filter(|p| p.ends_with(".md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut blocks = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut current: Option<(usize, String)> = None;
        for (n, line) in text.lines().enumerate() {
            match &mut current {
                None if line.trim_start() == "```sql" => current = Some((n + 1, String::new())),
                Some((start, body)) if line.trim_start() == "```" => {
                    let short = file.strip_prefix(&format!("{root}/")).unwrap_or(&file);
                    blocks.push((format!("{short}:{start}"), std::mem::take(body)));
                    current = None;
                }
                Some((_, body)) => {
                    body.push_str(line);
                    body.push('\n');
                }
                None => {}
            }
        }
        assert!(current.is_none(), "{file}: a ```sql block is never closed");
    }
    blocks
}

#[tokio::test]
async fn every_sql_example_in_the_docs_runs() {
    let blocks = sql_examples();
    assert!(blocks.len() >= 7, "the docs' SQL examples were found ({})", blocks.len());
    let mut failed = Vec::new();
    for (place, sql) in &blocks {
        let db = TestDb::new().await;
        let mut psql = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &db.url])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql runs (PostgreSQL's client is required)");
        psql.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
        let out = psql.wait_with_output().unwrap();
        if !out.status.success() {
            failed.push(format!("{place}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
    }
    assert!(failed.is_empty(), "SQL examples that fail:\n{}", failed.join("\n"));
    println!("{} SQL examples ran", blocks.len());
}

/// Every `orderly` command in a shell example of the README and docs/ names a command the
/// binary has, with options it takes: each is checked against the command's own `--help`
/// (placeholders such as `ID` or `[--all]` are read as the synopsis they are). The examples
/// that need a running service (systemctl, curl against a daemon, container builds) are
/// exercised by their own tests (deploy, api, the container smoke script), not here.
#[test]
fn every_orderly_command_in_the_docs_exists_with_its_options() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files = vec![format!("{root}/README.md")];
    for entry in std::fs::read_dir(format!("{root}/docs")).unwrap().filter_map(|e| e.ok()) {
        let path = entry.path().to_string_lossy().into_owned();
        if path.ends_with(".md") {
            files.push(path);
        }
    }
    let mut checked = 0;
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut in_shell = false;
        for (n, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if matches!(trimmed, "```sh" | "```bash" | "```shell") {
                in_shell = true;
                continue;
            }
            if trimmed.starts_with("```") {
                in_shell = false;
                continue;
            }
            if !in_shell {
                continue;
            }
            // The command, without its comment, and `;`-separated commands one by one.
            let command = line.split(" #").next().unwrap_or_default();
            for command in command.split(';') {
                let words: Vec<&str> = command.split_whitespace().collect();
                let Some(start) = words.iter().position(|w| w.ends_with("orderly") && !w.starts_with('-')) else {
                    continue;
                };
                // `sudo -u orderly orderly …`: the binary is the last `orderly` before the command.
                let start = words[start..].iter().rposition(|w| w.ends_with("orderly")).map_or(start, |i| start + i);
                if words.get(start.wrapping_sub(1)) == Some(&"-u") {
                    continue;
                }
                let rest = &words[start + 1..];
                // `a [--x] | b ID | c`: alternatives of one parent command.
                let alternatives: Vec<Vec<&str>> =
                    rest.split(|w| *w == "|").map(|part| part.to_vec()).filter(|p| !p.is_empty()).collect();
                let Some(first) = alternatives.first() else { continue };
                let path_of = |part: &[&str]| -> Vec<String> {
                    part.iter()
                        .take_while(|w| {
                            w.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                                && !w.starts_with('-')
                                && !w.is_empty()
                        })
                        .map(|w| w.to_string())
                        .collect()
                };
                let skip_global = |part: &[&str]| -> usize {
                    // `--config FILE` before the command is the global option.
                    if part.first() == Some(&"--config") { 2 } else { 0 }
                };
                let first_path = path_of(&first[skip_global(first)..]);
                // `dead-letters list | show ID`: the alternatives are subcommands of the
                // first one's parent (none for `approve … | reject …`).
                let parent: Vec<String> = first_path[..first_path.len().saturating_sub(1)].to_vec();
                for (i, part) in alternatives.iter().enumerate() {
                    let part = &part[skip_global(part)..];
                    let mut path = path_of(part);
                    if i > 0 && !path.is_empty() {
                        let mut full = parent.clone();
                        full.extend(path);
                        path = full;
                    }
                    if path.is_empty() {
                        continue;
                    }
                    let help = std::process::Command::new(env!("CARGO_BIN_EXE_orderly"))
                        .args(&path)
                        .arg("--help")
                        .output()
                        .unwrap();
                    let text = String::from_utf8_lossy(&help.stdout).into_owned();
                    let place = format!("{}:{}", file.strip_prefix(&format!("{root}/")).unwrap_or(file), n + 1);
                    if !help.status.success() {
                        problems.push(format!("{place}: `orderly {}` is not a command", path.join(" ")));
                        continue;
                    }
                    checked += 1;
                    for option in part.iter().filter(|w| w.starts_with("--") || w.starts_with("[--")) {
                        let option: String = option
                            .trim_start_matches('[')
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                            .collect();
                        if option.len() > 2 && !text.contains(&option) {
                            problems.push(format!("{place}: `orderly {}` has no option {option}", path.join(" ")));
                        }
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "shell examples that do not match the binary:\n{}", problems.join("\n"));
    assert!(checked >= 40, "the docs' orderly commands were found ({checked})");
    eprintln!("{checked} orderly commands in the docs checked against their --help");
}
