"""Training's console without the messages a user cannot act on, each silenced by its exact text (never
all warnings):

- Lightning's "number of training batches is smaller than the logging interval": wrong in effect here.
  Steps are logged every `log_every_n_steps` optimizer steps counted across epochs (an epoch of digits
  is ~13 steps, the interval 50), so every interval is logged; tests/test_console.py checks it.
- torch's FutureWarning that `isinstance(treespec, LeafSpec)` is deprecated: raised inside Lightning's
  own pytree helper, fixed by a Lightning release, not by us.
- Lightning's hardware inventory ("GPU available: False, used: False", TPU, HPU) and its advertising
  ("💡 Tip: ... litlogger"): the hardware used is the config's `trainer.*`, logged as params; and
  "`Trainer.fit` stopped: `max_steps=N` reached", glued to the bar's last frame: the bar and the train
  stage's own "[train] N steps" line say it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.pytorch.utilities.warnings import PossibleUserWarning

LOGGING_INTERVAL = r"The number of training batches \(\d+\) is smaller than the logging interval"
LEAFSPEC = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
_NOISE = (
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "💡 Tip:",
    "`Trainer.fit` stopped: `max_steps=",
)
_LIGHTNING_INFO = "lightning.pytorch.utilities.rank_zero"  # where rank_zero_info logs


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_NOISE)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Around building and fitting a Trainer: the messages above are dropped, every other one shown."""
    log = logging.getLogger(_LIGHTNING_INFO)
    noise = _DropNoise()
    log.addFilter(noise)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=LOGGING_INTERVAL, category=PossibleUserWarning)
            warnings.filterwarnings("ignore", message=LEAFSPEC, category=FutureWarning)
            yield
    finally:
        log.removeFilter(noise)
