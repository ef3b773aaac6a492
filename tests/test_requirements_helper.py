"""tests/requirements.py: a missing optional package or data file skips locally and fails under CI=true."""

import pytest

import requirements


def test_missing_data_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setattr(requirements, "IN_CI", True)
    with pytest.raises(RuntimeError, match="shared data not found.*no/such/file.*CI=true"):
        requirements.need_data("no/such/file")
    with pytest.raises(RuntimeError, match="no_such_module is not installed"):
        requirements.need_modules("no_such_module")
    monkeypatch.setattr(requirements, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="shared data not found"):
        requirements.need_data("no/such/file")
    assert requirements.need_data("benchmarks")[0].is_dir()  # present data passes through
