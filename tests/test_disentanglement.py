"""The five disentanglement metrics against oracles whose answers are known.

A toy ground truth whose observations are the factors themselves, and encoders that are the truth
(one dimension per factor), noise, a 45-degree rotation of two factors, or the truth with one factor
copied into two dimensions. Three factors of 2, 3 and 3 values: few enough that a one-dimensional
linear classifier separates every factor (SAP's classifier) and that MIG's 20 bins separate every
value, so the truth can score its maximum on each metric.
"""

import json
import math

import numpy as np
import pytest
import sklearn.metrics

from jaxvae import disentanglement as dis
from jaxvae.config import ConfigError
from jaxvae.data.factors import FactorData, FactorTable

SIZES = (2, 3, 3)
N_TRAIN, N_TEST = 1000, 500  # MIG / SAP / DCI samples
POINTS = dict(num_train=300, num_eval=600, batch_size=16)  # beta-VAE / FactorVAE
CHANCE = 1 / len(SIZES)


class Toy(FactorData):
    factor_names = ("a", "b", "c")
    factor_sizes = SIZES

    def observations(self, factors, rng):
        return np.asarray(factors, np.float64)  # (n, F): the observation is its factors


def standardised(f):
    k = np.asarray(SIZES, np.float64)
    return (f - (k - 1) / 2) / np.sqrt((k * k - 1) / 12)  # uniform on 0..K-1: mean (K-1)/2, var (K^2-1)/12


def truth(x):
    return np.asarray(x, np.float64)


def rotated(x):  # factors a and b mixed 45 degrees into dimensions 0 and 1; c alone in 2
    s = standardised(np.asarray(x, np.float64))
    r = np.array([[1.0, 1.0], [-1.0, 1.0]]) / math.sqrt(2)
    return np.concatenate([s[:, :2] @ r, s[:, 2:]], axis=1)


def copied(x):  # factor a in dimensions 0 and 1
    x = np.asarray(x, np.float64)
    return np.concatenate([x[:, :1], x], axis=1)


def noise(seed=7):
    rng = np.random.default_rng(seed)
    return lambda x: rng.normal(size=(len(x), len(SIZES)))  # independent of the factors


def binomial_tolerance(p, n):
    return 3 * math.sqrt(p * (1 - p) / n)  # 3 sigma of an accuracy measured on n independent points


@pytest.fixture(scope="module")
def samples():
    """Train and test factors drawn from the toy, once."""
    rng = np.random.default_rng(0)
    toy = Toy()
    return toy.sample_factors(N_TRAIN, rng), toy.sample_factors(N_TEST, rng)


def code_scores(encoder, samples, **dci_kw):
    train, test = samples
    c, ct = encoder(train), encoder(test)
    d = dis.dci(c, train, ct, test, **dci_kw)
    return {"mig": dis.mig(c, train), "sap": dis.sap(c, train, ct, test),
            "sap_continuous": dis.sap(c, train, ct, test, continuous_factors=True),
            "dci_d": d["disentanglement"], "dci_c": d["completeness"], "dci_i": d["informativeness"]}


def sampled_scores(encoder):
    return {"betavae": dis.betavae_score(encoder, Toy(), seed=1, **POINTS),
            "factorvae": dis.factorvae_score(encoder, Toy(), seed=1, num_variance_estimate=1000, **POINTS)}


@pytest.fixture(scope="module")
def scores(samples):
    encoders = {"truth": truth, "noise": noise(), "rotated": rotated, "copied": copied}
    out = {}
    for name, encoder in encoders.items():
        out[name] = code_scores(encoder, samples, trees=30)
        out[name].update(sampled_scores(noise() if name == "noise" else encoder))
    return out


def test_the_truth_scores_at_least_0_9_everywhere(scores):
    s = scores["truth"]
    for key in ("mig", "sap_continuous", "dci_d", "dci_c", "dci_i", "betavae", "factorvae"):
        assert s[key] >= 0.9, (key, s[key])
    # SAP's default (discrete) form cannot reach 0.9: the runner-up dimension predicts a K-class factor
    # at chance, 1/K, so a perfect code scores mean_j (1 - 1/K_j) = (1/2 + 2/3 + 2/3) / 3 = 0.611.
    ceiling = np.mean([1 - 1 / k for k in SIZES])
    assert s["sap"] == pytest.approx(ceiling, abs=0.05)


def test_noise_scores_at_most_0_1_and_chance_where_an_accuracy(scores):
    s = scores["noise"]
    for key in ("mig", "sap", "sap_continuous", "dci_d", "dci_c"):
        assert 0 <= s[key] <= 0.1, (key, s[key])
    # Accuracies of labels independent of the codes: any classifier is right 1/K of the time in expectation.
    for key in ("betavae", "factorvae"):
        assert abs(s[key] - CHANCE) <= binomial_tolerance(CHANCE, POINTS["num_eval"]), (key, s[key])
    chance_i = np.mean([1 / k for k in SIZES])
    assert abs(s["dci_i"] - chance_i) <= 3 * math.sqrt(chance_i / N_TEST / len(SIZES)), s["dci_i"]


def test_a_rotation_of_two_factors_scores_strictly_between(scores):
    t, r, n = scores["truth"], scores["rotated"], scores["noise"]
    for key in ("mig", "sap", "sap_continuous", "dci_d", "dci_c", "betavae", "factorvae"):
        assert n[key] + 0.05 < r[key] < t[key] - 0.05, (key, n[key], r[key], t[key])
    # MIG: factors a and b each spread equally over two dimensions: a gap of 0 for both, 1 for c.
    assert r["mig"] == pytest.approx(1 / 3, abs=0.1)


def test_a_copied_factor_lowers_mig_and_completeness_but_not_disentanglement(scores):
    t, c = scores["truth"], scores["copied"]
    assert c["mig"] < t["mig"] - 0.2  # factor a's gap is 0: MIG loses a third
    assert c["mig"] == pytest.approx(2 / 3, abs=0.05)
    assert c["dci_c"] < t["dci_c"] - 0.02
    assert c["dci_d"] >= 0.9  # every dimension still speaks of one factor


def test_scores_are_deterministic_under_a_seed(samples):
    train, test = samples
    c, ct = rotated(train), rotated(test)
    assert dis.dci(c, train, ct, test, seed=3, trees=10) == dis.dci(c, train, ct, test, seed=3, trees=10)
    assert dis.sap(c, train, seed=3) == dis.sap(c, train, seed=3)
    small = dict(num_train=60, num_eval=60, batch_size=8)
    for metric in (dis.betavae_score, dis.factorvae_score):
        a = metric(noise(1), Toy(), seed=5, **small)
        assert a == metric(noise(1), Toy(), seed=5, **small)
    assert dis.factorvae_score(rotated, Toy(), seed=5, **small) == dis.factorvae_score(rotated, Toy(), seed=5, **small)


def test_mutual_information_is_sklearns_plug_in_estimate():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, (400, 2))
    b = np.stack([a[:, 0] // 2 + rng.integers(0, 2, 400), rng.integers(-3, 4, 400)], axis=-1)
    m = dis.mutual_information(a, b)
    for i in range(2):
        for j in range(2):
            assert m[i, j] == pytest.approx(sklearn.metrics.mutual_info_score(a[:, i], b[:, j]), abs=1e-12)
    h = dis.entropy(b)
    assert h[1] == pytest.approx(sklearn.metrics.mutual_info_score(b[:, 1], b[:, 1]), abs=1e-12)


def test_discretize_is_disentanglement_libs_histogram():
    x = np.array([[0.0], [0.5], [1.0], [2.0]])
    # 20 bins over [0, 2]: edges 0, 0.1, ..., 2; np.digitize on all but the last edge -> 1..20
    assert dis.discretize(x).ravel().tolist() == [1, 6, 11, 20]


def test_dci_from_importance_closed_forms():
    assert dis.dci_from_importance(np.eye(3)) == pytest.approx((1.0, 1.0))
    # every code equally important for every factor: entropies at their maximum
    assert dis.dci_from_importance(np.ones((4, 2))) == pytest.approx((0.0, 0.0), abs=1e-9)
    # one factor carried by two codes: each code is pure (D = 1); that factor's completeness is
    # 1 - H_3(1/2, 1/2, 0) = 1 - log 2 / log 3, weighted 2/3 by importance; the other factor's is 1
    d, c = dis.dci_from_importance(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    assert d == pytest.approx(1.0)
    assert c == pytest.approx(2 / 3 * (1 - math.log(2) / math.log(3)) + 1 / 3, abs=1e-6)


def test_bad_input_is_one_clear_error():
    factors = np.stack([np.arange(12) % 3, np.arange(12) // 3 % 2], axis=-1)  # independent, both varied
    codes = np.zeros((12, 3))
    with pytest.raises(ConfigError, match="factors have 9 rows but codes have 12"):
        dis.mig(codes, factors[:9])
    with pytest.raises(ConfigError, match="non-integer values: the metrics need discrete factors"):
        dis.sap(codes, factors + 0.5)
    with pytest.raises(ConfigError, match="codes have 0 dimensions"):
        dis.dci(np.zeros((12, 0)), factors)
    with pytest.raises(ConfigError, match="factor 0 takes a single value"):
        dis.mig(codes, np.zeros((12, 1), int))
    with pytest.raises(ConfigError, match="NaN or infinite"):
        dis.mig(np.full((12, 3), np.nan), factors)
    with pytest.raises(ConfigError, match="codes have 0 dimensions"):
        dis.betavae_score(lambda x: np.zeros((len(x), 0)), Toy(), num_train=4, num_eval=4, batch_size=2)
    # integer-valued floats are whole numbers: accepted as they are
    assert dis.mig(np.asarray(factors, float), factors.astype(float)) == pytest.approx(1.0, abs=0.05)


def test_a_factor_table_draws_observations_with_the_factors_asked_for():
    rng = np.random.default_rng(0)
    factors = np.stack([rng.choice([10, 20], 300), rng.choice([-1, 5, 7], 300)], axis=-1)
    images = np.arange(300)[:, None] * np.ones((1, 4))  # observation i is row i
    table = FactorTable(images, factors)
    assert table.factor_sizes == (2, 3)
    f = table.sample_with_fixed(1, np.array([0, 1, 2, 2]), rng)
    assert f[:, 1].tolist() == [0, 1, 2, 2]
    rows = table.observations(f, rng)[:, 0].astype(int)
    assert np.array_equal(table.codes[rows], f)  # each observation has exactly the factors asked for
    with pytest.raises(ConfigError, match="the factors have 299 rows but there are 300 images"):
        FactorTable(images, factors[:299])
    # the truth scores on a table as on a generator
    score = dis.factorvae_score(lambda x: table.codes[x[:, 0].astype(int)].astype(float), table,
                                num_train=50, num_eval=50, batch_size=8, num_variance_estimate=200)
    assert score == 1.0


# --- `jaxvae evaluate --disentanglement` and the report ----------------------------------------------

SMALL = ["--disentanglement-train", "60", "--disentanglement-test", "30", "--disentanglement-batch", "4"]


@pytest.mark.slow
def test_a_dsprites_run_gets_every_score_in_the_table_the_json_and_the_report(tmp_path, capsys, monkeypatch):
    from jaxvae import cli, report
    from jaxvae.data import dsprites

    monkeypatch.setattr(dis, "DCI_TREES", 5)  # 113 classes x 100 trees would dominate the test
    run = tmp_path / "run"
    # An MLP: the transformer's compiles would triple the test's CPU time, and the arch is not what is tested.
    assert cli.main(["train", "--data", "dsprites", "--channels", "1", "--image-size", "64", "--arch", "mlp",
                     "--hidden", "32", "--depth", "1", "--z-dim", "4", "--likelihood", "bernoulli", "--beta", "4",
                     "--steps", "4", "--batch-size", "8", "--log-every", "2", "--eval-every", "4", "--ckpt-every", "4",
                     "--out", str(run), "--quiet"]) == 0
    out = run / "evaluation.json"
    assert cli.main(["evaluate", str(run), "--limit", "8", "--iw-samples", "2", "--disentanglement", *SMALL,
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "disentanglement of shape, scale, orientation, pos_x, pos_y (60 + 30 samples" in printed
    assert "beta-VAE score (chance 0.20)" in printed and "DCI informativeness" in printed
    r = json.loads(out.read_text())
    for key in dis.KEYS:
        assert 0.0 <= r[key] <= 1.0, (key, r[key])
    d = r["disentanglement"]
    assert d["factor_names"] == list(dsprites.FACTOR_NAMES) and d["factor_sizes"] == [3, 6, 40, 32, 32]
    assert np.shape(d["mutual_information"]) == (4, 5) and np.shape(d["dci_importance"]) == (4, 5)
    assert d["settings"]["num_train"] == 60 and d["settings"]["representation"] == "posterior mean"
    page = report.Page()
    report._evaluation(page, run)  # the report's evaluation sections (the whole page is tested in test_report)
    html = "\n".join(page.sections)
    assert "<h2>Disentanglement</h2>" in html and 'alt="mutual information between latent dimensions' in html


@pytest.mark.slow
def test_a_shapes_run_is_scored(tmp_path, monkeypatch):
    from conftest import micro_config, untrained_run

    from jaxvae import cli

    monkeypatch.setattr(dis, "DCI_TREES", 5)
    run = untrained_run(tmp_path / "shapes", micro_config())  # shapes, 16 px
    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", str(run), "--limit", "4", "--iw-samples", "1", "--disentanglement", *SMALL,
                     "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert all(0.0 <= r[k] <= 1.0 for k in dis.KEYS)
    assert r["disentanglement"]["factor_names"] == ["shape", "scale", "angle", "x", "y"]


def test_data_without_factors_is_refused_before_any_work(tmp_path, capsys):
    from conftest import micro_config

    from jaxvae import cli
    from jaxvae import run as run_lib

    np.save(tmp_path / "plain.npy", np.zeros((20, 16, 16, 3), np.uint8))
    plain = run_lib.create(tmp_path / "plain", micro_config(data=str(tmp_path / "plain.npy")))  # no checkpoint
    assert cli.main(["evaluate", str(plain), "--disentanglement"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxvae: error: --disentanglement needs data with known factors") and "\n" not in err
    assert "plain.npy has none" in err
    assert cli.main(["evaluate", str(plain), "--disentanglement", "--disentanglement-batch", "0"]) == 2
    assert "--disentanglement-batch must be >= 1, got 0" in capsys.readouterr().err


def test_the_report_section_shows_the_scores_and_the_heatmap(tmp_path):
    from jaxvae import report

    scores = dict(zip(dis.KEYS, (0.81, 0.72, 0.31, 0.05, 0.41, 0.38, 0.9), strict=True))
    detail = {"factor_names": ["shape", "scale"], "factor_sizes": [3, 6],
              "mutual_information": [[0.9, 0.0], [0.1, 1.2]], "factor_entropy": [1.0986, 1.79],
              "settings": {"num_train": 100, "num_test": 50, "batch_size": 8}}
    (tmp_path / "evaluation_dis.json").write_text(json.dumps({**scores, "disentanglement": detail}))
    page = report.Page()
    report._evaluation(page, tmp_path)
    html = "\n".join(page.sections)
    assert "<h2>Disentanglement</h2>" in html and "MIG (Chen et al. 2018)" in html and "0.31" in html
    assert html.count("data:image/png;base64,") == 1  # the heatmap
    page = report.Page()
    (tmp_path / "evaluation_dis.json").write_text(json.dumps({**scores, "disentanglement": {"settings": {}}}))
    report._evaluation(page, tmp_path)  # damaged: said, not fatal
    assert "Disentanglement" not in "\n".join(page.sections) and "could not be read" in page.missing[0]
