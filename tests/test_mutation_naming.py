"""Which images a namer is shown and how a judge's answers are scored, by hand on small activation vectors (the
mutation tests of medsae.naming's example selection and medsae.naming_eval's detection scoring: `make mutate`)."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import medsae.data  # noqa: F401  (torch, which naming_items and score_names import: once, not in every mutant's run)

from medsae.naming import (NameCache, _column, active_counts, eligible_latents, naming_items, paper_examples,
                           published_examples, quantile_examples)
from medsae.naming_eval import (derangement, detection_scores, eval_set, published_positives, score_names,
                                summarise_scores)


# ---------------------------------------------------------------------------------------------------------------
# active latents
# ---------------------------------------------------------------------------------------------------------------

def test_active_counts_and_eligibility_count_values_above_1e_7():
    c = np.array([[1.0, 0.0, 5e-8, 2.0], [0.5, 0.0, 0.0, -1.0], [2e-7, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 4.0]])
    for codes in (c, sp.csr_matrix(c), sp.csc_matrix(c)):
        assert active_counts(codes).tolist() == [3, 0, 1, 2]          # 5e-8 and -1 are not active; 2e-7 is
    pos = np.where(np.abs(c) > 1e-7, np.abs(c), 0)                      # every stored value active: the fast path
    assert active_counts(sp.csr_matrix(pos)).tolist() == [3, 0, 1, 3]
    assert eligible_latents(sp.csr_matrix(c), min_active=1).tolist() == [0, 3]     # more than min_active
    assert eligible_latents(c, min_active=2).tolist() == [0] and eligible_latents(c, 0).tolist() == [0, 2, 3]
    sixty = np.zeros((61, 2)); sixty[:, 0] = 1; sixty[:60, 1] = 1
    assert eligible_latents(sp.csr_matrix(sixty)).tolist() == [0]        # the paper's rule: more than 60
    edge = np.array([[1e-7, 2.0], [0.5, 1e-7], [0.0, 3.0]])              # exactly 1e-7 is not active
    assert active_counts(sp.csr_matrix(edge)).tolist() == [1, 2] and active_counts(edge).tolist() == [1, 2]
    assert active_counts(sp.csr_matrix(edge[:, 1:] * [[1], [2], [1]])).tolist() == [3]   # all stored active
    col = _column(sp.csr_matrix(c), 2)
    assert col.dtype == np.float64 and col.tolist() == [5e-8, 0.0, 3.0, 0.0]
    assert _column(c.astype(np.float32), 3).tolist() == [2.0, -1.0, 0.0, 4.0] and _column(c, 3).dtype == np.float64


# ---------------------------------------------------------------------------------------------------------------
# example selection
# ---------------------------------------------------------------------------------------------------------------

def ranked(v):
    "Indices of the activating images, strongest first, ties by index."
    act = [i for i in range(len(v)) if v[i] > 1e-7]
    return sorted(act, key=lambda i: (-v[i], i))


def test_paper_examples_top_two_thirds_first_and_last_halves_by_hand():
    v = np.zeros(40)
    v[1:37] = np.arange(36, 0, -1)                                     # 36 activating, image 1 strongest
    v[37] = 1e-8                                                       # not activating
    got = paper_examples(v, n=10, seed=3)
    r = ranked(v)                                                      # ranks 0..35 -> images 1..36
    kept = r[:24]                                                      # ceil(36 * 2 / 3) = 24
    assert sorted(got.tolist()) == sorted(kept[:5] + kept[-5:])
    assert got.tolist() == np.random.default_rng(3).permutation(kept[:5] + kept[-5:]).tolist()
    odd = paper_examples(v, n=9, seed=0)                               # n // 2 first, the rest last
    assert sorted(odd.tolist()) == sorted(kept[:4] + kept[-5:])
    few = paper_examples(v[:8], n=10, seed=1)                          # 7 activating: ceil(14 / 3) = 5 kept, all shown
    assert sorted(few.tolist()) == [1, 2, 3, 4, 5]
    capped = paper_examples(v, n=10, seed=0, cap=12)                   # at most the top 12 before halving
    assert sorted(capped.tolist()) == sorted(r[:5] + r[7:12])
    exact = paper_examples(v, n=24, seed=0)                            # exactly n kept: all of them
    assert sorted(exact.tolist()) == sorted(kept)


def test_paper_examples_ties_are_broken_by_index():
    v = np.array([0.0, 2.0, 1.0, 2.0, 1.0, 1.0, 2.0, 0.5, 0.0])      # 7 activating: 5 kept
    assert sorted(paper_examples(v, n=30).tolist()) == [1, 2, 3, 4, 6]   # 2.0 x 3, then the first two 1.0s
    many = np.random.default_rng(0).integers(1, 4, 90).astype(float)   # 90 images, three values: ties everywhere
    r = ranked(many)
    assert sorted(paper_examples(many, n=20).tolist()) == sorted(r[:10] + r[50:60])
    assert sorted(published_examples(many, n=20).tolist()) == sorted(r[:10] + r[50:60])


def test_example_selection_defaults_are_the_papers():
    "30 images, seed 0, the paper's selection: what the defaults must mean."
    v = np.zeros(120); v[:90] = np.linspace(90, 1, 90); v[100] = 1e-7    # 90 activating (1e-7 is not)
    r = ranked(v)
    assert r == list(range(90))
    assert paper_examples(v).tolist() == paper_examples(v, 30, 0).tolist()
    assert sorted(paper_examples(v).tolist()) == r[:15] + r[45:60]       # 60 kept: first and last 15
    assert published_examples(v).tolist() == paper_examples(v, 30, 0, cap=100).tolist()
    assert quantile_examples(v).tolist() == quantile_examples(v, 30, 5, 0).tolist()
    assert np.bincount(quantile_examples(v) // 18, minlength=5).tolist() == [6] * 5
    index = pd.DataFrame({"Path": [f"i{i}.png" for i in range(120)]})
    it = naming_items(v[:, None], index, "/nowhere", [0])[0]
    assert it.image_ids == [f"i{i}" + ".png" for i in paper_examples(v, 30, 0)] and it.unit_kind == "sae"
    assert it.n_active == 90


def test_published_examples_cap_at_100_and_an_even_count():
    v = np.r_[0.0, np.linspace(300, 1, 300)]                           # 300 activating, image 1 strongest
    got = published_examples(v, n=31, seed=2)                          # 31 -> 30: ranks 0-14 and 85-99
    r = ranked(v)
    assert len(got) == 30 and sorted(got.tolist()) == sorted(r[:15] + r[85:100])
    assert got.tolist() == paper_examples(v, 30, 2, cap=100).tolist()
    small = np.r_[0.0, np.arange(12.0, 0.0, -1)]                        # 12 activating: 8 kept, all shown
    assert sorted(published_examples(small, 30).tolist()) == list(range(1, 9))


def test_quantile_examples_take_evenly_from_activation_bins():
    v = np.zeros(60); v[:50] = np.linspace(50, 1, 50)                  # 50 activating: five bins of ten
    got = quantile_examples(v, n=12, bins=5, seed=4)
    assert len(got) == 12 and len(set(got.tolist())) == 12 and (v[got] > 0).all()
    per_bin = np.bincount(np.asarray(got) // 10, minlength=5)           # bin k: images 10k .. 10k + 9
    assert per_bin.tolist() == np.diff(np.linspace(0, 12, 6).round().astype(int)).tolist() == [2, 3, 2, 3, 2]
    assert got.tolist() == quantile_examples(v, 12, 5, seed=4).tolist()
    assert got.tolist() != quantile_examples(v, 12, 5, seed=5).tolist()
    assert sorted(quantile_examples(v, n=50, seed=1).tolist()) == list(range(50))   # all, shuffled
    assert quantile_examples(v, n=50, seed=1).tolist() != list(range(50))
    halves = quantile_examples(v, n=5, bins=2, seed=0)                 # 2.5 rounds to 2: strong half 2, weak half 3
    assert sorted(np.bincount(np.asarray(halves) // 25, minlength=2).tolist()) == [2, 3]
    assert np.bincount(np.asarray(halves) // 25, minlength=2).tolist() == [2, 3]
    five = np.zeros(10); five[[1, 3, 5, 7, 9]] = [5.0, 4.0, 3.0, 2.0, 1.0]
    assert sorted(quantile_examples(five, n=5, bins=2).tolist()) == [1, 3, 5, 7, 9]   # exactly n: all of them
    ties = np.random.default_rng(1).integers(1, 4, 90).astype(float)
    r = ranked(ties)
    got = quantile_examples(ties, n=10, bins=5, seed=2)
    assert [sum(r.index(i) // 18 == b for i in got) for b in range(5)] == [2] * 5   # bins of the stable ranking
    three = quantile_examples(v, n=6, bins=3, seed=0)
    assert np.bincount(np.asarray(three) // 17, minlength=3).tolist() == [2, 2, 2]  # bins of 17, 17 and 16
    assert len(quantile_examples(np.zeros(5), 10)) == 0


def test_naming_items_show_the_selected_images_of_each_unit(tmp_path):
    (tmp_path / "CheXpert-v1.0-small" / "a").mkdir(parents=True)
    for i in range(6): (tmp_path / "CheXpert-v1.0-small" / "a" / f"i{i}.png").write_bytes(b"x")
    index = pd.DataFrame({"Path": [f"CheXpert-v1.0-small/a/i{i}.png" for i in range(6)]})
    codes = np.array([[0.0, 3.0], [2.0, 0.0], [0.0, 0.0], [5.0, 1.0], [1.0, 2.0], [0.0, 4.0]])
    for c in (codes, sp.csr_matrix(codes)):
        items = naming_items(c, index, tmp_path, [1, 0], n=2, seed=7, selection="paper", unit_kind="raw")
        assert [it.unit for it in items] == [1, 0] and all(it.unit_kind == "raw" for it in items)
        want = {u: paper_examples(codes[:, u], 2, seed=7 + u) for u in (0, 1)}
        for it in items:
            w = want[it.unit]
            assert it.image_ids == [index.Path[i] for i in w] and it.activations == [codes[i, it.unit] for i in w]
            assert it.paths == [str(tmp_path / index.Path[i]) for i in w]
            assert it.n_active == int((codes[:, it.unit] > 0).sum())
    q = naming_items(codes, index, tmp_path, [1], n=2, seed=0, selection="quantile")[0]
    assert q.image_ids == [index.Path[i] for i in quantile_examples(codes[:, 1], 2, seed=1)] and q.unit_kind == "sae"
    p = naming_items(codes, index, tmp_path, [1], n=3, selection="published")[0]
    assert len(p.image_ids) == 2                                      # published: 2 x (3 // 2)


# ---------------------------------------------------------------------------------------------------------------
# the evaluation set and its scores
# ---------------------------------------------------------------------------------------------------------------

def test_eval_set_ours_by_hand():
    v = np.zeros(20); v[[2, 5, 7, 11, 13]] = [3.0, 1.0, 2.0, 1e-8, 1e-7]      # 1e-8 and 1e-7: not activating
    idx, truth = eval_set(v, n_pos=2, n_neg=5, seed=1)
    got = dict(zip(idx.tolist(), truth.tolist()))
    assert {i for i, t in got.items() if t == 1} == {2, 7}             # the two strongest
    neg = [i for i, t in got.items() if t == 0]
    assert len(neg) == 5 and len(set(neg)) == 5 and all(v[i] <= 1e-7 for i in neg)
    assert truth.dtype.kind == "i" and len(idx) == 7
    again = eval_set(v, 2, 5, seed=1)
    assert idx.tolist() == again[0].tolist() and idx.tolist() != eval_set(v, 2, 5, seed=2)[0].tolist()
    rng = np.random.default_rng(1)
    non = np.flatnonzero(v <= 1e-7)
    neg_want = rng.choice(non, size=5, replace=False)
    perm = rng.permutation(7)
    assert idx.tolist() == np.r_[[2, 7], neg_want][perm].tolist()       # seeded: negatives, then the shuffle
    few = eval_set(v, n_pos=10, n_neg=100, seed=0)                      # 3 activating, all 17 others
    assert sorted(few[0][few[1] == 1].tolist()) == [2, 5, 7] and len(few[0]) == 20 and 13 in few[0]
    big = np.zeros(100); big[:50] = np.linspace(50, 1, 50)
    d, t = eval_set(big)                                               # 30 and 30, seed 0, ours by default
    assert d.tolist() == eval_set(big, 30, 30, 0, "sae", False)[0].tolist() and t.sum() == 30 and len(d) == 60
    ties = np.random.default_rng(4).integers(0, 4, 200).astype(float)  # ties among the activating: by index
    top = [i for i in sorted(range(200), key=lambda i: (-ties[i], i)) if ties[i] > 0][:25]
    d2, t2 = eval_set(ties, 25, 10, seed=1)
    assert sorted(d2[t2 == 1].tolist()) == sorted(top)
    assert (few[1] == (v[few[0]] > 1e-7)).all()


def test_eval_set_raw_dimensions_top_against_below_the_median():
    v = np.array([5.0, -1.0, 3.0, 0.0, -2.0, 4.0, 1.0, -3.0])          # median 0.5
    idx, truth = eval_set(v, n_pos=3, n_neg=3, seed=0, unit_kind="raw")
    pos = sorted(idx[truth == 1].tolist()); neg = idx[truth == 0].tolist()
    assert pos == [0, 2, 5] and len(neg) == 3 and all(v[i] < 0.5 for i in neg) and len(set(neg)) == 3
    w = np.array([5.0, -1.0, 3.0, 0.0, -2.0])                           # median 0.0, a value: not below itself
    i5, t5 = eval_set(w, n_pos=1, n_neg=5, seed=0, unit_kind="raw")
    assert sorted(i5[t5 == 0].tolist()) == [1, 4]
    assert eval_set(v, 3, 3, seed=0, unit_kind="raw", published=True)[0].tolist() == idx.tolist()   # sae only


def test_eval_set_published_pads_and_draws_with_replacement_when_short():
    v = np.zeros(8); v[[1, 4]] = [2.0, 1.0]
    assert published_positives(v, 4).tolist() == [1, 4, 0, 2]          # then zeros, by index
    assert published_positives(np.arange(40.0)).tolist() == list(range(39, 9, -1))   # the published 30 by default
    idx, truth = eval_set(v, n_pos=4, n_neg=9, seed=3, published=True)  # 6 non-activating for 9 draws
    assert len(idx) == 13 and truth.sum() == 2 and (truth == (v[idx] >= 1e-7)).all()
    rng = np.random.default_rng(3)
    neg = rng.choice(np.flatnonzero(v <= 1e-7), size=9, replace=True)
    assert sorted(idx.tolist()) == sorted([1, 4, 0, 2] + neg.tolist())
    idx2, _ = eval_set(v, n_pos=2, n_neg=6, seed=3, published=True)    # just enough: without replacement
    assert len(idx2) == 8 and sorted(idx2.tolist()) == list(range(8))
    allpos = np.ones(5)
    i3, t3 = eval_set(allpos, 2, 3, seed=0, published=True)             # no non-activating image at all
    assert len(i3) == 2 and t3.tolist() == [1, 1] and i3.dtype.kind == "i"
    i4, t4 = eval_set(allpos, 2, 3, seed=0)
    assert len(i4) == 2 and t4.tolist() == [1, 1] and i4.dtype.kind == "i"
    edge = np.zeros(6); edge[[0, 1]] = [1e-7, 2.0]                       # published truth: activation >= 1e-7
    ie, te = eval_set(edge, n_pos=2, n_neg=2, seed=0, published=True)
    assert dict(zip(ie.tolist(), te.tolist()))[0] == 1


def test_detection_scores_by_hand():
    s = detection_scores(np.array([1, 1, 0, -1, 1, 0]), np.array([1, 0, 1, 1, 1, 0]))
    # tp 2 (0, 4), fp 1 (1), fn 2 (2, 3: unanswered counts as 0); correct: 0, 4, 5
    assert s == dict(accuracy=0.5, precision=2 / 3, recall=0.5, f1=pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5)),
                     n_images=6, unanswered=1)
    w = detection_scores(np.array([1, 0, 0, 0, 1]), np.array([1, 0, 0, 0, 0]))   # 3 true negatives, 1 false positive
    assert w["precision"] == 0.5 and w["recall"] == 1.0 and w["accuracy"] == 0.8
    z = detection_scores(np.array([0, 0]), np.array([0, 0]))
    assert z == dict(accuracy=1.0, precision=0.0, recall=0.0, f1=0.0, n_images=2, unanswered=0)
    e = detection_scores(np.array([], dtype=int), np.array([], dtype=int))
    assert np.isnan(e["accuracy"]) and e["n_images"] == 0
    assert detection_scores([1, 1], [1, 1])["f1"] == 1.0 and detection_scores([-1, -1], [0, 0])["accuracy"] == 1.0


def test_derangement_has_no_fixed_point():
    for n in range(2, 9):
        for seed in range(4):
            p = derangement(n, seed)
            assert sorted(p.tolist()) == list(range(n)) and (p != np.arange(n)).all()
    assert derangement(1).tolist() == [0] and derangement(0).tolist() == []
    assert derangement(7).tolist() == derangement(7, 0).tolist()        # seed 0 by default
    assert derangement(6, 0).tolist() == derangement(6, 0).tolist() and derangement(6, 0).tolist() != derangement(6, 1).tolist()
    rng = np.random.default_rng(5)                                     # the first derangement of the seeded draws
    while True:
        p = rng.permutation(5)
        if (p != np.arange(5)).all(): break
    assert derangement(5, 5).tolist() == p.tolist()


class Oracle:
    "A judge that answers 1 exactly for the images whose activation is above `cut`, and records its calls."
    name, prompt_hash = "oracle", "o1"
    def __init__(self, v, cut=1e-7): self.v, self.cut, self.calls = v, cut, []
    def judge(self, concept, description, rows, paths, n_pos):
        self.calls.append((concept, description, np.asarray(rows).tolist(), list(paths), n_pos))
        return (self.v[np.asarray(rows)] > self.cut).astype(int)


def test_score_names_judges_named_units_and_the_random_baseline(tmp_path):
    rng = np.random.default_rng(0)
    N = 60
    codes = np.zeros((N, 4))
    for k in range(4): codes[rng.choice(N, 8 + 2 * k, replace=False), k] = rng.uniform(1, 2, 8 + 2 * k)
    raw = rng.normal(size=(N, 3))
    index = pd.DataFrame({"Path": [f"img/i{i}.png" for i in range(N)]})
    names = pd.DataFrame({"unit_kind": ["sae", "sae", "sae", "raw", "sae"], "unit": [0, 2, 3, 1, 1],
                          "namer": ["v", "v", "v", "v", "w"], "concept": ["c0", "c2", "c3", "r1", "x1"],
                          "description": ["d0", "d2", "d3", "dr", "dx"], "ok": [True, True, True, True, False]})
    judge = Oracle(codes[:, 0])
    sc = score_names(names, sp.csr_matrix(codes), raw, index, tmp_path, judge, n_pos=5, n_neg=6, seed=2,
                     progress=False)
    assert sc.unit_kind.tolist() == ["sae", "sae", "sae", "raw", "random", "random", "random"]
    assert sc.unit.tolist() == [0, 2, 3, 1, 0, 2, 3] and set(sc.namer) == {"v"} and set(sc.judge) == {"oracle"}
    p = derangement(3, 2)                                               # latent i judged with latent p[i]'s name
    assert sc.concept.tolist() == ["c0", "c2", "c3", "r1"] + [["c0", "c2", "c3"][p[i]] for i in range(3)]
    assert [c[1] for c in judge.calls][4:] == [["d0", "d2", "d3"][p[i]] for i in range(3)]
    for (concept, desc, rows, paths, n_pos), r in zip(judge.calls, sc.itertuples()):
        v = raw[:, r.unit] if r.unit_kind == "raw" else codes[:, r.unit]
        idx, truth = eval_set(v, 5, 6, 2 + r.unit, "raw" if r.unit_kind == "raw" else "sae")
        assert rows == idx.tolist() and n_pos == 5
        assert paths == [str(tmp_path / index.Path[i]) for i in idx]
        pred = (codes[idx, 0] > 1e-7).astype(int)
        want = detection_scores(pred, truth)
        assert r.n_images == want["n_images"] == 11 and r.positives == int(truth.sum()) == 5
        for k in ("accuracy", "precision", "recall", "f1"): assert np.isclose(getattr(r, k), want[k]), (r.unit, k)
    assert sc.accuracy.iloc[0] == 1.0                                   # latent 0 judged by its own activations
    one = score_names(names[names.unit == 0], sp.csr_matrix(codes), raw, index, tmp_path, Oracle(codes[:, 0]),
                      n_pos=5, n_neg=6, seed=2, progress=False)
    assert one.unit_kind.tolist() == ["sae"]                            # one SAE name: no random baseline


def test_score_names_defaults_and_the_seed_of_the_random_baseline(tmp_path):
    "30 activating and 30 other images, seed 0, ours (heldout); the seed also picks which name each latent borrows."
    rng = np.random.default_rng(3)
    N, K = 200, 6
    codes = np.zeros((N, K))
    for k in range(K): codes[rng.choice(N, 40, replace=False), k] = rng.uniform(1, 2, 40)
    index = pd.DataFrame({"Path": [f"i{i}.png" for i in range(N)]})
    names = pd.DataFrame({"unit_kind": "sae", "unit": range(K), "namer": "v", "concept": [f"c{k}" for k in range(K)],
                          "description": "", "ok": True})
    j = Oracle(codes[:, 0])
    sc = score_names(names, sp.csr_matrix(codes), np.zeros((N, 2)), index, tmp_path, j, progress=False)
    assert (sc.n_images == 60).all() and (sc.positives == 30).all()
    assert j.calls[0][2] == eval_set(codes[:, 0], 30, 30, 0)[0].tolist() and j.calls[0][4] == 30
    p0 = derangement(K, 0)
    assert sc[sc.unit_kind == "random"].concept.tolist() == [f"c{p0[i]}" for i in range(K)]
    s5 = score_names(names, sp.csr_matrix(codes), np.zeros((N, 2)), index, tmp_path, Oracle(codes[:, 0]), seed=5,
                     progress=False)
    p5 = derangement(K, 5)
    assert p5.tolist() != p0.tolist() and s5[s5.unit_kind == "random"].concept.tolist() == [f"c{p5[i]}" for i in range(K)]


def test_score_names_published_protocol_and_the_cache(tmp_path):
    rng = np.random.default_rng(1)
    v = np.zeros(40); v[rng.choice(40, 3, replace=False)] = 1.0
    codes = sp.csr_matrix(np.c_[v, v[::-1]])
    index = pd.DataFrame({"Path": [f"i{i}.png" for i in range(40)]})
    names = pd.DataFrame({"unit_kind": ["sae", "sae"], "unit": [0, 1], "namer": ["v", "v"], "concept": ["a", "b"],
                          "description": ["", ""], "ok": [True, True]})
    cache = NameCache(tmp_path / "j.jsonl")
    j = Oracle(v)
    pub = score_names(names, codes, np.zeros((40, 2)), index, tmp_path, j, n_pos=5, n_neg=5, seed=0, cache=cache,
                      progress=False, protocol="published")
    idx, truth = eval_set(v, 5, 5, 0, "sae", published=True)
    assert j.calls[0][2] == idx.tolist() and pub.n_images.iloc[0] == 10 and pub.positives.iloc[0] == 3
    recs = [r for r in NameCache(tmp_path / "j.jsonl").records.values()]
    assert len(recs) == 4 and {r.unit_kind for r in recs} == {"judge:sae", "judge:random"}
    r0 = [r for r in recs if r.unit_kind == "judge:sae" and r.unit == 0][0]
    assert r0.details["pred"] == (v[idx] > 1e-7).astype(int).tolist() and r0.details["truth"] == truth.tolist()
    assert r0.image_ids == [f"i{i}.png" for i in idx] and r0.namer == "oracle|v" and r0.concept == "a"

    class Refuse:
        name, prompt_hash = "oracle", "o1"
        def judge(self, *a): raise AssertionError("asked again")
    again = score_names(names, codes, np.zeros((40, 2)), index, tmp_path, Refuse(), n_pos=5, n_neg=5, seed=0,
                        cache=NameCache(tmp_path / "j.jsonl"), progress=False, protocol="published")
    pd.testing.assert_frame_equal(pub, again)
    other = Oracle(v); other.prompt_hash = "o2"                          # another prompt: judged afresh
    score_names(names, codes, np.zeros((40, 2)), index, tmp_path, other, n_pos=5, n_neg=5, seed=0,
                cache=NameCache(tmp_path / "j.jsonl"), progress=False, protocol="published")
    assert len(other.calls) == 4
    for field, changed in (("concept", "a2"), ("description", "new")):  # another name of latent 0: judged afresh
        o = Oracle(v)
        score_names(names.assign(**{field: [changed, names[field][1]]}), codes, np.zeros((40, 2)), index, tmp_path, o,
                    n_pos=5, n_neg=5, seed=0, cache=NameCache(tmp_path / "j.jsonl"), progress=False, protocol="published")
        judged = [(c[0] if field == "concept" else c[1], c[2]) for c in o.calls]   # latent 0, and latent 1 borrowing it
        assert judged == [(changed, eval_set(v, 5, 5, 0, "sae", True)[0].tolist()),
                          (changed, eval_set(v[::-1], 5, 5, 1, "sae", True)[0].tolist())]
    o = Oracle(v)                                                       # other images (another seed): afresh
    score_names(names, codes, np.zeros((40, 2)), index, tmp_path, o, n_pos=5, n_neg=5, seed=1,
                cache=NameCache(tmp_path / "j.jsonl"), progress=False, protocol="published")
    assert len(o.calls) == 4


def test_summarise_scores_by_hand():
    sc = pd.DataFrame({"namer": ["v", "v", "v", "v", "w"], "judge": ["j"] * 5,
                       "unit_kind": ["sae", "sae", "random", "random", "sae"],
                       "accuracy": [0.8, 0.6, 0.5, 0.3, 0.9], "precision": [1.0, 0.5, 0.5, 0.0, 1.0],
                       "recall": [0.5, 0.5, 1.0, 0.0, 0.8], "f1": [0.6, 0.4, 0.6, 0.0, 0.9]})
    s = summarise_scores(sc).set_index(["namer", "unit_kind"])
    assert list(s.columns) == ["judge", "accuracy", "precision", "recall", "f1", "accuracy_sd", "units", "best_accuracy"]
    assert s.loc[("v", "sae")].tolist() == ["j", 0.7, 0.75, 0.5, 0.5, round(np.std([0.8, 0.6], ddof=1), 3), 2, 0.8]
    assert s.loc[("v", "random")].tolist() == ["j", 0.4, 0.25, 0.5, 0.3, round(np.std([0.5, 0.3], ddof=1), 3), 2, 0.5]
    assert s.loc[("w", "sae"), "units"] == 1 and np.isnan(s.loc[("w", "sae"), "accuracy_sd"])
    fine = summarise_scores(sc.assign(accuracy=[0.12345] * 5))
    assert fine.accuracy.iloc[0] == 0.123 and fine.best_accuracy.iloc[0] == 0.123


def test_score_names_raw_float32_median_between_adjacent_values(tmp_path):
    """float32 embeddings whose two middle values are adjacent float32 numbers (1 and 1 + 2^-23): the median lies
    strictly between them, so 1 is below it and shown among the negatives (a float32 median rounds onto 1)."""
    b = np.nextafter(np.float32(1), np.float32(2))
    v = np.array([8, -4, 1, 6, -3, b, -2, 7, -1, 5], dtype=np.float32)   # sorted: -4 -3 -2 -1 1 b 5 6 7 8
    raw = np.c_[v, np.zeros(10, np.float32)]
    index = pd.DataFrame({"Path": [f"i{i}.png" for i in range(10)]})
    names = pd.DataFrame({"unit_kind": ["raw"], "unit": [0], "namer": ["v"], "concept": ["c"], "description": ["d"],
                          "ok": [True]})
    j = Oracle(v.astype(np.float64), cut=4.0)
    sc = score_names(names, sp.csr_matrix(np.zeros((10, 1))), raw, index, tmp_path, j, n_pos=2, n_neg=10,
                     progress=False)
    below = {1, 4, 6, 8, 2}                                              # -4, -3, -2, -1 and 1
    assert set(j.calls[0][2]) == {0, 7} | below and sc.n_images.iloc[0] == 7 and sc.positives.iloc[0] == 2

