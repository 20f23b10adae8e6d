//! Files embedded in the binary at compile time, so the crate is rebuilt when one is added,
//! removed or changed, not only when a known one changes: the console's built assets
//! (`src/api/console.rs`) and the migrations (`sqlx::migrate!` in `storage`, which does not
//! track its directory by itself).

fn main() {
    println!("cargo:rerun-if-changed=console/dist");
    println!("cargo:rerun-if-changed=migrations");
}
