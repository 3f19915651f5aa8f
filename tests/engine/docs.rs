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
