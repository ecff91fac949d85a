"""Settings: secrets stay secret, trust settings parse as a ConfigMap writes them."""

from __future__ import annotations

import pytest

from podserve.settings import Settings, render_markdown

TOKEN = "adm1n-t0ken-secret"
URL = "amqp://user:amqp-pa55-secret@broker:5672/"


def test_secrets_are_not_in_the_repr_or_a_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODSERVE_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("PODSERVE_AMQP_URL", URL)
    settings = Settings()
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert TOKEN not in text
        assert "amqp-pa55-secret" not in text
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == TOKEN
    assert settings.amqp_url.get_secret_value() == URL


def test_trust_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODSERVE_ALLOWED_MODULES", "mycompany.models, transformers")
    monkeypatch.setenv("PODSERVE_ALLOW_VOLUME_CODE", "signed")
    monkeypatch.setenv("PODSERVE_REQUIRE_SIGNATURE", "true")
    monkeypatch.setenv("PODSERVE_TRUSTED_KEYS_DIR", "/etc/podserve/keys")
    s = Settings()
    assert s.allowed_modules == ["mycompany.models", "transformers"]
    assert s.allow_volume_code == "signed"
    assert s.require_signature is True
    assert str(s.trusted_keys_dir) == "/etc/podserve/keys"


def test_the_documented_default_url_is_shown() -> None:
    assert "`amqp://guest:guest@127.0.0.1:5672/`" in render_markdown()
