"""The shipped Serve config is one Serve itself accepts, and its application builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

import neuralos_example.serving as serving

CONFIG = Path(serving.__file__).with_name("serve_config.yaml")


def test_the_serve_config_passes_serves_own_schema_and_its_import_path_builds_the_app() -> None:
    doc = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(doc)
    app = schema.applications[0]
    assert app.import_path == "neuralos_example.serving:app" and app.deployments[0].name == "NeuralOSModel"
    module, _, attr = app.import_path.partition(":")
    built = getattr(__import__(module, fromlist=[attr]), attr)(app.args)
    assert type(built).__name__ == "Application"
    with pytest.raises(ValueError, match="needs args.run"):
        serving.app({})


def test_serves_schema_would_refuse_a_broken_config() -> None:
    doc = yaml.safe_load(CONFIG.read_text())
    doc["applications"][0]["deployments"][0]["num_replicas"] = -1
    with pytest.raises(Exception, match="num_replicas"):
        ServeDeploySchema.model_validate(doc)
