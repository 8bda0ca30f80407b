"""Figures and reports, made from results only (nothing is recomputed here)."""

from fragile.reporting.panels import attack_panel

__all__ = ["attack_panel"]
