"""Why `make demo` crawled on a busy 2-core machine, and what `utils.devices.CPUThreads` does about it:
training steps per second of the MNIST "cpu" preset with 1 and 2 torch threads, and with 2 threads under
CPUThreads (the training loop's: it checks every 250 steps which of 2 threads or 1 is faster now and keeps
that), on idle cores and next to 1 or 2 busy neighbours (pure-Python spin loops, like another job on a
shared machine).

Run: python benchmarks/cpu_threads.py [--steps N]
Writes benchmarks/results/cpu_threads.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch
from _common import write_result

from utils import config, devices, diffusion, models


def steps_per_second(threads: int, steps: int, tuned: bool = False) -> float:
    """Training steps per second (forward, backward, AdamW) of the cpu preset at batch 32 with ``threads``
    (``tuned``: under ``CPUThreads``, as in ``training.train``)."""
    torch.set_num_threads(threads)
    cfg = config.make_config("mnist", "cpu", workdir="/tmp/ddpm-threads")
    torch.manual_seed(0)
    model = models.build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    loss_fn = diffusion.make_loss_fn(diffusion.schedule_from_config(cfg))
    batch = {"x0": torch.rand(cfg.batch_size, 1, 28, 28) * 2 - 1}
    with devices.CPUThreads("cpu" if tuned else None) as tuner:
        for i in range(steps + 3):                 # 3 warm-up steps
            if i == 3:
                start = time.perf_counter()
            tuner.tick()
            loss = loss_fn(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    rows = []
    for neighbours in (0, 1, 2):
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(neighbours)]
        try:
            time.sleep(0.5)
            speed = {threads: steps_per_second(threads, args.steps) for threads in (1, 2)}
            speed["tuned"] = steps_per_second(2, args.steps, tuned=True)
        finally:
            for p in spinners:
                p.kill()
        rows.append(f"| {neighbours} | {speed[1]:.2f} | {speed[2]:.2f} | {speed[2] / speed[1]:.2f}× | {speed['tuned']:.2f} |")
    write_result("cpu_threads", f"""
Training steps per second of the MNIST "cpu" preset (batch 32, {args.steps} steps after 3 warm-up steps),
next to busy neighbours (each a pure-Python spin loop holding one core). CPUThreads spends steps 4–23 timing
10 steps with 2 threads and 10 with 1, then keeps the faster; its column includes that check.

| busy neighbours | 1 thread (it/s) | 2 threads (it/s) | 2 threads ÷ 1 thread | 2 threads under CPUThreads (it/s) |
|---|---|---|---|---|
{chr(10).join(rows)}
""")


if __name__ == "__main__":
    main()
