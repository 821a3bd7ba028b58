import torch

from train.throughput import matmul_bound


def test_the_bound_is_measured_on_the_threads_asked_for_and_they_are_given_back(monkeypatch):
    # Under torchrun each CPU process has one thread; its bound must count every core the run used.
    seen, real = [], torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n)))
    before = torch.get_num_threads()
    assert matmul_bound(size=128, repeats=1, threads=before + 1) > 0
    assert seen == [before + 1, before] and torch.get_num_threads() == before
