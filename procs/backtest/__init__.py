"""Backtests: the trader's own engine over recorded data in one process (:mod:`.runner`), the metrics of a run
(:mod:`.metrics`)."""
