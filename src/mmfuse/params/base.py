"""The base of every params.yaml section: a typo'd key or a mutation fails loudly."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
