"""Prometheus metrics of one worker, in their own registry (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

TRADES = Gauge("dvp_trades", "Trades by state (open ones from this worker's last round, terminal ones in total)",
               ["state"], registry=REGISTRY)
DECISIONS = Counter("dvp_trade_decisions_total", "Trades decided (read, judged against both chains' views): the "
                    "work per round follows what changed, so this grows with events, not with open trades",
                    registry=REGISTRY)
TRANSITIONS = Counter("dvp_trade_transitions_total", "State transitions made by this worker", ["to"],
                      registry=REGISTRY)
SETTLE_SECONDS = Histogram("dvp_settlement_seconds", "Acceptance to SETTLED, seconds",
                           buckets=(1, 2, 3, 5, 8, 13, 21, 34, 60, 120, 300, 600), registry=REGISTRY)
FOLLOWER_LAG = Gauge("dvp_follower_lag_blocks", "Chain head minus the last block the follower processed",
                     ["chain"], registry=REGISTRY)
FOLLOWER_HEIGHT = Gauge("dvp_follower_height", "Last block processed by the follower", ["chain"],
                        registry=REGISTRY)
RPC_ERRORS = Counter("dvp_rpc_errors", "Transport errors seen talking to the chain's RPC endpoints (exported as "
                     "dvp_rpc_errors_total)", ["chain"], registry=REGISTRY)
RPC_HEAD_STALLS = Counter("dvp_rpc_head_stalls_total", "Times the active RPC endpoint's head stopped advancing while "
                          "a standby's went on (the worker then switched to the standby)", ["chain"],
                          registry=REGISTRY)
RPC_ENDPOINT_SLOW = Counter("dvp_rpc_endpoint_slow_total", "Times the active RPC endpoint was left because it kept "
                            "a request waiting and could not answer a head request in time while another endpoint, "
                            "not behind the head seen, could (a slow path)", ["chain"],
                            registry=REGISTRY)
DEEP_REORGS = Counter("dvp_reorgs_beyond_confirmations_total", "Reorgs that replaced blocks the follower had taken "
                      "as final (deeper than k): beyond the protocol's guarantee", ["chain"], registry=REGISTRY)
BLOCKS_MISSING = Counter("dvp_rpc_blocks_missing_total", "Blocks below the head a node had no header for, for longer "
                         "than the follower's patience (a hole in its history): read past, their events unknown",
                         ["chain"], registry=REGISTRY)
LOCKS_WITHOUT_EVENT = Counter("dvp_locks_without_event_total", "Trades about to be aborted whose lock the escrow holds "
                              "though the node gave no event for it (a node dropping logs)", ["chain"],
                              registry=REGISTRY)
LOGS_WITHHELD = Counter("dvp_rpc_logs_withheld_total", "eth_getLogs answers that left out events the blocks' own "
                        "logs blooms show (a node dropping logs): the follower did not read past them", ["chain"],
                        registry=REGISTRY)
REVEALS_PROVEN_DIRECTLY = Counter("dvp_reveals_proven_directly_total", "Our SC claims found final by reading the "
                                  "escrow slot k deep because the follower had not shown them (a lagging follower)",
                                  ["chain"], registry=REGISTRY)
REDIS_REFUSING_WRITES = Gauge("dvp_redis_refusing_writes", "1 while Redis answers reads but refuses every write "
                              "(NOREPLICAS, OOM, MISCONF): only claims and refunds go out, nothing new starts",
                              registry=REGISTRY)
FEE_CEILING_HITS = Gauge("dvp_fee_ceiling_hits", "Times a transaction's fee was held at DVP_MAX_FEE_GWEI (it then "
                         "waits for the fees to come down)", ["chain"], registry=REGISTRY)
GAS = Counter("dvp_gas_used_total", "Gas used by transactions this worker sent", ["leg", "action"],
              registry=REGISTRY)
TX_SENT = Counter("dvp_transactions_sent_total", "Transactions broadcast", ["leg", "action"], registry=REGISTRY)
ACTION_FAILURES = Counter("dvp_action_failures_total", "Actions that failed (retried later)", ["action"],
                          registry=REGISTRY)
TIMELOCK_MIN_LEFT = Gauge("dvp_timelock_min_seconds_left",
                          "Least time left on any live lock this worker must still claim or refund",
                          ["leg"], registry=REGISTRY)
CLAIMS_DUE_NEAR = Gauge("dvp_claims_due_within_delta", "Live locks whose claim is due (the secret is public) with "
                        "less than Δ left on their timelock: the claim is racing the refund", ["leg"],
                        registry=REGISTRY)
INTAKE_PAUSED = Gauge("dvp_intake_paused", "1 while an operator has paused intake (POST /v1/operator/intake)",
                      registry=REGISTRY)
WEBHOOK_FAILURES = Counter("dvp_webhook_failures", "Webhook deliveries that failed (retried later, or dead-lettered)",
                           registry=REGISTRY)
WEBHOOK_BACKLOG = Gauge("dvp_webhook_backlog", "Webhook events not delivered yet (outbox and retries)",
                        registry=REGISTRY)
WEBHOOK_DEAD = Counter("dvp_webhooks_dead_lettered", "Webhook events given up after every attempt "
                       "(GET /v1/operator/webhooks/dead)", registry=REGISTRY)
CLOCK_OFFSET = Gauge("dvp_chain_clock_offset_seconds", "ST chain clock minus coin ledger clock",
                     registry=REGISTRY)
REACTION_SECONDS = Histogram("dvp_reaction_seconds", "Chain event observed -> resulting transaction broadcast",
                             buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=REGISTRY)
ROUTED = Counter("dvp_actions_routed_total", "Actions handed to the worker that signs for the needed account",
                 registry=REGISTRY)
OWNED_TRADES = Gauge("dvp_trades_driven", "Open trades this worker holds the lease of", registry=REGISTRY)
TRADE_ERRORS = Counter("dvp_trade_errors_total",
                       "Unexpected errors while reading or deciding one trade (that trade is set aside, the others go on)",
                       ["kind"], registry=REGISTRY)
REVEALS_WITHHELD = Counter("dvp_reveals_withheld_total", "SC claims (reveals) not sent because the ST claim "
                           "would fail right now (the token's compliance, pause or freeze)", ["reason"],
                           registry=REGISTRY)
QUARANTINED = Gauge("dvp_trades_quarantined", "Trades set aside after an unexpected error, retried after a pause",
                    registry=REGISTRY)
