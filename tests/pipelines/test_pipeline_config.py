"""The batch job's config (pipelines/config.py): frozen, every refused field named, secrets
masked in the manifest's view.

Named `test_pipeline_config` beside Serve's `deployments/config.py` tests (pytest needs unique
file names)."""

from __future__ import annotations

import pydantic
import pytest

from pipelines.config import JobConfig


# ------------------------------------------------------------------------------ config
def test_config_is_immutable_and_validated():
    config = JobConfig(input="a.jsonl", output="out", model="m")
    assert config.input == ("a.jsonl",) and config.truncate and config.num_replicas == 1
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.dim = 3  # type: ignore[misc]
    with pytest.raises(ValueError) as error:
        JobConfig(
            input=(), output="out", model="m", dim=0, format="xml", num_replicas=0, instruction=" "
        )
    message = str(error.value)
    for expected in (
        "input must name",
        "dim must be an integer >= 1",
        "format='xml' is invalid; valid values are: auto",
        "replicas must be an integer >= 1",
        "instruction must be a non-empty string",
    ):
        assert expected in message


def test_manifest_view_masks_secrets():
    config = JobConfig(
        input="a", output="o", model="m", storage_options={"secret_key": "s3cr3t", "region": "r"}
    )
    assert config.to_dict()["storage_options"] == {"region": "r", "secret_key": "***"}
