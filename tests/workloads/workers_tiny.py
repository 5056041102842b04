"""Training with DataLoader worker processes (num_workers=2) whose items cost some CPU."""
import torch
from torch.utils.data import DataLoader, Dataset


class Busy(Dataset):
    def __len__(self) -> int:
        return 96

    def __getitem__(self, i: int):
        x = torch.randn(64, 64)
        for _ in range(20):  # a little real CPU work per item
            x = torch.tanh(x @ x.T / 64)
        return x[0, :16], x[1, :1]


if __name__ == "__main__":
    loader = DataLoader(Busy(), batch_size=4, num_workers=2)
    model = torch.nn.Linear(16, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for x, y in loader:
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    print("WORKERS_DONE", flush=True)
