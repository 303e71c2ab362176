"""Loading the configuration: TOML files merged in order, validated by the models of
:mod:`procs.runtime.config`, every error explained by its key path.

Load order (later wins): ``conf/default.toml`` → ``conf/<profile>.toml`` → the file named by
``SMTM_CONFIG`` (an overlay, used by tests) → environment (``SMTM_INSTANCE``; ``SMTM_BROKER`` =
``trader.broker``, set by ``smtm up --broker``). The profile comes from the argument, else
``SMTM_PROFILE``, else ``replay``.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .config import CONF_DIR, PROFILES, Config, ConfigError


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _tuples(x: Any) -> Any:
    """TOML arrays → tuples (the models are frozen), recursively."""
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def _key(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = Config
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _explain(err: dict) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    key = _key(loc)
    ty = err["type"]
    if ty == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = f"; allowed keys: {', '.join(model.model_fields)}" if model else ""
        return f"unknown key {key}{allowed}"
    if key and not isinstance(err.get("input"), dict):
        shown = f"{key} = {err['input']!r}: "
    else:
        shown = f"{key}: " if key else ""
    if ty in ("literal_error", "enum"):
        return f"{shown}allowed values are {err['ctx']['expected']}"
    msg = err["msg"].removeprefix("Value error, ")
    if ty == "value_error" and (not key or isinstance(err.get("input"), dict)):
        return msg  # a check across keys: its message names them
    return f"{shown}{msg[0].lower() + msg[1:]}"


def load_config(profile: str | None = None, *, conf_dir: Path | None = None, overlay: Path | None = None) -> Config:
    """Load and validate the configuration. Raises :class:`ConfigError`."""
    profile = profile or os.environ.get("SMTM_PROFILE") or "replay"
    if profile not in PROFILES:
        raise ConfigError(f"profile {profile!r}: allowed values are {', '.join(PROFILES)}")
    conf_dir = Path(conf_dir or os.environ.get("SMTM_CONF_DIR", CONF_DIR))
    files = [conf_dir / "default.toml", conf_dir / f"{profile}.toml"]
    extra = overlay or os.environ.get("SMTM_CONFIG")
    if extra:
        files.append(Path(extra))
    raw: dict = {}
    for f in files:
        raw = _merge(raw, _read_toml(f))
    raw["profile"] = profile
    if os.environ.get("SMTM_INSTANCE"):
        raw["instance"] = os.environ["SMTM_INSTANCE"]
    if os.environ.get("SMTM_BROKER"):
        raw.setdefault("trader", {})["broker"] = os.environ["SMTM_BROKER"]
    try:
        return Config.model_validate(_tuples(raw))
    except ValidationError as e:
        where = " + ".join(str(f) for f in files)
        lines = [_explain(err) for err in e.errors()]
        raise ConfigError("\n".join(lines) + f"\n(configuration: {where})") from None
