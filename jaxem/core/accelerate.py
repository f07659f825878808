"""SQUAREM: EM accelerated by squared extrapolation, as one trip function of the EM loop.

Varadhan and Roland (2008), "Simple and globally convergent methods for accelerating the
convergence of any EM algorithm", Scand. J. Statist. 35, scheme S3, with the step-length rules
of their R package SQUAREM (``squarem1``). From an accepted point ``θ0`` two EM steps give
``θ1 = F(θ0)`` and ``θ2 = F(θ1)``; with ``r = θ1 - θ0``, ``v = θ2 - 2 θ1 + θ0`` and the step
``α = -‖r‖ / ‖v‖`` the extrapolated point is ``θ0 - 2α r + α² v``. Everything is done in the
unconstrained space of the model's ``constraints`` (:mod:`jaxem.core.constraints`), so every
extrapolated point is a valid model.

How a cycle maps onto the loop's trips (each trip is one M-step and one pass, as in plain EM):

- phase 0, at an accepted ``θ0`` (its pass done): the M-step gives ``θ1``; the pass runs at ``θ1``.
- phase 1: the M-step gives ``θ2``, which needs no pass of its own: the pass runs at the
  extrapolated point. If its objective is no lower than ``θ1``'s it is accepted (phase 0 again;
  its pass is the next cycle's start, and the next M-step is SQUAREM's stabilising EM step).
  Otherwise the trip is *held*: the restart keeps ``θ1`` with its objective and statistics, and
- phase 2 replays ``θ2`` (kept from phase 1) as a plain EM step: monotone, whatever happened.

So an accepted cycle costs two passes for what plain EM takes many, a rejected one three, and
the objective of every point the loop keeps is no lower than the one before: the history
(one entry per trip, a held trip repeating the kept objective) never decreases. ``n_iter``
counts trips, i.e. passes and M-steps, with or without acceleration. Convergence is tested on
EM steps only (phases 0 and 2), with plain EM's rule: an extrapolation that barely moves the
objective may have landed across the optimum rather than at it. An EM step that lowers the
objective by less than ``tol`` (an M-step that is not an exact maximiser, e.g. with
``reg_covar``, pulling back from an extrapolated point past its fixed point) is held too, and
the restart converges at the higher point.

Step lengths (``squarem1``): ``-α`` is clamped to ``[1, step_max]``; ``step_max`` starts at 1 (the
first cycle is two plain EM steps) and is multiplied by ``mstep`` each time the step reaches it
and is kept, divided by ``mstep`` (not below 1) when such a step is rejected. At ``-α = 1`` the
point is exactly ``θ2``, a plain EM step, and is kept as plain EM would. The R package compares
the extrapolated point with ``θ0`` and by default allows a decrease of 1 (``objfn.inc``); here
it must match ``θ1``, the last point the history recorded, so no decrease at all is allowed.
Where the three points agree a leaf keeps ``θ2`` bit for bit, and an entry that is exactly 0 at
all three stays 0 (hmmlearn's structural zeros in a transition matrix).

Newton points: a gradient M-step of a mixture knows the log-likelihood's own gradient and
curvature at ``θ1`` (Louis' identity; :func:`jaxem.core.curvature.likelihood_newton`). Where it
is concave there, phase 1 tries ``θ1`` moved by that Newton step instead of the S3 point, under
the same accept-or-replay rule: EM's slowest directions (little of their information observed)
are where the S3 step gains least and the Newton step most. A rejected Newton point halves the
length of the next one (down to 1/64), an accepted one doubles it (up to the whole step).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from . import constraints as C
from .loop import advance, computed_once, proposed, select
from .stopping import small_change

Array = jax.Array

ACCELERATIONS = ("auto", "squarem")


def resolve(accelerate, rule, target) -> bool:
    """Whether a fit runs SQUAREM, from the user's ``accelerate``; checked before any compute.

    Args:
        accelerate: ``"auto"`` (SQUAREM for the soft E-step of a model that declares its
            ``constraints``, plain EM otherwise), ``"squarem"`` or ``True`` (SQUAREM; a
            ValueError with a hard or annealed E-step), ``None`` or ``False`` (plain EM).
        rule: the fit's :class:`jaxem.core.estep.EStepRule`.
        target: the model (its ``constraints`` and ``name`` are read).
    """
    if accelerate is None or accelerate is False:
        return False
    if accelerate is not True and accelerate not in ACCELERATIONS:
        raise ValueError(f"accelerate must be 'auto', 'squarem', True, False or None, got "
                         f"{accelerate!r}")
    plain_rule = not rule.hard and rule.annealing is None
    if accelerate == "auto":
        # Without declared constraints "valid parameters" are unknown, and an extrapolated
        # point might leave the model (weights that no longer sum to 1 can raise the objective).
        return plain_rule and getattr(target, "constraints", None) is not None
    if not plain_rule:
        raise ValueError("accelerate='squarem' needs e_step='soft': hard and annealed E-steps "
                         "change the objective from one iteration to the next, so there is no "
                         "fixed-point map to extrapolate; use accelerate=None with them")
    return True


def _is_constraint(node) -> bool:
    return isinstance(node, C.Constraint) or node is None


class Squarem(NamedTuple):
    """SQUAREM settings for :attr:`jaxem.core.loop.Settings.accelerate` (hashable, so the host
    loop compiles its extrapolation once per constraint structure); build it with
    :meth:`over`.

    Attributes:
        constraint_leaves, constraint_def: the parameters' constraint pytree, flattened.
        mstep: factor by which the largest step grows and shrinks (``squarem1``'s ``mstep``).
    """

    constraint_leaves: tuple
    constraint_def: Any
    mstep: float = 4.0

    @classmethod
    def over(cls, constraints, mstep: float = 4.0) -> Squarem:
        """SQUAREM in the unconstrained space of ``constraints`` (a pytree of
        :class:`jaxem.core.constraints.Constraint`, a prefix of the parameters'; ``None``: real)."""
        leaves, treedef = jax.tree.flatten(constraints, is_leaf=_is_constraint)
        return cls(tuple(leaves), treedef, float(mstep))

    @property
    def constraints(self):
        """The constraint pytree."""
        return jax.tree.unflatten(self.constraint_def, self.constraint_leaves)

    def fields(self, params) -> dict:
        """The loop-state fields SQUAREM adds, for ``[R]``-stacked ``params``."""
        n = jax.tree.leaves(params)[0].shape[0]
        dtype = jnp.result_type(*[leaf for leaf in jax.tree.leaves(params)
                                  if jnp.issubdtype(leaf.dtype, jnp.inexact)] or [jnp.float32])
        return dict(sq_phase=jnp.zeros((n,), jnp.int32), sq_anchor=params, sq_fallback=params,
                    sq_step_max=jnp.ones((n,), dtype), sq_fallbacks=jnp.zeros((n,), jnp.int32),
                    sq_newton_length=jnp.ones((n,), dtype))

    def needs_m_step(self, s: dict) -> bool:
        """Whether any running restart uses this trip's M-step (a restart replaying its
        fallback step does not); the host loop skips it otherwise."""
        return bool(jnp.any(s["running"] & (s["sq_phase"] != 2)))

    def trip(self, s: dict, stepped, e_pass, settings, gap=None, newton=None) -> dict:
        """One trip of the accelerated loop: choose the point, run ``e_pass(params) ->
        (objective [R], aux)`` there, keep or hold, and call :func:`jaxem.core.loop.advance`
        (with a gradient M-step's ``gap``, which says nothing about an extrapolated point).
        ``newton`` (a gradient M-step's Newton step on the log-likelihood, unconstrained, NaN
        where it has none) is tried instead of the S3 extrapolation where it has one."""
        view = {k: s[k] for k in ("params", "running", "trips", "sq_phase", "sq_anchor",
                                  "sq_fallback", "sq_step_max", "sq_newton_length")}
        new_params, em_step, step = _choose(view, stepped, newton, squarem=self)
        objective, aux = e_pass(new_params)
        objective = jnp.asarray(objective)
        active = s["running"] & (s["trips"] > 0)
        phase = s["sq_phase"]
        at_anchor, extrapolating = active & (phase == 0), active & (phase == 1)
        extrapolated = extrapolating & (step > 1)
        # NaN compares False: a non-finite extrapolated point is rejected.
        rejected = extrapolated & ~(objective >= s["objective"])
        # An EM step may go down from an accepted extrapolated point when the M-step is not an
        # exact maximiser (reg_covar): the point lay past the map's fixed point. Within ``tol``
        # the step is held and the restart converges at the higher point; a larger drop is kept,
        # as plain EM would keep it.
        settled = (active & ~extrapolated & (objective < s["objective"])
                   & small_change(objective, s["objective"], settings.tol))
        held = rejected | settled
        held, rejected, settled, extrapolated = computed_once(held, rejected, settled, extrapolated)
        out = advance(s, em_step, select(held, s["params"], new_params),
                      jnp.where(held, s["objective"], objective),
                      select(held, s["aux"], aux), settings,
                      None if gap is None else jnp.where(extrapolated, 0, gap),
                      can_converge=~extrapolated)
        at_max = extrapolating & (step == s["sq_step_max"])
        step_max = jnp.where(at_max & ~rejected, s["sq_step_max"] * self.mstep,
                             jnp.where(at_max & rejected,
                                       jnp.maximum(s["sq_step_max"] / self.mstep, 1.0),
                                       s["sq_step_max"]))
        # A Newton point the log-likelihood rejected was too long (the function is not as
        # quadratic as its curvature says): the next one goes half as far, an accepted one twice.
        tried = extrapolating & jnp.isinf(step)
        length = s["sq_newton_length"]
        length = jnp.where(tried, jnp.where(rejected, jnp.maximum(length / 2, 2.0 ** -6),
                                            jnp.minimum(2 * length, 1.0)), length)
        return dict(out, sq_newton_length=length,
                    sq_phase=jnp.where(active & ~settled,
                                       jnp.where(at_anchor, 1, jnp.where(rejected, 2, 0)), phase),
                    sq_anchor=select(at_anchor & ~settled, s["params"], s["sq_anchor"]),
                    sq_fallback=select(extrapolating, stepped, s["sq_fallback"]),
                    sq_step_max=step_max, sq_fallbacks=s["sq_fallbacks"] + rejected)

    def toward(self, start, step, length) -> Any:
        """``start`` moved by ``length`` (scalar) times ``step`` (a pytree like the unconstrained
        ``start``) in the unconstrained space, for ONE restart."""
        constraints = self.constraints
        return C.constrain(constraints, jax.tree.map(lambda u, d: u + length * d,
                                                     C.unconstrain(constraints, start), step))

    def extrapolate(self, theta0, theta1, theta2, step_max) -> tuple[Any, Array]:
        """The S3 point from ``θ0, θ1 = F(θ0), θ2 = F(θ1)`` of ONE restart (pytrees of the
        parameters' shapes) with ``-α`` clamped to ``[1, step_max]``, and that ``-α`` (scalar)."""
        constraints = self.constraints
        u0, u1, u2 = (C.unconstrain(constraints, t) for t in (theta0, theta1, theta2))
        r = jax.tree.map(jnp.subtract, u1, u0)
        v = jax.tree.map(lambda a, b, c: (c - b) - (b - a), u0, u1, u2)

        def sum_sq(tree):
            return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)
                       if jnp.issubdtype(leaf.dtype, jnp.inexact))

        sr2, sv2 = sum_sq(r), sum_sq(v)
        ratio = jnp.sqrt(sr2 / sv2)  # inf when v = 0 (r keeps its direction): the largest step
        step = jnp.where(sr2 > 0, jnp.clip(jnp.where(jnp.isnan(ratio), 1.0, ratio), 1.0, step_max),
                         1.0).astype(step_max.dtype)
        u = jax.tree.map(lambda a, b, c: a + 2 * step * b + step * step * c, u0, r, v)
        theta = C.constrain(constraints, u)

        def keep(new, t0, t1, t2):
            if not jnp.issubdtype(t2.dtype, jnp.inexact):
                return t2
            same = jnp.all((t0 == t1) & (t1 == t2))
            zero = (t0 == 0) & (t1 == 0) & (t2 == 0)
            return jnp.where(same, t2, jnp.where(zero, jnp.zeros_like(t2), new.astype(t2.dtype)))

        theta = jax.tree.map(keep, theta, theta0, theta1, theta2)
        # -α = 1 is θ2 itself: taken as it is, without the round trip through the constraints.
        return select(step == 1, theta2, theta), step


def squarem(enabled: bool, constraints) -> Squarem | None:
    """The :attr:`jaxem.core.loop.Settings.accelerate` of a fit: a :class:`Squarem` over
    ``constraints`` when ``enabled``, else ``None``."""
    return Squarem.over(constraints) if enabled else None


# Jitted so that the host loop runs it as one program (inside the compiled loop it is inlined).
@functools.partial(jax.jit, static_argnames=("squarem",))
def _choose(s: dict, stepped, newton=None, *, squarem: Squarem):
    """``(params for the pass, the EM map's image of the current point, -α [R])``; a Newton
    point is reported with ``-α = inf`` (an extrapolation, never at the step-length limit)."""
    phase = s["sq_phase"]
    usable = jnp.zeros_like(phase, bool) if newton is None else _finite(newton)
    extrapolating, replaying, usable = computed_once(phase == 1, phase == 2, usable)
    # The EM map's image of the current point: phase 2 replays the θ2 kept in phase 1.
    em_step = select(replaying, s["sq_fallback"], stepped)
    extrapolated, step = jax.vmap(squarem.extrapolate)(s["sq_anchor"], s["params"], stepped,
                                                       s["sq_step_max"])
    if newton is not None:
        # The M-step's Newton step on the log-likelihood from the current point (the θ1 the
        # S3 step would extrapolate from), damped after rejections.
        damped = jax.vmap(squarem.toward)(s["params"], newton, s["sq_newton_length"])
        extrapolated = select(usable, damped, extrapolated)
        step = jnp.where(usable, jnp.inf, step)
    return proposed(s, select(extrapolating, extrapolated, em_step)), em_step, step


def _finite(tree) -> Array:
    """``[R]`` whether every leaf of restart ``r`` is finite."""
    leaves = [jnp.all(jnp.isfinite(leaf).reshape(leaf.shape[0], -1), axis=1)
              for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves), axis=0)
