"""Checks for the course's exercises, one module per lesson.

Each check takes the learner's function, compares it with minidino's reference on seeded random
and edge cases, and returns the function the notebook should go on with (the reference while the
exercise is not done yet). See `minidino.checks._core` for the contract.
"""

from minidino.checks._core import CheckFailed, run_check
from minidino.checks.lesson01_vit import *  # noqa: F401,F403
from minidino.checks.lesson02_augment import *  # noqa: F401,F403
from minidino.checks.lesson03_loss import *  # noqa: F401,F403
from minidino.checks.lesson04_centering import *  # noqa: F401,F403
from minidino.checks.lesson05_teacher import *  # noqa: F401,F403
from minidino.checks.lesson06_loop import *  # noqa: F401,F403
from minidino.checks.lesson07_eval import *  # noqa: F401,F403
from minidino.checks.lesson08_attention import *  # noqa: F401,F403
from minidino.checks.lesson09_ibot import *  # noqa: F401,F403
from minidino.checks.lesson10_dinov2 import *  # noqa: F401,F403
from minidino.checks.lesson11_propagation import *  # noqa: F401,F403

__all__ = ["CheckFailed", "run_check"]
