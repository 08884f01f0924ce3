"""Ledger adapters: one module per ledger kind, one shared EVM core. They know nothing of trades or Redis."""
