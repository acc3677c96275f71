"""Disentanglement metrics: does each latent dimension capture one factor of variation?

The five scores of Locatello et al. (2019), "Challenging Common Assumptions in the Unsupervised
Learning of Disentangled Representations", with the protocols and defaults of disentanglement_lib
(its unsupervised_study_v1 metric configs), which that study used:

    betavae_score(encode, data)        Higgins et al. 2017: a linear classifier names the fixed factor
    factorvae_score(encode, data)      Kim & Mnih 2018: a majority vote on the least-varying dimension
    mig(codes, factors)                Chen et al. 2018: the mutual-information gap
    sap(codes, factors, ...)           Kumar et al. 2018: the gap in single-dimension predictability
    dci(codes, factors, ...)           Eastwood & Williams 2018: disentanglement, completeness,
                                       informativeness from gradient-boosted-tree importances

`encode` maps a batch of observations to (n, Z) codes (jaxvae passes the posterior mean, as
disentanglement_lib's "mean" representation does). `data` is a FactorData (data/factors.py): it
samples factors and renders or looks up observations for given factors. `codes` is (N, Z) float and
`factors` (N, F) integer class indices. The classifiers and trees are scikit-learn's, as in
disentanglement_lib; their scores move a little across scikit-learn versions, so pyproject pins its
range. Everything is a function of `seed`: the same seed gives the same numbers.

Where we differ from disentanglement_lib, by choice:
  - mutual information is the plug-in estimate computed here with numpy (what sklearn's
    mutual_info_score computes, checked in the tests), so MIG does not move with sklearn;
  - random draws come from numpy Generators, not a RandomState: the same protocol, other samples;
  - a single code dimension (Z = 1) or factor (F = 1) is allowed: MIG and SAP take the missing
    runner-up as 0, and DCI's entropies over one element as 0;
  - observations are encoded many groups at a time; each group's statistics are its own, as there.
Bad input (factors that are not whole numbers, rows that do not match, no code dimensions, a factor
with one value) raises ConfigError with one line saying what is wrong.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np

from jaxvae.config import ConfigError
from jaxvae.data.factors import FactorData, integer_factors

BINS = 20  # MIG's histogram bins per code dimension (disentanglement_lib's discretizer.num_bins)
PRUNE_THRESHOLD = 0.05  # FactorVAE: dimensions whose std is below this are collapsed (prune_dims.threshold)
GROUP_IMAGES = 1024  # observations rendered and encoded per call in betavae/factorvae
# DCI's trees per factor and class: GradientBoostingClassifier's default n_estimators. A factor with K
# classes grows K trees a stage, so dSprites (3 + 6 + 40 + 32 + 32 classes) grows 11,300; tests lower it.
DCI_TREES = 100

Encoder = Callable[[np.ndarray], np.ndarray]


# --- input checks -------------------------------------------------------------------------------

def _codes(codes, name: str = "codes") -> np.ndarray:
    c = np.asarray(codes, np.float64)
    if c.ndim != 2:
        raise ConfigError(f"{name} must have shape (N, Z), got {c.shape}")
    if c.shape[1] == 0:
        raise ConfigError(f"{name} have 0 dimensions (shape {c.shape}): there is no code to score")
    if not np.all(np.isfinite(c)):
        raise ConfigError(f"{name} hold NaN or infinite values")
    return c


def check_inputs(codes, factors, name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(N, Z) float64 codes and (N, F) int64 factors, or ConfigError naming the problem."""
    c = _codes(codes, f"{name}codes")
    f = integer_factors(factors, f"{name}factors")
    if len(f) != len(c):
        raise ConfigError(f"{name}factors have {len(f)} rows but {name}codes have {len(c)}: "
                          "one row of factors per code is needed")
    if len(c) < 2:
        raise ConfigError(f"{name}codes hold {len(c)} samples: at least 2 are needed")
    for j, column in enumerate(f.T):
        if np.all(column == column[0]):
            raise ConfigError(f"factor {j} takes a single value ({column[0]}) in these {len(f)} samples: "
                              "nothing to score; sample more, or drop it")
    return c, f


def _split(codes, factors, test_codes, test_factors, seed: int):
    """(train codes, train factors, test codes, test factors): the test set given, or the last
    third of a seeded permutation (disentanglement_lib draws 10000 + 5000)."""
    codes, factors = check_inputs(codes, factors)
    if (test_codes is None) != (test_factors is None):
        raise ConfigError("give both test_codes and test_factors, or neither")
    if test_codes is not None:
        test_codes, test_factors = check_inputs(test_codes, test_factors, "test ")
        if test_codes.shape[1] != codes.shape[1] or test_factors.shape[1] != factors.shape[1]:
            raise ConfigError(f"test codes/factors have {test_codes.shape[1]}/{test_factors.shape[1]} columns, "
                              f"the training ones {codes.shape[1]}/{factors.shape[1]}")
        return codes, factors, test_codes, test_factors
    order = np.random.default_rng(seed).permutation(len(codes))
    n_test = max(1, len(codes) // 3)
    train, test = order[n_test:], order[:n_test]
    return codes[train], factors[train], codes[test], factors[test]


# --- mutual information, MIG --------------------------------------------------------------------

def discretize(codes: np.ndarray, bins: int = BINS) -> np.ndarray:
    """(N, Z) -> (N, Z) int: each dimension cut into `bins` equal-width bins over its own range,
    disentanglement_lib's histogram discretizer: np.digitize(x, np.histogram(x, bins)[1][:-1])."""
    c = np.asarray(codes, np.float64)
    return np.stack([np.digitize(x, np.histogram(x, bins)[1][:-1]) for x in c.T], axis=-1)


def _labels(column: np.ndarray) -> tuple[np.ndarray, int]:
    values, inverse = np.unique(column, return_inverse=True)
    return inverse.ravel(), len(values)


def mutual_information(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, A), (N, B) discrete labels -> (A, B) plug-in mutual information in nats.

    I(x; y) = sum_xy p(x, y) log(p(x, y) / (p(x) p(y))) with the empirical frequencies: what
    sklearn.metrics.mutual_info_score computes for one pair.
    """
    a, b = np.asarray(a), np.asarray(b)
    n = len(a)
    la, lb = [_labels(x) for x in a.T], [_labels(y) for y in b.T]
    out = np.zeros((a.shape[1], b.shape[1]))
    for i, (x, kx) in enumerate(la):
        px = np.bincount(x, minlength=kx) / n
        for j, (y, ky) in enumerate(lb):
            joint = np.bincount(x * ky + y, minlength=kx * ky).reshape(kx, ky) / n  # (kx, ky)
            py = joint.sum(0)
            nz = joint > 0
            out[i, j] = np.sum(joint[nz] * np.log(joint[nz] / np.outer(px, py)[nz]))
    return np.maximum(out, 0.0)  # rounding can leave -1e-17 where x and y are independent


def entropy(labels: np.ndarray) -> np.ndarray:
    """(N, F) discrete labels -> (F,) plug-in entropy in nats."""
    out = []
    for column in np.asarray(labels).T:
        p = np.bincount(_labels(column)[0]) / len(column)
        out.append(-np.sum(p * np.log(p)))
    return np.array(out)


def mutual_information_matrix(codes, factors, bins: int = BINS) -> tuple[np.ndarray, np.ndarray]:
    """MIG's ingredients: (Z, F) I(discretised z_i; v_j) in nats, and (F,) H(v_j) in nats."""
    codes, factors = check_inputs(codes, factors)
    return mutual_information(discretize(codes, bins), factors), entropy(factors)


def _top_two_gap(scores: np.ndarray) -> np.ndarray:
    """(Z, F) -> (F,): best minus runner-up over Z (the runner-up is 0 when Z = 1)."""
    s = np.sort(scores, axis=0)[::-1]
    return s[0] - (s[1] if len(s) > 1 else 0.0)


def mig(codes, factors, *, bins: int = BINS) -> float:
    """Mutual Information Gap (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs").

    For each factor v_j: the gap between the two latent dimensions with the most mutual information
    with it, over its entropy; averaged over factors. 1: each factor lives in one dimension alone.

    disentanglement_lib's settings: codes discretised into 20 equal-width bins per dimension
    (histogram discretizer), plug-in mutual information, 10000 samples (the caller's N here).
    The 20 bins cap what a perfect code can score on a factor with more than 20 values: on
    dSprites' 32 positions and 40 orientations, log 20 / log 32 = 0.86 and log 20 / log 40 = 0.81.

    Args:
      codes: (N, Z) float. factors: (N, F) integer class indices.
    """
    m, h = mutual_information_matrix(codes, factors, bins)
    return float(np.mean(_top_two_gap(m) / h))


# --- SAP ----------------------------------------------------------------------------------------

def sap(codes, factors, test_codes=None, test_factors=None, *, continuous_factors: bool = False,
        seed: int = 0) -> float:
    """Separated Attribute Predictability (Kumar et al. 2018, "Variational Inference of Disentangled
    Latent Concepts from Unlabeled Observations", Section 3).

    A score matrix S (Z, F) of how well each single dimension predicts each factor; SAP is the mean
    over factors of the gap between its best and second-best dimension.

    disentanglement_lib's default (continuous_factors=False): S_ij is the test accuracy of
    sklearn's LinearSVC(C=0.01, class_weight="balanced") fitted on dimension i alone to predict factor
    j; 10000 training and 5000 test samples. A one-dimensional linear classifier separates few
    classes, and the runner-up scores chance, so even a perfect code scores well below 1 on factors
    with many values (0.24 on dSprites' grid, measured). continuous_factors=True: S_ij is the squared
    correlation of dimension i and factor j (R^2 of a linear fit), 0 for a constant dimension.

    Args:
      codes, factors: (N, Z) and (N, F), the training samples.
      test_codes, test_factors: held-out samples; when absent, a seeded third of N is held out.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    codes, factors, test_codes, test_factors = _split(codes, factors, test_codes, test_factors, seed)
    z, f = codes.shape[1], factors.shape[1]
    scores = np.zeros((z, f))
    for i in range(z):
        for j in range(f):
            if continuous_factors:
                c = np.cov(codes[:, i], factors[:, j], ddof=1)
                scores[i, j] = c[0, 1] ** 2 / (c[0, 0] * c[1, 1]) if c[0, 0] > 1e-12 else 0.0
                continue
            svm = LinearSVC(C=0.01, class_weight="balanced", random_state=seed)
            with warnings.catch_warnings():  # liblinear's iteration cap, as disentanglement_lib ran it
                warnings.simplefilter("ignore", ConvergenceWarning)
                svm.fit(codes[:, i:i + 1], factors[:, j])
            scores[i, j] = np.mean(svm.predict(test_codes[:, i:i + 1]) == test_factors[:, j])
    return float(np.mean(_top_two_gap(scores)))


# --- DCI ----------------------------------------------------------------------------------------

def _normalised_entropy(p: np.ndarray, axis: int) -> np.ndarray:
    """Entropy of p normalised along `axis`, in base p.shape[axis] (0 when that is 1), as
    scipy.stats.entropy(p + 1e-11, base=K) in disentanglement_lib."""
    k = p.shape[axis]
    q = p + 1e-11
    q = q / q.sum(axis=axis, keepdims=True)
    h = -np.sum(q * np.log(q), axis=axis)
    return h / math.log(k) if k > 1 else np.zeros_like(h)


def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
    """(Z, F) non-negative importances -> (disentanglement, completeness), Eastwood & Williams' eqs.

    disentanglement: per code i, 1 - H_F(P_i.) with P_i. its importances over factors, weighted by
    its share of the total importance. completeness: per factor j, 1 - H_Z(P_.j), weighted likewise.
    """
    m = np.abs(np.asarray(importance, np.float64))
    weights = m if m.sum() > 0 else np.ones_like(m)
    per_code = 1.0 - _normalised_entropy(m, axis=1)  # (Z,)
    per_factor = 1.0 - _normalised_entropy(m, axis=0)  # (F,)
    d = np.sum(per_code * weights.sum(1) / weights.sum())
    c = np.sum(per_factor * weights.sum(0) / weights.sum())
    return float(d), float(c)


def dci(codes, factors, test_codes=None, test_factors=None, *, seed: int = 0, trees: int | None = None) -> dict:
    """Disentanglement, Completeness and Informativeness (Eastwood & Williams 2018, "A Framework for
    the Quantitative Evaluation of Disentangled Representations").

    disentanglement_lib's settings: per factor, sklearn's GradientBoostingClassifier() (100 trees of
    depth 3, learning rate 0.1) on all Z dimensions; the importance matrix R (Z, F) is the trees'
    impurity-based feature_importances_; 10000 training and 5000 test samples. Informativeness is
    the mean test accuracy over factors (disentanglement_lib's informativeness_test): an accuracy,
    so its chance level is that of the factors, not 0.

    Args: as sap(); trees: n_estimators (default DCI_TREES, sklearn's 100).
    Returns: {"disentanglement", "completeness", "informativeness", "informativeness_train",
      "importance": (Z, F) list}.
    """
    from sklearn.ensemble import GradientBoostingClassifier

    codes, factors, test_codes, test_factors = _split(codes, factors, test_codes, test_factors, seed)
    importance = np.zeros((codes.shape[1], factors.shape[1]))
    train_acc, test_acc = [], []
    for j in range(factors.shape[1]):
        model = GradientBoostingClassifier(n_estimators=trees or DCI_TREES, random_state=seed)
        model.fit(codes, factors[:, j])
        importance[:, j] = np.abs(model.feature_importances_)
        train_acc.append(np.mean(model.predict(codes) == factors[:, j]))
        test_acc.append(np.mean(model.predict(test_codes) == test_factors[:, j]))
    d, c = dci_from_importance(importance)
    return {"disentanglement": d, "completeness": c, "informativeness": float(np.mean(test_acc)),
            "informativeness_train": float(np.mean(train_acc)), "importance": importance.tolist()}


# --- the two that draw their own samples --------------------------------------------------------

def _encode(encode: Encoder, x: np.ndarray, expect: int) -> np.ndarray:
    codes = np.asarray(encode(x))
    if codes.ndim != 2 or len(codes) != expect:
        raise ConfigError(f"the encoder returned shape {codes.shape} for {expect} observations: expected (n, Z)")
    return _codes(codes, "the encoder's codes")


def sample_codes(encode: Encoder, data: FactorData, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n draws from the data: (n, Z) codes and their (n, F) factors (disentanglement_lib's
    generate_batch_factor_code), encoded GROUP_IMAGES at a time."""
    codes, factors = [], []
    for lo in range(0, n, GROUP_IMAGES):
        f = data.sample_factors(min(GROUP_IMAGES, n - lo), rng)
        codes.append(_encode(encode, data.observations(f, rng), len(f)))
        factors.append(f)
    return np.concatenate(codes), np.concatenate(factors)


def _grouped(encode: Encoder, data: FactorData, draw, points: int, batch_size: int) -> np.ndarray:
    """Codes of `points` groups of batch_size observations: (points, batch_size, Z).

    draw(count) -> (count, batch_size, F) factors for the next `count` points; many points are
    rendered and encoded together."""
    per_call = max(1, GROUP_IMAGES // batch_size)
    out = []
    for lo in range(0, points, per_call):
        f = draw(min(per_call, points - lo))  # (g, B, F)
        g = len(f)
        x = data.observations(f.reshape(g * batch_size, -1), draw.rng)
        out.append(_encode(encode, x, g * batch_size).reshape(g, batch_size, -1))
    return np.concatenate(out)


class _Draws:
    """Callables for _grouped that also remember the factor each point holds fixed."""

    def __init__(self, data: FactorData, rng: np.random.Generator, batch_size: int, pairs: bool):
        self.data, self.rng, self.batch_size, self.pairs = data, rng, batch_size, pairs
        self.fixed: list[int] = []

    def __call__(self, count: int) -> np.ndarray:
        groups = []
        for _ in range(count):
            k = int(self.rng.integers(self.data.num_factors))
            self.fixed.append(k)
            if self.pairs:  # beta-VAE: B pairs that share factor k, all else drawn independently
                f1 = self.data.sample_factors(self.batch_size, self.rng)
                groups.append(np.concatenate([f1, self.data.sample_with_fixed(k, f1[:, k], self.rng)]))
            else:  # FactorVAE: B observations with factor k at one value, drawn from its marginal
                value = self.data.sample_factors(1, self.rng)[0, k]
                groups.append(self.data.sample_with_fixed(k, np.full(self.batch_size, value), self.rng))
        return np.stack(groups)


def _check_counts(**counts: int) -> None:
    for name, n in counts.items():
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ConfigError(f"{name} must be a positive integer, got {n!r}")


def betavae_score(encode: Encoder, data: FactorData, *, seed: int = 0, batch_size: int = 64,
                  num_train: int = 10000, num_eval: int = 5000) -> float:
    """The β-VAE metric (Higgins et al. 2017, "β-VAE: Learning Basic Visual Concepts with a Constrained
    Variational Framework"): the eval accuracy of a linear classifier that names which factor a set
    of pairs shares.

    Each point: a factor k uniformly at random; batch_size pairs of observations that share factor k
    and differ in all else; the feature is the mean over pairs of |code(x1) - code(x2)| (Z,), the
    label k. disentanglement_lib's settings: batch_size 64, 10000 training and 5000 evaluation
    points, sklearn's LogisticRegression() with its defaults (L2, C = 1, lbfgs). Chance is about 1/F
    (the classifier's share of the most frequent label).

    Args:
      encode: (n, ...) observations -> (n, Z) codes. data: a FactorData.
    Returns: the evaluation accuracy in [0, 1].
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    _check_counts(batch_size=batch_size, num_train=num_train, num_eval=num_eval)
    rng = np.random.default_rng(seed)

    def features(points: int) -> tuple[np.ndarray, np.ndarray]:
        draws = _Draws(data, rng, batch_size, pairs=True)
        codes = _grouped(encode, data, draws, points, 2 * batch_size)  # (P, 2B, Z)
        diff = np.abs(codes[:, :batch_size] - codes[:, batch_size:])  # (P, B, Z)
        return diff.mean(axis=1), np.array(draws.fixed)

    x_train, y_train = features(num_train)
    if len(np.unique(y_train)) < 2:
        raise ConfigError(f"num_train {num_train} drew a single fixed factor: the classifier needs at least two")
    model = LogisticRegression(random_state=seed)
    with warnings.catch_warnings():  # lbfgs' default 100 iterations, as disentanglement_lib ran it
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    x_eval, y_eval = features(num_eval)
    return float(model.score(x_eval, y_eval))


def factorvae_score(encode: Encoder, data: FactorData, *, seed: int = 0, batch_size: int = 64,
                    num_train: int = 10000, num_eval: int = 5000, num_variance_estimate: int = 10000,
                    prune_threshold: float = PRUNE_THRESHOLD, variance_codes: np.ndarray | None = None) -> float:
    """The FactorVAE metric (Kim & Mnih 2018, "Disentangling by Factorising"): the eval accuracy of a
    majority-vote classifier from the least-varying dimension to the fixed factor.

    Each code dimension is divided by its std over num_variance_estimate random observations;
    dimensions with std < prune_threshold (collapsed to a constant) are left out. Each point: a factor
    k uniformly at random, fixed at one value in batch_size observations, all else random; the vote
    is the dimension with the smallest normalised variance, the label k. The classifier maps each
    dimension to the factor that won most of its training votes. disentanglement_lib's settings:
    batch_size 64, 10000 training and 5000 evaluation points, 10000 for the variances, threshold
    0.05. Chance is about 1/F. A code with no active dimension scores 0.

    Args:
      encode, data: as betavae_score.
      variance_codes: (n, Z) codes of random observations to take the variances from (e.g. those
        the other metrics drew), instead of drawing num_variance_estimate afresh.
    Returns: the evaluation accuracy in [0, 1].
    """
    _check_counts(batch_size=batch_size, num_train=num_train, num_eval=num_eval,
                  num_variance_estimate=num_variance_estimate)
    if batch_size < 2:
        raise ConfigError("batch_size must be >= 2: a variance needs two observations")
    rng = np.random.default_rng(seed)
    if variance_codes is None:
        variance_codes = sample_codes(encode, data, num_variance_estimate, rng)[0]
    global_var = np.var(_codes(variance_codes, "variance_codes"), axis=0, ddof=1)  # (Z,)
    active = np.sqrt(global_var) >= prune_threshold
    if not active.any():
        return 0.0

    def votes(points: int) -> np.ndarray:
        draws = _Draws(data, rng, batch_size, pairs=False)
        codes = _grouped(encode, data, draws, points, batch_size)  # (P, B, Z)
        local = np.var(codes[:, :, active], axis=1, ddof=1) / global_var[active]  # (P, Z_active)
        table = np.zeros((data.num_factors, int(active.sum())), np.int64)
        np.add.at(table, (np.array(draws.fixed), np.argmin(local, axis=1)), 1)
        return table  # (F, Z_active) votes

    train = votes(num_train)
    classifier = np.argmax(train, axis=0)  # each active dimension's factor
    evaluation = votes(num_eval)
    return float(evaluation[classifier, np.arange(evaluation.shape[1])].sum() / evaluation.sum())


# --- all five ---------------------------------------------------------------------------------------

KEYS = ("betavae_score", "factorvae_score", "mig", "sap", "dci_disentanglement", "dci_completeness",
        "dci_informativeness")


def score_all(encode: Encoder, data: FactorData, *, seed: int = 0, num_train: int = 10000, num_test: int = 5000,
              batch_size: int = 64) -> dict:
    """Every metric with one set of sample counts: disentanglement_lib's defaults unless smaller are asked for.

    MIG, SAP and DCI share one draw of num_train + num_test codes (disentanglement_lib draws each
    metric's own; the distribution is the same), and FactorVAE takes its variances from the
    num_train of them. beta-VAE and FactorVAE use num_train and num_test points of batch_size
    observations. Every metric gets its own generator from `seed`.

    Returns: the KEYS, and "disentanglement": factor names and sizes, the (Z, F) mutual information
      (nats) and the (F,) factor entropies behind MIG, DCI's (Z, F) importances, and the settings.
    """
    import time

    _check_counts(num_train=num_train, num_test=num_test, batch_size=batch_size)
    t0 = time.perf_counter()
    seeds = np.random.SeedSequence(seed).generate_state(4)  # codes, betavae, factorvae, classifiers
    codes, factors = sample_codes(encode, data, num_train + num_test, np.random.default_rng(seeds[0]))
    train = (codes[:num_train], factors[:num_train])
    test = (codes[num_train:], factors[num_train:])
    mi, h = mutual_information_matrix(*train)
    fit_seed = int(seeds[3] % 2**31)
    d = dci(*train, *test, seed=fit_seed)
    result = {
        "betavae_score": betavae_score(encode, data, seed=int(seeds[1]), batch_size=batch_size,
                                       num_train=num_train, num_eval=num_test),
        "factorvae_score": factorvae_score(encode, data, seed=int(seeds[2]), batch_size=batch_size,
                                           num_train=num_train, num_eval=num_test, variance_codes=train[0]),
        "mig": float(np.mean(_top_two_gap(mi) / h)),
        "sap": sap(*train, *test, seed=fit_seed),
        "dci_disentanglement": d["disentanglement"],
        "dci_completeness": d["completeness"],
        "dci_informativeness": d["informativeness"],
    }
    result["disentanglement"] = {
        "factor_names": list(data.factor_names), "factor_sizes": [int(k) for k in data.factor_sizes],
        "mutual_information": mi.tolist(), "factor_entropy": h.tolist(), "dci_importance": d["importance"],
        "dci_informativeness_train": d["informativeness_train"],
        "settings": {"seed": seed, "num_train": num_train, "num_test": num_test, "batch_size": batch_size,
                     "mig_bins": BINS, "factorvae_prune_threshold": PRUNE_THRESHOLD,
                     "sap": "LinearSVC(C=0.01, class_weight=balanced), discrete factors",
                     "dci": f"GradientBoostingClassifier(n_estimators={DCI_TREES}) importances, test accuracy",
                     "betavae": "LogisticRegression()"},
        "seconds": time.perf_counter() - t0,
    }
    return result
