"""Checks for this lesson's exercises (filled in with the lesson)."""

__all__: list[str] = []
