"""Learned-index suffix-array search (issue 5; DESIGN.md section 5).

Build an index of a genome, save/load it, and answer batches of exact pattern queries::

    from phylojax import index
    idx = index.build_index(index.read_fasta("genome.fa"))
    index.save_index("genome.pjx", idx)
    device = index.prepare(index.load_index("genome.pjx"))
    lo, hi = index.count(device, index.encode_patterns(["ACGT", "GATTACA"]))

Every function that touches JAX needs ``jax_enable_x64`` (64-bit packed keys) and raises
:class:`phylojax.PrecisionError` otherwise.
"""

from .fileformat import FORMAT_VERSION as FORMAT_VERSION
from .fileformat import MAGIC as MAGIC
from .fileformat import load_index as load_index
from .fileformat import save_index as save_index
from .learned import LearnedModel as LearnedModel
from .learned import fit_model as fit_model
from .search import DeviceIndex as DeviceIndex
from .search import Patterns as Patterns
from .search import SuffixIndex as SuffixIndex
from .search import build_index as build_index
from .search import BLOCK as BLOCK
from .search import count as count
from .search import encode_patterns as encode_patterns
from .search import locate as locate
from .search import naive_count as naive_count
from .search import patterns_at as patterns_at
from .search import prepare as prepare
from .suffix_array import BREAK as BREAK
from .suffix_array import Text as Text
from .suffix_array import encode_text as encode_text
from .suffix_array import read_fasta as read_fasta
