"""The monitor draws what the rings hold: rendered off-screen from real data (pixel counts),
and as a PyQt6 window under Xvfb (its render loop runs and reports through its status row)."""
import shutil
import time

import numpy as np
import pytest

from procs.market.indicators import IndicatorSet
from procs.market.tape import load_dataset
from procs.runtime.loader import load_config
from procs.runtime.roster import STATUS_ROWS
from procs.views.chart_source import ShmChartSource
from render.app import resolve_present, software_gl
from shm.status import StatusTable
from shm.tables import CANDLE_DTYPE, CANDLES, CLOSED, INDICATOR_DTYPE, INDICATORS
from tests.helpers import ROOT, start_xvfb, wait_for


def fill_rings(instance, market="KRW-BTC", n=300, start=1000):
    src = load_dataset(ROOT / "data" / "upbit", [market])[market][start:start + n]
    for tf in ("30m", "4h", "1d"):
        c = CANDLES.create(instance, tf, 32, 2048)
        i = INDICATORS.create(instance, tf, 32, 2048)
        row = c.assign_row(market)
        i.assign_row(market, row)
        rec = np.zeros(len(src), CANDLE_DTYPE)
        for f in ("t", "o", "h", "l", "c", "v", "value"):
            rec[f] = src[f]
        rec["flags"] = CLOSED
        c.write_many(row, 0, rec)
        c.publish()
        ind = np.zeros(len(src), INDICATOR_DTYPE)
        ind["t"] = src["t"]
        st = IndicatorSet()
        vals = np.array([st.update(float(c)) for c in src["c"]])
        for j, col in enumerate(INDICATOR_DTYPE.names[1:]):
            ind[col] = vals[:, j]
        i.write_many(row, 0, ind)
        i.publish()
    return src


def chart_source():
    cfg = load_config("replay")
    return ShmChartSource(cfg.base, cfg.monitor, cfg.indicator, cfg.signals)


def count_colour(img, rgb, tol=40):
    d = np.abs(img[..., :3].astype(int) - np.array(rgb)).max(axis=2)
    return int((d <= tol).sum())


def test_offscreen_render_shows_candles_of_both_colours_and_ema_lines(instance, monkeypatch):
    from render import chart
    from render.app import render_once
    monkeypatch.setenv("SMTM_INSTANCE", instance)
    src = fill_rings(instance)
    img = render_once(chart_source(), size=(1000, 600), max_candles=120)
    assert img.shape == (600, 1000, 4)
    rgb = lambda c: tuple(int(round(x * 255)) for x in c[:3])
    rise, fall = count_colour(img, rgb(chart.RISE)), count_colour(img, rgb(chart.FALL))
    fast, slow = count_colour(img, rgb(chart.EMA_FAST)), count_colour(img, rgb(chart.EMA_SLOW))
    last = src[-120:]
    n_rise = int((last["c"] >= last["o"]).sum())
    assert 0 < n_rise < 120
    assert rise > 20 * n_rise and fall > 20 * (120 - n_rise), (rise, fall)
    assert fast > 500 and slow > 500, (fast, slow)
    # Bollinger Bands, the RSI and MACD panels and the buy-signal marks are drawn too
    assert count_colour(img, rgb(chart.RSI_LINE)) > 300
    assert count_colour(img, rgb(chart.MACD_LINE), tol=30) > 200
    assert count_colour(img, rgb(chart.MACD_SIGNAL), tol=30) > 200
    assert count_colour(img, rgb(chart.SIGNAL_MARK), tol=30) > 20
    # nothing else tints the chart in candle colours: an empty market renders none of them
    empty = chart_source()
    empty.market = "KRW-ETH"
    img2 = render_once(empty, size=(1000, 600), max_candles=120)
    assert count_colour(img2, rgb(chart.RISE)) == 0 and count_colour(img2, rgb(chart.FALL)) == 0


def test_the_window_paints_images_where_opengl_is_software():
    """``monitor.present = "auto"``: frames rendered off-screen and painted where OpenGL would be software (forced,
    or no GPU device), drawn by VisPy's QOpenGLWidget otherwise; a bad value is refused."""
    assert software_gl({"LIBGL_ALWAYS_SOFTWARE": "1"}) and software_gl({"GALLIUM_DRIVER": "llvmpipe"})
    assert resolve_present("gl") == "gl" and resolve_present("image") == "image"
    assert software_gl({"LIBGL_ALWAYS_SOFTWARE": "no"}) == software_gl({})     # "no" is false, as Mesa reads it
    assert resolve_present("auto") == ("image" if software_gl() else "gl")
    with pytest.raises(ValueError, match="monitor.present"):
        resolve_present("vulkan")


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb not installed (make test installs it as root)")
@pytest.mark.parametrize("present", ["image", "gl"])
def test_qt_window_runs_its_render_loop(env, present):
    fill_rings(env.instance)
    env.write_overlay(tail=f'[monitor]\npresent = "{present}"\n')
    xvfb, display = start_xvfb()
    try:
        env.env["DISPLAY"] = display
        env.env["QT_QPA_PLATFORM"] = "xcb"
        env.start("monitor")
        st = wait_for(lambda: _open(env.instance), 30, "the monitor's status row")
        r0 = wait_for(lambda: (lambda r: r if int(r["msgs_out"]) > 0 else None)(st.read("monitor")), 60,
                      "the first frame in the window")
        assert bytes(r0["detail"]).startswith(b"window on") and f"({present})".encode() in bytes(r0["detail"])
        # from the second frame on (the first with text: rasterizing its glyphs stalls the loop ~1 s on llvmpipe,
        # once), ticks counted between two of the loop's own reports, over the time between their heartbeats
        r0 = wait_for(lambda: (lambda r: r if int(r["msgs_out"]) > 1 else None)(st.read("monitor")), 60,
                      "the frame with text")
        time.sleep(3.0)
        r1 = st.read("monitor")
        hz = (int(r1["msgs_in"]) - int(r0["msgs_in"])) / ((int(r1["heartbeat_ns"]) - int(r0["heartbeat_ns"])) / 1e9)
        assert hz > 30, f"render timer ran at {hz:.1f} Hz"
    finally:
        env.stop_all()
        xvfb.terminate()
        xvfb.wait(timeout=10)


def _open(instance):
    try:
        return StatusTable.open(instance, STATUS_ROWS)
    except Exception:
        return None
