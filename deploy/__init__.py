"""Compile, local devnet and deployment tooling for dvp-relayer."""
