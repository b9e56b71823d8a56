"""phylojax: JAX-native, differentiable phylogenetics."""

from .errors import InputError as InputError
from .errors import PhylojaxError as PhylojaxError
from .errors import PrecisionError as PrecisionError

__version__ = "0.1.0"
