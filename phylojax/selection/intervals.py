"""Profile-likelihood 95 % intervals of a site's dN/dS (``phylojax fel --ci``).

The interval is ``{omega : l_prof(omega) >= l_max - 1.92}`` (chi^2_1 0.95 quantile / 2), where
``l_prof(omega)`` maximises the site likelihood over every other parameter at ``beta = omega
alpha``. Its ends are found on ``phi = atan(omega)`` between the MLE and each end of ``[0,
10000]`` (HyPhy's cap on dN/dS), for all sites at once: by bisection, or by false position for
the costly profile with a nuisance. The profile depends on the
configuration:

* all branches tested, ``--srv Yes``: ``max_r`` at ``(alpha, beta) = r (cos phi, sin phi)``
  (:func:`.site_fits.profile_dnds`, the fast path's Newton in ``log r``);
* ``--srv No``: ``alpha = 1``, so the profile is the likelihood in ``beta`` itself
  (:func:`.site_srv_no.profile_beta`);
* background branches (a nuisance ``beta_bg``): ``max`` over ``beta_bg`` and, under ``--srv
  Yes``, ``alpha`` (:func:`.site_classes.profile_classes`), run where the two-class fits run
  (the one-CPU child of :mod:`.isolated`).
"""

from __future__ import annotations

import math

import numpy as np

from .site_fits import UPPER, SiteFits, SiteProblem

CHI2_HALF = 1.920729410347062  # chi2_1 0.95 quantile / 2
CAP = UPPER  # dN/dS is reported within [0, 10000], as HyPhy does


def bisect_interval(profile, phi_hat, target, hi_end: float, iterations: int = 14):
    """Ends ``(lb, ub)`` in ``phi`` of ``{phi : profile(phi) >= target}`` around ``phi_hat``
    (per site), within ``[0, hi_end]``: an end is the boundary itself when the profile there is
    still above the target, else the bisection's last inside point. ``profile(phi [site]) ->
    [site]``."""
    n = len(phi_hat)

    def bound(end):
        inside = profile(np.full(n, end)) >= target  # the interval reaches the boundary
        lo, hi = (phi_hat.copy(), np.full(n, end)) if end > 0 else (np.full(n, end), phi_hat.copy())
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            ok = profile(mid) >= target
            if end > 0:
                lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
            else:
                lo, hi = np.where(ok, lo, mid), np.where(ok, mid, hi)
        edge = lo if end > 0 else hi
        return np.where(inside, end, edge)

    return bound(0.0), bound(hi_end)


def false_position_interval(profile, phi_hat, f_hat, hi_end: float, iterations: int = 10,
                            tol: float = 1e-3):
    """As :func:`bisect_interval`, by the Illinois variant of false position, for the profile
    with a nuisance, whose evaluations cost far more than the fast path's (at most
    ``iterations`` per end instead of bisection's 14). ``f_hat``: the profile at ``phi_hat``
    (the alternative's lnL); the level is ``f_hat - CHI2_HALF``.

    The root is sought in the signed root ``sqrt(CHI2_HALF) - sqrt(f_hat - profile)``, which is
    nearly linear in ``phi`` where the profile is nearly quadratic, so the secant steps land
    close (on ``profile - target`` itself, a profile thousands of units down at the end of the
    range puts the first steps next to the MLE). An end is the last point found inside; a site
    stops once its profile is within ``tol`` of the target."""
    n = len(phi_hat)
    f_hat = np.asarray(f_hat, float)
    target = f_hat - CHI2_HALF
    top = math.sqrt(CHI2_HALF)

    def signed(f):
        return top - np.sqrt(np.maximum(f_hat - f, 0.0))

    def bound(end):
        f_end = profile(np.full(n, end))
        inside_end = f_end >= target  # the interval reaches the boundary
        a, ga = phi_hat.copy(), np.full(n, top)  # inside: ga >= 0
        b, gb = np.full(n, end), np.where(inside_end, -1.0, signed(f_end))  # outside: gb < 0
        last = np.zeros(n, int)  # side replaced last: +1 inside, -1 outside
        near = ~inside_end & (np.abs(f_end - target) < tol)
        done = inside_end | near
        a = np.where(near, b, a)
        for _ in range(iterations):
            if done.all():
                break
            denom = np.where(gb != ga, gb - ga, -1.0)
            c = np.where(done, a, b - gb * (b - a) / denom)
            c = np.clip(c, np.minimum(a, b), np.maximum(a, b))
            fc = profile(c)
            gc = signed(fc)
            ins = (fc >= target) & ~done
            out = (fc < target) & ~done
            # Illinois: halve the stale end's value when the same side is replaced twice
            gb = np.where(ins & (last == 1), 0.5 * gb, gb)
            ga = np.where(out & (last == -1), 0.5 * ga, ga)
            a, ga = np.where(ins, c, a), np.where(ins, gc, ga)
            b, gb = np.where(out, c, b), np.where(out, gc, gb)
            last = np.where(ins, 1, np.where(out, -1, last))
            near = ~done & (np.abs(fc - target) < tol)
            a = np.where(out & near, c, a)  # within tol just outside: take it
            done = done | near
        return np.where(inside_end, end, a)

    return bound(0.0), bound(hi_end)


def ratio(phi) -> np.ndarray:
    """dN/dS ``tan phi`` capped at ``CAP`` (``phi = pi/2`` is ``alpha = 0``)."""
    phi = np.asarray(phi)
    return np.where(phi >= math.atan(CAP) - 1e-12, CAP, np.minimum(np.tan(phi), CAP))


def profile_ci(problem: SiteProblem, tips, fits: SiteFits, srv: bool = True,
               iterations: int = 14, site_chunk: int | None = None) -> np.ndarray:  # fmt: skip
    """``[site, (LB, MLE, UB)]`` of dN/dS for the fits ``fits`` of ``tips [site, taxon, state]``.

    With background branches this runs the two-class profile in *this* process; :func:`.fel.fel`
    has it run in the one-CPU child with the fits (:mod:`.isolated`), because XLA:CPU (jaxlib
    0.10.2) deadlocks on the two-class programs with two threads; ``site_chunk`` (8 in
    :func:`.fel.fel`'s in-process fallback) then takes the sites a few at a time, the precaution
    of the sequential fits (:mod:`.site_general`).
    """
    tips = np.asarray(tips)
    alpha, beta = np.asarray(fits.alpha, float), np.asarray(fits.beta, float)
    target = np.asarray(fits.alt_loglik) - CHI2_HALF
    if problem.has_background:
        from .site_classes import profile_classes

        hi_end = math.atan(CAP)  # alpha > 0 on this parametrisation; alpha -> 0 is the limit
        a = alpha if srv else np.ones_like(alpha)
        step = site_chunk or max(len(alpha), 1)
        phi_hat = np.minimum(np.arctan2(beta, a), hi_end)

        def start(scale, bg):  # (psi, u) of a fit; alpha = 0 (psi = pi/2) is not a usable start
            bg = np.nan_to_num(np.asarray(bg, float), nan=0.0)
            scale = np.asarray(scale, float)
            psi = np.where(scale > 0, np.arctan2(bg, np.maximum(scale, 1e-300)), 0.0)
            u = np.log(np.clip(scale, 1e-9, UPPER)) if srv else np.zeros_like(scale)
            return np.stack([psi, np.where(scale > 0, u, 0.0)], -1)

        null_scale = fits.null_rate if srv else np.ones_like(a)
        fixed = np.stack([start(a, fits.beta_background),
                          start(null_scale, fits.null_beta_background)], 1)  # fmt: skip
        # the optimum at the last angle found inside the interval, on each side of the MLE: the
        # root finder's later points are close to it
        warm = {side: fixed[:, 0].copy() for side in ("lo", "hi")}

        def profile(phi):
            upper = phi >= phi_hat
            near = np.where(upper[:, None], warm["hi"], warm["lo"])
            # and the MLE's beta and beta_bg kept, alpha = beta / omega (above the MLE's ratio
            # the best alpha falls with 1 / omega, by orders of magnitude at the cap)
            scale = np.clip(beta / np.maximum(np.tan(phi), 1e-12), 1e-9, UPPER) if srv else a
            keep_beta = start(np.where(beta > 0, scale, a), fits.beta_background)
            starts = np.concatenate([fixed, keep_beta[:, None], near[:, None]], 1)
            out = [profile_classes(problem, tips[k : k + step], phi[k : k + step],
                                   starts[k : k + step], srv=srv)
                   for k in range(0, len(phi), step)]  # fmt: skip
            f, psi, u = (np.concatenate([o[i] for o in out]) for i in range(3))
            inside = f >= target
            for side, mask in (("hi", inside & upper), ("lo", inside & ~upper)):
                warm[side][mask] = np.stack([psi, u], -1)[mask]
            return f

    elif srv:
        from .site_fits import profile_dnds

        hi_end = math.pi / 2
        phi_hat = np.arctan2(beta, alpha)
        u0 = np.log(np.maximum(np.hypot(alpha, beta), 1e-9))

        def profile(phi):
            return np.asarray(profile_dnds(problem, tips, phi, u0)[1])

    else:
        from .site_srv_no import profile_beta

        hi_end = math.pi / 2
        phi_hat = np.arctan2(beta, alpha)

        def profile(phi):
            return profile_beta(problem, tips, np.minimum(np.tan(phi), CAP))

    if problem.has_background:
        lb, ub = false_position_interval(profile, phi_hat, fits.alt_loglik, hi_end)
    else:
        lb, ub = bisect_interval(profile, phi_hat, target, hi_end, iterations)
    return np.column_stack([ratio(lb), ratio(phi_hat), ratio(ub)])
