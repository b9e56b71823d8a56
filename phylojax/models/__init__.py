"""Substitution models, rate heterogeneity and the eigen cache."""

from .eigen import Eigensystem as Eigensystem
from .eigen import eigensystem as eigensystem
from .eigen import transition_probs as transition_probs
from .nucleotide import ReversibleModel as ReversibleModel
from .nucleotide import f81 as f81
from .nucleotide import gtr as gtr
from .nucleotide import hky85 as hky85
from .nucleotide import jc69 as jc69
from .nucleotide import k80 as k80
from .nucleotide import tn93 as tn93
from .rates import RateModel as RateModel
from .rates import discrete_gamma_rates as discrete_gamma_rates
from .rates import gamma_quantile as gamma_quantile
from .rates import rate_model as rate_model
from .codon import codon_frequencies as codon_frequencies
from .codon import mg94 as mg94
from .codon import mgk as mgk
from .spec import ModelSpec as ModelSpec
from .spec import build_model as build_model
from .spec import parse_model as parse_model
