"""Every bad input against every entry point where it applies: the error type and a key phrase.

Entry points: the functional API (``fit``, ``e_step``, ``log_likelihood``, ``elbo``, ``hmm.fit``,
``fit_chunked``, ``fit_online``, the model factories), the estimators, and the command line
(``jaxem.cli.main`` in-process: exit status 2 and one ``jaxem: error:`` line). Every case is
refused before any compute, so this file compiles only the few fits that make fitted models.
"""

from __future__ import annotations

import re
import warnings

import jax
import numpy as np
import pytest

import jaxem as jem
from jaxem import hmm as jhmm
from jaxem import io as jio
from jaxem.cli import main

N, D, K = 20, 2, 2
KEY = jax.random.key(0)
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, D)).astype(np.float32)
BINARY = (RNG.uniform(size=(N, D)) < 0.5).astype(np.float32)
COUNTS = RNG.poisson(3.0, size=(N, D)).astype(np.float32)
CODES = RNG.integers(0, 3, size=(N, D)).astype(np.float32)
SYMBOLS = RNG.integers(0, 3, size=(N, 1)).astype(np.float32)
POSITIVE = RNG.gamma(2.0, size=(N, D)).astype(np.float32) + 0.1


def put(A, row, col, value):
    A = np.array(A, dtype=np.float64)
    A[row, col] = value
    return A


NAN, INF = put(X, 3, 1, np.nan), put(X, 4, 0, -np.inf)

# -- the functional API --------------------------------------------------------------------------
GMM = jem.gaussian_mixture(K, "full")
GHMM = jhmm.gaussian_hmm(K, "diag")
# Parameters by hand (precision Cholesky factors = identity): no initialiser to compile.
PARAMS = {"weights": np.full(K, 0.5, np.float32), "means": X[:K].copy(),
          "prec_chol": np.broadcast_to(np.eye(D, dtype=np.float32), (K, D, D)).copy()}
Q = np.full((N, K), 1.0 / K)

FUNCTIONAL = {
    "fit": lambda X, **kw: jem.fit(GMM, X, key=KEY, max_iter=2, **kw),
    "e_step": lambda X, **kw: jem.e_step(GMM, PARAMS, X, **kw),
    "log_likelihood": lambda X, **kw: jem.log_likelihood(GMM, PARAMS, X, **kw),
    "elbo": lambda X, **kw: jem.elbo(GMM, PARAMS, X, Q[: len(X)], **kw),
    "hmm.fit": lambda X, **kw: jhmm.fit(GHMM, X, key=KEY, max_iter=2, **kw),
    "fit_chunked": lambda X, **kw: jem.fit_chunked(GMM, X, key=KEY, max_iter=2, **kw),
    "fit_online": lambda X, **kw: jem.fit_online(GMM, X, key=KEY, **kw),
}
WEIGHTED = ("fit", "e_step", "log_likelihood", "elbo", "fit_chunked")

FUNCTIONAL_CASES = [
    *[(name, (NAN,), {}, "X contains NaN at row 3, column 1") for name in FUNCTIONAL],
    *[(name, (INF,), {}, "X contains -inf at row 4, column 0") for name in FUNCTIONAL],
    *[(name, (X[:0],), {}, "X has 0 rows|only 0 samples") for name in FUNCTIONAL],
    *[(name, (X[:, 0],), {}, r"X has shape \(20,\), which does not fit the model")
      for name in ("fit", "e_step", "log_likelihood", "elbo")],
    *[(name, (np.c_[X, X[:, :1]],), {}, r"X has shape \(20, 3\), which does not fit the model")
      for name in ("e_step", "log_likelihood", "elbo")],
    ("hmm.fit", (X[:, 0],), {}, r"X has shape \(20,\), which does not fit the model"),
    ("hmm.fit", (np.stack([X, X]),), {},
     r"X has shape \(2, 20, 2\), which does not fit the model .*need mask=\[B, T\]"),
    ("hmm.fit", (X, ), {"lengths": [5, 5]}, "lengths sum to 10 but X has 20 rows"),
    ("hmm.fit", (X, ), {"lengths": [20, 0]}, r"at least one step; lengths\[1\] = 0"),
    ("hmm.fit", (X, ), {"lengths": []}, "lengths must be a non-empty"),
    ("hmm.fit", (X, ), {"tol": -1.0}, "tol must be a finite number >= 0"),
    ("fit", (X, ), {"tol": -1.0}, "tol must be a finite number >= 0"),
    ("fit", (X, ), {"n_restarts": 0}, "n_restarts must be an integer >= 1"),
    ("fit_chunked", (X, ), {"tol": -1.0}, "tol must be a finite number >= 0"),
    *[(name, (X[:1],), {}, "only 1 (samples|observations)")
      for name in ("fit", "hmm.fit", "fit_chunked", "fit_online")],
    *[(name, (X,), {"sample_weight": put(np.ones((1, N)), 0, 2, np.nan)[0]},
       "sample_weight contains NaN at row 2") for name in WEIGHTED],
    *[(name, (X,), {"sample_weight": put(np.ones((1, N)), 0, 5, -1.0)[0]},
       "sample_weight must be non-negative, got -1.0 at row 5") for name in WEIGHTED],
    *[(name, (X,), {"sample_weight": np.zeros(N)}, "sample_weight is zero everywhere")
      for name in WEIGHTED],
    *[(name, (X,), {"sample_weight": np.ones(N - 1)}, r"sample_weight must have shape \(20,\)")
      for name in WEIGHTED],
]


@pytest.mark.parametrize("entry, args, kwargs, phrase", FUNCTIONAL_CASES,
                         ids=[f"{c[0]}-{c[3][:30]}" for c in FUNCTIONAL_CASES])
def test_functional_api_refuses(entry, args, kwargs, phrase):
    with pytest.raises(ValueError, match=phrase):
        FUNCTIONAL[entry](*args, **kwargs)


def test_functional_fit_chunked_hmm_lengths():
    with pytest.raises(ValueError, match="lengths sum to 10 but X has 20 rows"):
        jem.fit_chunked(GHMM, X, lengths=[5, 5], key=KEY, max_iter=2)


def test_elbo_refuses_a_bad_q():
    with pytest.raises(ValueError, match=r"q must have shape \(20, K\)"):
        jem.elbo(GMM, PARAMS, X, Q[:5])
    with pytest.raises(ValueError, match="q must hold finite probabilities >= 0; got -0.5 at row 1"):
        jem.elbo(GMM, PARAMS, X, put(Q, 1, 0, -0.5))


FACTORY_CASES = [
    (lambda: jem.gaussian_mixture(0), "n_components must be an integer >= 1"),
    (lambda: jem.gaussian_mixture(2, "full", -1.0), "reg_covar must be a finite number >= 0"),
    (lambda: jem.gaussian_mixture(2, "bogus"), "covariance_type must be one of"),
    (lambda: jem.poisson_mixture(0), "n_components must be an integer >= 1"),
    (lambda: jem.bernoulli_mixture(0), "n_components must be an integer >= 1"),
    (lambda: jem.categorical_mixture(0, (3, 3)), "n_components must be an integer >= 1"),
    (lambda: jhmm.gaussian_hmm(0), "n_states must be an integer >= 1"),
    (lambda: jhmm.gaussian_hmm(2, "bogus"), "covariance_type must be one of"),
    (lambda: jhmm.gaussian_hmm(2, "full", -1.0), "reg_covar must be a finite number >= 0"),
]


@pytest.mark.parametrize("make, phrase", FACTORY_CASES, ids=[c[1][:30] for c in FACTORY_CASES])
def test_model_factories_refuse_bad_hyperparameters(make, phrase):
    with pytest.raises(ValueError, match=phrase):
        make()


# Family value checks on the functional API: the model must say what its data may hold.
FAMILY_FUNCTIONAL_CASES = [
    (jem.bernoulli_mixture(K), put(BINARY, 2, 1, 0.5), "0 or 1.*row 2, column 1"),
    (jem.poisson_mixture(K), put(COUNTS, 6, 0, -1.0), "non-negative integer.*row 6, column 0"),
    (jem.poisson_mixture(K), put(COUNTS, 6, 1, 2.5), "non-negative integer.*row 6, column 1"),
    (jem.categorical_mixture(K, (3, 3)), put(CODES, 7, 0, 3.0), "row 7, column 0"),
    (jem.categorical_mixture(K, (3, 3)), put(CODES, 7, 1, 1.5), "row 7, column 1"),
]


@pytest.mark.parametrize("model, data, phrase", FAMILY_FUNCTIONAL_CASES,
                         ids=[c[0].name + "-" + c[2][:20] for c in FAMILY_FUNCTIONAL_CASES])
def test_functional_fit_refuses_values_the_family_cannot_take(model, data, phrase):
    with pytest.raises(ValueError, match=phrase):
        jem.fit(model, data, key=KEY, max_iter=2)


# -- the estimators ------------------------------------------------------------------------------
ESTIMATORS = {  # name: (factory(**hyperparameters), good data)
    "GaussianMixture": (jem.GaussianMixture, X),
    "BernoulliMixture": (jem.BernoulliMixture, BINARY),
    "CategoricalMixture": (jem.CategoricalMixture, CODES),
    "PoissonMixture": (jem.PoissonMixture, COUNTS),
    "ExponentialMixture": (jem.ExponentialMixture, POSITIVE),
    "GammaMixture": (jem.GammaMixture, POSITIVE),
    "StudentTMixture": (jem.StudentTMixture, X),
    "IndependentMixture": (lambda **kw: jem.IndependentMixture(
        features=[("gaussian", [0]), ("poisson", [1])], **kw), np.c_[X[:, :1], COUNTS[:, 1:]]),
    "KMeans": (lambda n_components=K, **kw: jem.KMeans(n_components, **kw), X),
    "GaussianHMM": (jem.GaussianHMM, X),
    "CategoricalHMM": (jem.CategoricalHMM, SYMBOLS),
    "PoissonHMM": (jem.PoissonHMM, COUNTS),
}
HMMS = ("GaussianHMM", "CategoricalHMM", "PoissonHMM")
MIXTURES = tuple(n for n in ESTIMATORS if n not in HMMS)
TAKES_NAN = ("GaussianMixture", "IndependentMixture")  # missing values are marginalised


def _fit(name, data=None, k=K, sample_weight=None, **hyper):
    make, good = ESTIMATORS[name]
    est = make(n_components=k, **hyper)
    data = good if data is None else data
    return est.fit(data) if sample_weight is None else est.fit(data, sample_weight=sample_weight)


def _with(name, row, col, value):
    return put(ESTIMATORS[name][1], row, col, value)


ESTIMATOR_CASES = [
    *[(n, dict(data=_with(n, 3, 0, np.nan)), "X contains NaN at row 3, column 0")
      for n in ESTIMATORS if n not in TAKES_NAN],
    *[(n, dict(data=_with(n, 4, 0, np.inf)), "X contains inf at row 4, column 0") for n in ESTIMATORS],
    *[(n, dict(data=ESTIMATORS[n][1][:, 0]), "2-D|2-dimensional") for n in ESTIMATORS],
    *[(n, dict(data=ESTIMATORS[n][1][:, :, None]), "2-D|2-dimensional") for n in ESTIMATORS],
    *[(n, dict(data=ESTIMATORS[n][1][:0]), "0 rows") for n in ESTIMATORS],
    *[(n, dict(data=ESTIMATORS[n][1][:2], k=3), "only 2 (samples|observations)")
      for n in ESTIMATORS],
    *[(n, dict(sample_weight=put(np.ones((1, N)), 0, 2, np.nan)[0]),
       "sample_weight contains NaN at row 2") for n in MIXTURES],
    *[(n, dict(sample_weight=put(np.ones((1, N)), 0, 5, -2.0)[0]),
       "sample_weight must be non-negative, got -2.0 at row 5") for n in MIXTURES],
    *[(n, dict(sample_weight=np.zeros(N)), "zero everywhere") for n in MIXTURES],
    *[(n, dict(k=0), "(n_components|n_clusters) must be an integer >= 1") for n in ESTIMATORS],
    *[(n, dict(tol=-1.0), "tol must be a finite number >= 0") for n in ESTIMATORS],
    *[(n, dict(reg_covar=-1.0), "reg_covar must be a finite number >= 0")
      for n in ("GaussianMixture", "StudentTMixture")],
    ("GaussianHMM", dict(min_covar=-1.0), "min_covar must be a finite number >= 0"),
    *[(n, dict(covariance_type="bogus"), "covariance_type must be one of")
      for n in ("GaussianMixture", "StudentTMixture", "GaussianHMM")],
    ("BernoulliMixture", dict(data=_with("BernoulliMixture", 2, 1, 0.5)),
     "needs data in 0 or 1; got 0.5 at row 2, column 1"),
    ("BernoulliMixture", dict(data=_with("BernoulliMixture", 2, 1, 2.0)), "row 2, column 1"),
    ("PoissonMixture", dict(data=_with("PoissonMixture", 6, 0, -1.0)),
     "non-negative integer.*got -1.0 at row 6, column 0"),
    ("PoissonMixture", dict(data=_with("PoissonMixture", 6, 1, 2.5)),
     "non-negative integer.*got 2.5 at row 6, column 1"),
    ("PoissonHMM", dict(data=_with("PoissonHMM", 6, 1, 2.5)), "got 2.5 at row 6, column 1"),
    ("PoissonHMM", dict(data=_with("PoissonHMM", 6, 0, -1.0)), "got -1.0 at row 6, column 0"),
    ("CategoricalMixture", dict(data=_with("CategoricalMixture", 7, 0, -1.0)),
     "integer codes.*got -1.0 at row 7, column 0"),
    ("CategoricalMixture", dict(data=_with("CategoricalMixture", 7, 1, 1.5)),
     "integer codes.*got 1.5 at row 7, column 1"),
    ("CategoricalHMM", dict(data=_with("CategoricalHMM", 7, 0, 1.5)), "got 1.5 at row 7"),
    ("CategoricalHMM", dict(data=_with("CategoricalHMM", 7, 0, -1.0)), "got -1.0 at row 7"),
    ("CategoricalHMM", dict(data=CODES), r"one symbol per row.*\(20, 2\)"),
    ("ExponentialMixture", dict(data=_with("ExponentialMixture", 1, 1, -0.5)),
     "got -0.5 at row 1, column 1"),
    ("GammaMixture", dict(data=_with("GammaMixture", 1, 1, 0.0)), "got 0.0 at row 1, column 1"),
    ("IndependentMixture", dict(data=_with("IndependentMixture", 8, 1, -3.0)),
     "poisson feature needs.*got -3.0 at row 8, column 1"),
]


@pytest.mark.parametrize("name, kwargs, phrase", ESTIMATOR_CASES,
                         ids=[f"{c[0]}-{c[2][:30]}" for c in ESTIMATOR_CASES])
def test_estimator_fit_refuses(name, kwargs, phrase):
    with pytest.raises(ValueError, match=phrase):
        _fit(name, **kwargs)


def test_hmm_estimators_refuse_bad_lengths():
    for name in HMMS:
        make, good = ESTIMATORS[name]
        with pytest.raises(ValueError, match="lengths sum to 10 but X has 20 rows"):
            make(n_components=K).fit(good, lengths=[5, 5])
        with pytest.raises(ValueError, match=r"at least one step; lengths\[1\] = 0"):
            make(n_components=K).fit(good, lengths=[20, 0])


REGRESSIONS = (jem.MixtureOfLinearRegressions, jem.MixtureOfExperts)


@pytest.mark.parametrize("cls", REGRESSIONS, ids=lambda c: c.__name__)
def test_regression_mixtures_refuse(cls):
    y = X[:, 0] * 2.0
    for args, kwargs, phrase in [
        ((NAN, y), {}, "X contains NaN at row 3, column 1"),
        ((X, put(y[None], 0, 4, np.nan)[0]), {}, "y contains NaN at row 4"),
        ((X, y[:5]), {}, r"y must have shape \(20,\)"),
        ((X[:, 0], y), {}, "2-D inputs"),
        ((X[:1], y[:1]), {}, "only 1 samples"),
        ((X, y), {"sample_weight": -np.ones(N)}, "non-negative"),
    ]:
        with pytest.raises(ValueError, match=phrase):
            cls(2).fit(*args, **kwargs)
    with pytest.raises(ValueError, match="reg_var must be a finite number >= 0"):
        cls(2, reg_var=-1.0).fit(X, y)
    with pytest.raises(ValueError, match="n_components must be an integer >= 1"):
        cls(0).fit(X, y)
    with pytest.raises(jem.NotFittedError, match="not fitted"):
        cls(2).predict(X)
    with pytest.raises(jem.NotFittedError, match="not fitted"):
        cls(2).predict_proba(X, y)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_predict_before_fit(name):
    est = ESTIMATORS[name][0](n_components=K)
    good = ESTIMATORS[name][1]
    methods = ["predict", "predict_proba", "score"] if name != "KMeans" else ["predict", "score"]
    for method in methods:
        with pytest.raises(jem.NotFittedError, match="fit"):
            getattr(est, method)(good)
    assert isinstance(jem.NotFittedError("x"), ValueError)  # scikit-learn's contract


# -- fitted models: feature counts and category ranges ---------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    """A few fitted estimators (tiny fits), and hmmlearn-style assigned HMMs (no fit needed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jem.ConvergenceWarning)
        out = {name: _fit(name, max_iter=2) for name in ("GaussianMixture", "CategoricalMixture",
                                                          "IndependentMixture", "PoissonMixture")}
        out["KMeans"] = _fit("KMeans", max_iter=2)
        out["MixtureOfLinearRegressions"] = jem.MixtureOfLinearRegressions(
            2, max_iter=2).fit(X, X[:, 0])
    for name, emission in (("GaussianHMM", {"means_": X[:K], "covars_": np.ones((K, D))}),
                           ("CategoricalHMM", {"emissionprob_": np.full((K, 3), 1 / 3)}),
                           ("PoissonHMM", {"lambdas_": np.ones((K, D))})):
        hmm = ESTIMATORS[name][0](n_components=K)
        hmm.startprob_, hmm.transmat_ = np.full(K, 1 / K), np.full((K, K), 1 / K)
        for attr, value in emission.items():
            setattr(hmm, attr, value)
        out[name] = hmm
    return out


def test_feature_count_differs_from_the_fitted_model(fitted):
    wide = np.c_[X, X[:, :1]]
    for name in ("GaussianMixture", "IndependentMixture", "PoissonMixture", "KMeans"):
        data = np.c_[ESTIMATORS[name][1], ESTIMATORS[name][1][:, :1]]
        for method in ("predict", "score_samples" if name != "KMeans" else "transform"):
            with pytest.raises(ValueError, match="X has 3 features, but .* expecting 2 features"):
                getattr(fitted[name], method)(data)
    with pytest.raises(ValueError, match="X has 3 features, but .* expecting 2 features"):
        fitted["MixtureOfLinearRegressions"].predict(wide)
    with pytest.raises(ValueError, match="X has 3 features, but the model's means_ have 2"):
        fitted["GaussianHMM"].predict(wide)
    with pytest.raises(ValueError, match="X has 3 features, but lambdas_ has 2"):
        fitted["PoissonHMM"].predict(np.c_[COUNTS, COUNTS[:, :1]])
    with pytest.raises(ValueError, match="2-D"):
        fitted["GaussianMixture"].predict(X[0])


def test_categories_outside_the_fitted_range(fitted):
    codes = fitted["CategoricalMixture"].n_categories_
    beyond = put(CODES, 9, 1, codes[1])
    with pytest.raises(ValueError, match=rf"codes 0 .. {codes[1] - 1} in column 1; got "
                                         rf"{float(codes[1])} at row 9, column 1"):
        fitted["CategoricalMixture"].predict(beyond)
    with pytest.raises(ValueError, match="below 3; got 3.0 at row 9"):
        fitted["CategoricalHMM"].predict(put(SYMBOLS, 9, 0, 3.0))


# -- the command line ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory, fitted):
    folder = tmp_path_factory.mktemp("bad_input")

    def write(name, table, header="a,b"):
        path = folder / name
        np.savetxt(path, table, delimiter=",", header=header, comments="", fmt="%.6g")
        return str(path)

    paths = {"good": write("good.csv", X), "nan": write("nan.csv", NAN),
             "halves": write("halves.csv", put(BINARY, 2, 1, 0.5)),
             "negative": write("negative.csv", put(COUNTS, 6, 0, -1.0)),
             "wide": write("wide.csv", np.c_[X, X[:, :1]], header="a,b,c"),
             "codes": write("codes.csv", put(CODES, 9, 1, 9.0)),
             "empty": write("empty.csv", X[:0])}
    for name in ("GaussianMixture", "CategoricalMixture"):
        paths[name] = jio.save(fitted[name], folder / f"{name}.npz")
    return paths


def run_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return status, err


CLI_CASES = [
    # The table reader refuses it first; its lines count the header (line 1) and start at 1.
    # (the Gaussian mixture takes missing values: tests/test_cli_input.py)
    (("fit", "nan", "-k", 2, "--model", "student-t"),
     "column 'b' .* line 5 holds 'nan', a missing value \\(StudentTMixture takes none"),
    (("fit", "good", "-k", 0), "expected a positive integer, got 0"),
    (("fit", "good", "-k", 30), "only 20 rows"),
    (("fit", "good", "-k", 2, "--covariance", "bogus"), "invalid choice: 'bogus'"),
    (("fit", "good", "-k", 2, "--set", "tol=-1"), "tol must be a finite number >= 0"),
    (("fit", "good", "-k", 2, "--set", "reg_covar=-1"), "reg_covar must be a finite number >= 0"),
    (("fit", "halves", "-k", 2, "--model", "bernoulli"), "0 or 1; got 0.5 at row 2, column 1"),
    (("fit", "negative", "-k", 2, "--model", "poisson"), "got -1.0 at row 6, column 0"),
    (("fit", "good", "-k", 2, "--model", "hmm", "--lengths", "5,5"), "sum to the 20 rows"),
    (("fit", "good", "-k", 2, "--model", "hmm", "--lengths", "20,0"), "must be positive"),
    (("fit", "empty", "-k", 2), "rows|empty|no data"),
    (("select", "good", "--ks", "0-2"), "expected numbers of components"),
    (("predict", "GaussianMixture", "wide"), "X has 3 features, but GaussianMixture is expecting "
                                             "2 features"),
    (("predict", "CategoricalMixture", "nan"), "line 5 holds 'nan'"),
    (("predict", "CategoricalMixture", "codes"), "got 9.0 at row 9, column 1"),
]


def test_command_line_refuses_in_one_line(capsys, files):
    """Every case in one test (the fitted models are saved once); all mismatches are reported."""
    wrong = []
    for argv, phrase in CLI_CASES:
        argv = [files.get(a, a) if isinstance(a, str) else a for a in argv]
        status, err = run_cli(capsys, *argv)
        one_line = len(err) == 1 and err[0].startswith("jaxem: error:")
        if status != 2 or not one_line or not re.search(phrase, err[0]):
            wrong.append((argv[:1] + argv[2:], status, err, phrase))
    assert not wrong, wrong
