"""The one settings object, read from ``VACCINE_*`` environment variables."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The shared data sets sit beside a checkout of this repository; a pip-installed copy needs VACCINE_DATA_DIR.
_CHECKOUT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VACCINE_", extra="ignore")

    home: Path = Field(
        default=Path.home() / ".vaccine",
        description="Directory for caches (converted base models), runs and, later, the service's state.",
    )
    data_dir: Path = Field(
        default=_CHECKOUT_DATA_DIR,
        description="Directory of the public data sets (alignment/, attack/, benign/, eval/, moderation/).",
    )

    @property
    def model_cache_dir(self) -> Path:
        return self.home / "models"


@lru_cache
def get_settings() -> Settings:
    return Settings()
