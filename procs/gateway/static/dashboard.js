// The SMTM-NG dashboard: the gateway's REST for the history, its WebSocket channels for everything live.
// Read-only: it sends no command. window.smtm holds what the page has shown (the browser test reads it).
"use strict";
const LWC = window.LightweightCharts;
const $ = (id) => document.getElementById(id);
const fmt = (x, d = 0) => x == null ? "–" : Number(x).toLocaleString("en-US", {maximumFractionDigits: d, minimumFractionDigits: d});
const hhmm = (ms) => new Date(ms).toISOString().slice(5, 16).replace("T", " ");
const smtm = window.smtm = {closes: [], updates: 0, mode: null, market: null, tf: null, sockets: {}, marketOpens: 0,
                            lastT: null};

const chart = LWC.createChart($("chart"), {
  autoSize: true,
  layout: {background: {color: "#0f1117"}, textColor: "#c9ccd3", panes: {separatorColor: "#2a2f3a"}},
  grid: {vertLines: {color: "#1b1f27"}, horzLines: {color: "#1b1f27"}},
  timeScale: {timeVisible: true, secondsVisible: false, borderColor: "#2a2f3a"},
  rightPriceScale: {borderColor: "#2a2f3a"},
});
const line = (color, pane = 0, width = 1) => chart.addSeries(LWC.LineSeries,
  {color, lineWidth: width, priceLineVisible: false, lastValueVisible: false}, pane);
const series = {
  candles: chart.addSeries(LWC.CandlestickSeries, {upColor: "#e0484e", downColor: "#3b82f6", borderVisible: false,
                                                   wickUpColor: "#e0484e", wickDownColor: "#3b82f6"}),
  ema_fast: line("#f5c542"), ema_slow: line("#c46be3"),
  bb_upper: line("#5b8a9a"), bb_lower: line("#5b8a9a"),
  rsi: line("#4fd17a", 1),
  macd_hist: chart.addSeries(LWC.HistogramSeries, {priceLineVisible: false, lastValueVisible: false}, 2),
  macd: line("#6ea8fe", 2), macd_signal: line("#f0883e", 2),
};
// the price pane, RSI and MACD in proportion (the chart is sized by its container: heights in pixels would not be)
chart.panes()[0].setStretchFactor(0.62);
chart.panes()[1].setStretchFactor(0.16);
chart.panes()[2].setStretchFactor(0.22);

function pricePrecision(price) {
  // KRW prices: whole won from 100 up (Upbit's tick), more digits for the coins priced under it (SHIB ~0.03)
  return price >= 100 ? 0 : price >= 1 ? 2 : price >= 0.01 ? 4 : 6;
}

function bar(c) { return {time: c.t, open: c.o, high: c.h, low: c.l, close: c.c}; }
function point(c, ind, key) { return ind && ind[key] != null ? {time: c.t, value: ind[key]} : {time: c.t}; }
function histPoint(c, ind) {
  const v = ind ? ind.macd_hist : null;
  return v == null ? {time: c.t} : {time: c.t, value: v, color: v >= 0 ? "rgba(224,72,78,.7)" : "rgba(59,130,246,.7)"};
}
const IND_KEYS = ["ema_fast", "ema_slow", "bb_upper", "bb_lower", "rsi", "macd", "macd_signal"];

function showCandle(c, ind) {
  if (smtm.lastT != null && c.t < smtm.lastT) {   // history moved under us (a rewrite, a replay restarted)
    loadHistory();
    return;
  }
  smtm.lastT = c.t;
  series.candles.update(bar(c));
  for (const k of IND_KEYS) series[k].update(point(c, ind, k));
  series.macd_hist.update(histPoint(c, ind));
  $("last").textContent = `${smtm.market} ${fmt(c.c, pricePrecision(c.c))} KRW  ${hhmm(c.t * 1000)} UTC`;
}

async function getJSON(path) {
  const r = await fetch(path);
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

async function loadHistory() {
  const q = new URLSearchParams({market: smtm.market, tf: smtm.tf, count: 300});
  const doc = await getJSON(`/api/candles?${q}`);
  smtm.lastT = null;
  if (doc.candles.length) {
    const precision = pricePrecision(doc.candles.at(-1).c);
    // the axes in the market's digits, with thousands separators (KRW prices run to 9 digits)
    chart.applyOptions({localization: {priceFormatter: (p) => fmt(p, precision)}});
    const priceFormat = {type: "price", precision, minMove: 10 ** -precision};
    for (const k of ["candles", "ema_fast", "ema_slow", "bb_upper", "bb_lower", "macd", "macd_signal", "macd_hist"]) {
      series[k].applyOptions({priceFormat});
    }
  }
  series.candles.setData(doc.candles.map(bar));
  for (const k of IND_KEYS) series[k].setData(doc.candles.map((c, i) => point(c, doc.indicators[i], k)));
  series.macd_hist.setData(doc.candles.map((c, i) => histPoint(c, doc.indicators[i])));
  if (doc.candles.length) showCandle(doc.candles.at(-1), doc.indicators.at(-1));
  chart.timeScale().fitContent();
  smtm.historyLoaded = doc.candles.length;
}

function channel(name, onMessage, onOpen) {
  // one WebSocket per channel, reopened 1 s after it closes
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/${name}`;
  const ws = new WebSocket(url);
  smtm.sockets[name] = ws;
  ws.onopen = () => { $("link").textContent = "live"; if (onOpen) onOpen(ws); };
  ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
  ws.onclose = () => { $("link").textContent = "reconnecting…"; setTimeout(() => channel(name, onMessage, onOpen), 1000); };
  return ws;
}

async function subscribe(ws) {
  if (smtm.marketOpens++) await loadHistory();    // after a reconnect: the candles missed meanwhile
  ws.send(JSON.stringify({subscribe: [{market: smtm.market, tf: smtm.tf}]}));
}

function onMarket(msg) {
  if (msg.market !== smtm.market || msg.tf !== smtm.tf) return;
  if (msg.type === "candle.update") { smtm.updates += 1; showCandle(msg.candle, msg.indicators); }
  if (msg.type === "candle.close") { smtm.closes.push(msg.candle.t); showCandle(msg.candle, msg.indicators); }
}

function rows(tbody, items, cells) {
  tbody.replaceChildren(...items.map((it) => {
    const tr = document.createElement("tr");
    for (const [text, cls] of cells(it)) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    return tr;
  }));
}

function onPositions(msg) {
  const px = (x) => fmt(x, pricePrecision(x));
  const qty = (q) => fmt(q, q >= 100 ? 1 : q >= 1 ? 3 : 6);
  const pct = (x, ref) => x && ref ? `${x >= ref ? "+" : "−"}${Math.abs((x / ref - 1) * 100).toFixed(1)} %` : "–";
  rows($("positions").tBodies[0], msg.positions, (p) => [[p.code.replace("KRW-", "")], [qty(p.qty), "num"],
    [px(p.avg_price), "num"], [px(p.last_price), "num"],
    [fmt(p.unrealized), p.unrealized >= 0 ? "num rise" : "num fall"],
    [`${pct(p.tp, p.avg_price)} / ${pct(p.sl, p.avg_price)}`, "num"]]);
}

function onOrders(msg) {
  rows($("orders").tBodies[0], msg.orders.slice(0, 20), (o) => [[hhmm(o.created_ms)], [o.code.replace("KRW-", "")],
    [o.side === "bid" ? "buy" : "sell", o.side === "bid" ? "rise" : "fall"], [o.ord_type],
    [fmt(o.avg_fill || o.price, pricePrecision(o.avg_fill || o.price)), "num"], [o.state]]);
}

function addTimeline(entries, replace = false) {
  const ol = $("timeline");
  if (replace) ol.replaceChildren();
  for (const e of entries) {
    const li = document.createElement("li");
    li.className = e.severity;
    li.textContent = `${hhmm(e.market_ms)} ${e.market || ""} ${e.kind}: ${e.text}`;
    ol.prepend(li);
  }
  while (ol.children.length > 60) ol.lastChild.remove();
}

function onSurge(msg) {
  const ul = $("surge");
  const list = msg.type === "surge.state" ? msg.markets : [msg];
  if (msg.type === "surge.state") ul.replaceChildren();
  if (!list.length) {
    if (!ul.children.length) ul.innerHTML = '<li class="empty">none</li>';
    return;
  }
  ul.querySelector(".empty")?.remove();
  for (const m of list) {
    const li = document.createElement("li");
    li.textContent = `${hhmm(m.t * 1000)} ${m.market} +${fmt(m.return_pct, 1)} % on ${fmt(m.value_ratio, 1)}x value`;
    ul.prepend(li);
  }
  while (ul.children.length > 30) ul.lastChild.remove();
}

async function pollEngine() {
  // the mode banner: the trader's row, once a second
  try {
    const e = await getJSON("/api/engine");
    const mode = e.available ? e.mode : "NO ENGINE";
    smtm.mode = mode;
    $("banner").className = `banner ${mode}`;
    $("mode").textContent = mode;
    $("account").textContent = e.available
      ? [`equity ${fmt(e.equity)} KRW`, `daily ${fmt(e.daily_pnl)}`, `drawdown ${fmt(e.drawdown_pct, 2)} %`,
         `${e.open_positions} positions`, ...e.risk_flags.map((f) => `risk: ${f}`), e.reason].filter(Boolean).join(" · ")
      : "engine: not running";
  } catch (err) {
    $("mode").textContent = "NO GATEWAY";
  }
}

async function start() {
  const markets = await getJSON("/api/markets");
  const params = new URLSearchParams(location.search);
  const names = markets.markets.map((m) => m.market);
  smtm.market = params.get("market") || names[0];
  smtm.tf = params.get("tf") || markets.timeframes[0];
  for (const m of names) $("market").add(new Option(m, m, false, m === smtm.market));
  for (const t of markets.timeframes) $("tf").add(new Option(t, t, false, t === smtm.tf));
  const reload = () => { location.search = `?${new URLSearchParams({market: $("market").value, tf: $("tf").value})}`; };
  $("market").onchange = reload;
  $("tf").onchange = reload;
  await loadHistory();
  channel("market", onMarket, subscribe);
  channel("positions", onPositions);
  channel("orders", onOrders);
  channel("timeline", (m) => m.type === "timeline" ? addTimeline(m.timeline, true) : addTimeline(m.entries || []));
  channel("surge", onSurge);
  pollEngine();
  setInterval(pollEngine, 1000);
  smtm.ready = true;
}

start().catch((err) => { $("link").textContent = `error: ${err.message}`; smtm.error = String(err); });
