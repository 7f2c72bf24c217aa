//! Rebuild when a migration is added: `refinery::embed_migrations!` reads `migrations/` at
//! compile time, and without this cargo would not notice a new file there.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=sql");
}
