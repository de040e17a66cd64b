"""Why `make demo` crawled on a busy 2-core machine, and what `utils.devices.CPUThreads` does about it:
training steps per second of the MNIST "cpu" preset with 1 and 2 torch threads, and with 2 threads under
CPUThreads (the training loop's: it checks which of 2 threads or 1 is faster now and keeps that until the
next check), on idle cores and next to 1 or 2 busy neighbours (pure-Python spin loops, like another job on a
shared machine).

Run: python benchmarks/cpu_threads.py [--steps N] [--tuned-steps N]   (≈ 25 min on 2 cores)
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


# CPUThreads as the training loop uses it, and its first version (10-step windows, a check every 250 steps
# whatever the last one found: ``longest`` = ``every``), timed over the same steps.
TUNERS = {"CPUThreads": {}, "first version": dict(window=10, longest=250)}


def steps_per_second(threads: int, steps: int, tuner: dict | None = None) -> float:
    """Training steps per second (forward, backward, AdamW) of the cpu preset at batch 32 with ``threads``
    (``tuner``: under ``CPUThreads(**tuner)``, as in ``training.train``)."""
    torch.set_num_threads(threads)
    cfg = config.make_config("mnist", "cpu", workdir="/tmp/ddpm-threads")
    torch.manual_seed(0)
    model = models.build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    loss_fn = diffusion.make_loss_fn(diffusion.schedule_from_config(cfg))
    batch = {"x0": torch.rand(cfg.batch_size, 1, 28, 28) * 2 - 1}
    devices.CPUThreads._last = None                # a fresh process: no earlier decision (made next to other neighbours)
    with devices.CPUThreads("cpu" if tuner is not None else None, **(tuner or {})) as tuner:
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
    parser.add_argument("--steps", type=int, default=60, help="steps timed with a fixed thread count")
    parser.add_argument("--tuned-steps", type=int, default=800,
                        help="steps timed under CPUThreads: long enough for its checks at 3 and 503 when 1 thread wins")
    args = parser.parse_args()
    rows = []
    for neighbours in (0, 1, 2):
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(neighbours)]
        try:
            time.sleep(0.5)
            speed = {threads: steps_per_second(threads, args.steps) for threads in (1, 2)}
            for name, tuner in TUNERS.items():
                speed[name] = steps_per_second(2, args.tuned_steps, tuner)
        finally:
            for p in spinners:
                p.kill()
        rows.append(f"| {neighbours} | {speed[1]:.2f} | {speed[2]:.2f} | {speed[2] / speed[1]:.2f}× | "
                    f"{speed['CPUThreads']:.2f} | {speed['first version']:.2f} |")
    write_result("cpu_threads", f"""
Training steps per second of the MNIST "cpu" preset (batch 32, {args.steps} steps after 3 warm-up steps;
{args.tuned_steps} under CPUThreads), next to busy neighbours (each a pure-Python spin loop holding one core).
CPUThreads spends steps 4–13 timing 5 steps with 2 threads and 5 with 1 and keeps the faster; it checks again
250 steps later when 2 threads won, 500 then 1,000 … (up to 2,000) while 1 thread keeps winning. Its first version
timed 10 and 10 steps and checked every 250 steps whatever it found. Both columns include the checks' cost and
start without an earlier decision.

| busy neighbours | 1 thread (it/s) | 2 threads (it/s) | 2 threads ÷ 1 thread | CPUThreads (it/s) | its first version (it/s) |
|---|---|---|---|---|---|
{chr(10).join(rows)}
""")


if __name__ == "__main__":
    main()
