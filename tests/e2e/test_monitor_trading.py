"""The monitor shows the trading engine: mode banner, stats, order tape, timeline, and on the chart the
fills and the open position's levels — read from the trader's tables, rendered off-screen. Without the
trader's tables it says so and attaches once they appear."""
from __future__ import annotations

import time

import numpy as np

from procs.runtime.loader import load_config
from procs.views.chart_source import ShmChartSource
from shm.tables import TIMELINE, TIMELINE_ROW, TRADES
from shm.trading import (
    ALERT,
    ARMED,
    INFO,
    KILLED,
    ORDER_DTYPE,
    POSITION_DTYPE,
    RISK_DAILY_LOSS,
    TIMELINE_DTYPE,
    TRADE_DTYPE,
    WARN,
    OrdersTable,
    PositionsTable,
    TraderTable,
    fit,
)
from tests.e2e.test_monitor import count_colour, fill_rings

SHOWN = 200


def _source() -> ShmChartSource:
    cfg = load_config("replay")
    return ShmChartSource(cfg.base, cfg.monitor, cfg.indicator, cfg.signals)


def _order(ident, code, side, ord_type, price, volume, filled, avg_fill, state, reason, t_ms):
    fee = filled * avg_fill * 0.0005
    return (fit(ident, 48), fit(code, 16), side, ord_type, price, volume, filled, avg_fill, fee, fit(state, 16),
            fit(reason, 48), t_ms - 1000, t_ms)


def fill_trader(instance: str, src: np.ndarray, *, mode=ARMED, risk_flags=0, reason="armed by operator",
                age_s: float = 0.2) -> dict:
    """The trader's tables as a running paper trader would leave them after a few round trips on
    KRW-BTC (the shown candles ``src``), with one open position. Returns what it wrote."""
    sh = load_config("replay").base.shm
    shown = src[-SHOWN:]
    t_ms = lambda i: int(shown["t"][i]) * 1000 + 7 * 60 * 1000  # 7 minutes into candle i
    px = lambda i: float(shown["c"][i])
    # round trips: (entry candle, exit candle) -> fills; the last entry is still open
    trips = [(40, 66), (110, 131), (150, None)]
    orders, fills = [], []
    for k, (a, b) in enumerate(trips):
        qty = 1_000_000 / px(a)
        orders.append(_order(f"buy-{k}", "KRW-BTC", b"bid", b"price", 1_000_000, 0, qty, px(a), "filled",
                             "macd_golden", t_ms(a)))
        fills.append((a, px(a), True))
        if b is not None:
            orders.append(_order(f"sell-{k}", "KRW-BTC", b"ask", b"market", 0, qty, qty, px(b), "filled",
                                 "take_profit" if px(b) > px(a) else "stop_loss", t_ms(b)))
            fills.append((b, px(b), False))
    eth_ms = t_ms(170)
    orders.append(_order("buy-eth", "KRW-ETH", b"bid", b"price", 500_000, 0, 0.1, 5_000_000, "filled", "macd_golden",
                         eth_ms))
    orders.append(_order("sell-xrp", "KRW-XRP", b"ask", b"limit", 3_500, 100, 0, 0, "cancelled", "operator",
                         eth_ms + 60_000))
    orders.append(_order("sell-eth", "KRW-ETH", b"ask", b"limit", 5_300_000, 0.1, 0, 0, "accepted", "take_profit",
                         eth_ms + 120_000))
    orders.sort(key=lambda o: -o[-1])  # newest first
    ot = OrdersTable.writer(instance, sh.orders_rows)
    rows = np.zeros(sh.orders_rows, ORDER_DTYPE)
    rows[:len(orders)] = np.array(orders, ORDER_DTYPE)
    ot.write_rows(slice(None), rows)

    entry = px(150)
    last = float(shown["c"][-1])
    qty = 1_000_000 / entry
    tp, sl = entry * 1.03, entry * 0.98
    unreal = qty * last * (1 - 0.0005) - 1_000_500
    pt = PositionsTable.writer(instance, sh.rows)
    prow = np.zeros(sh.rows, POSITION_DTYPE)
    prow[0] = (b"KRW-BTC", qty, entry, 1_000_500, tp, sl, last, unreal, b"macd_golden", t_ms(150), 0, b"")
    prow[1] = (b"KRW-ETH", 0.1, 5_000_000, 500_250, 5_300_000, 4_900_000, 5_050_000, 4_500, b"macd_golden", eth_ms,
               0, b"")
    pt.write_rows(slice(None), prow)

    tt = TraderTable.writer(instance, 1)
    st = np.zeros(1, TraderTable.DTYPE)
    st[0]["mode"], st[0]["risk_flags"], st[0]["open_positions"], st[0]["open_orders"] = mode, risk_flags, 2, 1
    st[0]["broker"], st[0]["preset"], st[0]["config_version"] = b"paper", b"BALANCED", 3
    st[0]["cash"], st[0]["equity"], st[0]["realized"] = 8_512_340.0, 10_027_118.0, 21_450.0
    st[0]["unrealized"], st[0]["daily_pnl"], st[0]["fees"] = unreal + 4_500, -3_120.0, 3_870.0
    st[0]["hwm"], st[0]["drawdown_pct"] = 10_061_000.0, 0.34
    st[0]["market_ms"] = int(shown["t"][-1]) * 1000 + 60_000
    st[0]["updated_ns"] = time.monotonic_ns() - int(age_s * 1e9)
    st[0]["decisions"], st[0]["trades_seen"] = 1234, 56789
    st[0]["reason"] = fit(reason, 96)
    tt.write_rows(0, st[0])

    tl = TIMELINE.create(instance, None, 1, sh.timeline_capacity)
    row = tl.assign_row(TIMELINE_ROW)
    ev = [(INFO, "mode", "", "ARMED by operator (paper, BALANCED)"),
          (INFO, "buy_eval", "KRW-BTC", "macd_golden: MACD crossed above its signal, RSI 48.2 <= 70: entry"),
          (INFO, "order", "KRW-BTC", "market buy 1,000,000 KRW (identifier buy-2)"),
          (INFO, "fill", "KRW-BTC", f"bought {qty:.6f} BTC at {entry:,.0f} KRW; TP {tp:,.0f}, SL {sl:,.0f}"),
          (WARN, "deny", "KRW-XRP", "entry denied: 24 h traded value under the floor (not in the top N)"),
          (INFO, "buy_eval", "KRW-ETH", "macd_golden fired, RSI 55.0: entry with 500,000 KRW"),
          (INFO, "fill", "KRW-ETH", "bought 0.1 ETH at 5,000,000 KRW"),
          (ALERT, "risk", "", "daily loss -3,120 KRW: 10 % of the limit used; entries still allowed")]
    recs = np.zeros(len(ev), TIMELINE_DTYPE)
    base_ms = int(shown["t"][-12]) * 1000
    for i, (sev, kind, mkt, text) in enumerate(ev):
        recs[i] = (time.time_ns(), base_ms + i * 600_000, sev, b"", fit(kind, 16), fit(mkt, 16), fit(text, 112))
    tl.write_many(row, 0, recs)
    tl.publish()

    tr = TRADES.create(instance, None, sh.rows, sh.trades_capacity)
    trow = tr.assign_row("KRW-BTC")
    trade = np.zeros(1, TRADE_DTYPE)
    trade[0]["t_ms"], trade[0]["price"], trade[0]["volume"] = st[0]["market_ms"], last, 0.01
    trade[0]["sequential_id"], trade[0]["recv_ns"], trade[0]["side"] = 1, time.monotonic_ns(), 1
    tr.write_many(trow, 0, trade)
    tr.publish()
    return {"market_ms": int(st[0]["market_ms"]), "fills": fills, "entry": entry, "tp": tp, "sl": sl, "last": last,
            "qty": qty, "tables": (ot, pt, tt, tl, tr)}


def _render(source, size=(1280, 720)):
    seen = {}

    def inspect(chart):
        seen["chart"] = chart
        seen["marks"] = tuple(np.copy(a) for a in chart.overlay.marks)
        seen["levels"] = list(chart.overlay.levels)
        seen["tags"] = list(chart.overlay.labels.text) if chart.overlay.labels.visible else []
        seen["banner"] = chart.banner.texts
        seen["side"] = chart.side.texts
        seen["rsi"], seen["macd"] = chart.rsi_label.text, chart.macd_label.text
    from render.app import render_once
    img = render_once(source, size=size, max_candles=SHOWN, inspect=inspect)
    return img, seen


def test_trading_view_on_the_chart_and_in_the_panels(instance, monkeypatch):
    from render import visuals
    monkeypatch.setenv("SMTM_INSTANCE", instance)
    src = fill_rings(instance)
    wrote = fill_trader(instance, src)
    img, seen = _render(_source())
    # fill marks: one per filled KRW-BTC order, on the candle containing its time, at its fill price
    idx, price, entry = seen["marks"]
    exp = sorted(wrote["fills"])
    assert [int(i) for i in idx] == [i for i, _, _ in exp]
    np.testing.assert_allclose(price, [p for _, p, _ in exp])
    assert entry.tolist() == [e for _, _, e in exp]
    # the open position's average price, TP and SL lines, with their tags on the price axis
    (la, pa, _), (lt, pt, _), (ls, ps, _) = seen["levels"]
    assert (pa, pt, ps) == (wrote["entry"], wrote["tp"], wrote["sl"])
    assert (la, lt, ls) == (f"avg {pa:,.0f}", f"TP {pt:,.0f}", f"SL {ps:,.0f}")
    assert seen["tags"] == [la, lt, ls]
    # banner: mode, broker and preset, connection
    banner = seen["banner"]
    assert banner[0] == "ARMED"
    assert "paper · BALANCED · config v3" in banner
    at = time.strftime("%m-%d %H:%M", time.gmtime(wrote["market_ms"] / 1000))
    assert any(t.startswith("engine live · updated ") and t.endswith(f" ago · at {at}") for t in banner), banner
    # stats, tape, timeline
    side = seen["side"]
    assert "KRW-BTC" in side and f"{wrote['last']:,.0f}" in side
    assert any(t.startswith(f"{wrote['qty']:.6f}"[:8]) and t.endswith(f"@ {wrote['entry']:,.0f}") for t in side), side
    assert f"{wrote['tp']:,.0f} (+3.00%)" in side and f"{wrote['sl']:,.0f} (-2.00%)" in side
    assert "10,027,118" in side and "+21,450" in side and "-3,120" in side and "none" in side
    assert side.count("BUY") == 4 and side.count("SELL") == 4 and "cancelled" in side and "accepted" in side
    assert "ALERT" in side and "WARN" in side and "deny" in side
    assert seen["rsi"] == "RSI 14" and seen["macd"] == "MACD 12 26 9"
    # the marks are drawn, in their colours
    rgb = lambda c: tuple(int(round(x * 255)) for x in c[:3])
    assert count_colour(img, rgb(visuals.ENTRY), tol=25) > 3 * 20
    assert count_colour(img, rgb(visuals.EXIT), tol=25) > 2 * 20
    assert count_colour(img, rgb(visuals.ARMED), tol=10) > 150 * 25


def test_killed_engine_shows_the_reason_and_a_stale_engine_is_not_responding(instance, monkeypatch):
    monkeypatch.setenv("SMTM_INSTANCE", instance)
    src = fill_rings(instance)
    fill_trader(instance, src, mode=KILLED, risk_flags=RISK_DAILY_LOSS, reason="daily loss -3.1% hit the -3.0% limit",
                age_s=5.0)
    _, seen = _render(_source())
    banner = seen["banner"]
    assert banner[0] == "KILLED"
    assert "risk: daily loss -3.1% hit the -3.0% limit" in banner
    assert any(t.startswith("ENGINE NOT RESPONDING") for t in banner), banner
    assert "daily_loss" in seen["side"]


def test_without_the_trader_it_says_not_running_and_attaches_later(instance, monkeypatch):
    monkeypatch.setenv("SMTM_INSTANCE", instance)
    src = fill_rings(instance)
    source = _source()
    img, seen = _render(source)
    assert seen["banner"][0] == "NO ENGINE" and "engine: not running" in seen["banner"][1]
    assert len(seen["marks"][0]) == 0 and seen["levels"] == []
    view = source.trading_view()
    assert not view.running and view.position is None
    # the trader starts: the source attaches on a later poll (once a second) and shows it
    fill_trader(instance, src)
    source.trading._last_attach = 0.0
    time.sleep(0.21)  # views are rebuilt at most 5 times a second
    assert source.poll_trading()
    view = source.trading_view()
    assert view.running and view.mode == "ARMED" and view.position is not None
    assert len(view.fill_ms) == 5 and len(view.orders) == 8 and len(view.timeline) == 8
    # polling is cheap: nothing moved → no rebuild until the refresh period; a write → rebuild
    assert not source.poll_trading()
    orders = OrdersTable.writer(instance, source.base.shm.orders_rows)
    rows, _ = orders.read_all()
    rows[0]["state"] = b"cancelled"
    orders.write_rows(slice(None), rows)
    time.sleep(0.21)
    assert source.poll_trading()
    assert source.trading_view().orders[0].state == "cancelled"


def test_trader_tables_of_another_layout_are_named_not_read(instance, monkeypatch):
    monkeypatch.setenv("SMTM_INSTANCE", instance)
    fill_rings(instance)
    TraderTable.writer(instance, 2)  # a writer with another configuration
    _, seen = _render(_source())
    assert seen["banner"][0] == "NO ENGINE"
    assert seen["banner"][1].startswith("engine: tables unreadable — "), seen["banner"]
    assert "trader" in seen["banner"][1]


def write_png(path: str = "/tmp/monitor_trading.png") -> None:
    """The fixture rendered at 1280x720 into ``path`` (to look at)."""
    import os
    import uuid

    from render.app import _write_png
    from shm.segment import unlink_instance
    instance = f"png{uuid.uuid4().hex[:8]}"
    os.environ["SMTM_INSTANCE"] = instance
    try:
        src = fill_rings(instance)
        fill_trader(instance, src)
        img, _ = _render(_source())
        _write_png(path, img)
    finally:
        unlink_instance(instance)


if __name__ == "__main__":
    write_png()


def test_cached_layer_redraws_into_its_texture_when_drawn_twice_in_a_row():
    """A layer redrawn twice with no other framebuffer in between (a window: no off-screen FBO around
    the frame) still lands in its texture (VisPy caches the canvas→FBO mapping, see render.layer)."""
    from vispy import scene

    from render.app import make_offscreen_canvas
    from render.layer import CachedLayer
    from render.visuals import ColoredVertices
    canvas = make_offscreen_canvas((200, 100))
    try:
        grid = canvas.central_widget.add_grid(margin=0)
        grid.add_widget(scene.Widget(), row=0, col=0)
        box = grid.add_widget(scene.Widget(), row=0, col=1)
        layer = CachedLayer(box, (0, 0, 0, 1))
        quad = ColoredVertices("triangles", 6, parent=layer.root)
        pos = np.array([[0, 0], [1000, 0], [1000, 1000], [0, 0], [1000, 1000], [0, 1000]], np.float32)
        canvas.render()  # lays the grid out, draws the layer once
        for colour in ((0, 1, 0, 1), (0, 0, 1, 1)):  # redrawn twice in a row, outside canvas.render()
            quad.set_vertices(pos, np.tile(np.array(colour, np.float32), (6, 1)))
            layer.invalidate()
            canvas.set_current()
            assert layer.render_cache() and not layer.dirty
        img = canvas.render()  # shows the texture as it is (the layer is not stale)
        assert layer.renders == 3
        assert (img[:, 100:, :3] == (0, 0, 255)).all(axis=2).mean() > 0.99
    finally:
        canvas.close()
