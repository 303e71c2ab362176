"""The market's domain code, no network and no OS calls: candle building and roll-ups
(:mod:`.candles`), the candle feed with its trade checks and row management (:mod:`.feed`),
the history merge from REST candles (:mod:`.backfill`), indicators as TA-Lib computes them
(:mod:`.indicators`) and the engine that keeps their tables (:mod:`.analytics`), buy-signal
rules (:mod:`.signals`), the safety filter and top N with hysteresis (:mod:`.universe`), and the
types the venue adapter produces (:mod:`.types`). Writes shared memory through ``shm``; gets
network results through functions it is handed and time through an injected clock."""
