"""The protocol: trade instruction, state machine, Δ and term rules. Pure functions and types, no I/O."""
