"Extraction: a killed run resumes with no lost or duplicated rows; bad images are skipped; NaN stops with the ids."
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT
from medsae.config import EncoderTrainingConfig, PhantomConfig
from medsae.encoders import EncoderError
from medsae.extract import EmbeddingStore, StoreError, extract


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from medsae.phantomcxr import generate_phantom
    d = tmp_path_factory.mktemp("ph")
    generate_phantom(d / "p", PhantomConfig(n_train=360, n_valid=20, n_test=20, workers=2), seed=4, progress=False)
    return d / "p"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    "A randomly initialised default encoder saved as a checkpoint, so separate processes load the same weights."
    from medsae.encoders import build_phantom_model, save_phantom_encoder
    cfg = EncoderTrainingConfig(image_size=96, widths=[16, 32, 64, 128])
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("w") / "encoder.safetensors"
    save_phantom_encoder(build_phantom_model(cfg), p, dict(training=cfg.model_dump(mode="json")))
    return p


def _extract_cmd(phantom, weights, out_root, extra=()):
    "`medsae extract` of a dataset on disk with given weights, into the run `<out_root>/default/extract/`."
    exe = Path(sys.executable).parent / "medsae"
    return [str(exe), "extract", "--data", str(phantom), "--encoder", "medclip-phantom", "--weights", str(weights),
            "--batch-size", "8", "--workers", "0", "--device", "cpu", "--set", f"run.out_root={out_root}",
            "--figures", str(Path(out_root) / "figures"), *extra]


# `medsae extract` in a process that SIGKILLs itself while its encoder embeds batch MEDSAE_TEST_KILL_AT: a real kill
# (no clean-up runs) at a known point, so the test never races the extraction it kills.
KILL_AT_BATCH = r"""
import os, signal, sys
import medsae.encoders as E
from medsae.cli import main
build = E.build_encoder
def build_then_die(*a, **k):
    enc, calls = build(*a, **k), [0]
    encode = enc.encode_images
    def encode_images(x):
        calls[0] += 1
        if calls[0] == int(os.environ["MEDSAE_TEST_KILL_AT"]): os.kill(os.getpid(), signal.SIGKILL)
        return encode(x)
    enc.encode_images = encode_images
    return enc
E.build_encoder = build_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_killed_extraction_resumes_without_loss_or_duplication(tmp_path, phantom, weights):
    from medsae.layout import RunLayout
    subprocess.run(_extract_cmd(phantom, weights, tmp_path / "clean"), check=True, capture_output=True, timeout=600)
    clean = RunLayout(tmp_path / "clean" / "default").extract.store
    # batches of 8, committed every 8 batches (64 rows): killed in batch 20, the last commit was at row 128
    r = subprocess.run([sys.executable, "-c", KILL_AT_BATCH, *_extract_cmd(phantom, weights, tmp_path / "k")[1:]],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, MEDSAE_TEST_KILL_AT="20"))
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    killed = tmp_path / "k" / "default" / "extract.partial" / "store"      # the stage's folder while it is written
    prog = killed / "progress-0-of-1.json"
    assert json.loads(prog.read_text())["rows_done"] == 128                  # really killed mid-way, at a known row
    assert not EmbeddingStore(killed).complete
    with pytest.raises(StoreError, match="not complete"): EmbeddingStore(killed).split("train")
    subprocess.run(_extract_cmd(phantom, weights, tmp_path / "k"), check=True, capture_output=True, timeout=600)
    assert not killed.exists()                                     # finished: the stage folder took its final name
    a, b = EmbeddingStore(clean), EmbeddingStore(RunLayout(tmp_path / "k" / "default").extract.store)
    assert a.complete and b.complete
    assert np.array_equal(a.embeddings(), b.embeddings())          # bit-identical, every row once
    assert a.index().equals(b.index()) and a.ok().all()
    assert a.meta["encoder"]["weights_sha256"] and a.meta["encoder"]["name"] == "medclip-phantom"


def test_skipped_images_and_a_store_of_another_encoder(tmp_path, phantom, weights):
    from medsae.encoders import build_encoder
    enc = build_encoder("medclip-phantom", weights, device="cpu")
    work = tmp_path / "p"
    import shutil
    shutil.copytree(phantom, work)
    bad = pd.read_csv(work / "test.csv")["Path"].tolist()
    (work / bad[0]).write_bytes(b"not a png")
    (work / bad[1]).unlink()
    store = extract(enc, work, tmp_path / "s", batch_size=16, progress=False)
    sk = pd.read_csv(tmp_path / "s" / "skipped.csv")
    assert sorted(sk["path"]) == sorted(bad[:2]) and store.meta["skipped"] == 2
    X, rows = store.split("test")
    assert len(X) == 18 and not set(bad[:2]) & set(rows["Path"])
    other = build_encoder("openclip:RN50", device="cpu", random_weights=True)
    with pytest.raises(StoreError, match="another encoder"): extract(other, work, tmp_path / "s", progress=False)


def test_nan_embeddings_stop_with_the_image_ids(tmp_path, phantom, weights):
    from medsae.encoders import build_encoder
    enc = build_encoder("medclip-phantom", weights, device="cpu")
    real = enc.encode_images
    def broken(x):
        e = real(x); e[1] = float("nan"); return e
    enc.encode_images = broken
    with pytest.raises(EncoderError, match="patient00002"):
        extract(enc, phantom, tmp_path / "s", splits=("train",), batch_size=8, progress=False)


def test_pixels_decoded_once_are_reused_exactly_and_dropped_when_a_file_changes(tmp_path, monkeypatch):
    """The encoder's training keeps its decoded images (PixelCache); a second load and the extraction read them
    instead of decoding (counted), with bit-identical results; a 16-bit image is decoded again (its uint8 copy is not
    what MedCLIPTransform sees); a file changed since drops its set, which is then decoded again."""
    from PIL import Image
    import medsae.data as D
    from medsae.data import PixelCache, read_chexpert_csv
    from medsae.encoder_training import load_pairs
    from medsae.encoders import MedCLIPEncoder, build_phantom_model
    from medsae.phantomcxr import generate_phantom
    root = tmp_path / "p"
    generate_phantom(root, PhantomConfig(n_train=12, n_valid=4, n_test=4, workers=1), seed=2, progress=False)
    train = read_chexpert_csv(root / "train.csv")["Path"].tolist()
    deep = root / train[3]                                         # one 16-bit image (CheXpert can hold such files)
    Image.fromarray((np.asarray(Image.open(deep), dtype=np.uint16) * 257)).save(deep)
    torch.manual_seed(0)
    enc = MedCLIPEncoder(build_phantom_model(EncoderTrainingConfig(image_size=64, widths=[8, 16, 32, 64])), "t",
                         image_size=64)
    plain = extract(enc, root, tmp_path / "plain", batch_size=4, progress=False).embeddings()

    cache = PixelCache(tmp_path / "pixels")
    decoded, load = [], D.load_image
    monkeypatch.setattr(D, "load_image", lambda f: decoded.append(Path(f).name) or load(f))
    first = load_pairs(root, "train", 64, progress=False, cache=cache)[0]
    assert len(decoded) == 12
    decoded.clear()
    assert torch.equal(load_pairs(root, "train", 64, progress=False, cache=cache)[0], first) and decoded == []
    assert torch.equal(first, load_pairs(root, "train", 64, progress=False)[0])        # the cache changes nothing
    decoded.clear()
    cached = extract(enc, root, tmp_path / "cached", batch_size=4, progress=False, pixels=cache).embeddings()
    assert np.array_equal(cached, plain)
    assert sorted(decoded) == sorted([Path(train[3]).name] + [Path(p).name for s in ("valid", "test")
                                      for p in read_chexpert_csv(root / f"{s}.csv")["Path"]])
    from medsae.data import MedCLIPTransform
    enc._transform = MedCLIPTransform(64, pad=False)                  # the published stretch: padded pixels are not its input
    stretched = extract(enc, root, tmp_path / "stretch", batch_size=4, progress=False).embeddings()
    decoded.clear()
    assert np.array_equal(extract(enc, root, tmp_path / "stretch-c", batch_size=4, progress=False,
                                  pixels=cache).embeddings(), stretched) and len(decoded) == 20
    enc._transform = MedCLIPTransform(64)
    Image.open(root / train[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / train[0])   # a file changes
    decoded.clear()
    again = extract(enc, root, tmp_path / "again", batch_size=4, progress=False, pixels=cache).embeddings()
    assert len(decoded) == 20 and not np.array_equal(again[0], plain[0]) and np.array_equal(again[1:], plain[1:])
    decoded.clear()
    assert not torch.equal(load_pairs(root, "train", 64, progress=False, cache=cache)[0], first) and len(decoded) == 12
