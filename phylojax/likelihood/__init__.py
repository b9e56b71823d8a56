"""Level-batched / scan-based Felsenstein pruning and the analyses built on it."""

from .api import PhyloData as PhyloData
from .api import Problem as Problem
from .api import ancestral_states as ancestral_states
from .api import branch_derivatives as branch_derivatives
from .api import edge_log_likelihoods as edge_log_likelihoods
from .api import log_likelihood as log_likelihood
from .api import make_data as make_data
from .api import prepare as prepare
from .api import site_log_likelihoods as site_log_likelihoods
from .pruning import mixture_log_likelihoods as mixture_log_likelihoods
from .topology import Topology as Topology
from .topology import build_topology as build_topology
