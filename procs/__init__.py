"""SMTM-NG processes: one module per supervised process (exchange, ingest, indicator,
monitor) plus what they share (config, replay data, indicator math, the CLI)."""
