"""Benchmark: time to result of this pack against a naive client, and the codec floor, in one process and one run.

    python scripts/bench.py [--uplink-mbit 50] [--service-seconds 3] [--quick]

Runs the local fake service with a fixed service time and a throttled uplink, then
for each job runs our node (exactly as ComfyUI calls it) and the naive baseline
(scripts/naive_client.py), and prints wall time, time by phase, bytes sent,
completion-detection delay, status requests per second, peak extra memory and the
ratio ours/baseline. Our measured run is the first with its references (the cache of
encoded references is emptied before it); a re-run with a new seed, which finds them
encoded, gets a row of its own. Also prints the codec floor (encoding the references
and decoding the results, divided across the cores) and the PNG settings trade-off.
Numbers are only comparable within one run: machines here are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pack_import import load_pack

PHASE_MARKS = [  # (phase that ends when a progress text starts with this, marker)
    ("prepare", "Encoding references 0/"),
    ("encode", "Submitting"),  # all references encoded in parallel: the body's length is known before it is sent
    ("upload+submit", "Submitted:"),
    ("wait", "Fetching the result"),
    ("result", "Downloading 0/"),
    ("download+decode", "Done:"),
]


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """Float RGB with structure at several scales plus sensor-like noise: compresses like a photo, not like flat colour."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((4, 0.5), (16, 0.25), (64, 0.12), (256, 0.06)):
        small = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
        layer = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
        acc += np.asarray(layer, np.float32) * (amplitude / 255.0)
    acc /= 0.93
    acc += rng.normal(0.0, 0.015, acc.shape).astype(np.float32)
    return np.clip(acc, 0.0, 1.0)


class RssSampler:
    """Peak resident memory of this process above a starting point, sampled every 5 ms."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self.page

    def __enter__(self) -> RssSampler:
        gc.collect()
        self.start = self.rss()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        self.samples: list[tuple[float, int]] = []
        while not self._stop.wait(0.005):
            rss = self.rss()
            self.samples.append((time.perf_counter(), rss))
            self.peak = max(self.peak, rss)

    def peak_between(self, start: float, end: float) -> int:
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return (max(inside) - self.start) if inside else 0

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def extra(self) -> int:
        return self.peak - self.start


@dataclass
class Job:
    name: str
    ref_size: int
    ref_count: int
    outputs: int
    image_size: str = "2560:1440 (16:9)"


@dataclass
class Measurement:
    wall_s: float
    bytes_sent: int
    upload_s: float
    fake_processing_s: float
    detect_delay_s: float
    status_per_s: float
    peak_extra_bytes: int
    output_bytes: int
    phases: dict[str, float] = field(default_factory=dict)
    phase_memory: dict[str, int] = field(default_factory=dict)


def measure_job(fake, request_id: str, wall: float, sampler: RssSampler, output_bytes: int, phases=None) -> Measurement:
    job = fake.jobs[request_id]
    submitted_at = job.created
    status_calls = [r for r in fake.requests if r.path == f"/v1/requests/{request_id}/status"]
    span = max(1e-6, (job.noticed_done_at or job.done_at) - submitted_at)
    return Measurement(
        wall_s=wall,
        bytes_sent=job.body_bytes,
        upload_s=job.upload_s,
        fake_processing_s=job.processing_s,
        detect_delay_s=(job.noticed_done_at or float("nan")) - job.done_at,
        status_per_s=len(status_calls) / span,
        peak_extra_bytes=sampler.extra,
        output_bytes=output_bytes,
        phases=phases or {},
    )


def run_ours(
    pack, comfy_bridge, references, fields, job: Job, reference_format: str = "png", *, cold: bool = True
) -> tuple[Measurement, str]:
    """One run of our node; `cold`: as the first run with these references (none of them encoded yet)."""
    from runcomfy_seedream.api.shared import ENCODED

    if cold:
        ENCODED.reset()
    marks: list[tuple[str, float]] = []
    comfy_bridge.send_progress_text = lambda text, node_id: marks.append((text, time.perf_counter()))
    node = pack.NODE_CLASS_MAPPINGS["RunComfySeedream4EditSequential"]()
    inputs = {f"image_{i}": tensor for i, tensor in enumerate(references, start=1)}
    with RssSampler() as sampler:
        started = time.perf_counter()
        (images,), _, _, (request_id,) = asyncio.run(  # one item: each output is a list of one; `ui` holds the final line
            node.generate(
                prompt=fields["text"],
                max_images=fields["sequential_image_generation_options"],
                image_size=fields["image_size"],
                seed=fields["seed"],
                optimize_prompt="fast",
                sequential_image_generation="auto",
                reference_format=reference_format,
                unique_id="bench",
                **inputs,
            )
        )["result"]
        wall = time.perf_counter() - started
    phases, phase_memory, previous = {}, {}, started
    for phase, marker in PHASE_MARKS:
        hit = next((t for text, t in marks if text.startswith(marker)), None)
        if hit is not None:
            phases[phase] = hit - previous
            phase_memory[phase] = sampler.peak_between(previous, hit)
            previous = hit
    if "encode" in phases and "upload+submit" in phases:
        # The submit is sent with a Content-Length, as RunComfy's own clients do, so the upload starts once the
        # last reference is encoded. Streaming it while encoding could have saved at most the shorter of the two.
        phases["(Content-Length cost, at most)"] = min(phases["encode"], phases["upload+submit"])
    output_bytes = images.element_size() * images.nelement()
    del images
    measurement = measure_job(_fake, request_id, wall, sampler, output_bytes, phases)
    measurement.phase_memory = phase_memory
    _detection_delays.append(measurement.detect_delay_s)
    _status_rates.append(measurement.status_per_s)
    return measurement, request_id


def run_baseline(naive, references, fields, job: Job, token: str) -> Measurement:
    with RssSampler() as sampler:
        started = time.perf_counter()
        images, request_id = naive.run_naive(references, fields, base_url=_fake.base_url, token=token)
        wall = time.perf_counter() - started
    output_bytes = images.element_size() * images.nelement()
    del images
    return measure_job(_fake, request_id, wall, sampler, output_bytes)


@dataclass
class Floor:
    """Seconds of codec work alone, divided across the cores: every reference encoded once with our PNG
    settings, every output decoded once."""

    encode_s: float
    decode_s: float

    @property
    def total_s(self) -> float:
        return self.encode_s + self.decode_s


def codec_floor(references, output_files: list[bytes], png) -> Floor:
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    for tensor in references:
        pixels = (tensor[0].numpy() * 255.0 + 0.5).astype(np.uint8)
        Image.fromarray(pixels).save(io.BytesIO(), format="PNG", compress_level=png.compress_level, compress_type=png.strategy)
    encoded = time.perf_counter()
    for data in output_files:
        np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return Floor((encoded - started) / cores, (time.perf_counter() - encoded) / cores)


def png_tradeoff(references, uplink_bps: float) -> list[tuple[str, float, float, float]]:
    """(setting, encode s per reference, MB per reference, estimated s for all references) on this content."""
    settings = [
        ("store (level 0)", 0, 0),
        ("level 1", 1, 0),
        ("level 1 + RLE", 1, 3),
        ("level 1 + Huffman", 1, 2),
        ("level 3 + RLE", 3, 3),
        ("level 6 (PIL default)", 6, 0),
        ("level 9", 9, 0),
    ]
    sample = [(t[0].numpy() * 255.0 + 0.5).astype(np.uint8) for t in references[:2]]
    cores = os.cpu_count() or 1
    rows = []
    for name, level, strategy in settings:
        times, sizes = [], []
        for pixels in sample:
            buffer = io.BytesIO()
            t0 = time.perf_counter()
            Image.fromarray(pixels).save(buffer, format="PNG", compress_level=level, compress_type=strategy)
            times.append(time.perf_counter() - t0)
            sizes.append(len(buffer.getvalue()))
        per_ref_s, per_ref_bytes = statistics.mean(times), statistics.mean(sizes)
        count = len(references)
        total = per_ref_s * count / min(cores, count) + per_ref_bytes * 4 / 3 * count * 8 / uplink_bps
        rows.append((name, per_ref_s, per_ref_bytes / 1e6, total))
    return rows


_fake = None
_detection_delays: list[float] = []
_status_rates: list[float] = []


def main(argv: list[str] | None = None) -> int:
    global _fake
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uplink-mbit", type=float, default=50.0, help="simulated upload bandwidth")
    parser.add_argument("--service-seconds", type=float, default=3.0, help="fixed queue + generation time of the fake")
    parser.add_argument("--quick", action="store_true", help="only the small job (a smoke test of this script)")
    parser.add_argument("--job", choices=["reference", "many", "small", "formats", "batch", "records", "balance"], help="run only this job")
    parser.add_argument("--detect-runs", type=int, default=8, help="extra tiny jobs to measure completion detection")
    args = parser.parse_args(argv)

    os.environ["RUNCOMFY_SEEDREAM_STATE_DIR"] = tempfile.mkdtemp(prefix="bench-state-")
    pack = load_pack()
    import naive_client
    from runcomfy_seedream.api.references import DEFAULT_PNG
    from runcomfy_seedream.fake_service import FakeBehaviour, FakeRunComfy
    from runcomfy_seedream.nodes import comfy_bridge

    uplink_bps = args.uplink_mbit * 1e6
    behaviour = FakeBehaviour(
        queue_s=args.service_seconds * 0.2,
        run_s=args.service_seconds * 0.8,
        photographic=True,
        inspect_pixels=False,
        reuse_renders=True,
        upload_bytes_per_s=uplink_bps / 8,
        balance_usd=1e6,
    )
    jobs = [
        # The schema caps references + images at 15, so 10 references allow at most 5 images.
        Job("reference: 10 refs 2048x2048 -> 5 images", 2048, 10, 5),
        Job("many images: 1 ref 2048x2048 -> 14 images", 2048, 1, 14),
        Job("small: 1 ref 1024x1024 -> 3 images", 1024, 1, 3),
    ]
    if args.quick:
        jobs = jobs[2:]
    formats_only = args.job == "formats"
    if args.job == "batch":
        jobs = []
    if args.job:
        jobs = [job for job in jobs if job.name.startswith("reference" if formats_only else args.job)]
    cores = os.cpu_count() or 1
    print(
        f"machine: {cores} cores; uplink {args.uplink_mbit:g} Mbit/s; service time {args.service_seconds:g} s; "
        f"PNG for references: level {DEFAULT_PNG.compress_level}, strategy {DEFAULT_PNG.strategy}"
    )

    with FakeRunComfy(behaviour) as fake:
        _fake = fake
        os.environ["RUNCOMFY_API_TOKEN"] = behaviour.token
        os.environ["RUNCOMFY_MODEL_API_BASE"] = fake.base_url
        os.environ["RUNCOMFY_SERVERLESS_API_BASE"] = fake.serverless_base
        seed = 1000
        for job in jobs:
            references = [torch.from_numpy(photo_like(job.ref_size, job.ref_size, i)).unsqueeze(0) for i in range(job.ref_count)]
            fields = {
                "text": f"Generate {job.outputs} images of the same scene at different times of day.",
                "sequential_image_generation_options": job.outputs,
                "image_size": job.image_size,
                "optimize_prompt_options": "fast",
                "sequential_image_generation": "auto",
            }
            # Warm-up: the fake renders each output size once, so later jobs measure clients, not the fake.
            seed += 1
            run_ours(pack, comfy_bridge, references, {**fields, "seed": seed}, job)
            if job is jobs[0] and (formats_only or not args.job):
                seed = format_rows(pack, comfy_bridge, references, fields, job, behaviour, seed)
            if formats_only:
                break
            seed += 1
            ours, request_id = run_ours(pack, comfy_bridge, references, {**fields, "seed": seed}, job)
            seed += 1  # the same references with a new seed: they are in the cache of encoded references
            rerun, _ = run_ours(pack, comfy_bridge, references, {**fields, "seed": seed}, job, cold=False)
            seed += 1
            naive = run_baseline(naive_client, references, {**fields, "seed": seed}, job, behaviour.token)
            files = [f for f in fake.jobs[request_id].outputs if f]
            floor = codec_floor(references, files, DEFAULT_PNG)
            report(job, ours, naive, floor, uplink_bps, args.service_seconds)
            report_rerun(rerun, floor, uplink_bps, args.service_seconds)
            if job is jobs[0]:
                print_tradeoff(png_tradeoff(references, uplink_bps), args.uplink_mbit)
            del references
    if args.job == "balance":
        return balance_row(pack, args.detect_runs)
    if args.job in (None, "records"):
        with FakeRunComfy(behaviour) as fake:
            _fake = fake
            os.environ["RUNCOMFY_MODEL_API_BASE"] = fake.base_url
            records_row(pack, behaviour)
        if args.job == "records":
            return 0
    if args.job in (None, "batch"):
        with FakeRunComfy(behaviour) as fake:
            _fake = fake
            os.environ["RUNCOMFY_MODEL_API_BASE"] = fake.base_url
            os.environ["RUNCOMFY_SERVERLESS_API_BASE"] = fake.serverless_base
            batch_row(pack, fake, behaviour)
        if args.job == "batch":
            return 0
    with FakeRunComfy(behaviour) as fake:
        _fake = fake
        os.environ["RUNCOMFY_MODEL_API_BASE"] = fake.base_url
        os.environ["RUNCOMFY_SERVERLESS_API_BASE"] = fake.serverless_base
        tiny = [torch.from_numpy(photo_like(256, 256, 99)).unsqueeze(0)]
        fields = {
            "text": "Generate 1 image of the scene.",
            "sequential_image_generation_options": 1,
            "image_size": "2048:2048 (1:1)",
            "optimize_prompt_options": "fast",
            "sequential_image_generation": "auto",
        }
        for run in range(args.detect_runs):
            run_ours(pack, comfy_bridge, tiny, {**fields, "seed": 5000 + run}, Job("tiny", 256, 1, 1))
    print(
        f"\ncompletion noticed after, over all {len(_detection_delays)} runs of ours (s): "
        f"median {statistics.median(_detection_delays):.2f}, max {max(_detection_delays):.2f}; "
        f"status requests/s: mean {statistics.mean(_status_rates):.2f}"
    )
    return 0


def records_row(pack, behaviour, rows: int = 5000, repeats: int = 7) -> None:
    """The cost of the bookkeeping: a run that reuses its saved result, the jobs panel's answer, and 20 panel answers
    at once, in a user folder holding `rows` jobs and a results cache at its caps, against an empty folder."""
    import sqlite3
    import uuid

    from runcomfy_seedream.api.config import MAX_CACHED_RESULTS
    from runcomfy_seedream.api.records import Records
    from runcomfy_seedream.api.shared import reset_all
    from runcomfy_seedream.nodes import comfy_bridge, jobs_route

    comfy_bridge.send_progress_text = lambda text, node_id: None
    saved_scale, behaviour.output_scale = behaviour.output_scale, 1 / 16
    node = pack.NODE_CLASS_MAPPINGS["RunComfySeedream4EditSequential"]()
    reference = torch.from_numpy(photo_like(256, 256, 7)).unsqueeze(0)

    def run(seed: int) -> None:
        asyncio.run(node.generate(image_1=reference, prompt="Generate 2 images.", max_images=2, image_size="2048:2048 (1:1)",
                                  seed=seed, optimize_prompt="fast", sequential_image_generation="auto", unique_id="bench"))  # fmt: skip

    def filled(folder: str) -> None:
        records = Records.at(Path(folder))
        now = time.time()
        with sqlite3.connect(records.path) as shell:
            shell.executemany(
                "INSERT INTO jobs (id, fingerprint, state, request_id, created, updated, max_images, estimate_usd, cost_usd, prompt) "
                "VALUES (?, ?, 'done', ?, ?, ?, 2, 0.06, 0.06, 'Generate 2 images of a scene')",
                [(uuid.uuid4().hex, f"{n:064x}", f"r{n}", now - n * 60, now - n * 60) for n in range(rows)],
            )
        for seed in range(MAX_CACHED_RESULTS):  # the results cache at its cap
            run(20_000 + seed)

    timings: dict[str, dict[str, float]] = {}
    for name in ("empty", "full"):
        folder = tempfile.mkdtemp(prefix=f"bench-records-{name}-")
        os.environ["RUNCOMFY_SEEDREAM_STATE_DIR"] = folder
        reset_all()
        if name == "full":
            filled(folder)
        run(30_000)  # paid once; every later run of these inputs reuses the saved result
        reused = []
        for _ in range(repeats):
            started = time.perf_counter()
            run(30_000)
            reused.append(time.perf_counter() - started)
        spending = Path(folder) / "spending_limits.json"
        panel = []
        for _ in range(repeats * 3):
            started = time.perf_counter()
            jobs_route.jobs_answer(Path(folder), spending)
            panel.append(time.perf_counter() - started)

        async def twenty(folder: Path, spending: Path) -> list[float]:
            async def one() -> float:
                started = time.perf_counter()
                await asyncio.to_thread(jobs_route.jobs_answer, folder, spending)
                return time.perf_counter() - started

            return await asyncio.gather(*(one() for _ in range(20)))

        timings[name] = {
            "reuse": statistics.median(reused),
            "panel": statistics.median(panel),
            "twenty": statistics.median(asyncio.run(twenty(Path(folder), spending))),
        }
    behaviour.output_scale = saved_scale
    print(f"\n== records: {rows} jobs and {MAX_CACHED_RESULTS} saved results, against an empty user folder (medians)")
    print(f"{'':34s}{'empty ms':>10s}{'full ms':>10s}{'full/empty':>12s}")
    for key, label in (
        ("reuse", "a run reusing its saved result"),
        ("panel", "the panel's list answer"),
        ("twenty", "each of 20 panel answers at once"),
    ):
        empty, full = timings["empty"][key] * 1000, timings["full"][key] * 1000
        print(f"{label:34s}{empty:>10.1f}{full:>10.1f}{full / empty:>12.2f}")


def batch_row(pack, fake, behaviour, items: int = 24) -> None:
    """A list of `items` distinct references through one node, as ComfyUI runs a list, against the same items
    one after another: wall time, peak extra memory and the peak of requests per second at the service."""
    from runcomfy_seedream.nodes import comfy_bridge

    comfy_bridge.send_progress_text = lambda text, node_id: None
    saved_scale, behaviour.output_scale = behaviour.output_scale, 0.25  # 640x360 results: the row measures the client
    references = [torch.from_numpy(photo_like(1024, 1024, 500 + i)).unsqueeze(0) for i in range(items)]
    node = pack.NODE_CLASS_MAPPINGS["RunComfySeedream4EditSequential"]()

    def inputs(reference, seed: int) -> dict:
        return dict(
            image_1=reference,
            prompt="Generate 2 images of this scene at dawn and at dusk.",
            max_images=2,
            image_size="2560:1440 (16:9)",
            seed=seed,
            optimize_prompt="fast",
            sequential_image_generation="auto",
            unique_id="bench-batch",
        )

    async def as_a_list(seed: int) -> list:  # as ComfyUI hands a list input over: every item in one call
        listed = inputs(references[0], seed) | {"image_1": list(references)}
        return await node.generate(**listed)

    async def one_after_another(seed: int) -> list:
        return [await node.generate(**inputs(reference, seed)) for reference in references]

    rows = []
    for name, run, seed in (("as a list", as_a_list, 9100), ("one after another", one_after_another, 9200)):
        first_request = len(fake.requests)
        with RssSampler() as sampler:
            started = time.perf_counter()
            outputs = asyncio.run(run(seed))
            wall = time.perf_counter() - started
        stamps = sorted(r.at for r in fake.requests[first_request:])
        peak_rate = max(sum(1 for t in stamps if s <= t < s + 1.0) for s in stamps) if stamps else 0
        status_stamps = sorted(r.at for r in fake.requests[first_request:] if r.path.endswith("/status"))
        peak_status = max(sum(1 for t in status_stamps if s <= t < s + 1.0) for s in status_stamps) if status_stamps else 0
        rows.append((name, wall, sampler.extra, peak_rate, peak_status, len(outputs)))
        del outputs
    behaviour.output_scale = saved_scale
    print(f"\n== batch: {items} distinct items (1 reference 1024x1024 -> 2 images each), service time as above")
    print(f"{'':20s}{'wall s':>9s}{'peak MB':>9s}{'peak req/s':>12s}{'peak status/s':>15s}")
    for name, wall, extra, peak_rate, peak_status, _ in rows:
        print(f"{name:20s}{wall:>9.2f}{extra / 2**20:>9.0f}{peak_rate:>12d}{peak_status:>15d}")
    print(f"speed-up of the list: {rows[1][1] / rows[0][1]:.1f}x")


def balance_row(pack, runs: int) -> int:
    """What reading the balance adds to a run: the time to submit and the wall time of a small run with no balance
    read, with a balance that answers, and with one that never answers (the run goes on after
    `Timing.balance_wait_s`), in turn."""
    from runcomfy_seedream.api import Timing
    from runcomfy_seedream.api.balance import ACCOUNTS
    from runcomfy_seedream.fake_service import FakeBehaviour, FakeRunComfy, Fault
    from runcomfy_seedream.nodes import comfy_bridge

    behaviour = FakeBehaviour(queue_s=0.2, run_s=0.3, output_scale=0.25, balance_usd=1e6)
    tiny = torch.from_numpy(photo_like(256, 256, 7)).unsqueeze(0)
    node = pack.NODE_CLASS_MAPPINGS["RunComfySeedream4EditSequential"]()
    times: dict[str, list[tuple[float, float]]] = {"not read": [], "readable": [], "hanging": []}
    marks: list[tuple[str, float]] = []
    comfy_bridge.send_progress_text = lambda text, node_id: marks.append((text, time.perf_counter()))
    with FakeRunComfy(behaviour) as fake:
        os.environ["RUNCOMFY_API_TOKEN"] = behaviour.token
        os.environ["RUNCOMFY_MODEL_API_BASE"] = fake.base_url
        os.environ["RUNCOMFY_SERVERLESS_API_BASE"] = fake.serverless_base
        for run in range(3 * runs + 3):
            kind = list(times)[run % 3]
            ACCOUNTS.reset()  # every run reads the balance
            if kind == "hanging":
                behaviour.inject("balance", Fault("stall", seconds=30.0))
            if kind == "not read":  # the Model API moved, the serverless base not: the balance is not read at all
                os.environ.pop("RUNCOMFY_SERVERLESS_API_BASE", None)
            else:
                os.environ["RUNCOMFY_SERVERLESS_API_BASE"] = fake.serverless_base
            marks.clear()
            started = time.perf_counter()
            asyncio.run(
                node.generate(
                    image_1=tiny,
                    prompt="Generate 1 image of the scene.",
                    max_images=1,
                    image_size="1440:2560 (9:16)",
                    seed=7000 + run,
                    optimize_prompt="fast",
                    sequential_image_generation="auto",
                    unique_id="bench",
                )
            )
            wall = time.perf_counter() - started
            submitted = next(t for text, t in marks if text.startswith("Submitted:")) - started
            if run >= 3:  # the first three warm up
                times[kind].append((submitted, wall))
    print(f"\n== balance: a small run, {runs} of each, in turn (balance wait {Timing().balance_wait_s:g} s)")
    print(f"{'balance':12s}{'to submit s (median)':>22s}{'wall s (median)':>18s}")
    for kind, rows in times.items():
        print(f"{kind:12s}{statistics.median(r[0] for r in rows):>22.3f}{statistics.median(r[1] for r in rows):>18.3f}")
    wall = {kind: statistics.median(r[1] for r in rows) for kind, rows in times.items()}
    print(f"added by reading the balance: {wall['readable'] - wall['not read']:.3f} s of wall time")
    print(f"added by a balance that never answers, over a readable one: {wall['hanging'] - wall['readable']:.3f} s of wall time")
    return 0


def format_rows(pack, comfy_bridge, references, fields, job: Job, behaviour, seed: int) -> int:
    """The reference job with PNG and with JPEG references, on a slow and a fair uplink."""
    print(f"\n== reference format: {job.name}")
    print(f"{'uplink':>8s}{'format':>8s}{'wall s':>9s}{'MB sent':>9s}{'upload s':>10s}{'encode s':>10s}{'refs downscaled':>17s}")
    saved = behaviour.upload_bytes_per_s
    for mbit in (10.0, 50.0):
        behaviour.upload_bytes_per_s = mbit * 1e6 / 8
        for reference_format in ("png", "jpeg"):
            seed += 1
            measured, request_id = run_ours(pack, comfy_bridge, references, {**fields, "seed": seed}, job, reference_format)
            sent = _fake.jobs[request_id].payload["images"]
            downscaled = sum(_data_uri_size(uri) != (job.ref_size, job.ref_size) for uri in sent)
            print(
                f"{mbit:>8g}{reference_format:>8s}{measured.wall_s:>9.2f}{measured.bytes_sent / 1e6:>9.2f}"
                f"{measured.upload_s:>10.2f}{measured.phases.get('encode', float('nan')):>10.2f}{downscaled:>17d}"
            )
    behaviour.upload_bytes_per_s = saved
    return seed


def _data_uri_size(uri: str) -> tuple[int, int]:
    import base64

    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
        return image.size


def report(job: Job, ours: Measurement, naive: Measurement, floor: Floor, uplink_bps: float, service_s: float) -> None:
    def overhead(m: Measurement) -> float:
        return m.wall_s - service_s - m.bytes_sent * 8 / uplink_bps - m.fake_processing_s

    print(f"\n== {job.name}")
    print(f"{'':34s}{'ours':>12s}{'naive':>12s}{'ours/naive':>12s}")
    rows = [
        ("wall time (s)", ours.wall_s, naive.wall_s),
        ("bytes sent (MB)", ours.bytes_sent / 1e6, naive.bytes_sent / 1e6),
        ("  per reference (MB)", ours.bytes_sent / 1e6 / job.ref_count, naive.bytes_sent / 1e6 / job.ref_count),
        ("simulated upload (s)", ours.bytes_sent * 8 / uplink_bps, naive.bytes_sent * 8 / uplink_bps),
        ("fake's own submit work (s)", ours.fake_processing_s, naive.fake_processing_s),
        ("client overhead (s)", overhead(ours), overhead(naive)),
        ("completion noticed after (s)", ours.detect_delay_s, naive.detect_delay_s),
        ("status requests / s", ours.status_per_s, naive.status_per_s),
        ("peak extra memory (MB)", ours.peak_extra_bytes / 1e6, naive.peak_extra_bytes / 1e6),
        ("  / output tensor size", ours.peak_extra_bytes / ours.output_bytes, naive.peak_extra_bytes / naive.output_bytes),
    ]
    for label, a, b in rows:
        print(f"{label:34s}{a:12.2f}{b:12.2f}{(a / b if b else float('nan')):12.2f}")
    print("our phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in ours.phases.items()))
    print("our peak extra memory by phase (MB): " + ", ".join(f"{k} {v / 1e6:.0f}" for k, v in ours.phase_memory.items()))
    print(
        f"codec floor (s): {floor.total_s:.2f} (encode {floor.encode_s:.2f}, decode {floor.decode_s:.2f})   "
        f"our overhead / floor: {overhead(ours) / floor.total_s:.2f}   speed-up vs naive: {naive.wall_s / ours.wall_s:.2f}x"
    )
    fetched = ours.phases.get("download+decode")
    if fetched is not None:
        print(
            f"download+decode (s): {fetched:.2f}   / codec floor: {fetched / floor.total_s:.2f}   "
            f"/ decode floor: {fetched / floor.decode_s:.2f}"
        )


def report_rerun(rerun: Measurement, floor: Floor, uplink_bps: float, service_s: float) -> None:
    """The same references again with a new seed: nothing to encode, so the upload should start at once."""
    upload = rerun.bytes_sent * 8 / uplink_bps
    expected = upload + service_s + floor.decode_s
    print(
        f"re-run with a new seed (s): wall {rerun.wall_s:.2f} = upload {upload:.2f} + service {service_s:.2f} "
        f"+ decode floor {floor.decode_s:.2f} + {rerun.wall_s - expected:.2f} over them "
        f"(encode phase {rerun.phases.get('encode', float('nan')):.2f})"
    )
    print("  its phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in rerun.phases.items()))


def print_tradeoff(rows, uplink_mbit: float) -> None:
    print(f"\nPNG settings for the references at {uplink_mbit:g} Mbit/s (encode in parallel, then upload base64):")
    print(f"{'setting':24s}{'encode s/ref':>14s}{'MB/ref':>10s}{'est. total s':>14s}")
    best = min(rows, key=lambda row: row[3])
    for name, seconds, megabytes, total in rows:
        mark = "  <- fastest" if row_is(best, name) else ""
        print(f"{name:24s}{seconds:14.3f}{megabytes:10.2f}{total:14.2f}{mark}")


def row_is(row, name: str) -> bool:
    return row[0] == name


if __name__ == "__main__":
    raise SystemExit(main())
