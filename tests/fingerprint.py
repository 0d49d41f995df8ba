"""Print the sha256 (16 hex digits) of each part of a tiny end-to-end computation, on this process's numeric paths
(nbs/04_numerics): a few training steps of the default encoder, its embeddings, MiniLM's embeddings of sentences of
tied lengths in several batches, an SAE trained with the project's trainer, a linear probe, numpy's product, SVD,
exp, log and power. Run by tests/test_numerics.py natively and under qemu."""
import hashlib
import json

import medsae  # noqa: F401  first: pins the numeric paths unless MEDSAE_PIN_CPU=0
import numpy as np
import pandas as pd
import torch
from medsae.config import EncoderTrainingConfig, SAEConfig
from medsae.encoder_training import normalise_uint8, probe_auroc, train_medclip
from medsae.encoders import build_phantom_model
from medsae.numerics import numerics_state
from medsae.sae_training import train_sae


def h(*arrays) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(a.detach().cpu().numpy() if torch.is_tensor(a) else a).tobytes()
                                   for a in arrays)).hexdigest()[:16]


def fingerprint(threads: int = 2) -> dict[str, str]:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (32, 1, 32, 32), generator=g, dtype=torch.uint8)
    labels = (torch.rand(32, 14, generator=g) > 0.7).float()
    text = torch.randn(32, 384, generator=g)                   # MiniLM sentence embeddings
    cfg = EncoderTrainingConfig(image_size=32, widths=[8, 8, 16, 16], batch_size=8, epochs=1, threads=threads)
    torch.manual_seed(0)
    model = build_phantom_model(cfg)
    train_medclip(model, imgs, labels, lambda idx: (text[idx],), cfg, 0, normalise_uint8, progress=False)
    out = dict(encoder=h(*[p for p in model.state_dict().values() if p.is_floating_point()]))
    with torch.no_grad(): out["embeddings"] = h(model.encode_image(normalise_uint8(imgs)))
    words = "the left right small pleural effusion heart is normal in size lungs are clear".split()
    n = torch.randint(2, 7, (16,), generator=g).tolist()     # many equal lengths: their order decides the batches
    sentences = [" ".join(words[j % len(words)] for j in range(i, i + k)) + "." for i, k in enumerate(n)]
    out["text"] = h(model.text_model.embed_sentences(sentences, batch_size=4))
    x = torch.randn(512, 64, generator=g)
    sae, _ = train_sae(x, SAEConfig(expansion=4, epochs=2, batch_size=64, threads=threads, sweep=False), seed=0,
                       progress=False)
    out["sae"] = h(*sae.state_dict().values())
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 16)).astype(np.float32)
    truth = pd.DataFrame({"a": rng.random(200) > 0.5, "b": rng.random(200) > 0.5})
    out["probe"] = h(probe_auroc(emb[:100], truth[:100], emb[100:], truth[100:].reset_index(drop=True)).to_numpy())
    a, b = rng.normal(size=(300, 200)), rng.normal(size=(200, 300))
    out["numpy"] = h(a @ b, np.linalg.svd(a, compute_uv=False), np.exp(a), np.log(np.abs(a)), np.abs(a) ** 1.7)
    return out


if __name__ == "__main__":
    s = numerics_state()
    print(json.dumps(dict(fingerprint(), pinned=s["pinned"], aten=s.get("aten"))))
