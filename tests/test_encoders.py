"Encoders: official MedCLIP checkpoints at full size, safe loading, clear errors, the Encoder interface."
import io
import math
import pickle
import zipfile

import numpy as np
import pytest
import torch

from medsae.encoders import (EncoderError, MedCLIPEncoder, MedCLIPModel, MedCLIPTextBert, MedCLIPVisionResNet,
                             MedCLIPVisionSwin, build_encoder, build_medclip, load_official_weights, read_checkpoint,
                             save_official_zip)


def tiny_tokenizer(words):
    "A word-level fast tokenizer built offline (the real MedCLIP uses Bio_ClinicalBERT's)."
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]"), len(vocab)


def test_full_size_resnet50_official_zip_round_trip(tmp_path):
    torch.manual_seed(0)
    a = build_medclip("resnet50").model.eval()
    z = save_official_zip(a, tmp_path / "medclip-pretrained.zip",
                          {"text_model.model.embeddings.position_ids": torch.arange(512)[None]})
    keys = torch.load(io.BytesIO(zipfile.ZipFile(z).read("pytorch_model.bin")), weights_only=True).keys()
    assert "vision_model.model.fc.weight" in keys and "text_model.projection_head.weight" in keys and "logit_scale" in keys
    torch.manual_seed(1)
    enc = build_encoder("medclip-resnet50", weights=z, device="cpu")
    x = torch.randn(2, 1, 224, 224)
    ids = torch.randint(0, 28996, (2, 12))
    with torch.no_grad():
        assert torch.equal(enc.encode_images(x), a.encode_image(x))
        assert torch.equal(enc.model.encode_text(ids), a.encode_text(ids))
    assert enc.dim == 512 and enc.model.vision_model.model.fc.bias is None
    assert enc.weights_sha256() is not None


def test_full_size_swin_loads_transformers4_key_names(tmp_path):
    torch.manual_seed(0)
    a = MedCLIPModel(MedCLIPVisionSwin(), None).eval()
    stale = {"vision_model.model.encoder.layers.0.blocks.0.attention.self.relative_position_index": torch.zeros(49, 49, dtype=torch.long)}
    z = save_official_zip(a, tmp_path / "medclip-vit-pretrained.zip", stale)
    keys = torch.load(io.BytesIO(zipfile.ZipFile(z).read("pytorch_model.bin")), weights_only=True).keys()
    assert any(".attention.self.query.weight" in k for k in keys) and not any("q_proj" in k for k in keys)
    b = MedCLIPModel(MedCLIPVisionSwin(), None).eval()
    rep = load_official_weights(b, z)
    x = torch.randn(1, 1, 224, 224)
    with torch.no_grad(): assert torch.equal(a.encode_image(x), b.encode_image(x))
    assert len(rep["ignored_stale_keys"]) == 1


def test_wrong_architecture_names_the_keys(tmp_path):
    z = save_official_zip(MedCLIPModel(MedCLIPVisionResNet("resnet18"), None), tmp_path / "r18.zip")
    with pytest.raises(EncoderError) as e: load_official_weights(MedCLIPModel(MedCLIPVisionResNet("resnet50"), None), z)
    msg = str(e.value)
    assert "r18.zip" in msg and "shape mismatches" in msg and "vision_model.model.fc.weight" in msg
    assert "missing keys" in msg and "layer1.0.bn3.weight" in msg              # resnet50 blocks have a third conv


def test_an_unknown_stale_key_is_not_tolerated(tmp_path):
    m = MedCLIPModel(MedCLIPVisionResNet("resnet18"), None)
    z = save_official_zip(m, tmp_path / "x.zip", {"vision_model.model.extra.weight": torch.zeros(1)})
    with pytest.raises(EncoderError, match="vision_model.model.extra.weight"): load_official_weights(m, z)


class Evil:
    def __reduce__(self): return (print, ("pwned",))


def test_pickles_that_build_objects_are_refused(tmp_path):
    buf = io.BytesIO(); torch.save({"x": Evil()}, buf)
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z: z.writestr("pytorch_model.bin", buf.getvalue())
    with pytest.raises(EncoderError, match="is a pickle of more than tensors") as e: read_checkpoint(tmp_path / "evil.zip")
    assert "weights_only" not in str(e.value)               # torch's advice to unpickle it anyway is not passed on


def test_unknown_encoder_lists_the_valid_ones():
    with pytest.raises(EncoderError, match="medclip-resnet50.*openclip"): build_encoder("medclip-r50")


def test_medclip_text_with_a_local_tokenizer(tmp_path):
    from transformers import BertConfig
    tok, nv = tiny_tokenizer(["no", "pleural", "effusion", "edema", "."])
    assert tok(["pleural effusion"])["input_ids"][0] == [2, 5, 6, 3]
    cfg = BertConfig(vocab_size=nv, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    enc = MedCLIPEncoder(MedCLIPModel(MedCLIPVisionResNet("small", widths=(8, 16, 32, 64)), MedCLIPTextBert(cfg)), "t", tok,
                         image_size=64)
    t = enc.encode_texts(["pleural effusion", "pleural edema"])
    assert t.shape == (2, 512) and torch.allclose(t.norm(dim=1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(t[0], t[1])


def test_image_preprocessing_handles_sizes_and_channels():
    from PIL import Image
    enc = MedCLIPEncoder(MedCLIPModel(MedCLIPVisionResNet("small", widths=(8, 16, 32, 64)), None), "t", image_size=96)
    rng = np.random.default_rng(0)
    for arr in [rng.integers(0, 255, (50, 300), dtype=np.uint8), rng.integers(0, 255, (400, 120, 3), dtype=np.uint8),
                rng.integers(0, 65535, (77, 77), dtype=np.uint16)]:
        x = enc.preprocess(Image.fromarray(arr))
        assert x.shape == (1, 96, 96) and torch.isfinite(x).all()


def test_the_training_loop_fine_tunes_a_bert_medclip(tmp_path):
    "train_medclip is the same code for the real MedCLIP: a BERT text tower fed token ids, a ResNet vision tower."
    from transformers import BertConfig
    from medsae.config import EncoderTrainingConfig
    from medsae.encoder_training import train_medclip
    words = ["effusion", "edema", "cardiomegaly", "normal"]
    tok, nv = tiny_tokenizer(words)
    cfg = BertConfig(vocab_size=nv, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    torch.manual_seed(0)
    model = MedCLIPModel(MedCLIPVisionResNet("small", widths=(8, 16, 32, 64)), MedCLIPTextBert(cfg))
    n = 64
    labels = torch.zeros(n, 4); labels[torch.arange(n), torch.arange(n) % 4] = 1
    images = torch.randn(n, 1, 32, 32) * 0.1 + labels.argmax(1).float()[:, None, None, None]   # class-coded brightness
    texts = [words[i % 4] for i in range(n)]
    tokens = tok(texts, padding=True, return_tensors="pt")
    log = train_medclip(model, images, labels, lambda idx: (tokens["input_ids"][idx], tokens["attention_mask"][idx]),
                        EncoderTrainingConfig(epochs=80, batch_size=16, lr=5e-3), progress=False)
    # MedCLIP's soft targets are softmax(Y Y^T): in a batch of 16 with 4 of each class, a row puts e/(4e+12) on each
    # same-class text, so the loss can fall no lower than the targets' entropy; training must get close to it
    import torch.nn.functional as F
    yb = torch.eye(4).repeat(4, 1)
    t = F.softmax(yb @ yb.t(), 1)
    floor = float(-(t * t.log()).sum(1).mean())
    losses = [l["loss"] for l in log]
    assert 2.6 < floor < 2.7 and losses[-1] - floor < 0.3 * (losses[0] - floor), (floor, losses)
    assert model.text_model.projection_head.weight.grad is not None       # the text tower was trained too


def test_the_training_loop_draws_pairs_by_their_weights():
    "weights=None: every pair once per epoch; sampling weights: pairs of weight 0 never drawn, a rare label lifted."
    from transformers import BertConfig
    from medsae.config import EncoderTrainingConfig
    from medsae.encoder_training import sampling_weights, train_medclip
    words = ["effusion", "edema", "normal"]
    tok, nv = tiny_tokenizer(words)
    n = 96
    labels = torch.zeros(n, 3); labels[:80, 2] = 1; labels[80:94, 1] = 1; labels[94:, 0] = 1    # 80 / 14 / 2 images
    tokens = tok([words[int(i)] for i in labels.argmax(1)], padding=True, return_tensors="pt")
    cfg = EncoderTrainingConfig(epochs=3, batch_size=16, lr=1e-3)
    def drawn(weights):
        torch.manual_seed(0)
        model = MedCLIPModel(MedCLIPVisionResNet("small", widths=(4, 8, 8, 8)),
                             MedCLIPTextBert(BertConfig(vocab_size=nv, hidden_size=16, num_hidden_layers=2,
                                                        num_attention_heads=2, intermediate_size=16)))
        seen = []
        def text_input(idx):
            seen.append(idx.clone()); return tokens["input_ids"][idx], tokens["attention_mask"][idx]
        train_medclip(model, torch.randn(n, 1, 32, 32), labels, text_input, cfg, progress=False, weights=weights)
        return torch.cat(seen)
    plain = drawn(None)
    assert len(plain) == 3 * n and all(torch.equal(plain[e * n:(e + 1) * n].sort().values, torch.arange(n)) for e in range(3))
    w = sampling_weights(labels.numpy(), 1.0)
    w[:40] = 0; w /= w.sum()                                     # half of the common label's images can never be drawn
    lifted = drawn(w)
    assert len(lifted) == 3 * n and (lifted >= 40).all()
    rare = (lifted >= 94).float().mean()                         # 2 of 96 images; about a third of the draws here
    assert rare > 0.2 and torch.equal(lifted, drawn(w))         # seeded: the same draws again


def test_hub_tokenizer_from_the_local_cache_when_offline(tmp_path):
    "Offline, a hub id that is in the Hugging Face cache loads from it (configs/paper.yaml names one); else one line."
    import subprocess
    import sys
    tok, _ = tiny_tokenizer(["no", "pleural", "effusion"])
    snap = tmp_path / "hub" / "models--emilyalsentzer--Bio_ClinicalBERT"
    tok.save_pretrained(snap / "snapshots" / "abc123")                 # laid out as the hub cache holds a repo
    __import__("transformers").BertConfig(vocab_size=7).save_pretrained(snap / "snapshots" / "abc123")
    (snap / "refs").mkdir(); (snap / "refs" / "main").write_text("abc123")
    code = ("from medsae.encoders import build_medclip\n"
            "e = build_medclip('resnet50', tokenizer='emilyalsentzer/Bio_ClinicalBERT', text=False)\n"
            "print(e.tokenizer('pleural effusion')['input_ids'])")
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[2, 5, 6, 3]", r.stderr[-1500:]
    env["HF_HUB_CACHE"] = str(tmp_path / "empty")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "neither a local folder nor in the local Hugging Face cache" in r.stderr
