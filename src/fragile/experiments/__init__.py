"""Experiments: config -> run -> results (figures come from ``fragile.reporting``)."""
