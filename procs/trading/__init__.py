"""The trading engine: strategy, risk, orders, fills, brokers, ledger and the command socket (DESIGN §4-§5)."""
