"""minidino: DINO-style self-distillation, small, readable and fast."""

__version__ = "0.1.0"
