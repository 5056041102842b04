"""A real fp32 MLP training loop for the gate's GPU acceptance (bench/gate_gpu.py).

``--tf32 on`` lets fp32 matmuls use TF32 tensor cores (``torch.set_float32_matmul_precision
("high")``); ``--tf32 off`` forces full-precision fp32 matmuls ("highest"), several times
slower on Hopper: the real regression the gate must catch. ``--slow-ms`` adds a host-side pause
per step (a stand-in regression on machines without a GPU). The loop logs the loss every step
(``loss.item()``), as most training scripts do, so each step's wall time is its GPU time.
"""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tf32", choices=("on", "off"), default="on")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--slow-ms", type=float, default=0.0)
    args = parser.parse_args()

    torch.set_float32_matmul_precision("high" if args.tf32 == "on" else "highest")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(args.depth):
        layers += [torch.nn.Linear(args.width, args.width), torch.nn.GELU()]
    model = torch.nn.Sequential(*layers).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x = torch.randn(args.batch, args.width, device=device)
    target = torch.randn(args.batch, args.width, device=device)
    for step in range(args.steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        if args.slow_ms:
            time.sleep(args.slow_ms / 1000.0)
        opt.step()
        running = loss.item()
    print(f"done: {args.steps} steps on {device}, tf32 {args.tf32}, last loss {running:.4f}")


if __name__ == "__main__":
    main()
