"""The operator key: configured, or created once on a first start and stored only as a digest."""

from pydantic import SecretStr

from service.operator import ensure_operator_key, is_operator_key, stored_key_file
from service.settings import ServiceSettings


def test_a_first_start_without_a_configured_key_creates_one_and_keeps_only_its_digest(tmp_path):
    settings = ServiceSettings(home=tmp_path)
    assert not is_operator_key(settings, "anything")  # no key at all: nobody is the operator
    key = ensure_operator_key(settings)
    assert key is not None and key.startswith("vop-")
    assert key not in stored_key_file(settings).read_text()
    assert is_operator_key(settings, key) and not is_operator_key(settings, key + "x")
    assert ensure_operator_key(settings) is None  # shown once: a restart keeps the stored one
    assert is_operator_key(settings, key)


def test_a_configured_key_is_the_operator_s_and_nothing_is_stored(tmp_path):
    settings = ServiceSettings(home=tmp_path, admin_key=SecretStr("operator-secret"))
    assert ensure_operator_key(settings) is None and not stored_key_file(settings).exists()
    assert is_operator_key(settings, "operator-secret") and not is_operator_key(settings, "vop-guess")
