"""scikit-learn's own estimator checks on both estimators (CPU, one thread, tiny epochs)."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from skkprior import KroneckerPriorClassifier, PACBayesBoundEstimator

# Every check runs; none is expected to fail.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}

ESTIMATORS = [
    KroneckerPriorClassifier(max_epochs=20, n_samples=10, batch_size=32, device="cpu", random_state=0),
    PACBayesBoundEstimator(max_epochs=20, n_samples=10, batch_size=32, device="cpu", random_state=0),
]


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
