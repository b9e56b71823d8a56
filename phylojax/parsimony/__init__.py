"""Parsimony: exact small-parsimony length, exact SPR move scores and SPR search (DESIGN.md §4)."""

from .fitch import TreeArrays as TreeArrays
from .fitch import constant_length_sites as constant_length_sites
from .fitch import parsimony_length as parsimony_length
from .fitch import sankoff_length_numpy as sankoff_length_numpy
from .fitch import site_lengths as site_lengths
from .fitch import tree_arrays as tree_arrays
