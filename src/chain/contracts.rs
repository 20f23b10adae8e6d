//! The functions of the contracts this crate calls, declared here by their Solidity
//! signatures: the T-REX (ERC-3643) suite, whose npm artifacts only the deployer reads (for
//! bytecode), at run time, so the product builds without them; and the project's own
//! [`ICheckpointAnchor`], whose committed artifact `chain/artifacts/CheckpointAnchor.json` is
//! compiled into the binary (see [`super::anchor`], which also checks that these declarations
//! are the artifact's ABI).

alloy::sol! {
    /// The ERC-3643 token (T-REX `Token`).
    interface IToken {
        function init(
            address identityRegistry,
            address compliance,
            string name,
            string symbol,
            uint8 decimals,
            address onchainID
        ) external;
        function addAgent(address agent) external;
        function isAgent(address agent) external view returns (bool);
        function mint(address to, uint256 amount) external;
        function pause() external;
        function unpause() external;
        function paused() external view returns (bool);
        function isFrozen(address user) external view returns (bool);
        function getFrozenTokens(address user) external view returns (uint256);
        function balanceOf(address user) external view returns (uint256);
        function transfer(address to, uint256 amount) external returns (bool);
        function setAddressFrozen(address user, bool freeze) external;
        function freezePartialTokens(address user, uint256 amount) external;
        function unfreezePartialTokens(address user, uint256 amount) external;
        function forcedTransfer(address from, address to, uint256 amount) external returns (bool);
    }

    /// The T-REX registries and the modular compliance, which are initialised without arguments.
    interface IInitialisable {
        function init() external;
    }

    interface IIdentityRegistry {
        function init(address trustedIssuersRegistry, address claimTopicsRegistry, address identityStorage) external;
        function addAgent(address agent) external;
        function registerIdentity(address user, address identity, uint16 country) external;
        function isVerified(address user) external view returns (bool);
    }

    interface IIdentityRegistryStorage {
        function bindIdentityRegistry(address identityRegistry) external;
    }

    /// ONCHAINID's `Identity`, as a holder's identity contract.
    contract Identity {
        constructor(address initialManagementKey, bool isLibrary);
    }
}

alloy::sol! {
    /// The project's checkpoint anchor (`chain/contracts/CheckpointAnchor.sol`): one publisher,
    /// tree sizes that only grow.
    interface ICheckpointAnchor {
        event Anchored(uint64 indexed treeSize, bytes32 root);
        function publisher() external view returns (address);
        function latestSize() external view returns (uint64);
        function anchor(uint64 treeSize, bytes32 root) external;
        function latest() external view returns (uint64 treeSize, bytes32 root);
        function rootOf(uint64 treeSize) external view returns (bytes32);
        function count() external view returns (uint256);
        function anchorAt(uint256 index) external view returns (uint64 treeSize, bytes32 root);
    }

    contract CheckpointAnchor {
        constructor(address publisher_);
    }
}
