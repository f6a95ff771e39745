"""Certificates: randomized smoothing (L2, Cohen et al. 2019) with resumable dataset runs and
reports, and interval bound propagation (Linf / L2, Gowal et al. 2018). Both register in
``CERTIFIERS`` as thin ``Certifier`` classes (``Smoothing``, ``IBP``) giving certified radii."""

from hardened.certify.base import CERTIFIERS, Certifier
from hardened.certify.certifiers import IBP, Smoothing
from hardened.certify.ibp import (
    IBPResult,
    IntervalBounds,
    certify_ibp,
    interval_bounds,
    margin_lower_bounds,
)
from hardened.certify.report import (
    CertifySummary,
    comparison_markdown,
    comparison_table,
    plot_certified_accuracy,
    summarize,
    summary_markdown,
)
from hardened.certify.runs import (
    CertifyRun,
    SampleRecord,
    certify_dataset,
    read_records,
)
from hardened.certify.smoothing import (
    DEFAULT_ALPHA,
    DEFAULT_N,
    DEFAULT_N0,
    Certificate,
    SmoothedClassifier,
    SmoothedPrediction,
    certify,
    predict,
)
from hardened.certify.stats import (
    binomial_test,
    clopper_pearson_lower,
    clopper_pearson_upper,
    min_samples_to_certify,
    min_samples_to_predict,
)

__all__ = [
    "CERTIFIERS",
    "Certifier",
    "IBP",
    "Smoothing",
    "DEFAULT_ALPHA",
    "DEFAULT_N",
    "DEFAULT_N0",
    "Certificate",
    "CertifyRun",
    "CertifySummary",
    "IBPResult",
    "IntervalBounds",
    "SampleRecord",
    "SmoothedClassifier",
    "SmoothedPrediction",
    "binomial_test",
    "certify",
    "certify_dataset",
    "certify_ibp",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "comparison_markdown",
    "comparison_table",
    "interval_bounds",
    "margin_lower_bounds",
    "min_samples_to_certify",
    "min_samples_to_predict",
    "plot_certified_accuracy",
    "predict",
    "read_records",
    "summarize",
    "summary_markdown",
]
