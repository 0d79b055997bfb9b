"""medcbir.pacs — see docs/contracts.md."""
