"""The bounds of the safety policy's values, in one place: the settings (the defaults a fresh service
starts with, from the environment) and the admin API (changes at run time) accept the same values."""

from typing import Annotated

from pydantic import Field

Percent = Annotated[float, Field(ge=0, le=100)]
Share = Annotated[float, Field(ge=0, le=1)]
HarmfulPrompts = Annotated[int, Field(ge=1, le=256)]
HarmlessPrompts = Annotated[int, Field(ge=0, le=128)]
BorderlinePrompts = Annotated[int, Field(ge=0, le=100)]  # eval/jbb_benign_behaviors.jsonl has 100
EvalSamples = Annotated[int, Field(ge=1, le=8)]
