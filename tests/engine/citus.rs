//! A Citus cluster for the distributed-mode tests (docs/distributed.md, "Testing"), shared by
//! the engine tests and the fault suite. `ORDERLY_CITUS_URL` names a database on the
//! coordinator in which the workers are added (`citus_add_node`); each test makes a database
//! of its own on the coordinator and on every worker. Without the variable a test prints a
//! SKIPPED line and returns: Citus is built by hand, it is not in the registries CI reaches.

use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// A database of its own on the Citus coordinator and every worker, the workers added.
pub struct CitusDb {
    pub url: String,
    pub pool: PgPool,
    /// The maintenance database of every node (the coordinator first), to drop this test's
    /// database from and to restart a node.
    pub nodes: Vec<String>,
    name: String,
}

impl Drop for CitusDb {
    fn drop(&mut self) {
        let (nodes, name) = (self.nodes.clone(), self.name.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                for node in nodes.iter().rev() {
                    if let Ok(mut admin) = PgConnection::connect(node).await {
                        let _ =
                            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                                .execute(&mut admin)
                                .await;
                    }
                }
            });
        })
        .join()
        .ok();
    }
}

fn with_database(url: &str, name: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).expect("ORDERLY_CITUS_URL is a URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

fn node_url(coordinator: &str, host: &str, port: i32, name: &str) -> String {
    let mut parsed = reqwest::Url::parse(coordinator).expect("ORDERLY_CITUS_URL is a URL");
    parsed.set_host(Some(host)).unwrap();
    parsed.set_port(Some(port as u16)).unwrap();
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

async fn exec(url: &str, sql: String) {
    let mut conn = PgConnection::connect(url).await.unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.unwrap_or_else(|e| panic!("{url}: {e}"));
}

impl CitusDb {
    /// None (and a SKIPPED line) without `ORDERLY_CITUS_URL`.
    pub async fn new(test: &str) -> Option<CitusDb> {
        let Ok(base) = std::env::var("ORDERLY_CITUS_URL") else {
            eprintln!(
                "SKIPPED {test}: ORDERLY_CITUS_URL is not set, so this distributed-mode test did not run \
                 (docs/distributed.md, \"Testing\")"
            );
            return None;
        };
        let mut admin = PgConnection::connect(&base).await.expect("the Citus coordinator at ORDERLY_CITUS_URL");
        let coordinator: (String, i32) = sqlx::query_as(
            "SELECT nodename, nodeport FROM pg_dist_node WHERE groupid = 0 UNION ALL
             SELECT host(inet_server_addr()), inet_server_port() LIMIT 1",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        let workers: Vec<(String, i32)> = sqlx::query_as(
            "SELECT nodename, nodeport FROM pg_dist_node WHERE groupid <> 0 AND noderole = 'primary' ORDER BY nodeport",
        )
        .fetch_all(&mut admin)
        .await
        .unwrap();
        assert!(!workers.is_empty(), "the database at ORDERLY_CITUS_URL has no workers (citus_add_node)");
        // One setup at a time across the test processes: Citus updates shared catalogs when
        // it adds nodes, and two at once fail with "tuple concurrently updated".
        sqlx::query("SELECT pg_advisory_lock(31369498, 1)").execute(&mut admin).await.unwrap();
        let name = format!("orderly_citus_{}", Uuid::new_v4().simple());
        let mut nodes = Vec::new();
        for (host, port) in std::iter::once(&coordinator).chain(&workers) {
            let maintenance = node_url(&base, host, *port, "postgres");
            exec(&maintenance, format!("CREATE DATABASE {name}")).await;
            nodes.push(maintenance);
            exec(&node_url(&base, host, *port, &name), "CREATE EXTENSION citus".into()).await;
        }
        let url = with_database(&base, &name);
        let mut setup = format!("SELECT citus_set_coordinator_host('{}', {});", coordinator.0, coordinator.1);
        for (host, port) in &workers {
            setup.push_str(&format!("SELECT citus_add_node('{host}', {port});"));
        }
        exec(&url, setup).await;
        sqlx::query("SELECT pg_advisory_unlock(31369498, 1)").execute(&mut admin).await.unwrap();
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(8).connect(&url).await.unwrap();
        Some(CitusDb { url, pool, nodes, name })
    }

    /// An engine on this cluster, with the engine tests' defaults under `toml`.
    pub async fn engine(&self, toml: &str) -> orderly::daemon::Engine {
        let defaults = "[worker]\npoll_interval = \"200ms\"\nrescue_interval = \"500ms\"\n\
                        [retry]\nbackoff_base = \"50ms\"\nbackoff_max = \"200ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n";
        let mut settings = orderly::config::Settings::from_toml_layers(&[defaults, toml]).unwrap();
        settings.database.url = self.url.clone();
        settings.database.migrate_on_start = false;
        orderly::daemon::Engine::start(settings, &orderly::agent::Registry::builtin(), None)
            .await
            .expect("engine starts")
    }

    /// Migrated and distributed as an operator does it: `orderly migrate --distributed`.
    pub async fn distributed(test: &str) -> Option<CitusDb> {
        let db = CitusDb::new(test).await?;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_orderly"))
            .args(["migrate", "--distributed"])
            .env("DATABASE_URL", &db.url)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("orderly runs");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.contains("tables distributed by tenant"), "{said}");
        Some(db)
    }
}

impl CitusDb {
    /// Restarts node `index` of [`CitusDb::nodes`] (0: the coordinator) in immediate mode, as
    /// a crash would, and waits until it accepts connections. The node must run on this
    /// machine: its data directory is asked of it, and `pg_ctl` runs as the directory's owner.
    #[allow(dead_code)]
    pub fn restart_node(&self, index: usize) {
        let url = self.nodes[index].clone();
        let dir: String = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut conn = PgConnection::connect(&url).await.unwrap();
                sqlx::query_scalar("SHOW data_directory").fetch_one(&mut conn).await.unwrap()
            })
        })
        .join()
        .unwrap();
        let owner = std::process::Command::new("stat").args(["-c", "%U", &dir]).output().expect("stat runs");
        assert!(owner.status.success(), "the node's data directory {dir} is not on this machine");
        let owner = String::from_utf8_lossy(&owner.stdout).trim().to_owned();
        let bindir = std::process::Command::new("pg_config").arg("--bindir").output().expect("pg_config runs");
        let pg_ctl = format!("{}/pg_ctl", String::from_utf8_lossy(&bindir.stdout).trim());
        let log = std::env::temp_dir().join(format!("orderly-citus-node-{index}.log"));
        let status = std::process::Command::new("runuser")
            .args(["-u", &owner, "--", &pg_ctl, "-D", &dir, "-m", "immediate", "-w", "-t", "180", "restart", "-l"])
            .arg(&log)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("runuser runs");
        assert!(status.success(), "restarting the node in {dir} failed (see {})", log.display());
    }
}
