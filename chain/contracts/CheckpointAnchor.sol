// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title CheckpointAnchor
/// @notice Publishes the regulator engine's signed checkpoints (tree size, RFC 6962 root of the
/// decision log) on a chain, so that a later rewrite of the log, even one re-signed with the
/// engine's own key, contradicts a root nobody can take back.
/// @dev One publisher, fixed at construction. Tree sizes only grow: a size at or below the
/// latest is refused, so an anchor can be neither replaced nor doubled.
contract CheckpointAnchor {
    /// The only address allowed to anchor (the chain adapter's key).
    address public immutable publisher;

    /// The largest tree size anchored so far (0: none).
    uint64 public latestSize;

    /// Every anchored tree size, in the order anchored (so ascending).
    uint64[] private sizes;

    /// The root anchored for a tree size (zero when that size was never anchored).
    mapping(uint64 => bytes32) private roots;

    event Anchored(uint64 indexed treeSize, bytes32 root);

    constructor(address publisher_) {
        require(publisher_ != address(0), "publisher is the zero address");
        publisher = publisher_;
    }

    /// @notice Anchors the checkpoint (treeSize, root); treeSize must exceed the latest.
    function anchor(uint64 treeSize, bytes32 root) external {
        require(msg.sender == publisher, "not the publisher");
        require(treeSize > latestSize, "tree size not larger than the latest anchored");
        latestSize = treeSize;
        sizes.push(treeSize);
        roots[treeSize] = root;
        emit Anchored(treeSize, root);
    }

    /// @notice The latest anchored checkpoint ((0, 0) when none).
    function latest() external view returns (uint64 treeSize, bytes32 root) {
        return (latestSize, roots[latestSize]);
    }

    /// @notice The root anchored for treeSize (zero when that size was never anchored).
    function rootOf(uint64 treeSize) external view returns (bytes32) {
        return roots[treeSize];
    }

    /// @notice How many checkpoints are anchored.
    function count() external view returns (uint256) {
        return sizes.length;
    }

    /// @notice The index-th anchored checkpoint, oldest first.
    function anchorAt(uint256 index) external view returns (uint64 treeSize, bytes32 root) {
        uint64 size = sizes[index];
        return (size, roots[size]);
    }
}
