//! The committed CheckpointAnchor artifact is reproducible from its source: compiling
//! `chain/contracts/CheckpointAnchor.sol` again with the pinned solc-js
//! (`node chain/compile-anchor.js`) gives the committed `chain/artifacts/CheckpointAnchor.json`
//! byte for byte, so the bytecode the product deploys is the source's.

use std::path::Path;
use std::process::Command;

#[test]
fn the_committed_anchor_artifact_is_what_the_source_compiles_to() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("chain/node_modules/solc").exists(),
        "solc-js is missing: run `npm ci --prefix chain`"
    );
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("CheckpointAnchor-{}.json", uuid::Uuid::new_v4()));
    let run = Command::new("node")
        .arg(root.join("chain/compile-anchor.js"))
        .arg(&out)
        .output()
        .expect("node runs (install Node.js)");
    assert!(
        run.status.success(),
        "compile-anchor.js failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let compiled = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    let committed = std::fs::read(root.join("chain/artifacts/CheckpointAnchor.json")).unwrap();
    assert!(
        compiled == committed,
        "chain/artifacts/CheckpointAnchor.json is not what the source compiles to: run \
         `node chain/compile-anchor.js` and commit the result"
    );
    // And the binary embeds that same file.
    assert_eq!(
        regulator::chain::anchor::ARTIFACT.as_bytes(),
        &committed[..]
    );
}
