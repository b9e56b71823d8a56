"""Model strings in IQ-TREE syntax, e.g. ``GTR{1.5,4,0.8,1.2,5}+F{.3,.2,.25,.25}+I{.1}+G4{.7}``.

A :class:`ModelSpec` records which parameters are fixed (values in braces) and which are free
(written without values: estimated by ``phylojax fit``; for ``phylojax loglik`` free parameters
take defaults, and ``+F`` takes empirical frequencies from the data).

Parameter names used throughout (``ModelSpec.parameters``):
``rates`` (GTR: AC, AG, AT, CG, CT, GT with GT = 1), ``kappa`` (K80/HKY/MGK),
``kappa_purine``/``kappa_pyrimidine`` (TN93), ``frequencies``, ``alpha`` (+G), ``pinv`` (+I),
``omega`` (codon dN/dS).
"""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from .nucleotide import ReversibleModel, gtr, tn93
from .rates import RateModel, rate_model

_NUCLEOTIDE = {
    "JC": "JC69", "JC69": "JC69", "F81": "F81", "K80": "K80", "K2P": "K80",
    "HKY": "HKY85", "HKY85": "HKY85", "TN": "TN93", "TN93": "TN93", "TRN": "TN93", "GTR": "GTR",
}  # fmt: skip
_CODON = {"MG94": "MGK", "MGK": "MGK", "MG": "MGK", "MG94XREV": "MG94xREV", "MGREV": "MG94xREV"}
_FREQ_COUNT = {"JC69": 0, "K80": 0, "F81": 4, "HKY85": 4, "TN93": 4, "GTR": 4}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A parsed model string.

    Attributes:
        name: canonical substitution model (JC69, K80, F81, HKY85, TN93, GTR, MGK, MG94xREV).
        frequency_mode: ``equal``, ``empirical``, ``fixed`` or ``estimate`` (``+F`` under ``fit``),
            or a codon estimator ``F1X4``/``F3X4``/``CF3X4``.
        category_count: Gamma categories (1 = no +G).
        median: median instead of mean category rates (``+G4m``).
        invariant: whether +I is present.
        parameters: name -> fixed value (float or tuple) or ``None`` for a free parameter.
        text: the original string.
    """

    name: str
    frequency_mode: str
    category_count: int
    median: bool
    invariant: bool
    parameters: dict
    text: str

    @property
    def is_codon(self) -> bool:
        return self.name in ("MGK", "MG94xREV")

    @property
    def free(self) -> list[str]:
        return [k for k, v in self.parameters.items() if v is None]


def _values(body: str | None, text: str) -> tuple[float, ...] | None:
    if body is None:
        return None
    try:
        vals = tuple(float(v) for v in body.split(",") if v.strip())
    except ValueError:
        raise InputError(f"model {text!r}: cannot read numbers in {{{body}}}") from None
    if any(not np.isfinite(v) or v < 0 for v in vals):
        raise InputError(f"model {text!r}: values in {{{body}}} must be finite and >= 0")
    return vals


def parse_model(text: str) -> ModelSpec:
    """Parse an IQ-TREE-style model string; raise :class:`InputError` naming the bad part."""
    parts = re.findall(r"\+?([A-Za-z0-9]+)(?:\{([^}]*)\})?", text.replace(" ", ""))
    rebuilt = "".join(
        ("+" if i else "") + p + ("{" + b + "}" if b else "") for i, (p, b) in enumerate(parts)
    )
    if not parts or rebuilt.replace("{}", "") != text.replace(" ", "").replace("{}", ""):
        raise InputError(f"cannot parse model string {text!r}")
    head, head_body = parts[0]
    key = head.upper()
    params: dict = {}
    if key in _NUCLEOTIDE:
        name = _NUCLEOTIDE[key]
        vals = _values(head_body or None, text)
        expected = {"JC69": 0, "F81": 0, "K80": 1, "HKY85": 1, "TN93": 2, "GTR": 5}[name]
        if vals is not None and len(vals) not in (expected, 6 if name == "GTR" else expected):
            raise InputError(f"model {text!r}: {name} takes {expected} values, got {len(vals)}")
        if name in ("K80", "HKY85"):
            params["kappa"] = vals[0] if vals else None
        elif name == "TN93":
            params["kappa_purine"] = vals[0] if vals else None
            params["kappa_pyrimidine"] = vals[1] if vals else None
        elif name == "GTR":
            params["rates"] = vals[:5] if vals else None
        freq_mode = "equal" if name in ("JC69", "K80") else "empirical"
    elif key in _CODON:
        name = _CODON[key]
        vals = _values(head_body or None, text)
        if name == "MGK":
            if vals is not None and len(vals) != 2:
                raise InputError(f"model {text!r}: MGK takes {{kappa,omega}}")
            params["kappa"] = vals[0] if vals else None
            params["omega"] = vals[1] if vals else None
        else:
            if vals is not None and len(vals) != 6:
                raise InputError(f"model {text!r}: MG94xREV takes {{AC,AG,AT,CG,CT,omega}}")
            params["rates"] = vals[:5] if vals else None
            params["omega"] = vals[5] if vals else None
        freq_mode = "F3X4"
    else:
        raise InputError(
            f"unknown model {head!r} in {text!r}; known: "
            + ", ".join(sorted(set(_NUCLEOTIDE) | set(_CODON)))
        )
    category_count, median, invariant = 1, False, False
    for part, body in parts[1:]:
        up = part.upper()
        vals = _values(body or None, text)
        if up == "F":
            if name in ("JC69", "K80"):
                raise InputError(f"model {text!r}: {name} has equal frequencies; use F81/HKY")
            if vals is not None:
                if len(vals) != 4 or abs(sum(vals) - 1) > 1e-3:
                    raise InputError(f"model {text!r}: +F{{...}} needs 4 frequencies summing to 1")
                params["frequencies"] = tuple(v / sum(vals) for v in vals)
                freq_mode = "fixed"
            else:
                params["frequencies"] = None
                freq_mode = "empirical"
        elif up in ("FQ", "FE"):
            freq_mode = "equal"
        elif up in ("F1X4", "F3X4", "CF3X4"):
            if name not in ("MGK", "MG94xREV"):
                raise InputError(f"model {text!r}: +{part} is for codon models")
            freq_mode = up
        elif re.fullmatch(r"G\d*M?", up):
            category_count = int(up[1:].rstrip("M") or 4)
            median = up.endswith("M")
            if category_count < 2:
                raise InputError(f"model {text!r}: +G needs at least 2 categories")
            if vals is not None and (len(vals) != 1 or vals[0] <= 0):
                raise InputError(f"model {text!r}: +G{{alpha}} needs one positive value")
            params["alpha"] = vals[0] if vals else None
        elif up == "I":
            invariant = True
            if vals is not None and (len(vals) != 1 or not 0 <= vals[0] < 1):
                raise InputError(f"model {text!r}: +I{{p}} needs 0 <= p < 1")
            params["pinv"] = vals[0] if vals else None
        else:
            raise InputError(f"model {text!r}: unknown component +{part}")
    if name in ("F81", "HKY85", "TN93", "GTR") and "frequencies" not in params:
        params["frequencies"] = None  # empirical by default, as IQ-TREE
    return ModelSpec(name, freq_mode, category_count, median, invariant, params, text)


DEFAULTS = {
    "kappa": 2.0, "kappa_purine": 2.0, "kappa_pyrimidine": 2.0, "rates": (1.0,) * 5,
    "alpha": 1.0, "pinv": 0.0, "omega": 1.0,
}  # fmt: skip


def empirical_frequencies(tip_partials: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Observed state frequencies, ambiguous characters resolved by EM (IQ-TREE's counting).

    Each ambiguous character is shared among its compatible states in proportion to the current
    frequency estimate, iterated to convergence; fully missing characters are ignored. This
    reproduces IQ-TREE 2's ``+F`` frequencies (checked in tests against ``-blfix`` lnL).
    """
    tips = np.asarray(tip_partials, dtype=np.float64)  # taxon, pattern, state
    if weights is None:
        weights = np.ones(tips.shape[1])
    state_count = tips.shape[-1]
    flat = tips.reshape(-1, state_count)
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64)[None, :], tips.shape[:2]).reshape(-1)
    keep = flat.sum(-1) < state_count
    flat, w = flat[keep], w[keep]
    if not len(flat):
        return np.full(state_count, 1.0 / state_count)
    freqs = np.full(state_count, 1.0 / state_count)
    for _ in range(1000):
        share = flat * freqs
        share /= share.sum(-1, keepdims=True)
        new = w @ share
        new /= new.sum()
        if np.max(np.abs(new - freqs)) < 1e-15:
            break
        freqs = new
    return new


def build_model(
    spec: ModelSpec, values: dict, data_frequencies: np.ndarray | None = None
) -> tuple[ReversibleModel, RateModel]:
    """Instantiate a nucleotide model and its rate model from ``values`` (name -> value).

    Values missing from ``values`` fall back to the fixed values in ``spec``, then to empirical
    frequencies (``data_frequencies``) and :data:`DEFAULTS`. Works under ``jit``/``grad`` when
    ``values`` holds JAX arrays.
    """
    if spec.is_codon:
        raise InputError("codon models are built by phylojax.models.codon")

    def get(name):
        if name in values and values[name] is not None:
            return values[name]
        fixed = spec.parameters.get(name)
        if fixed is not None:
            return jnp.asarray(fixed, dtype=float)
        if name == "frequencies":
            if spec.frequency_mode in ("empirical", "estimate") and data_frequencies is not None:
                return jnp.asarray(data_frequencies)
            return jnp.full(4, 0.25)
        return jnp.asarray(DEFAULTS[name], dtype=float)

    freqs = get("frequencies") if spec.name not in ("JC69", "K80") else jnp.full(4, 0.25)
    if spec.frequency_mode == "equal":
        freqs = jnp.full(4, 0.25)
    if spec.name in ("JC69", "F81"):
        model = gtr(jnp.ones(6), freqs)
    elif spec.name in ("K80", "HKY85"):
        model = tn93(get("kappa"), get("kappa"), freqs)
    elif spec.name == "TN93":
        model = tn93(get("kappa_purine"), get("kappa_pyrimidine"), freqs)
    else:
        model = gtr(get("rates"), freqs)
    alpha = get("alpha") if spec.category_count > 1 else None
    pinv = get("pinv") if spec.invariant else 0.0
    rates = rate_model(alpha, spec.category_count, pinv, median=spec.median)
    return model, rates
