"""dvp-relayer: settles a security-token leg and a stablecoin leg atomically with hash-time-locked transfers."""
