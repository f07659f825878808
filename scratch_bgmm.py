import numpy as np, jax, jax.numpy as jnp, math
jax.config.update("jax_enable_x64", True)
from scipy.special import gammaln, betaln
from sklearn.mixture import BayesianGaussianMixture as SK
from jaxem.models import bayesian_gaussian as bg
import jaxem as jem
rng = np.random.default_rng(0)
X = np.concatenate([rng.normal(size=(60,3))+5, rng.normal(size=(50,3))*0.5, rng.normal(size=(40,3))-4])
n, d = X.shape; K = 5
resp0 = rng.dirichlet(np.ones(K), size=n)
for ct in ["full","tied","diag","spherical"]:
  for pt in ["dirichlet_process","dirichlet_distribution"]:
    sk = SK(n_components=K, covariance_type=ct, weight_concentration_prior_type=pt)
    sk._check_parameters(X)
    sk._initialize(X, resp0)
    prior = bg.variational_prior(X, K, ct)
    model = bg.bayesian_gaussian_mixture(K, prior, ct, pt, reg_covar=sk.reg_covar)
    centres = (resp0.T @ X) / resp0.sum(0)[:, None]
    p = bg.initial_params(jnp.asarray(X), jnp.asarray(resp0), jnp.asarray(centres), ct, pt, sk.reg_covar, prior)
    # constant
    nu0, b0, g0 = prior.degrees_of_freedom, prior.mean_precision, prior.weight_concentration
    ld = bg._log_det_covariance_prior(prior, ct, d)
    c = (-n*d/2*math.log(2*math.pi) + K*d/2*math.log(b0) - K*nu0*d/2*math.log(2) + K*nu0/2*ld
         - K*sum(gammaln((nu0-j)/2) for j in range(d)))
    c -= (K*gammaln(g0) - gammaln(K*g0)) if pt == "dirichlet_distribution" else K*betaln(1, g0)
    out = []
    for t in range(5):
        lpn, log_resp = sk._e_step(X)
        sk._m_step(X, log_resp)
        lb = sk._compute_lower_bound(log_resp, lpn)
        # ours
        r = np.exp(log_resp)
        stats = model.suff_stats(p, jnp.asarray(X), jnp.asarray(r))
        p = model.maximize(stats, p)
        lj = np.asarray(model.log_joint_matrix(p, jnp.asarray(X)))
        full = float(np.sum(r*(lj - log_resp)) + model.log_prior(p))
        A = np.asarray(p["prec_chol"]); nk = r.sum(0)
        tr = {"full": lambda: np.einsum('kij,kij->k', A, A), "tied": lambda: np.full(K, np.sum(A*A)), "diag": lambda: np.sum(A*A,1), "spherical": lambda: d*A*A}[ct]()
        corr = 0.5*sk.reg_covar*np.sum(nk*tr)
        out.append((full - lb - c - corr)/abs(lb))
        skl = sk._estimate_weighted_log_prob(X)
        assert np.allclose(skl, lj, rtol=1e-8, atol=1e-8), (ct, pt, np.abs(skl-lj).max())
    print(ct, pt, out, np.abs(np.asarray(p["means"])-sk.means_).max())
