"""hmmlearn's suite seeds NumPy's global generator once per session from a random seed (its
conftest.py); here each test starts from the same seed, so a run is reproducible. The tests that
meet a documented difference of jaxem's (README, "Hidden Markov models") are marked here, so the
vendored files keep hmmlearn's text."""

import random

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seeded():
    np.random.seed(0)
    random.seed(0)


# (test function, implementation or None for both, covariance type or None) -> the documented
# difference.
EXPECTED_DIFFERENCES = {
    ("test_n_features", None, None): (
        "jaxem leaves hyperparameters as given (scikit-learn's rule: fit does not change them), so "
        "n_features stays None; the symbol count found in the data is emissionprob_.shape[1]"),
    ("test_underflow_from_scaling", "scaling", None): (
        "implementation='scaling' runs jaxem's log-space recursions, which do not underflow, so "
        "the fit succeeds where hmmlearn's scaling recursion raises ValueError (not strict: on "
        "some draws of the class's shared generator jaxem's fit stops with FitError, a "
        "ValueError, for the 10000 outlier)"),
    ("test_fit_zero_variance", None, "full"): (
        "a constant column with full covariances: hmmlearn's covars_prior adds 0.01 to every "
        "entry (rank one), which leaves each state's covariance singular; hmmlearn then retries "
        "its densities with min_covar added, jaxem reports the failed fit instead of changing "
        "the model (not strict: from some k-means starts the fit stays finite; 9 of 20 seeds)"),
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        implementation = getattr(item, "callspec", None) and item.callspec.params.get(
            "implementation")
        covariance = getattr(item.cls, "covariance_type", None)
        for (name, impl, cov), reason in EXPECTED_DIFFERENCES.items():
            if (item.originalname == name and impl in (None, implementation)
                    and cov in (None, covariance)):
                strict = name not in ("test_underflow_from_scaling", "test_fit_zero_variance")
                item.add_marker(pytest.mark.xfail(reason=reason, strict=strict))
