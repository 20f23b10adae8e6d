//! Checking the ledger in the database against itself: every record's hash, every link of the
//! chain, and the head. `regulator audit verify` runs it and names the first bad entry.

use sqlx::PgPool;

use crate::domain::ledger::{check_link, BrokenLink, Head};
use crate::storage::{self, StorageError};

/// Records read at a time: bounded memory for any length of log.
const PAGE: i64 = 10_000;

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainCheck {
    /// Every record from seq 1 links to the one before, and the head names the last.
    Sound { decisions: u64, head: Head },
    /// The first record that does not continue the chain, and why.
    Broken { seq: u64, reason: BrokenLink },
    /// The records link, but `ledger_head` names another last record (records were removed
    /// from the end, or the head was altered).
    HeadMismatch { head: Head, last: Head },
}

/// Recomputes the hash chain from the genesis head, a page at a time.
pub async fn verify_chain(pool: &PgPool) -> Result<ChainCheck, StorageError> {
    let mut head = Head::GENESIS;
    loop {
        let page = storage::chain_links(pool, head.seq, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for (seq, text, stored) in page {
            match check_link(head, seq, &text, stored) {
                Ok(next) => head = next,
                Err(reason) => return Ok(ChainCheck::Broken { seq, reason }),
            }
        }
    }
    let recorded = storage::ledger_head(pool).await?;
    if recorded != head {
        return Ok(ChainCheck::HeadMismatch {
            head: recorded,
            last: head,
        });
    }
    Ok(ChainCheck::Sound {
        decisions: head.seq,
        head,
    })
}
