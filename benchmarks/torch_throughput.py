"""Training throughput of the seed's PyTorch NIN (torch_nin.py), as one JSON line.

The reference docs/PERFORMANCE.md compares nin_jax with. The machines are shared and
noisy, so compare the two only within one session, run back to back, or let
``python -m nin_jax.benchmark --torch_script=benchmarks/torch_throughput.py`` run it.

    pip install torch        # optional; the CPU build is enough
    python benchmarks/torch_throughput.py --batch_size 128 --steps 10

Prints {"framework": "torch", "threads": ..., "batch_size": ..., "train_images_per_sec": ...}.
Each step trains on one fixed random CIFAR-shaped batch (3 x 32 x 32, 10 classes): forward
with dropout, cross-entropy, backward, and SGD with momentum 0.9 and weight decay 1e-4.
"""

import argparse
import json
import time

import torch
from torch_nin import NIN


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed train steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    args = parser.parse_args()
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--batch_size and --steps must be >= 1, --warmup >= 0")

    torch.manual_seed(0)
    model = NIN().train()
    sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = torch.rand(args.batch_size, 3, 32, 32)
    labels = torch.randint(0, 10, (args.batch_size,))

    def train_step():
        sgd.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        sgd.step()

    for _ in range(args.warmup):
        train_step()
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    seconds = time.perf_counter() - start
    record = {
        "framework": "torch",
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "train_images_per_sec": round(args.batch_size * args.steps / seconds, 2),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
