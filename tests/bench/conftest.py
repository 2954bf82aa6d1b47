"""The benchmark's smoke test runs against the e2e stack: the same session fixture."""

from tests.e2e.conftest import stack  # noqa: F401  (a fixture, used by name)
