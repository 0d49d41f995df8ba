__version__ = "0.1.0"
# Pin the numeric libraries' instruction paths before anything imports numpy or torch (nbs/04_numerics.ipynb).
from .numerics import pin_cpu as _pin_cpu
_pin_cpu()
