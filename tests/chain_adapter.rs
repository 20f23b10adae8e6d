//! The chain adapter against a real anvil node running the real T-REX contracts, and the real
//! engine over HTTP: each test is a story from an order to the token's state.

mod evm;
mod service;

use alloy::rpc::types::BlockId;
use regulator::chain::contracts::{IIdentityRegistry, IToken};
use regulator::chain::token;

use evm::{Chain, ALICE_BALANCE, BOB_BALANCE};

#[tokio::test]
async fn a_t_rex_suite_deploys_and_reads_back() {
    let chain = Chain::start("anvil-deploy", 31337, 1).await;
    assert_eq!(chain.balance(chain.alice).await, ALICE_BALANCE);
    assert_eq!(chain.balance(chain.bob).await, BOB_BALANCE);
    assert!(!chain.paused().await, "the deployer unpaused the token");
    let agent = chain.agent_key.address();
    assert!(chain.latest(IToken::isAgentCall { agent }).await);
    let verified: bool = token::read(
        &chain.owner,
        chain.suite.identity_registry,
        IIdentityRegistry::isVerifiedCall {
            user: chain.doj_custody,
        },
        BlockId::latest(),
    )
    .await
    .unwrap();
    assert!(verified, "the custody wallet has a registered identity");
    assert_eq!(chain.suite.identities.len(), 3);
}
