"""The ledger: the engine's state in SQLite (stdlib sqlite3), one file per instance and broker —
``run/<instance>/ledger.sqlite`` (paper), ``run/<instance>/ledger-upbit.sqlite`` (the Upbit broker: the
book of a real account, never mixed with the paper one) — one writer (the trader).

WAL journal, ``synchronous=FULL``: a committed transaction survives a power cut. The rule that
matters (write-ahead): an order row is committed **before** the broker is called
(:meth:`Ledger.commit`, called by the engine), so a crash between the two leaves a row that the
restarted engine reconciles instead of an order it does not know about.

Tables (schema version :data:`SCHEMA_VERSION`, upgraded in place by :data:`MIGRATIONS`):

``meta``         key/value state: mode, preset, params (JSON), config_version, day / day_start_equity
                 (the KST day of the daily loss limit), hwm, risk flags and reason, starting_cash, marks
                 (the last price of each open position's market, so a restart values it as before)
``account``      one row: cash, realized P&L, fees (KRW)
``orders``       every order ever made (identifier UNIQUE forever) with its state, fills summary, reason
``fills``        every fill: order identifier, price, volume, fee, market time, trade id (text: Upbit's
                 trade uuid; UNIQUE (identifier, trade_id): a fill is applied once)
``positions``    every position, open and closed: quantity, average price, cost, TP / SL, entry tag,
                 exit reason, bought / sold KRW, fees, realized P&L
``buy_eval``     every entry evaluation (closed candle, tradable market), taken or not, with its inputs
``sell_eval``    every exit evaluation of an open position (candle close, and each exit trigger)
``trade_audit``  every command, mode change and risk trip: who, what, why
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2

#: (version, statements): applied in order to a ledger older than the version.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE account (id INTEGER PRIMARY KEY CHECK (id = 1), cash REAL NOT NULL, realized REAL NOT NULL,"
        " fees REAL NOT NULL)",
        "CREATE TABLE orders (identifier TEXT PRIMARY KEY, market TEXT NOT NULL, side TEXT NOT NULL,"
        " ord_type TEXT NOT NULL, price REAL NOT NULL, volume REAL NOT NULL, purpose TEXT NOT NULL, tag TEXT NOT NULL,"
        " position_id INTEGER NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',"
        " filled REAL NOT NULL DEFAULT 0, filled_krw REAL NOT NULL DEFAULT 0, fee REAL NOT NULL DEFAULT 0,"
        " broker_id TEXT NOT NULL DEFAULT '', created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,"
        " wall_ns INTEGER NOT NULL)",
        "CREATE INDEX orders_state ON orders (state)",
        "CREATE TABLE fills (id INTEGER PRIMARY KEY AUTOINCREMENT, identifier TEXT NOT NULL REFERENCES orders,"
        " market TEXT NOT NULL, side TEXT NOT NULL, price REAL NOT NULL, volume REAL NOT NULL, fee REAL NOT NULL,"
        " t_ms INTEGER NOT NULL, trade_id INTEGER NOT NULL, position_id INTEGER NOT NULL,"
        " UNIQUE (identifier, trade_id))",
        "CREATE TABLE positions (id INTEGER PRIMARY KEY AUTOINCREMENT, market TEXT NOT NULL, state TEXT NOT NULL,"
        " qty REAL NOT NULL, avg_price REAL NOT NULL, cost REAL NOT NULL, tp REAL NOT NULL, sl REAL NOT NULL,"
        " entry_tag TEXT NOT NULL, exit_reason TEXT NOT NULL DEFAULT '', opened_ms INTEGER NOT NULL,"
        " closed_ms INTEGER NOT NULL DEFAULT 0, bought_qty REAL NOT NULL DEFAULT 0, buy_krw REAL NOT NULL DEFAULT 0,"
        " sell_krw REAL NOT NULL DEFAULT 0, fees REAL NOT NULL DEFAULT 0, realized REAL NOT NULL DEFAULT 0)",
        "CREATE INDEX positions_state ON positions (state)",
        "CREATE TABLE buy_eval (id INTEGER PRIMARY KEY AUTOINCREMENT, candle_t INTEGER NOT NULL, market TEXT NOT NULL,"
        " rule TEXT NOT NULL, fired TEXT NOT NULL, decision TEXT NOT NULL, reason TEXT NOT NULL, close REAL,"
        " macd REAL, macd_signal REAL, prev_macd REAL, prev_signal REAL, rsi REAL, bb_lower REAL,"
        " mode TEXT NOT NULL, wall_ns INTEGER NOT NULL)",
        "CREATE TABLE sell_eval (id INTEGER PRIMARY KEY AUTOINCREMENT, t_ms INTEGER NOT NULL, market TEXT NOT NULL,"
        " position_id INTEGER NOT NULL, trigger TEXT NOT NULL, price REAL, tp REAL, sl REAL, macd REAL,"
        " macd_signal REAL, exit_reason TEXT NOT NULL, decision TEXT NOT NULL, mode TEXT NOT NULL,"
        " wall_ns INTEGER NOT NULL)",
        "CREATE TABLE trade_audit (id INTEGER PRIMARY KEY AUTOINCREMENT, wall_ns INTEGER NOT NULL,"
        " market_ms INTEGER NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL,"
        " why TEXT NOT NULL)",
    )),
    # v2: trade ids are text (Upbit's trade uuid; the paper broker's sequential_id written as text)
    (2, (
        "CREATE TABLE fills_v2 (id INTEGER PRIMARY KEY AUTOINCREMENT, identifier TEXT NOT NULL REFERENCES orders,"
        " market TEXT NOT NULL, side TEXT NOT NULL, price REAL NOT NULL, volume REAL NOT NULL, fee REAL NOT NULL,"
        " t_ms INTEGER NOT NULL, trade_id TEXT NOT NULL, position_id INTEGER NOT NULL,"
        " UNIQUE (identifier, trade_id))",
        "INSERT INTO fills_v2 SELECT id, identifier, market, side, price, volume, fee, t_ms, CAST(trade_id AS TEXT),"
        " position_id FROM fills",
        "DROP TABLE fills",
        "ALTER TABLE fills_v2 RENAME TO fills",
    )),
)
assert MIGRATIONS[-1][0] == SCHEMA_VERSION

ORDER_COLUMNS = ("identifier", "market", "side", "ord_type", "price", "volume", "purpose", "tag", "position_id",
                 "state", "reason", "filled", "filled_krw", "fee", "broker_id", "created_ms", "updated_ms")
POSITION_COLUMNS = ("id", "market", "state", "qty", "avg_price", "cost", "tp", "sl", "entry_tag", "exit_reason",
                    "opened_ms", "closed_ms", "bought_qty", "buy_krw", "sell_krw", "fees", "realized")


def ledger_path(run_dir: Path, broker: str) -> Path:
    """Where the trader of ``run_dir`` keeps the book of ``broker`` (``paper`` | ``upbit``)."""
    return Path(run_dir) / ("ledger.sqlite" if broker == "paper" else f"ledger-{broker}.sqlite")


class LedgerError(RuntimeError):
    """The ledger file cannot be used (newer schema than this code, corrupt, locked)."""


class Ledger:
    """One SQLite connection (the trader's engine thread only). Writes join the open transaction
    until :meth:`commit`."""

    def __init__(self, path: Path, *, durable: bool = True):
        """``durable=False`` (a backtest's scratch ledger only): one transaction for the whole run, committed
        by :meth:`close` (:meth:`commit` writes what is pending into it) — a result, not an account: nothing
        to recover after a crash, so neither an fsync nor a commit per order."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level="DEFERRED", check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.durable = durable
        self._meta: dict[str, str] = {}     # key -> the JSON this connection last wrote (see put)
        self._buy_evals: list[tuple] = []   # evaluations waiting for the next commit
        self._sell_evals: list[tuple] = []
        self.migrated_from = self._migrate()

    def _migrate(self) -> int:
        """Bring the schema to :data:`SCHEMA_VERSION`; returns the version found (0 = new file)."""
        db = self.db
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        found = row[0] if row else 0
        if found > SCHEMA_VERSION:
            raise LedgerError(f"{self.path}: schema version {found} is newer than this code's {SCHEMA_VERSION}")
        if found == SCHEMA_VERSION:
            return found
        db.execute("BEGIN IMMEDIATE")   # DDL included: all the migrations, or none of them
        try:
            for version, statements in MIGRATIONS:
                if version > found:
                    for sql in statements:
                        db.execute(sql)
            if found == 0:
                db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            else:
                db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            db.commit()
        except BaseException:
            db.rollback()
            raise
        return found

    def commit(self) -> None:
        self._write_evals()
        if self.durable:
            try:
                self.db.commit()
            except sqlite3.Error:
                self._meta.clear()     # what put() remembers may not be stored: store it again next time
                raise

    def close(self) -> None:
        self._write_evals()
        self.db.commit()
        self.db.close()

    # -- meta and account ------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON) under ``key``; a value equal to the one this ledger last stored there is not
        written again (the engine stores its risk state on every commit, and it rarely changes)."""
        text = json.dumps(value)
        if self._meta.get(key) == text:
            return
        self.db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (key, text))
        self._meta[key] = text

    def account(self) -> tuple[float, float, float] | None:
        """(cash, realized, fees) or None for a new ledger."""
        row = self.db.execute("SELECT cash, realized, fees FROM account").fetchone()
        return tuple(row) if row else None

    def set_account(self, cash: float, realized: float, fees: float) -> None:
        self.db.execute("INSERT INTO account VALUES (1, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET cash = excluded.cash,"
                        " realized = excluded.realized, fees = excluded.fees", (cash, realized, fees))

    # -- orders, fills, positions ------------------------------------------------------------------------
    def insert_order(self, o, wall_ns: int) -> None:
        """Raises sqlite3.IntegrityError if the identifier was ever used."""
        self.db.execute(f"INSERT INTO orders ({', '.join(ORDER_COLUMNS)}, wall_ns) VALUES "
                        f"({', '.join('?' * (len(ORDER_COLUMNS) + 1))})",
                        (*(_col(o, c) for c in ORDER_COLUMNS), wall_ns))

    def update_order(self, o) -> None:
        self.db.execute("UPDATE orders SET state = ?, reason = ?, filled = ?, filled_krw = ?, fee = ?, broker_id = ?,"
                        " updated_ms = ? WHERE identifier = ?",
                        (o.state.value, o.reason, o.filled, o.filled_krw, o.fee, o.broker_id, o.updated_ms,
                         o.identifier))

    def open_orders(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM orders WHERE state NOT IN ('filled', 'cancelled', 'rejected', 'expired')"
                               " ORDER BY created_ms, rowid").fetchall()

    def orders(self, n: int) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM orders ORDER BY rowid DESC LIMIT ?", (n,)).fetchall()

    def order(self, identifier: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM orders WHERE identifier = ?", (identifier,)).fetchone()

    def fill_ids(self, identifier: str) -> set[str]:
        """The trade ids of the fills recorded for an order."""
        return {r[0] for r in self.db.execute("SELECT trade_id FROM fills WHERE identifier = ?", (identifier,))}

    def position(self, pid: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM positions WHERE id = ?", (pid,)).fetchone()

    def insert_fill(self, identifier: str, market: str, side: str, price: float, volume: float, fee: float,
                    t_ms: int, trade_id: str, position_id: int) -> bool:
        """False if this (identifier, trade_id) fill was already recorded (a duplicate notification)."""
        cur = self.db.execute("INSERT OR IGNORE INTO fills (identifier, market, side, price, volume, fee, t_ms,"
                              " trade_id, position_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              (identifier, market, side, price, volume, fee, t_ms, str(trade_id), position_id))
        return cur.rowcount == 1

    def new_position(self, market: str, tp: float, sl: float, entry_tag: str, opened_ms: int) -> int:
        cur = self.db.execute("INSERT INTO positions (market, state, qty, avg_price, cost, tp, sl, entry_tag,"
                              " opened_ms) VALUES (?, 'pending', 0, 0, 0, ?, ?, ?, ?)",
                              (market, tp, sl, entry_tag, opened_ms))
        return int(cur.lastrowid)

    def save_position(self, p) -> None:
        self.db.execute(f"UPDATE positions SET {', '.join(f'{c} = ?' for c in POSITION_COLUMNS[1:])} WHERE id = ?",
                        (*(getattr(p, c) for c in POSITION_COLUMNS[1:]), p.id))

    def positions(self, state: str | None = None) -> list[sqlite3.Row]:
        if state is None:
            return self.db.execute("SELECT * FROM positions ORDER BY id").fetchall()
        return self.db.execute("SELECT * FROM positions WHERE state = ? ORDER BY id", (state,)).fetchall()

    # -- evaluations and audit -----------------------------------------------------------------------------
    def buy_evals(self, rows: list[tuple]) -> None:
        """Entry evaluations: written with the next commit (or query), in order — one INSERT per batch."""
        self._buy_evals.extend(rows)

    def sell_evals(self, rows: list[tuple]) -> None:
        """Exit evaluations: written with the next commit (or query), in order."""
        self._sell_evals.extend(rows)

    def _write_evals(self) -> None:
        if self._buy_evals:
            self.db.executemany("INSERT INTO buy_eval (candle_t, market, rule, fired, decision, reason, close, macd,"
                                " macd_signal, prev_macd, prev_signal, rsi, bb_lower, mode, wall_ns)"
                                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self._buy_evals)
            self._buy_evals.clear()
        if self._sell_evals:
            self.db.executemany("INSERT INTO sell_eval (t_ms, market, position_id, trigger, price, tp, sl, macd,"
                                " macd_signal, exit_reason, decision, mode, wall_ns)"
                                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self._sell_evals)
            self._sell_evals.clear()

    def audit(self, wall_ns: int, market_ms: int, who: str, action: str, detail: str, why: str) -> None:
        self.db.execute("INSERT INTO trade_audit (wall_ns, market_ms, who, action, detail, why)"
                        " VALUES (?, ?, ?, ?, ?, ?)", (wall_ns, market_ms, who, action, detail, why))

    def query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        """A read-only query (reports, tests); sees the evaluations not committed yet."""
        self._write_evals()
        return self.db.execute(sql, params).fetchall()


def _col(o, c: str):
    v = getattr(o, c)
    return v.value if c == "state" else v
