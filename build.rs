//! The console's built assets are embedded in the binary (`src/api/console.rs`): rebuild when
//! a file under `console/dist` is added, removed or changed, not only when a known one changes.

fn main() {
    println!("cargo:rerun-if-changed=console/dist");
}
