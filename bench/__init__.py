"""`dvp-relayer bench`: throughput, latency, reaction time, gas, CPU/RSS and Redis memory on a private devnet."""
