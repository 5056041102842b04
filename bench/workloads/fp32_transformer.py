"""A small transformer encoder trained in plain fp32 with TF32 off (PyTorch's matmul default).

The ``tf32`` fix should be called for (fp32 GEMM layers on CUDA, TF32 off), pass parity within
its stated tolerance, and be kept as measurably faster.
"""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = dev.type == "cuda"
    torch.set_float32_matmul_precision("highest")
    width, depth, seq, vocab = (1024, 6, 512, 8192) if gpu else (64, 2, 16, 100)
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(width, 16 if gpu else 4, 4 * width, dropout=0.1, batch_first=True)
    model = nn.Sequential(nn.Embedding(vocab, width), nn.TransformerEncoder(layer, depth), nn.Linear(width, vocab)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, vocab, (args.batch if gpu else 2, seq), device=dev)
    for _ in range(args.steps):
        opt.zero_grad(set_to_none=True)
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
    if gpu:
        torch.cuda.synchronize()
    print(f"final_loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
