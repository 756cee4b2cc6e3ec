"""Settings: environment variables, production safety."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from taskyard.config import Settings


def test_env_vars_configure_fractional_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """TASKYARD_* variables set the fields, fractional seconds included."""
    monkeypatch.setenv("TASKYARD_HEALTH_INTERVAL_MIN_S", "0.25")
    monkeypatch.setenv("TASKYARD_PORT", "9999")
    monkeypatch.setenv("TASKYARD_PUBLIC_URL", "https://q.example.com/")
    settings = Settings()
    assert settings.health_interval_min_s == 0.25
    assert settings.port == 9999
    assert settings.callback_base_url == "https://q.example.com"


def test_seed_defaults() -> None:
    """Defaults are the seed's health values."""
    settings = Settings(_env_file=None)
    assert (settings.health_timeout_s, settings.health_interval_min_s) == (5.0, 10.0)
    assert (settings.health_interval_max_s, settings.health_retries) == (60.0, 3)
    assert (settings.health_retry_delay_s, settings.offline_removal_s) == (2.0, 180.0)


@pytest.mark.parametrize("secret", ["", "short"])
def test_production_refuses_weak_secret(secret: str) -> None:
    """Production will not start with a missing or short secret."""
    with pytest.raises(ValidationError, match="TASKYARD_JWT_SECRET"):
        Settings(env="production", jwt_secret=secret)


def test_production_accepts_strong_secret() -> None:
    """A 32+ character secret is enough for production."""
    assert Settings(env="production", jwt_secret="k" * 48).env == "production"
