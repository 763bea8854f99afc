"""Trained classical reference routers (spec section 10): kNN and linear routers over
question features, fit on the TRAIN split of a routing log and evaluated on its TEST split
with the reference routers' rule (accuracy = logged score of the routed model, cost =
`RoutingLog.call_cost` of that call).

Features: the question's words (lower-cased runs of letters and digits) hashed with CRC32
into `num_features` buckets (stable across processes, unlike Python's `hash`), weighted by
sublinear tf (1 + log count) times the smoothed idf of the train split, rows L2-normalised.
With `use_dataset` the dataset name is one more token (off by default: the RL policy sees the
question only, so the comparison stays on the same input).

Routers (each predicts a per-model score pred_qm, then routes by a utility):
- `knn`: pred = mean score of the k train questions of highest cosine similarity (ties by
  train order); k is chosen on a held-out slice of train (routing accuracy at lambda = 0).
- `linear`: per-model logistic regression of the logged score (fractional scores are soft
  labels); pred = sigmoid of the linear score. L2 strength chosen on the held-out slice.
- `softmax`: one linear softmax classifier trained with cross-entropy toward the best model
  of each train question (cheapest among ties; questions on which all models tie are left
  out); pred = its class probabilities. It learns "the cheapest model that is right", so it
  sits at the cheap end of the front.
The linear models are fit by scipy's L-BFGS-B (convex: the same optimum from the zero start).

Cost-aware routing: route to argmax_m pred_qm - lambda * cost_m / max_m cost_m, cost_m the
model's mean call cost on train (the only cost known before calling), the cheapest model
among utilities within 1e-9 of the best. Per question the routed model's cost_m is then
non-increasing in lambda (the cost of the reported test calls too whenever each model's call
cost is the same on every record, as on dcrouter). lambda = 0 is the accuracy-first router;
each result carries its lambda sweep ((lambda, cost per query, accuracy), ...) as the router's
accuracy-cost front. Deterministic given `seed` (it only draws the held-out slice).
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from collections import Counter
from typing import Sequence

import chex
import numpy as np
from scipy import optimize, sparse, special

from recal_jax.data.schema import RoutingLog
from recal_jax.evaluation.router_result import RouterResult, choice_result, score_and_cost_matrices

CLASSICAL_NAMES = ("knn", "linear", "softmax")
DEFAULT_LAMBDAS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)
TIE_TOL = 1e-9
GTOL = 1e-6  # L-BFGS-B stops when every gradient entry is below this (or after max_iter iterations)
_WORD = re.compile(r"[a-z0-9]+")


@dataclasses.dataclass(frozen=True)
class ClassicalConfig:
    """num_features: hash buckets; heldout_frac: share of train held out to pick k and the L2
    strength; max_iter: L-BFGS iterations of the linear models."""

    num_features: int = 1 << 12
    use_dataset: bool = False
    heldout_frac: float = 0.2
    k_grid: tuple = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233)
    l2_grid: tuple = (1e-5, 1e-4, 1e-3)
    max_iter: int = 100
    lambdas: tuple = DEFAULT_LAMBDAS

    def __post_init__(self):
        if self.num_features < 1 or not 0.0 < self.heldout_frac < 1.0 or self.max_iter < 1:
            raise ValueError(f"ClassicalConfig needs num_features >= 1, 0 < heldout_frac < 1, max_iter >= 1: {self}")
        if not self.k_grid or min(self.k_grid) < 1 or not self.l2_grid or min(self.l2_grid) < 0:
            raise ValueError(f"ClassicalConfig needs a non-empty k_grid of ints >= 1 and l2_grid of values >= 0: "
                             f"{self}")
        lams = [float(x) for x in self.lambdas]
        if not lams or lams[0] != 0.0 or any(b <= a for a, b in zip(lams, lams[1:])):
            raise ValueError(f"ClassicalConfig.lambdas must start at 0 and increase strictly, got {self.lambdas}")


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def hashed_counts(texts: Sequence[str], num_features: int) -> list[Counter]:
    """Per text: bucket -> count of its words hashed with CRC32 mod num_features."""
    return [Counter(zlib.crc32(w.encode()) % num_features for w in tokens(t)) for t in texts]


def fit_idf(counts: Sequence[Counter], num_features: int) -> np.ndarray:
    """Smoothed idf_f = log((1 + N) / (1 + df_f)) + 1 over the given (train) documents."""
    df_f = np.zeros(num_features, np.float64)
    for c in counts:
        df_f[list(c)] += 1.0
    return (np.log((1.0 + len(counts)) / (1.0 + df_f)) + 1.0).astype(np.float32)


def tfidf_rows(counts: Sequence[Counter], idf_f: np.ndarray) -> sparse.csr_matrix:
    """f32 CSR [N, F]: (1 + log count) * idf per bucket, each row scaled to unit L2 norm
    (a question without words stays a zero row)."""
    indptr, cols, vals = [0], [], []
    for c in counts:
        keys = np.array(sorted(c), np.int64)
        v = (1.0 + np.log(np.array([c[k] for k in keys], np.float64))) * idf_f[keys] if len(keys) else np.zeros(0)
        norm = np.linalg.norm(v)
        cols.append(keys)
        vals.append(v / norm if norm > 0 else v)
        indptr.append(indptr[-1] + len(keys))
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)  # noqa: E731
    return sparse.csr_matrix((cat(vals).astype(np.float32), cat(cols).astype(np.int64), np.array(indptr)),
                             shape=(len(counts), len(idf_f)))


def question_texts(log: RoutingLog, use_dataset: bool) -> list[str]:
    return [f"{r.question} zzdataset{r.dataset}" if use_dataset else r.question for r in log.records]


def featurize(train: RoutingLog, test: RoutingLog,
              config: ClassicalConfig) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """TF-IDF rows of train and test questions, idf fit on train only."""
    c_train = hashed_counts(question_texts(train, config.use_dataset), config.num_features)
    c_test = hashed_counts(question_texts(test, config.use_dataset), config.num_features)
    idf_f = fit_idf(c_train, config.num_features)
    return tfidf_rows(c_train, idf_f), tfidf_rows(c_test, idf_f)


# ----------------------------------------------------------------------------- routing


def route(pred_qm: np.ndarray, cost_m: np.ndarray, lam: float, tol: float = TIE_TOL) -> np.ndarray:
    """i64[Q]: argmax_m pred_qm - lam * cost_m, the cheapest model (then the first) among
    utilities within `tol` of the best."""
    chex.assert_rank(pred_qm, 2)
    chex.assert_shape(cost_m, (pred_qm.shape[1],))
    util_qm = pred_qm - lam * cost_m[None, :]
    cand_qm = util_qm >= util_qm.max(axis=1, keepdims=True) - tol
    return np.argmin(np.where(cand_qm, cost_m[None, :], np.inf), axis=1)


def best_model_labels(scores_nm: np.ndarray, costs_nm: np.ndarray) -> np.ndarray:
    """i64[N]: the best-scoring model of each question, the cheapest (then first) among ties."""
    chex.assert_equal_shape([scores_nm, costs_nm])
    best_n1 = scores_nm.max(axis=1, keepdims=True)
    return np.argmin(np.where(scores_nm >= best_n1, costs_nm, np.inf), axis=1)


def routed_accuracy(pred_qm: np.ndarray, scores_qm: np.ndarray, cost_m: np.ndarray) -> float:
    """Mean logged score of the lambda = 0 routing (the held-out criterion)."""
    choice_q = route(pred_qm, cost_m, 0.0)
    return float(scores_qm[np.arange(len(choice_q)), choice_q].mean())


# ----------------------------------------------------------------------------- kNN


def neighbour_order(query_qf: sparse.csr_matrix, pool_pf: sparse.csr_matrix, k_max: int) -> np.ndarray:
    """i64[Q, K]: the K = min(k_max, P) pool rows of highest cosine similarity to each query
    row (rows are unit-norm, so cosine = dot), best first, ties by pool order."""
    chex.assert_equal(query_qf.shape[1], pool_pf.shape[1])
    sims_qp = np.asarray((query_qf @ pool_pf.T).todense(), np.float32)
    return np.argsort(-sims_qp, axis=1, kind="stable")[:, :min(k_max, pool_pf.shape[0])]


def knn_predictions(order_qk: np.ndarray, pool_scores_pm: np.ndarray, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """k -> f64[Q, M], the mean score over the first k neighbours (k capped at the pool size)."""
    csum_qkm = np.cumsum(pool_scores_pm[order_qk], axis=1)
    return {k: csum_qkm[:, min(k, order_qk.shape[1]) - 1] / min(k, order_qk.shape[1]) for k in ks}


def knn_router(x_train, x_test, scores_nm, cost_m, heldout_n, config) -> tuple[np.ndarray, dict]:
    """pred_qm on test and {"k": chosen k}; k maximises held-out routing accuracy (smallest on ties)."""
    fit_n = np.setdiff1d(np.arange(x_train.shape[0]), heldout_n)
    order = neighbour_order(x_train[heldout_n], x_train[fit_n], max(config.k_grid))
    preds = knn_predictions(order, scores_nm[fit_n], config.k_grid)
    acc = {k: routed_accuracy(p, scores_nm[heldout_n], cost_m) for k, p in preds.items()}
    k_best = min(config.k_grid, key=lambda k: (-acc[k], k))
    order = neighbour_order(x_test, x_train, k_best)
    return knn_predictions(order, scores_nm, [k_best])[k_best], {"k": int(k_best)}


# ----------------------------------------------------------------------------- linear models


def _linear_objective(theta, x_nf, target, l2: float, kind: str):
    """(loss, gradient) of the mean log-loss + 0.5 * l2 * |W|^2 at theta = [W (F x M), b (M)]."""
    n, f = x_nf.shape
    m = target.shape[1]
    w_fm, b_m = theta[:f * m].reshape(f, m), theta[f * m:]
    logits_nm = x_nf @ w_fm + b_m
    if kind == "logistic":  # per-model sigmoid cross-entropy with soft labels target_nm in [0, 1]
        loss = np.mean(np.logaddexp(0.0, logits_nm) - target * logits_nm)
        g_nm = (special.expit(logits_nm) - target) / (n * m)
    else:  # softmax cross-entropy toward one-hot rows of target_nm; all-zero rows are left out
        weight_n1 = target.sum(axis=1, keepdims=True)
        n_rows = max(float(weight_n1.sum()), 1.0)
        log_p = logits_nm - special.logsumexp(logits_nm, axis=1, keepdims=True)
        loss = -np.sum(target * log_p) / n_rows
        g_nm = (np.exp(log_p) * weight_n1 - target) / n_rows
    loss += 0.5 * l2 * np.sum(w_fm ** 2)
    grad = np.concatenate([(x_nf.T @ g_nm + l2 * w_fm).ravel(), g_nm.sum(axis=0)])
    return loss, grad


def fit_linear(x_nf: sparse.csr_matrix, target_nm: np.ndarray, l2: float, kind: str, config: ClassicalConfig):
    """(w_fm, b_m) of per-model logistic regressions (kind 'logistic', target_nm the scores)
    or a softmax classifier (kind 'softmax', target_nm one-hot), by scipy's L-BFGS-B from zero
    (at most config.max_iter iterations): convex, so deterministic and independent of any seed."""
    if kind not in ("logistic", "softmax"):
        raise ValueError(f"fit_linear: kind must be 'logistic' or 'softmax', got {kind!r}")
    chex.assert_rank(target_nm, 2)
    chex.assert_equal(target_nm.shape[0], x_nf.shape[0])
    f, m = x_nf.shape[1], target_nm.shape[1]
    x64 = x_nf.astype(np.float64)
    target64 = target_nm.astype(np.float64)
    res = optimize.minimize(_linear_objective, np.zeros(f * m + m), args=(x64, target64, l2, kind), jac=True,
                            method="L-BFGS-B", options={"maxiter": config.max_iter, "gtol": GTOL})
    return res.x[:f * m].reshape(f, m), res.x[f * m:]


def predict_linear(params, x_nf: sparse.csr_matrix, kind: str) -> np.ndarray:
    """f64[N, M]: sigmoid (logistic) or softmax (softmax) of the linear scores."""
    w_fm, b_m = params
    chex.assert_equal(x_nf.shape[1], w_fm.shape[0])
    logits_nm = x_nf.astype(np.float64) @ w_fm + b_m
    return special.expit(logits_nm) if kind == "logistic" else special.softmax(logits_nm, axis=1)


def linear_router(x_train, x_test, target, cost_m, scores_nm, heldout_n, kind, config) -> tuple[np.ndarray, dict]:
    """pred_qm on test and {"l2": chosen}: L2 maximises held-out routing accuracy (largest on
    ties: the simplest model), then the model is refit on all of train."""
    fit_n = np.setdiff1d(np.arange(x_train.shape[0]), heldout_n)
    acc = {}
    for l2 in config.l2_grid:
        params = fit_linear(x_train[fit_n], target[fit_n], l2, kind, config)
        acc[l2] = routed_accuracy(predict_linear(params, x_train[heldout_n], kind), scores_nm[heldout_n], cost_m)
    l2_best = max(config.l2_grid, key=lambda v: (acc[v], v))
    params = fit_linear(x_train, target, l2_best, kind, config)
    return predict_linear(params, x_test, kind), {"l2": float(l2_best)}


# ----------------------------------------------------------------------------- evaluation


def check_logs(train: RoutingLog, test: RoutingLog) -> None:
    """ValueError unless both splits are non-empty and share a pool of >= 2 models."""
    for split, log in (("train", train), ("test", test)):
        if len(log) == 0:
            raise ValueError(f"classical routers: the {split} log {log.name!r} is empty")
    if train.model_names != test.model_names:
        raise ValueError(f"classical routers: train and test pools differ: {train.model_names} vs {test.model_names}")
    if len(train.model_names) < 2:
        raise ValueError(f"classical routers need a pool of >= 2 models, log {train.name!r} has "
                         f"{list(train.model_names)}: there is nothing to route between")
    if len(train) < 2:
        raise ValueError(f"classical routers need >= 2 train records (one held out), got {len(train)}")


def softmax_targets(scores_nm: np.ndarray, costs_nm: np.ndarray) -> np.ndarray:
    """f64[N, M] one-hot of the best model of each train question (cheapest among ties); a
    question on which every model ties (all wrong, or all right) is a zero row, left out of
    the softmax fit: it says nothing about which model to pick, only that cheap is enough,
    which the lambda sweep already prices."""
    labels_n = best_model_labels(scores_nm, costs_nm)
    informative_n = scores_nm.min(axis=1) < scores_nm.max(axis=1)
    return np.eye(scores_nm.shape[1])[labels_n] * informative_n[:, None]


def relative_costs(costs_nm: np.ndarray) -> np.ndarray:
    """f64[M]: each model's mean train cost over the largest one (the lambda sweep's cost unit)."""
    mean_cost_m = costs_nm.mean(axis=0)
    return mean_cost_m / mean_cost_m.max() if mean_cost_m.max() > 0 else mean_cost_m


def sweep_result(test: RoutingLog, name: str, pred_qm, cost_m, lambdas) -> RouterResult:
    """The lambda = 0 routing of `pred_qm` on `test`, carrying the whole lambda sweep."""
    scores_qm, costs_qm = score_and_cost_matrices(test)
    chex.assert_equal_shape([pred_qm, scores_qm])
    results = [choice_result(test, name, scores_qm, costs_qm, route(pred_qm, cost_m, lam)) for lam in lambdas]
    sweep = tuple((float(lam), r.cost_per_query, r.accuracy) for lam, r in zip(lambdas, results))
    return dataclasses.replace(results[0], lambda_sweep=sweep)


@dataclasses.dataclass(frozen=True)
class ClassicalPredictions:
    """The classical routers' per-model score predictions on a test split, before routing.

    pred_qm: {"knn", "linear", "softmax"} -> f64[Q, M] (test questions x `models`);
    names: the same keys -> the label with the chosen k / L2 strength;
    cost_m: f64[M], each model's mean train cost over the largest (the lambda sweep's unit).
    `route(pred_qm[key], cost_m, lam)` is the router's choice per test question at lambda."""

    pred_qm: dict
    names: dict
    cost_m: np.ndarray


def classical_predictions(train: RoutingLog, test: RoutingLog, *, seed: int = 0,
                          config: ClassicalConfig = ClassicalConfig()) -> ClassicalPredictions:
    """Fit the kNN, linear and softmax routers on `train` and predict on `test`."""
    check_logs(train, test)
    scores_nm, costs_nm = score_and_cost_matrices(train)
    cost_m = relative_costs(costs_nm)
    rng = np.random.default_rng(seed)
    n_held = min(len(train) - 1, max(1, math.ceil(config.heldout_frac * len(train))))
    heldout_n = np.sort(rng.permutation(len(train))[:n_held])
    x_train, x_test = featurize(train, test, config)
    preds = {}
    preds["knn"], info = knn_router(x_train, x_test, scores_nm, cost_m, heldout_n, config)
    names = {"knn": f"knn (k={info['k']})"}
    targets = {"linear": ("logistic", scores_nm), "softmax": ("softmax", softmax_targets(scores_nm, costs_nm))}
    for name, (kind, target) in targets.items():
        preds[name], info = linear_router(x_train, x_test, target, cost_m, scores_nm, heldout_n, kind, config)
        names[name] = f"{name} (l2={info['l2']:g})"
    return ClassicalPredictions(preds, names, cost_m)


def classical_routers(train: RoutingLog, test: RoutingLog, *, seed: int = 0,
                      config: ClassicalConfig = ClassicalConfig()) -> dict[str, RouterResult]:
    """{"knn", "linear", "softmax"} -> RouterResult on `test` at lambda = 0 with its lambda
    sweep (`RouterResult.lambda_sweep`); the name records the chosen k / L2 strength."""
    p = classical_predictions(train, test, seed=seed, config=config)
    return {key: sweep_result(test, p.names[key], p.pred_qm[key], p.cost_m, config.lambdas)
            for key in CLASSICAL_NAMES}


__all__ = ["CLASSICAL_NAMES", "ClassicalConfig", "ClassicalPredictions", "DEFAULT_LAMBDAS", "best_model_labels",
           "classical_predictions", "classical_routers", "featurize", "fit_linear", "knn_predictions",
           "neighbour_order", "relative_costs", "route", "softmax_targets"]
