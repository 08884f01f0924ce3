"""Fault injection: a chaos runner on a local devnet and an independent checker that reads only the chains."""
