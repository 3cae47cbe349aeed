"""Run the local fake RunComfy service until Ctrl+C, e.g. to point a real ComfyUI at it.

python scripts/fake_service.py --port 8765
RUNCOMFY_MODEL_API_BASE=http://127.0.0.1:8765/v1 RUNCOMFY_SERVERLESS_API_BASE=http://127.0.0.1:8765/prod/v2 \
    RUNCOMFY_API_TOKEN=fake-runcomfy-token python main.py --cpu
"""

from __future__ import annotations

import argparse
import time

from pack_import import load_pack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--queue-seconds", type=float, default=2.0)
    parser.add_argument("--run-seconds", type=float, default=4.0)
    parser.add_argument("--output-scale", type=float, default=1.0, help="outputs are image_size x this")
    parser.add_argument("--balance", type=float, default=100.0, help="the account's balance in USD (jobs lower it)")
    args = parser.parse_args(argv)

    load_pack()
    from runcomfy_seedream.fake_service import FakeBehaviour, FakeRunComfy

    behaviour = FakeBehaviour(queue_s=args.queue_seconds, run_s=args.run_seconds, output_scale=args.output_scale, balance_usd=args.balance)
    with FakeRunComfy(behaviour, port=args.port) as fake:
        print(f"Fake RunComfy service at {fake.base_url}")
        print(f"  RUNCOMFY_MODEL_API_BASE={fake.base_url}")
        print(f"  RUNCOMFY_SERVERLESS_API_BASE={fake.serverless_base}")
        print(f"  RUNCOMFY_API_TOKEN={behaviour.token}")
        try:
            while True:
                time.sleep(5)
        except KeyboardInterrupt:
            print(f"\n{fake.submits} jobs submitted; stopping.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
