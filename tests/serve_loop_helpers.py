"""In-process engine loops for tests/serve: a Gaussian-smoothing engine with a tiny classifier (fast), and
waiting for a work's outcome."""

import threading
import time

import torch
from torch import nn

from densepure.diffusion import Mode, SmoothingConfig
from densepure.engine.backends import Backends, TorchClassifier
from densepure.engine.engine import Engine, EngineConfig
from densepure.serve.loop import Work

SHAPE = (1, 8, 8)


class Brightness(nn.Module):
    """Three classes by mean brightness, so the label depends on the noise near the thresholds; NaN on demand."""

    def __init__(self):
        super().__init__()
        self.nan = False

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        logits = torch.stack([-(m + 0.3).abs(), -m.abs(), -(m - 0.3).abs()], dim=1)
        return logits * float("nan") if self.nan else logits


def engine_factory(module, slots=2):
    def make():
        smoothing = SmoothingConfig(Mode.GAUSSIAN, 0.5)
        return Engine(smoothing, Backends(None, TorchClassifier(module, 3, SHAPE)), SHAPE, "cpu",
                      EngineConfig(unet_rows=64, classifier_rows=64, draw_capacity=128, image_slots=slots))
    return make


class Waiter:
    def __init__(self):
        self.event, self.outcome = threading.Event(), None

    def __call__(self, outcome):
        self.outcome = outcome
        self.event.set()

    def get(self, timeout=60):
        assert self.event.wait(timeout), "no outcome"
        return self.outcome


def work(task, images, seed=None, noise_id=0):
    waiter = Waiter()
    policies = [task.policy(3, 0.5) for _ in range(len(images))]
    bound = task.max_draws
    return Work(torch.as_tensor(images), policies, task, waiter, bound, seed=seed, noise_id=noise_id), waiter


def wait_admitted(loop, w, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not loop.progress(w.id)[0]:
        assert time.monotonic() < deadline, "not admitted"
        time.sleep(0.01)
