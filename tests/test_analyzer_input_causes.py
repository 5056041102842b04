"""input-pipeline causes (added by the analyzers agent) on real CPU traces of DataLoaders."""
from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader, Dataset

from tests.analyzer_traces import context, record, run


class SlowImages(Dataset):
    def __len__(self):
        return 10_000

    def __getitem__(self, i):
        t = time.perf_counter()
        while time.perf_counter() - t < 0.004:  # per-sample CPU preprocessing
            pass
        return torch.zeros(3, 32, 32), 0


def test_num_workers_zero_is_preprocessing_in_the_main_process(tmp_path):
    it = iter(DataLoader(SlowImages(), batch_size=4, num_workers=0))
    lin = torch.nn.Linear(3 * 32 * 32, 2)

    def step(i):
        x, y = next(it)
        lin(x.flatten(1)).sum().backward()

    found = run("input-pipeline", context(record(tmp_path / "dl.json", step, stacks=False)))
    assert len(found) == 1
    f = found[0]
    assert "preprocessing in the main process" in f.where["causes"]
    assert f.fixes == ["dataloader-workers"]  # a CPU trace: no GPU to move the preprocessing to
    assert f.evidence["data_wait_pct"] > 20
