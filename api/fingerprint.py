"""A stable name for "this exact request": what the resume journal and the result cache are keyed by.

Built from the digests of the references' clean pixels, the reference URLs, every widget value,
the model and the service host. Never from the token: the same inputs under
another token give the same key, and the key reveals nothing about the account.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit


def request_fingerprint(
    *,
    model_id: str,
    base_url: str,
    settings: Mapping[str, Any],
    reference_digests: Sequence[str],
    reference_urls: Sequence[str],
) -> str:
    parts = urlsplit(base_url)
    material = {
        "model": model_id,
        "service": f"{parts.scheme}://{parts.netloc}",
        "settings": dict(settings),
        "pixels": list(reference_digests),
        "urls": list(reference_urls),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
