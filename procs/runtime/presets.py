"""The strategy's parameters and the three named presets SAFE / BALANCED / AGGRESSIVE.

A preset is a complete :class:`StrategyParams`; ``[trader.strategy]`` in the configuration (or a
CONFIG.APPLY command) overrides single keys of the active one, and the result is validated as a
whole (:func:`resolve`), so a bad value names its key. The reasoning behind each preset is in the
README ("Presets"); in short, on the 30-minute candles of the replay:

* **SAFE** — small orders (10 % of equity), at most 3 positions, the filtered entry
  (``macd_cross_rsi_bb``), a take-profit of 3 % and a stop-loss of 1.5 % (wins twice the loss, so a
  win rate above ~36 % after fees pays), and the day stops at a 2 % loss.
* **BALANCED** — 15 % per order, 5 positions, the filtered entry, 5 % / 2.5 %, 4 % daily loss.
* **AGGRESSIVE** — 25 % per order, 8 positions (the whole top N), the bare golden cross
  (``macd_cross``, more entries), 8 % / 4 %, 8 % daily loss.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PresetName = Literal["SAFE", "BALANCED", "AGGRESSIVE"]
Percent = Annotated[float, Field(gt=0.0, le=100.0)]


class StrategyParams(BaseModel):
    """One complete parameter set (frozen; percentages are percent, not fractions)."""
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    order_share: Annotated[float, Field(gt=0.0, le=1.0)]    #: a buy spends this share of equity (KRW)
    max_positions: Annotated[int, Field(ge=1, le=64)]       #: open positions at most
    #: exit when the price is this far above the entry (at least the 0.1 % round-trip fee and some)
    take_profit_pct: Annotated[float, Field(ge=0.2, le=100.0)]
    stop_loss_pct: Annotated[float, Field(ge=0.1, lt=100.0)]  #: exit when the price is this far below it
    rule: Literal["macd_cross", "macd_cross_rsi_bb", "macd_above"]   #: the buy rule (procs.market.signals)
    rsi_max: Annotated[float, Field(ge=0.0, le=100.0)] = 70.0   #: RSI bound of macd_cross_rsi_bb
    daily_loss_pct: Percent                                 #: disarm after losing this share of the day's start equity
    exit_on_dead_cross: bool = True                         #: sell when MACD closes below its signal line

    @model_validator(mode="after")
    def _sane(self):
        if self.stop_loss_pct >= self.take_profit_pct * 4:
            raise ValueError(f"stop_loss_pct = {self.stop_loss_pct} is more than 4x take_profit_pct = "
                             f"{self.take_profit_pct}: every win would be eaten by one loss")
        return self


PRESETS: dict[str, StrategyParams] = {
    "SAFE": StrategyParams(order_share=0.10, max_positions=3, take_profit_pct=3.0, stop_loss_pct=1.5,
                           rule="macd_cross_rsi_bb", daily_loss_pct=2.0),
    "BALANCED": StrategyParams(order_share=0.15, max_positions=5, take_profit_pct=5.0, stop_loss_pct=2.5,
                               rule="macd_cross_rsi_bb", daily_loss_pct=4.0),
    "AGGRESSIVE": StrategyParams(order_share=0.25, max_positions=8, take_profit_pct=8.0, stop_loss_pct=4.0,
                                 rule="macd_cross", daily_loss_pct=8.0),
}


def resolve(preset: str, overrides: dict[str, Any] | None = None) -> StrategyParams:
    """The preset's parameters with ``overrides`` applied, validated together.

    Raises KeyError for an unknown preset (naming the known ones) and pydantic's ValidationError for
    a bad or unknown key."""
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    return StrategyParams.model_validate({**PRESETS[preset].model_dump(), **(overrides or {})})
