"""The operator's key: ``VACCINE_ADMIN_KEY`` when it is set; otherwise one the first start creates, stores
as a sha256 digest under VACCINE_HOME and prints once, so ``/admin`` and the console work out of the box."""

import hashlib
import hmac
import secrets
from pathlib import Path

from service.rate_limit import blocked_for, count_failure
from service.settings import ServiceSettings

OPERATOR_KEY_PREFIX = "vop-"


def stored_key_file(settings: ServiceSettings) -> Path:
    return settings.home / "operator_key.sha256"


def ensure_operator_key(settings: ServiceSettings) -> str | None:
    """A new operator key when none is configured or stored (the only time it is readable), else None."""
    target = stored_key_file(settings)
    if settings.admin_key is not None or target.is_file():
        return None
    key = OPERATOR_KEY_PREFIX + secrets.token_urlsafe(32)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(target.name + ".partial")
    staged.write_text(hashlib.sha256(key.encode()).hexdigest() + "\n")
    staged.chmod(0o600)
    staged.replace(target)
    return key


def operator_secret(settings: ServiceSettings) -> str | None:
    """What the operator's key is checked against: the configured key's digest or the stored one (None:
    there is no operator key, and operator routes refuse everyone)."""
    if settings.admin_key is not None:
        return hashlib.sha256(settings.admin_key.get_secret_value().encode()).hexdigest()
    target = stored_key_file(settings)
    return target.read_text().strip() if target.is_file() else None


def is_operator_key(settings: ServiceSettings, token: str) -> bool:
    expected = operator_secret(settings)
    digest = hashlib.sha256(token.encode()).hexdigest()
    return expected is not None and hmac.compare_digest(digest, expected)


def seconds_locked_out(settings: ServiceSettings, client: str) -> int | None:
    """Seconds until ``client`` (an address) may try an operator key again, when its recent wrong keys
    fill ``operator_key_failures``; None when it may try now."""
    return blocked_for(f"operator-key:{client}", settings.operator_key_failures, settings.rate_limit_storage)


def try_operator_key(settings: ServiceSettings, token: str, client: str) -> bool:
    """Whether ``token`` is the operator key; a wrong one counts against ``client``."""
    if is_operator_key(settings, token):
        return True
    count_failure(f"operator-key:{client}", settings.operator_key_failures, settings.rate_limit_storage)
    return False
