"""The log-alignment ratio (LAR): the metric and its spectral forms (`metric`), usable on any
PyTorch model without the rest of the project. Every experiment family imports it; it imports
none of them."""

from grokking.lar.metric import (
    SPECTRAL_SUMMARY,
    LARProbe,
    ProbeSet,
    attach_probes,
    gram,
    k_lar,
    lar,
    lar_from_correlation,
    lar_from_covariance,
    lar_from_spectra,
    lar_from_sums,
    pearson,
    probed_matrix,
    spectra,
    spectra_from_gram,
    spectral_summary,
    sum_of_squares,
    summary_from_spectra,
    sums_of_squares,
)

__all__ = [
    "SPECTRAL_SUMMARY",
    "LARProbe",
    "ProbeSet",
    "attach_probes",
    "gram",
    "k_lar",
    "lar",
    "lar_from_correlation",
    "lar_from_covariance",
    "lar_from_spectra",
    "lar_from_sums",
    "pearson",
    "probed_matrix",
    "spectra",
    "spectra_from_gram",
    "spectral_summary",
    "sum_of_squares",
    "summary_from_spectra",
    "sums_of_squares",
]
