"""The default encoder's budget is steps, not seconds: the same config and seed give the same training and the same
AUROC table whether the machine is fast or slow (here: a clock that advances an hour at every reading, as if each
step took hours; no second thread, no race). The thread count is part of the config (`encoder_training.threads`):
CPU kernels sum in another order with another thread count, and training amplifies that (measured: 1 against 2
threads, epoch-2 loss 3.518 against 3.562)."""
import time

import pytest

from medsae.config import EncoderTrainingConfig, PhantomConfig


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from medsae.phantomcxr import generate_phantom
    d = tmp_path_factory.mktemp("ph") / "p"
    generate_phantom(d, PhantomConfig(n_train=96, n_valid=24, n_test=48, workers=1), seed=2, progress=False)
    return d


class SlowClock:
    "The `time` module, but `time()` advances one hour at every reading."
    def __init__(self): self.now, self.readings = time.time(), 0
    def time(self):
        self.readings += 1; self.now += 3600.0
        return self.now
    def __getattr__(self, name): return getattr(time, name)


def test_same_steps_and_numbers_on_a_fast_and_a_slow_machine(tmp_path, phantom, monkeypatch):
    import medsae.encoder_training as et
    runs = []
    clock = SlowClock()
    for run, slow in (("fast", False), ("slow", True)):
        cfg = EncoderTrainingConfig(image_size=64, widths=[8, 16, 32, 64], epochs=2, batch_size=32, threads=2)
        if slow: monkeypatch.setattr(et, "time", clock)
        meta, _ = et.train_phantom_encoder(phantom, tmp_path / run, cfg, seed=1, progress=False)
        runs.append(meta)
    a, b = runs
    assert clock.readings > 0 and b["log"][-1]["seconds"] >= 3600       # the slow run really saw hours pass
    assert a["steps"] == b["steps"] == 2 * (96 // 32)
    assert [e["loss"] for e in a["log"]] == [e["loss"] for e in b["log"]]     # the same training, to the bit
    for k in ("zero_shot_auroc", "probe_auroc"):
        printed = lambda d: {f: None if v != v else round(v, 3) for f, v in d.items()}   # NaN: a class absent
        assert printed(a[k]) == printed(b[k]), k
