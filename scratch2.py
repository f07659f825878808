import numpy as np, jaxem as jem, time
rng = np.random.default_rng(0)
X = np.concatenate([rng.normal(size=(300,2))+6, rng.normal(size=(300,2)), rng.normal(size=(300,2))-6])
for ct in ["full","diag","spherical","tied"]:
  for pt in ["dirichlet_process","dirichlet_distribution"]:
    t=time.time()
    m = jem.BayesianGaussianMixture(10, covariance_type=ct, weight_concentration_prior_type=pt, random_state=0, max_iter=500).fit(X)
    w = np.sort(m.weights_)[::-1]
    print(ct, pt, np.round(w,4), m.converged_, m.n_iter_, np.all(np.diff(m.history_[:m.n_iter_])>=-1e-9), time.time()-t)
