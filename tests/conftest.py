"""Test-session settings: one torch thread per xdist worker (the suite runs with -n 2 on 2 cores); shared fixtures."""
import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def tiny_experiment(capsys):
    """Run ``ssmcompress experiment`` on digits with a 1-layer, 4-channel, N = 8 model and 2 seeds (patience 1)
    into ``out``; the captured output is cleared."""
    from ssmcompress.cli import main

    def make(out, methods: str, ranks: str = "4", epochs: int = 3, main_epochs: int = 2):
        assert main(["experiment", "--data", "digits", "--state-dim", "8", "--ranks", ranks, "--seeds", "2",
                     "--epochs", str(epochs), "--main-epochs", str(main_epochs), "--patience", "1",
                     "--methods", methods, "--out", str(out), "--d-model", "4", "--layers", "1",
                     "--batch-size", "256", "--quiet"]) == 0
        capsys.readouterr()
        return out
    return make
