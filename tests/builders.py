"""The test builders and oracles live in :mod:`partguard.testing` (shared with ``partguard
demo`` and benchmarks/): import them from there. This re-export keeps ``from builders import
…`` working for tests written before the move."""

from partguard.testing.build import *
from partguard.testing.catalog import *
from partguard.testing.live import *
from partguard.testing.oracles import *
