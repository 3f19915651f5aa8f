// Rebuild when a migration is added or edited: sqlx::migrate! embeds the migrations
// directory. A directory's own change time moves only when a file is added or removed, so
// every file is named too.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    if let Ok(entries) = std::fs::read_dir("migrations") {
        for entry in entries.flatten() {
            println!("cargo:rerun-if-changed={}", entry.path().display());
        }
    }
}
