import os

# Compiling is most of the suite's time, so the tests compile for speed of compiling: LLVM's
# backend optimisations off (JAX's own switch) and XLA's older CPU emitters for fusions, which
# compile in half the time and run slower (users keep XLA's defaults). The HLO passes that decide
# the numbers still run. On a 2-core AMD EPYC, one GaussianMixture fit's XLA time 1.42 s -> 0.64 s
# (2.73 s with neither). Set before jax is imported, so processes the tests start inherit them.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_fusion_emitters=false"
    os.environ["XLA_FLAGS"] = flags.strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# The tests run without the persistent compilation caches (JAX's and jaxem's): a fresh machine's
# are empty, and the cache's own tests give their processes folders of their own. Set before jaxem
# is imported, which otherwise switches the cache on; processes the tests start inherit it.
if "JAXEM_COMPILATION_CACHE" not in os.environ:
    os.environ["JAXEM_COMPILATION_CACHE"] = "0"


def _memory_mappings() -> int:
    try:
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)
    except OSError:  # not Linux: no per-process limit on mappings to stay under
        return 0


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """A worker that kept the compiled programs of all its ~400 tests would run out of memory
    mappings (about 9 per program; vm.max_map_count is 65,530) and abort inside XLA's next
    compilation. After a module, once half the limit is used, the programs are freed; below
    that, later modules reuse them."""
    yield
    if _memory_mappings() > 30_000:
        import jaxem

        jaxem.free_compiled_programs()


@pytest.fixture
def x64():
    """Run the test body with float64 enabled in JAX."""
    with jax.enable_x64(True):
        yield


def start_params(model, key, X):
    """``model.init(key, X)`` compiled as one program: run op by op, an initialiser such as
    k-means compiles about a hundred small programs (seconds) for each new data shape."""
    return jax.jit(model.init)(key, jax.numpy.asarray(X))


def three_blobs(n=600, seed=0, dtype=np.float32):
    """Three overlapping 2-D Gaussian clusters of unequal sizes and shapes."""
    rng = np.random.default_rng(seed)
    sizes = [n // 2, n // 3, n - n // 2 - n // 3]
    means = np.array([[0.0, 0.0], [4.0, 1.0], [1.0, 4.5]])
    covs = [np.array([[1.0, 0.6], [0.6, 1.2]]), np.array([[0.5, -0.2], [-0.2, 0.4]]),
            np.array([[1.5, 0.0], [0.0, 0.3]])]
    parts = [rng.multivariate_normal(m, c, size=s) for m, c, s in zip(means, covs, sizes, strict=True)]
    X = np.concatenate(parts)
    return X.astype(dtype)


def binary_data(n=800, d=12, seed=0):
    """Rows from a 3-component Bernoulli mixture, with the true parameters."""
    rng = np.random.default_rng(seed)
    weights = np.array([0.5, 0.3, 0.2])
    probs = rng.uniform(0.05, 0.95, size=(3, d))
    z = rng.choice(3, size=n, p=weights)
    X = (rng.uniform(size=(n, d)) < probs[z]).astype(np.float32)
    return X, weights, probs, z


def assert_non_decreasing(result, rel=None, atol=0.0):
    """Every restart's log-likelihood sequence (initial value, then history) never goes down by more
    than float round-off: ``rel * |ll|`` with ``rel`` about 30 float eps (sums over N rows), plus
    ``atol`` (a scalar or one value per restart)."""
    history = np.concatenate([result.initial_log_likelihood[:, None], result.history], axis=1)
    if rel is None:
        rel = 30 * np.finfo(history.dtype).eps
    atol = np.broadcast_to(atol, history.shape[:1])
    for r, row in enumerate(history):
        row = row[~np.isnan(row)]
        drops = row[:-1] - row[1:]
        allowed = rel * np.abs(row[:-1]) + atol[r]
        assert np.all(drops <= allowed), (
            f"restart {r}: log-likelihood fell by {drops.max():.3g} (allowed {allowed.max():.3g})")


def max_relative_difference(a, b) -> float:
    """The largest ``|a - b|`` of two pytrees of arrays, relative to each leaf's largest ``|a|``
    (NaN where and only where the other has NaN; used by scripts that compare fits)."""
    import jax

    worst = 0.0
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        assert u.shape == v.shape and np.array_equal(np.isnan(u), np.isnan(v))
        ok = ~np.isnan(u)
        worst = max(worst, float(np.max(np.abs(u[ok] - v[ok]) / (np.abs(u[ok]).max() + 1e-300))))
    return worst


def laplace_mixture(n_components=2):
    """A researcher's model: a mixture of 1-D Laplace densities written only as an initialiser and
    a log-joint (a weakly typed ``jnp.full`` init included), with its constraints."""
    import jax
    import jax.numpy as jnp

    import jaxem as jem

    def init(key, X):
        return {"weights": jnp.full(n_components, 1 / n_components),
                "loc": jax.random.choice(key, X[:, 0], (n_components,)),
                "scale": jnp.full(n_components, 1.0)}

    def log_joint(params, x):
        return (jnp.log(params["weights"]) - jnp.log(2 * params["scale"])
                - jnp.abs(x[0] - params["loc"]) / params["scale"])

    return jem.Model(init=init, log_joint=log_joint, n_components=n_components,
                     constraints={"weights": jem.constraints.simplex,
                                  "loc": jem.constraints.real,
                                  "scale": jem.constraints.positive})
