"""A collapse watchdog: warn once when the teacher stays collapsed for several epochs.

DINO has two trivial solutions (see `minidino.collapse`): every image sent to one prototype
(teacher entropy near 0) or a flat teacher output (entropy near log K). A single bad epoch is
common early in training, so the watchdog waits until the same collapse has lasted
`patience_epochs` epochs in a row, then emits one `CollapseWarning` that names the collapse and
the knobs that fix it. Training goes on: the warning tells you to stop it, not the other way round.

    watchdog = CollapseWatchdog(cfg.out_dim, cfg.collapse_patience)
    for epoch in ...:
        message = watchdog.update(epoch, teacher_entropy, mean_entropy)  # per-epoch means
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

from minidino.collapse import collapse_mode

FIXES: dict[str, str] = {
    "one-prototype": (
        "every image goes to the same prototype: centering is too weak for how sharp the "
        "teacher is. Raise teacher_temp (--teacher-temp, e.g. 0.04 -> 0.07; also "
        "warmup_teacher_temp), or lower center_momentum (--center-momentum, e.g. 0.9; at 1 the "
        "center never moves and centering is off); a lower lr helps too"
    ),
    "uniform": (
        "the teacher's output is flat for every image: sharpening is too weak. Lower "
        "teacher_temp (--teacher-temp, e.g. 0.04; DINO uses 0.04-0.07), or raise "
        "center_momentum (--center-momentum, e.g. 0.9-0.99) so the center does not cancel "
        "each batch's own signal"
    ),
}


class CollapseWarning(UserWarning):
    """The teacher's outputs collapsed (one prototype or uniform) for several epochs in a row."""


class CollapseWatchdog:
    """Count consecutive epochs whose teacher entropy points to the same collapse; warn once.

    out_dim: K, the number of prototypes (max entropy log K).
    patience_epochs: how many epochs in a row must look collapsed before the warning; 0 disables
        the watchdog.
    tol: the band, as a fraction of log K, that counts as "near 0" or "near log K"
        (`collapse.collapse_mode`).
    """

    def __init__(self, out_dim: int, patience_epochs: int = 3, tol: float = 0.05) -> None:
        if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 2:
            raise ValueError(f"out_dim={out_dim!r} is not allowed: K needs at least 2 prototypes")
        if isinstance(patience_epochs, bool) or not isinstance(patience_epochs, int) \
                or patience_epochs < 0:
            raise ValueError(f"patience_epochs={patience_epochs!r} is not allowed: an integer "
                             ">= 0 (0 disables the watchdog)")
        if not 0 < tol < 0.5:
            raise ValueError(f"tol={tol!r} is not allowed: must lie in (0, 0.5)")
        self.out_dim, self.patience, self.tol = out_dim, patience_epochs, tol
        self.mode: str | None = None  # the collapse seen in the latest epoch
        self.streak = 0  # epochs in a row with that collapse
        self.warned: str | None = None  # the message, once it was emitted

    def classify(self, teacher_entropy: float, mean_entropy: float | None = None) -> str | None:
        """"one-prototype", "uniform" or None (healthy) for one epoch's mean entropies.

        A teacher can be sharp (per-image entropy near 0) while different images still pick
        different prototypes: that is healthy. When `mean_entropy` (the entropy of the
        batch-averaged teacher output) is given, one-prototype collapse also needs it near 0.
        """
        if not math.isfinite(teacher_entropy):
            raise ValueError(f"teacher_entropy={teacher_entropy!r} must be a finite number")
        mode = collapse_mode(teacher_entropy, self.out_dim, self.tol)
        if mode == "one-prototype" and mean_entropy is not None \
                and collapse_mode(mean_entropy, self.out_dim, self.tol) != "one-prototype":
            return None
        return mode

    def update(self, epoch: int, teacher_entropy: float,
               mean_entropy: float | None = None) -> str | None:
        """Record one epoch; return the warning's message on the epoch it fires, else None."""
        mode = self.classify(teacher_entropy, mean_entropy)
        if mode is None:
            self.streak = 0
        else:
            self.streak = self.streak + 1 if mode == self.mode else 1
        self.mode = mode
        if self.patience == 0 or self.warned is not None or mode is None \
                or self.streak < self.patience:
            return None
        self.warned = (
            f"{mode} collapse: the teacher's entropy has been "
            f"{'near 0' if mode == 'one-prototype' else 'near log K'} "
            f"({teacher_entropy:.3f} nats of at most log K = {math.log(self.out_dim):.3f}) for "
            f"{self.streak} epochs in a row, up to epoch {epoch}; {FIXES[mode]}. "
            "Set collapse_patience=0 to silence this warning."
        )
        warnings.warn(self.warned, CollapseWarning, stacklevel=2)
        return self.warned

    def replay(self, epochs_jsonl: str | Path) -> None:
        """Catch up on the epochs a run logged before it was resumed (no warning while doing so;
        a run that had already warned stays warned)."""
        path = Path(epochs_jsonl)
        if not path.exists():
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CollapseWarning)
            for line in path.read_text().splitlines():
                record = json.loads(line) if line.strip() else {}
                if "teacher_entropy" in record:  # not an epoch with only kNN scores
                    self.update(record["epoch"], record["teacher_entropy"],
                                record.get("mean_entropy"))
