"""The service's settings refuse what the admin API refuses: a policy value out of bounds from the
environment fails at start, naming the variable, instead of a release gate that can never hold."""

import pytest
from pydantic import ValidationError

from api.routes.admin.policy import PolicyUpdate
from service.settings import ServiceSettings

OUT_OF_BOUNDS = [
    ("harmful_score_threshold", 100.5),
    ("degenerate_threshold", -1),
    ("eval_prompts", 0),
    ("harmless_prompts", 129),
    ("borderline_prompts", 101),
    ("eval_samples", 9),
    ("prescreen_threshold", 1.5),
    ("release_flagged_share", -0.1),
]


@pytest.mark.parametrize(("name", "value"), OUT_OF_BOUNDS)
def test_a_policy_default_out_of_bounds_is_refused_by_the_settings_and_by_the_admin_api(name, value):
    with pytest.raises(ValidationError, match=name):
        ServiceSettings(**{name: value})
    with pytest.raises(ValidationError, match=name):
        PolicyUpdate(**{name: value})


@pytest.mark.parametrize("name", [name for name, _ in OUT_OF_BOUNDS])
def test_the_settings_default_is_a_value_the_admin_api_takes(name):
    PolicyUpdate(**{name: ServiceSettings.model_fields[name].default})


def test_a_bad_value_in_the_environment_fails_at_start_naming_it(monkeypatch):
    monkeypatch.setenv("VACCINE_RELEASE_FLAGGED_SHARE", "1.5")
    with pytest.raises(ValidationError, match="release_flagged_share"):
        ServiceSettings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("VACCINE_MAX_ATTEMPTS", "0"), ("VACCINE_DATABASE_POOL_SIZE", "0"), ("VACCINE_MAX_UPLOAD_BYTES", "-1")],
)
def test_worker_and_api_limits_below_one_are_refused(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.removeprefix("VACCINE_").lower()):
        ServiceSettings()
