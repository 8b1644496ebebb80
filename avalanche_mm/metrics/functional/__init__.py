"""Pure functions behind the metrics (torch / numpy only, no Avalanche state).

See ``docs/metrics.md`` for the formulas.
"""

from avalanche_mm.metrics.functional.stream import *  # noqa: F401,F403
from avalanche_mm.metrics.functional.imbalance import *  # noqa: F401,F403
from avalanche_mm.metrics.functional.alignment import *  # noqa: F401,F403
from avalanche_mm.metrics.functional.cost import *  # noqa: F401,F403
from avalanche_mm.metrics.functional import stream as _stream
from avalanche_mm.metrics.functional import imbalance as _imbalance
from avalanche_mm.metrics.functional import alignment as _alignment
from avalanche_mm.metrics.functional import cost as _cost

__all__ = list(_stream.__all__) + list(_imbalance.__all__) + list(_alignment.__all__) + list(
    _cost.__all__
)
