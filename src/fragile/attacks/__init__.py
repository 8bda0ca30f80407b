"""Attacks on explanations: objectives plugged into one loop (``run``), and transfer."""

from fragile.attacks.loop import common_noise_maps, run, saliency
from fragile.attacks.objectives import available, create
from fragile.attacks.result import AttackResult
from fragile.attacks.transfer import transfer

__all__ = ["AttackResult", "available", "common_noise_maps", "create", "run", "saliency", "transfer"]
