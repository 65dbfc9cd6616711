"""Validation: how closely generated showers agree with a reference sample.

The layer behind ``fastsim validate``, and the one part of fastsim that uses the
optional ``validate`` extra (scipy, scikit-learn, threadpoolctl) and ``plots``
extra (matplotlib). Those are imported only when a metric or a plot needs them,
so this package and its modules import with numpy alone.

- :mod:`fastsim.validation.comparison` -- the comparison protocol, the metrics
  dict of :func:`validate` and the report folder of :func:`write_report`; its
  public names are re-exported here.
- :mod:`fastsim.validation.features` -- per-shower high-level features (numpy only).
- :mod:`fastsim.validation.metrics` -- separation power, Wasserstein-1, FPD, KPD,
  classifier AUC.
- :mod:`fastsim.validation.classifier` -- the numpy network of the voxel-level
  classifier test.
- :mod:`fastsim.validation.plots` -- the figures of the report (matplotlib).

>>> from fastsim.validation import ALL_GROUPS, validate, write_report
>>> "separation" in ALL_GROUPS
True
"""

from __future__ import annotations

from fastsim.validation.comparison import (
    ALL_GROUPS,
    CONDITION_GROUPS,
    DEFAULT_GROUPS,
    FLOOR_METHODS,
    GROUP_CONDITIONS,
    Comparison,
    compare,
    format_energy_table,
    format_inclined_table,
    format_layer_table,
    format_particle_table,
    format_table,
    format_theta_table,
    format_worst,
    open_input,
    quick_figure_of_merit,
    validate,
    voxel_classifier_inputs,
    write_report,
)

__all__ = [
    "ALL_GROUPS",
    "CONDITION_GROUPS",
    "DEFAULT_GROUPS",
    "FLOOR_METHODS",
    "GROUP_CONDITIONS",
    "Comparison",
    "compare",
    "format_energy_table",
    "format_inclined_table",
    "format_layer_table",
    "format_particle_table",
    "format_table",
    "format_theta_table",
    "format_worst",
    "open_input",
    "quick_figure_of_merit",
    "validate",
    "voxel_classifier_inputs",
    "write_report",
]
