"""The baseline the benchmark compares against: a client written the way most hosted-API nodes are.

References encoded one after another with PIL's defaults, one JSON body, a fixed
5 s poll interval, downloads and decodes one after another. Same service, same
results; only the client differs.
"""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import torch
from PIL import Image

POLL_INTERVAL_S = 5.0


def run_naive(references: list[torch.Tensor], payload_fields: dict, *, base_url: str, token: str) -> tuple[torch.Tensor, str]:
    headers = {"Authorization": f"Bearer {token}"}
    images = []
    for tensor in references:
        for frame in tensor:
            pixels = (frame.numpy() * 255.0).clip(0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            images.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    with httpx.Client(base_url=base_url, headers=headers, timeout=600) as http:
        submitted = http.post("/models/bytedance/seedream-4-0/edit-sequential", json={"images": images, **payload_fields})
        submitted.raise_for_status()
        request_id = submitted.json()["request_id"]
        while True:
            time.sleep(POLL_INTERVAL_S)
            status = http.get(f"/requests/{request_id}/status").json()["status"]
            if status not in ("in_queue", "in_progress"):
                break
        urls = http.get(f"/requests/{request_id}/result").json()["output"]["images"]
        outputs = []
        for url in urls:
            data = httpx.get(url, timeout=600).content
            pixels = np.array(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float32) / 255.0
            outputs.append(torch.from_numpy(pixels))
    return torch.stack(outputs), request_id
