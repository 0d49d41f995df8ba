"""The ablation table on a tiny default run: `medsae evaluate` writes it next to the evaluation (and publishes it), its
baseline row is the evaluation's headline, its held-out row the evaluation's held-out numbers, and `ablation_run`
called directly on the same run reproduces it."""
import json

import numpy as np
import pandas as pd

from medsae.ablation import ablation_run
from medsae.config import LABEL_SETS


def test_ablation_table_of_a_tiny_run(tiny_pipeline, tmp_path):
    "The ablation table of the suite's tiny run (conftest.SHARED: five labels that vary on its valid split)."
    run, figures, cfg = tiny_pipeline.run, tiny_pipeline.figures.path, tiny_pipeline.cfg
    t = pd.read_csv(run.evaluate.ablation, keep_default_na=False).set_index("choice")
    assert list(t.index) == ["baseline", "-1 coding", "8 labels", "best unit chosen in-sample vs held-out",
                             "SAE as published", "same-split naming"]
    assert (figures / "evaluate_ablation.md").exists()
    summ = json.loads(run.evaluate.summary.read_text())
    c = summ["comparison"]
    num = lambda row, col: float(t.loc[row, col])
    # the baseline is the evaluation's headline (the run's 50 resamples are under the cap of 200: same interval)
    assert np.isclose(num("baseline", "entropy raw"), c["raw"]["mean_best_entropy"], atol=5e-4)
    assert np.isclose(num("baseline", "entropy SAE"), c["sae"]["mean_best_entropy"], atol=5e-4)
    for mine, theirs in (("diff", "mean_best_entropy"), ("lo", "mean_best_entropy_lo"), ("hi", "mean_best_entropy_hi")):
        assert np.isclose(num("baseline", mine), c["sae - raw"][theirs]), mine
    assert int(t.loc["baseline", "labels used"]) == len(summ["labels"])
    assert num("baseline", "change") == 0
    # held out: the evaluation's point estimates
    ho = "best unit chosen in-sample vs held-out"
    assert np.isclose(num(ho, "entropy raw"), c["raw"]["heldout_mean_best_entropy"], atol=5e-4)
    assert np.isclose(num(ho, "entropy SAE"), c["sae"]["heldout_mean_best_entropy"], atol=5e-4)
    assert np.isclose(num(ho, "diff"), c["sae - raw"]["heldout_mean_best_entropy"])
    for row in ("-1 coding", "8 labels", ho, "SAE as published"):
        # a basic bootstrap interval (2 x estimate - the resampled quantiles) holds the estimate only when the
        # resampled statistic is not biased; a best-of-units statistic is (the tiny run's "SAE as published" row:
        # -0.220 outside [-0.507, -0.234]), so only the order of the bounds is a law here
        assert num(row, "lo") <= num(row, "hi") + 1e-12 or not np.isfinite(num(row, "lo")), row
        assert np.isclose(num(row, "change"), num(row, "diff") - num("baseline", "diff")), row
    assert int(t.loc["8 labels", "labels used"]) <= len(LABEL_SETS["paper8"])
    assert "3e-05 on raw inputs" in t.loc["SAE as published", "setting"]
    assert t.loc["same-split naming", "SAE - raw [lo, hi]"] == "n/a"
    # called directly on the same run, with the same config: the same table
    again = ablation_run(run.activations, run.extract.store, tmp_path / "again", cfg, cfg.run.seed)
    pd.testing.assert_frame_equal(again.set_index("choice")[["diff", "lo", "hi"]], t[["diff", "lo", "hi"]].apply(pd.to_numeric),
                                  check_dtype=False, atol=1e-9)
