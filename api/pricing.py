"""The model's catalog price, looked up in the background and cached, for an estimate before spending.

A failed or slow lookup never blocks or fails a run: there is simply no estimate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from .client import RunComfyClient
from .config import Credentials
from .errors import RunComfyError

PRICE_TTL_S = 3600.0
LOOKUP_TIMEOUT_S = 10.0
log = logging.getLogger("runcomfy.seedream")


@dataclass(frozen=True)
class Price:
    usd_per_image: float
    note: str | None = None

    def estimate(self, images: int) -> str:
        return f"Estimated cost: up to ${self.usd_per_image * images:.2f} ({images} x ${self.usd_per_image:.3f} per image)"


_cache: dict[tuple[str, str], tuple[float, Price]] = {}  # (base URL, model) -> (fetched at, price); never keyed by token


async def catalog_price(credentials: Credentials, base_url: str, model_id: str) -> Price | None:
    key = (base_url, model_id)
    cached = _cache.get(key)
    if cached is not None and time.monotonic() - cached[0] < PRICE_TTL_S:
        return cached[1]
    client = RunComfyClient(credentials, base_url)
    try:
        info = await asyncio.wait_for(client.model_info(model_id), LOOKUP_TIMEOUT_S)
        value = float(info["base_price_usd"])
    except (RunComfyError, asyncio.TimeoutError, KeyError, TypeError, ValueError) as exc:
        log.debug("price lookup failed: %s", type(exc).__name__)
        return None
    finally:
        await client.aclose()
    note = info.get("pricing_note") if isinstance(info.get("pricing_note"), str) else None
    price = Price(value, note)
    _cache[key] = (time.monotonic(), price)
    return price
