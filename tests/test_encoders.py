"Encoders: official MedCLIP checkpoints at full size, safe loading, clear errors, the Encoder interface."
import io
import pickle
import zipfile

import numpy as np
import pytest
import torch

from medsae.encoders import (EncoderError, MedCLIPEncoder, MedCLIPModel, MedCLIPTextBert, MedCLIPVisionResNet,
                             MedCLIPVisionSwin, build_encoder, build_medclip, load_official_weights, read_checkpoint,
                             save_official_zip)


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
    with pytest.raises(pickle.UnpicklingError): read_checkpoint(tmp_path / "evil.zip")


def test_unknown_encoder_lists_the_valid_ones():
    with pytest.raises(EncoderError, match="medclip-resnet50.*openclip"): build_encoder("medclip-r50")


def test_medclip_text_with_a_local_tokenizer(tmp_path):
    from transformers import BertConfig, BertTokenizerFast
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "pleural", "effusion", "edema", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=True)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    enc = MedCLIPEncoder(MedCLIPModel(MedCLIPVisionResNet("small", widths=(8, 16, 32, 64)), MedCLIPTextBert(cfg)), "t", tok,
                         image_size=64)
    t = enc.encode_texts(["pleural effusion", "no pleural effusion ."])
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
